//go:build !linux

package consultest

import "syscall"

// sysProcAttr is nil where there is no parent-death signal; Stop and the test's cleanup
// stop the agent.
func sysProcAttr() *syscall.SysProcAttr { return nil }
