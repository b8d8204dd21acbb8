package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/registry-consul/consultest"
)

// consulRegistry is a [registry] section that uses the consul plugin at addr.
func consulRegistry(addr, extra string) string {
	return fmt.Sprintf(`
[registry]
plugin = "consul"
address = %q
path = %q
ttl = "2s"
heartbeat = "500ms"
cache_ttl = "5s"
%s`, addr, bins.consulPlugin, extra)
}

// withRegistry replaces the [registry] section of a baseConfig.
func withRegistry(cfg, registry string) string {
	start := strings.Index(cfg, "[registry]")
	end := strings.Index(cfg, "[client]")
	return cfg[:start] + strings.TrimPrefix(registry, "\n") + "\n" + cfg[end:]
}

// catalog returns the services Consul's catalog lists.
func catalog(t *testing.T, addr string) map[string][]string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/catalog/services")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string][]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// passing counts the passing instances of service in Consul.
func passing(addr, service string) (int, error) {
	resp, err := http.Get("http://" + addr + "/v1/health/service/" + service + "?passing=true")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var list []any
	err = json.NewDecoder(resp.Body).Decode(&list)
	return len(list), err
}

// TestConsulTwoMicros: two micro processes on the consul plugin register in Consul and
// call each other's services through it.
func TestConsulTwoMicros(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	reg := consulRegistry(agent.Addr, "")
	a := startMicro(t, withRegistry(baseConfig(t.TempDir(), greeterService("greeter", 1, "")), reg))
	b := startMicro(t, withRegistry(baseConfig(t.TempDir(), greeterService("relay", 1, "")), reg))
	eventually(t, 10*time.Second, func() error {
		c := catalog(t, agent.Addr)
		if _, ok := c["greeter"]; !ok {
			return fmt.Errorf("catalog: %v", c)
		}
		if _, ok := c["relay"]; !ok {
			return fmt.Errorf("catalog: %v", c)
		}
		return nil
	})
	r, err := b.call("relay", "Greeter.Call", `{"service":"greeter","endpoint":"Greeter.Hello","body":{"name":"Ada"}}`, nil)
	if err != nil || r.status != 200 || !strings.Contains(string(r.body), "Hello, Ada!") {
		t.Fatalf("relay through consul: %v %d %s", err, r.status, r.body)
	}
	_ = a
}

// TestRegistryHotSwap edits [registry] from the embedded default to consul and back while
// calls stream: no call fails, and the services move between the registries.
func TestRegistryHotSwap(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	embeddedCfg := baseConfig(t.TempDir(), greeterService("greeter", 2, ""))
	consulCfg := withRegistry(embeddedCfg, consulRegistry(agent.Addr, ""))
	m := startMicro(t, embeddedCfg)

	ctx, cancel := context.WithCancel(context.Background())
	l := runLoad(ctx, m, 4, nil)
	l.waitCalls(t, 100)
	for i, step := range []struct {
		cfg       string
		inConsul  int
		switchLog int
	}{{consulCfg, 2, 1}, {embeddedCfg, 0, 2}, {consulCfg, 2, 3}} {
		written := time.Now()
		m.writeConfig(step.cfg)
		eventually(t, 30*time.Second, func() error {
			if n := strings.Count(m.logs.String(), `msg="registry switched"`); n < step.switchLog {
				return fmt.Errorf("switch %d not logged yet", i)
			}
			return nil
		})
		logSwitch(t, m, step.switchLog, written)
		eventually(t, 10*time.Second, func() error {
			if n, err := passing(agent.Addr, "greeter"); err != nil || n != step.inConsul {
				return fmt.Errorf("switch %d: %d passing greeters in consul, want %d (%v)", i, n, step.inConsul, err)
			}
			return nil
		})
		l.waitCalls(t, 100)
	}
	cancel()
	ok, failures, _ := l.wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed during the switches; first: %s", len(failures), ok+len(failures), failures[0])
	}
	t.Logf("%d calls over 3 registry switches, none failed", ok)
}

// TestConsulFailures: the plugin killed, and the Consul agent stopped, while calls stream:
// calls go on from the cache, the plugin comes back, and registrations are restored when
// the agent does.
func TestConsulFailures(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	m := startMicro(t, withRegistry(baseConfig(t.TempDir(), greeterService("greeter", 2, "")), consulRegistry(agent.Addr, "")))
	eventually(t, 10*time.Second, func() error {
		if n, _ := passing(agent.Addr, "greeter"); n != 2 {
			return fmt.Errorf("%d passing", n)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	l := runLoad(ctx, m, 4, nil)
	l.waitCalls(t, 100)

	// Kill the plugin process.
	plugin := pluginPID(t, m)
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", plugin)); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "VmHWM") {
				t.Logf("consul plugin %s", strings.Join(strings.Fields(l), " "))
			}
		}
	}
	if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l.waitCalls(t, 100)
	eventually(t, 20*time.Second, func() error {
		if p := pluginPIDOrZero(m); p == 0 || p == plugin {
			return fmt.Errorf("plugin not restarted (pid %d)", p)
		}
		return nil
	})
	l.waitCalls(t, 100)

	// Stop the agent, then bring it back empty: micro's heartbeats restore the nodes.
	agent.Stop()
	l.waitCalls(t, 200)
	agent.Restart()
	eventually(t, 30*time.Second, func() error {
		if n, _ := passing(agent.Addr, "greeter"); n != 2 {
			return fmt.Errorf("%d passing greeters after the agent came back", n)
		}
		return nil
	})
	l.waitCalls(t, 100)
	cancel()
	ok, failures, _ := l.wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed; first: %s", len(failures), ok+len(failures), failures[0])
	}
}

// TestBadPluginKeepsRegistry: a switch to a plugin that is pinned to another digest, or
// that exits at once, is refused; the old registry stays, /health says why, and calls go on.
func TestBadPluginKeepsRegistry(t *testing.T) {
	t.Parallel()
	base := baseConfig(t.TempDir(), greeterService("greeter", 1, ""))
	m := startMicro(t, base)
	exits := filepath.Join(t.TempDir(), "registry-exits")
	if err := os.WriteFile(exits, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, registry, want string }{
		{"pin mismatch", consulRegistry("127.0.0.1:1", `sha256 = "`+strings.Repeat("ab", 32)+`"`), "sha256"},
		{"exits at once", strings.Replace(consulRegistry("127.0.0.1:1", ""), bins.consulPlugin, exits, 1), "exit"},
		{"backend unreachable", consulRegistry("127.0.0.1:1", ""), "127.0.0.1:1"},
	} {
		m.writeConfig(withRegistry(base, tc.registry))
		eventually(t, 30*time.Second, func() error {
			resp, err := http.Get(m.ingress + "/health")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var st struct {
				Status string
				Errors []string
			}
			_ = json.NewDecoder(resp.Body).Decode(&st)
			if st.Status != "degraded" || !slices.ContainsFunc(st.Errors, func(e string) bool { return strings.Contains(e, tc.want) }) {
				return fmt.Errorf("%s: health %+v", tc.name, st)
			}
			return nil
		})
		if r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil); err != nil || r.status != 200 {
			t.Fatalf("%s: call after the refused switch: %v %d %s", tc.name, err, r.status, r.body)
		}
	}
	// Back to the running registry: the error clears.
	m.writeConfig(base + "\n# undo\n")
	m.waitHealthy()
}

// logSwitch logs how long the n-th registry switch took from the file write, by the
// timestamp of micro's "registry switched" line.
func logSwitch(t *testing.T, m *micro, n int, written time.Time) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(m.logs.String(), "\n") {
		if strings.Contains(l, `msg="registry switched"`) {
			lines = append(lines, l)
		}
	}
	line := lines[n-1]
	ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	_, detail, _ := strings.Cut(line, "from=")
	t.Logf("registry switch %d: %v from the file write to done (from=%s)", n, at.Sub(written).Round(time.Millisecond), detail)
}

// pluginPID finds the registry plugin process among micro's children.
func pluginPID(t *testing.T, m *micro) int {
	t.Helper()
	var pid int
	eventually(t, 10*time.Second, func() error {
		if pid = pluginPIDOrZero(m); pid == 0 {
			return fmt.Errorf("no plugin process under micro")
		}
		return nil
	})
	return pid
}

func pluginPIDOrZero(m *micro) int {
	for _, pid := range m.children() {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmd), "registry-consul") {
			return pid
		}
	}
	return 0
}
