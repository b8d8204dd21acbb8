// Package proc starts and stops the processes that micro's benchmark harnesses measure:
// micro and the greeter, built from the repo.
package proc

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Build builds each package into its output path (output → package), from the repo root.
func Build(pkgs map[string]string) error {
	for out, pkg := range pkgs {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %s (run from the repo root): %w", pkg, err)
		}
	}
	return nil
}

// StartGreeter starts the greeter binary on a free loopback address, and returns the
// process and its address.
func StartGreeter(bin string) (*exec.Cmd, string, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "MICRO_APP_ADDR="+addr, "MICRO_INSTANCE=bench")
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	return cmd, addr, nil
}

var listening = regexp.MustCompile(`on (\S+) \(ingress\)`)

// StartMicro runs `micro run -c cfgPath` and returns the process and its ingress address
// (host:port), once micro has said where it listens.
func StartMicro(bin, cfgPath string) (*exec.Cmd, string, error) {
	cmd := exec.Command(bin, "run", "-c", cfgPath)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		Stop(cmd)
		return nil, "", fmt.Errorf("micro (%s) did not start: %w", cfgPath, err)
	}
	m := listening.FindStringSubmatch(line)
	if m == nil {
		Stop(cmd)
		return nil, "", fmt.Errorf("unexpected micro output %q", line)
	}
	return cmd, m[1], nil
}

// WaitOK posts a greeting to url until it answers 200, for at most 30s.
func WaitOK(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Post(url, "application/json", bytes.NewReader([]byte(`{"name":"x"}`)))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s never answered 200", url)
}

// FreeAddr returns a loopback address that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Stop interrupts cmd and waits for it, killing it after 10s.
func Stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// RSS returns the resident memory of process pid in bytes: VmRSS of /proc/pid/status.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
