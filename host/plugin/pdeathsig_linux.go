package plugin

import (
	"os/exec"
	"syscall"
)

// dieWithParent asks the kernel to SIGKILL the plugin when micro dies, even by SIGKILL.
// (The signal fires when the OS thread that started the plugin exits; Go keeps its threads
// unless a goroutine exits while locked to one. sdk/registry.Serve also exits a plugin whose
// parent has gone.)
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
