//go:build unix && !linux

package supervisor

import "syscall"

// sysProcAttr puts an instance in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to the process group pgid.
func signalGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}

// groupAlive reports whether process group pgid has a member.
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}
