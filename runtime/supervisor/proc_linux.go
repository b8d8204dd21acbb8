package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// sysProcAttr puts an app started without a keeper in its own process group and has the
// kernel kill it, but not the processes it started, when micro dies.
//
// Pdeathsig fires when the thread that started the child exits; the Go runtime only ends a
// thread when a goroutine exits while locked to it, so in micro that means micro's death.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// appProcAttr has the kernel kill a keeper's app when the keeper dies. The app stays in the
// keeper's process group.
func appProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// signalGroup sends sig to the process group pgid.
func signalGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}

// groupAlive reports whether process group pgid has a live member. Zombies do not count: a
// member that outlived its parent is reaped by init, and an init that does not reap (as in
// some containers) would otherwise keep the group alive forever.
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil && othersAlive(pgid, 0)
}

// othersAlive reports whether process group pgid has a live member other than process self,
// as groupAlive counts them. It reports true when it cannot read /proc.
func othersAlive(pgid, self int) bool {
	d, err := os.Open("/proc")
	if err != nil {
		return true
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return true
	}
	skip := strconv.Itoa(self)
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' || name == skip {
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
