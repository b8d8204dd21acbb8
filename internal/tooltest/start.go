package tooltest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Tool is a tool a test runs: a process it can stop, with a log.
type Tool interface {
	// Stop stops the tool and waits for it to exit; stopping a stopped tool does nothing.
	Stop()
	// LogTail returns up to the last n bytes of the tool's output.
	LogTail(n int) string
}

// Start starts a tool with attempt, which gets a new directory and ports loopback ports
// (each free for TCP and UDP alike) and returns the tool, started and ready, or the tool
// and why it did not come up. A port found free can be taken before the tool binds it,
// so Start tries three times, with new ports each time. The tool is stopped when the test
// ends, and its log tail shown if the test failed. Start fails the test when no attempt
// works; name prefixes its messages.
func Start[T Tool](t testing.TB, name string, ports int, attempt func(dir string, ports []int) (T, error)) T {
	t.Helper()
	base := t.TempDir()
	var lastErr error
	for i := range 3 {
		ps, err := FreePorts(ports)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		dir := filepath.Join(base, fmt.Sprintf("attempt-%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tool, err := attempt(dir, ps)
		if err == nil {
			t.Cleanup(func() {
				tool.Stop()
				if t.Failed() {
					t.Logf("%s: log tail:\n%s", name, tool.LogTail(4096))
				}
			})
			return tool
		}
		tool.Stop()
		lastErr = err
	}
	t.Fatalf("%s: %v", name, lastErr)
	var none T
	return none
}

// FreePorts returns n distinct loopback ports that are free, for TCP and UDP alike, now.
func FreePorts(n int) ([]int, error) {
	var ports []int
	var hold []func() error // keep each port bound until all are chosen, so none repeats
	defer func() {
		for _, c := range hold {
			_ = c()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 50 {
			return nil, errors.New("no free loopback ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		hold = append(hold, l.Close)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		hold = append(hold, u.Close)
		ports = append(ports, port)
	}
	return ports, nil
}

// Running holds the process a harness runs now, for Stop from any goroutine. Its zero
// value holds none.
type Running struct {
	mu   sync.Mutex
	proc *Process
}

// Set makes p the process held.
func (r *Running) Set(p *Process) {
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
}

// Stop stops the process held (SIGTERM, then SIGKILL after timeout), if any, and waits
// for it to exit; it holds none after.
func (r *Running) Stop(timeout time.Duration) {
	r.mu.Lock()
	p := r.proc
	r.proc = nil
	r.mu.Unlock()
	if p != nil {
		p.Stop(timeout)
	}
}
