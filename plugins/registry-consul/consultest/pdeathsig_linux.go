package consultest

import "syscall"

// sysProcAttr makes the kernel kill the agent when the test process dies, so that a test
// binary killed by its timeout leaves no agent behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
