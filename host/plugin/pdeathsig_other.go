//go:build !linux

package plugin

import "os/exec"

// dieWithParent does nothing here: only Linux has a parent-death signal. A plugin built
// with sdk/registry exits on its own once its parent has gone.
func dieWithParent(*exec.Cmd) {}
