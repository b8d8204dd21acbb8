package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// sysProcAttr puts an instance in its own process group and has the kernel kill it when
// micro dies.
//
// Pdeathsig fires when the thread that started the child exits; the Go runtime only ends a
// thread when a goroutine exits while locked to it, so in micro that means micro's death.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// signalGroup sends sig to the process group pgid.
func signalGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}

// groupAlive reports whether process group pgid has a live member. Zombies do not count: a
// member that outlived its parent is reaped by init, and an init that does not reap (as in
// some containers) would otherwise keep the group alive forever.
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false
	}
	d, err := os.Open("/proc")
	if err != nil {
		return true
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return true
	}
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(stat[i+1:])
		if len(f) < 3 {
			continue
		}
		if pgrp, err := strconv.Atoi(string(f[2])); err == nil && pgrp == pgid && f[0][0] != 'Z' && f[0][0] != 'X' {
			return true
		}
	}
	return false
}
