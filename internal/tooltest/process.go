package tooltest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Process is a tool's process that a test runs: its output goes to a log file, it dies with
// the test process (on Linux), and Stop ends it with SIGTERM, then SIGKILL.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Run starts bin with args, with this process's environment but the variables whose names
// start with one of drop (those that would reconfigure the tool), its output appended to
// the file at logPath.
func Run(bin string, args, drop []string, logPath string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	for _, kv := range os.Environ() {
		keep := true
		for _, prefix := range drop {
			keep = keep && !strings.HasPrefix(kv, prefix)
		}
		if keep {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Stop ends the process, SIGTERM first and SIGKILL after timeout, and waits for it to exit.
func (p *Process) Stop(timeout time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// WaitReady calls ready, with pauses growing from 10ms to 250ms, until it returns nil. It
// fails when the process exits first, or when timeout has passed.
func (p *Process) WaitReady(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		if last = ready(); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before it was ready: %v", last)
		case <-time.After(delay):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", timeout, last)
		}
	}
}

// LogTail returns up to the last n bytes of the log at path.
func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
