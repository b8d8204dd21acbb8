package tooltest

import "syscall"

// sysProcAttr makes the kernel kill the tool when the test process dies, so that a test
// binary killed by its timeout leaves no tool behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
