package e2e

import (
	"context"
	"fmt"
	"strings"
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
