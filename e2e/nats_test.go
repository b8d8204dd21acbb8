package e2e

import (
	"context"
	"fmt"
	"os"
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

// TestTransportPluginKilled: the caller's NATS transport plugin is SIGKILLed while calls
// stream: calls in flight end with 502 or 504 within their budget, never hang; the plugin
// is restarted and calls succeed again.
func TestTransportPluginKilled(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	reg := t.TempDir()
	startMicro(t, withTransport(baseConfig(reg, greeterService("greeter", 1, "")), natsTransport(nats.URL)))
	caller := startMicro(t, withTransport(baseConfig(reg, ""), natsTransport(nats.URL)))
	nodesOf(t, caller, "greeter", 1)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu       sync.Mutex
		ok       int
		bad      []string
		slowest  time.Duration
		counting sync.WaitGroup
	)
	for range 4 {
		counting.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				r, err := caller.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{"Micro-Timeout": "1s"})
				took := time.Since(start)
				mu.Lock()
				slowest = max(slowest, took)
				switch {
				case err != nil:
					bad = append(bad, err.Error())
				case r.status == 200:
					ok++
				case r.status == 502 || r.status == 504:
				default:
					bad = append(bad, fmt.Sprintf("%d %s", r.status, r.body))
				}
				mu.Unlock()
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return ok }
	waitOK := func(n int) {
		t.Helper()
		before := count()
		eventually(t, 30*time.Second, func() error {
			if got := count() - before; got < n {
				return fmt.Errorf("%d successful calls", got)
			}
			return nil
		})
	}
	waitOK(50)
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
	waitOK(100) // the plugin came back and calls succeed again
	cancel()
	counting.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d calls ended otherwise than 200, 502 or 504; first: %s", len(bad), bad[0])
	}
	if slowest > 3*time.Second {
		t.Errorf("a call took %v with a 1s budget", slowest)
	}
}
