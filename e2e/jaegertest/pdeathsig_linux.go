package jaegertest

import "syscall"

// sysProcAttr makes the kernel kill Jaeger when the test process dies, so that a test
// binary killed by its timeout leaves no Jaeger behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
