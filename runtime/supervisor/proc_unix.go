//go:build unix && !linux

package supervisor

import "syscall"

// sysProcAttr puts an app started without a keeper in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// appProcAttr keeps a keeper's app in the keeper's process group.
func appProcAttr() *syscall.SysProcAttr {
	return nil
}

// signalGroup sends sig to the process group pgid.
func signalGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}

// groupAlive reports whether process group pgid has a member.
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}

// othersAlive reports whether process group pgid has a live member other than process self.
// Without /proc it cannot tell the members apart, so it reports false.
func othersAlive(pgid, self int) bool {
	return false
}
