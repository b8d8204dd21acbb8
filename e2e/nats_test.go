package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/transport-nats/natstest"
)

// natsTransport is a [transport] section that uses the NATS plugin at url.
func natsTransport(url string) string {
	return fmt.Sprintf(`
[transport]
plugin = "nats"
url = %q
path = %q
`, url, bins.natsPlugin)
}

// withTransport adds a [transport] section to a baseConfig.
func withTransport(cfg, section string) string {
	return strings.Replace(cfg, "[client]", strings.TrimPrefix(section, "\n")+"\n[client]", 1)
}

// natsPair starts a NATS server and two micros on the NATS transport that share a registry:
// one fronts greeter, the caller fronts nothing. It returns once the caller sees greeter.
func natsPair(t *testing.T) (*natstest.Server, *micro) {
	t.Helper()
	nats := natstest.Start(t)
	reg := t.TempDir()
	startMicro(t, withTransport(baseConfig(reg, greeterService("greeter", 1, "")), natsTransport(nats.URL)))
	caller := startMicro(t, withTransport(baseConfig(reg, ""), natsTransport(nats.URL)))
	nodesOf(t, caller, "greeter", 1)
	return nats, caller
}

// TestNATSTwoMicros: two micro processes that share only a NATS server and a registry call
// each other's services by name over the NATS transport plugin.
func TestNATSTwoMicros(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	reg := t.TempDir()
	a := startMicro(t, withTransport(baseConfig(reg, greeterService("greeter", 1, "")), natsTransport(nats.URL)))
	b := startMicro(t, withTransport(baseConfig(reg, greeterService("relay", 1, "")), natsTransport(nats.URL)))
	nodesOf(t, a, "greeter", 1)
	r, err := b.call("relay", "Greeter.Call", `{"service":"greeter","endpoint":"Greeter.Hello","body":{"name":"Ada"}}`,
		map[string]string{"Micro-Timeout": "3s"})
	if err != nil || r.status != 200 || !strings.Contains(string(r.body), "Hello, Ada!") {
		t.Fatalf("relay over nats: %v %d %s", err, r.status, r.body)
	}
	out, err := a.servicesRaw()
	if err != nil || !strings.Contains(out, `"address": "nats:`) {
		t.Fatalf("greeter's node is not registered at a nats address: %v\n%s", err, out)
	}
}

// TestTransportSwitch switches [transport] from HTTP to NATS and back while calls stream:
// no call fails.
func TestTransportSwitch(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	base := baseConfig(t.TempDir(), greeterService("greeter", 2, ""))
	m := startMicro(t, base)
	ctx, cancel := context.WithCancel(context.Background())
	l := runLoad(ctx, m, 4, nil)
	l.waitCalls(t, 100)
	for i, cfg := range []string{withTransport(base, natsTransport(nats.URL)), base} {
		m.writeConfig(cfg)
		eventually(t, 30*time.Second, func() error {
			if n := strings.Count(m.logs.String(), `msg="transport switched"`); n < i+1 {
				return fmt.Errorf("switch %d not logged yet", i+1)
			}
			return nil
		})
		l.waitCalls(t, 200)
	}
	cancel()
	ok, failures, _ := l.wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed over the transport switches; first: %s", len(failures), ok+len(failures), failures[0])
	}
	t.Logf("%d calls over 2 transport switches, none failed", ok)
}

// budgetLoad streams calls with a budget and sorts the outcomes: 200s, the clean failures
// a broken transport may give (502, 504), and anything else; it keeps the slowest call.
type budgetLoad struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	ok      int
	bad     []string
	slowest time.Duration
}

func runBudgetLoad(ctx context.Context, m *micro, workers int, budget string) *budgetLoad {
	l := &budgetLoad{}
	for range workers {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{"Micro-Timeout": budget})
				took := time.Since(start)
				l.mu.Lock()
				l.slowest = max(l.slowest, took)
				switch {
				case err != nil:
					l.bad = append(l.bad, err.Error())
				case r.status == 200:
					l.ok++
				case r.status == 502 || r.status == 504:
				default:
					l.bad = append(l.bad, fmt.Sprintf("%d %s", r.status, r.body))
				}
				l.mu.Unlock()
			}
		})
	}
	return l
}

// waitOK waits until n more calls have succeeded.
func (l *budgetLoad) waitOK(t *testing.T, n int) {
	t.Helper()
	l.mu.Lock()
	before := l.ok
	l.mu.Unlock()
	eventually(t, 30*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if got := l.ok - before; got < n {
			return fmt.Errorf("%d successful calls", got)
		}
		return nil
	})
}

// check waits for the workers and fails t on a call that ended otherwise than 200, 502 or
// 504, or that ran far past its budget.
func (l *budgetLoad) check(t *testing.T, budget time.Duration) {
	t.Helper()
	l.wg.Wait()
	if len(l.bad) > 0 {
		t.Fatalf("%d calls ended otherwise than 200, 502 or 504; first: %s", len(l.bad), l.bad[0])
	}
	if l.slowest > budget+2*time.Second {
		t.Errorf("a call took %v with a %v budget", l.slowest, budget)
	}
}

// TestTransportPluginKilled: the caller's NATS transport plugin is SIGKILLed while calls
// stream: calls in flight end with 502 or 504 within their budget, never hang; the plugin
// is restarted and calls succeed again.
func TestTransportPluginKilled(t *testing.T) {
	t.Parallel()
	_, caller := natsPair(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := runBudgetLoad(ctx, caller, 4, "1s")
	l.waitOK(t, 50)
	var plugin int
	for _, pid := range caller.children() {
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), "transport-nats") {
			plugin = pid
		}
	}
	if plugin == 0 {
		t.Fatal("no transport plugin under the caller's micro")
	}
	if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l.waitOK(t, 100) // the plugin came back and calls succeed again
	cancel()
	l.check(t, time.Second)
}

// TestNATSServerRestart: the NATS server goes away and comes back on the same port while
// calls stream between two micros: nothing hangs past its budget, failures are 502 or 504,
// and calls succeed again once the server is back.
func TestNATSServerRestart(t *testing.T) {
	t.Parallel()
	nats, caller := natsPair(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := runBudgetLoad(ctx, caller, 4, "500ms")
	l.waitOK(t, 50)
	nats.Stop()
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(caller.logs.String(), "disconnected from NATS") {
			return fmt.Errorf("the plugin has not noticed the outage yet")
		}
		return nil
	})
	nats.Restart()
	l.waitOK(t, 100)
	cancel()
	l.check(t, 500*time.Millisecond)
}

// TestNATSStream: a stream between two micros over the NATS transport plugin carries
// messages both ways to the greeter's WebSocket endpoint.
func TestNATSStream(t *testing.T) {
	t.Parallel()
	_, caller := natsPair(t)
	out, err := exec.Command(bins.micro, "call", "--stream", "-address", strings.TrimPrefix(caller.ingress, "http://"),
		"-timeout", "2s", "greeter", "Greeter.Stream", "Ada", "Bo", "Cy").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"greeting":"Hello, Cy!"`) || !strings.Contains(string(out), `"seq":3`) {
		t.Fatalf("micro call --stream over nats: %v\n%s", err, out)
	}
}
