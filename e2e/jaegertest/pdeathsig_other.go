//go:build !linux

package jaegertest

import "syscall"

// sysProcAttr is nil where there is no parent-death signal; Stop and the test's cleanup
// stop Jaeger.
func sysProcAttr() *syscall.SysProcAttr { return nil }
