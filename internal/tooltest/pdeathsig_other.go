//go:build !linux

package tooltest

import "syscall"

// sysProcAttr is nil where there is no parent-death signal; Stop and the test's cleanup
// stop the tool.
func sysProcAttr() *syscall.SysProcAttr { return nil }
