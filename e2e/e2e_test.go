package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKilledMicroNoFailedCall kills (SIGKILL) one of two micro processes that front greeter
// while calls stream through the other: no call fails, and the dead node leaves the
// registry within its TTL.
func TestKilledMicroNoFailedCall(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	a := startMicro(t, baseConfig(reg, greeterService("greeter", 1, "")))
	aNodes := nodesOf(t, a, "greeter", 1)
	b := startMicro(t, baseConfig(reg, greeterService("greeter", 1, "")))
	all := nodesOf(t, a, "greeter", 2)
	bNode := without(all, aNodes)[0]

	ctx, cancel := context.WithCancel(context.Background())
	l := runLoad(ctx, a, 4, nil)
	l.waitCalls(t, 200)
	b.kill(syscall.SIGKILL)
	killed := time.Now()

	// The dead node leaves the registry within its TTL (2s), give or take a scan.
	eventually(t, 6*time.Second, func() error {
		if ids := mustServices(t, a)["greeter"]; slices.Contains(ids, bNode) {
			return fmt.Errorf("node %s of the killed micro still registered: %v", bNode, ids)
		}
		return nil
	})
	t.Logf("killed node left the registry after %v", time.Since(killed).Round(10*time.Millisecond))
	l.waitCalls(t, 200)
	cancel()
	ok, failures, _ := l.wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed, first: %s", len(failures), ok+len(failures), failures[0])
	}
	t.Logf("%d calls, none failed", ok)
}

// TestKilledInstanceNoFailedCall kills one of two app instances of a micro during a stream
// of calls: retries go to the other instance, and the supervisor restarts the dead one.
func TestKilledInstanceNoFailedCall(t *testing.T) {
	t.Parallel()
	m := startMicro(t, baseConfig(t.TempDir(), greeterService("greeter", 2, "")))
	ctx, cancel := context.WithCancel(context.Background())
	l := runLoad(ctx, m, 4, nil)
	l.waitCalls(t, 200)
	kids := m.children()
	if len(kids) != 2 {
		t.Fatalf("micro has children %v, want 2 greeter instances", kids)
	}
	if err := syscall.Kill(kids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The instance comes back as a new process, and calls go on.
	eventually(t, 20*time.Second, func() error {
		now := m.children()
		if len(now) != 2 || slices.Contains(now, kids[0]) {
			return fmt.Errorf("children %v", now)
		}
		return nil
	})
	m.waitHealthy()
	l.waitCalls(t, 200)
	cancel()
	ok, failures, seen := l.wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed, first: %s", len(failures), ok+len(failures), failures[0])
	}
	if len(seen) != 2 {
		t.Errorf("instances that answered: %v, want both", seen)
	}
}

// TestBudget: an instance that hangs makes a call with Micro-Timeout: 200ms end in a 504
// soon after 200ms, and the app sees a smaller budget than the caller sent.
func TestBudget(t *testing.T) {
	t.Parallel()
	m := startMicro(t, baseConfig(t.TempDir(), greeterService("greeter", 2, "")))

	r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{"Micro-Timeout": "300ms"})
	if err != nil || r.status != 200 {
		t.Fatalf("hello: %v %d %s", err, r.status, r.body)
	}
	seen, err := time.ParseDuration(r.json(t)["budget"].(string))
	if err != nil || seen <= 0 || seen >= 300*time.Millisecond {
		t.Fatalf("app saw budget %v (%v), want in (0, 300ms)", seen, err)
	}

	for range 3 {
		start := time.Now()
		r, err = m.call("greeter", "Greeter.Sleep", `{"ms":10000}`, map[string]string{"Micro-Timeout": "200ms"})
		took := time.Since(start)
		if err != nil || r.status != 504 {
			t.Fatalf("sleep: %v %d %s", err, r.status, r.body)
		}
		e := r.json(t)
		if e["code"] != float64(504) || e["status"] != "Gateway Timeout" || e["detail"] == "" {
			t.Errorf("504 body: %s", r.body)
		}
		// A functional bound, not a speed target: the call ends with its budget, not after
		// the app's ten seconds.
		if took < 200*time.Millisecond || took > 2*time.Second {
			t.Errorf("504 after %v, want soon after 200ms", took)
		}
	}
}

// TestTwoMicros: the app behind one micro calls a service fronted by another, by name.
func TestTwoMicros(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	a := startMicro(t, baseConfig(reg, greeterService("greeter", 1, "")))
	aNodes := nodesOf(t, a, "greeter", 1)
	b := startMicro(t, baseConfig(reg, greeterService("relay", 1, "")))

	r, err := b.call("relay", "Greeter.Call", `{"service":"greeter","endpoint":"Greeter.Hello","body":{"name":"Ada"}}`,
		map[string]string{"Micro-Timeout": "2s"})
	if err != nil || r.status != 200 {
		t.Fatalf("relay: %v %d %s", err, r.status, r.body)
	}
	v := r.json(t)
	inner, _ := v["reply"].(map[string]any)
	if inner["greeting"] != "Hello, Ada!" {
		t.Fatalf("relay reply: %s", r.body)
	}
	// The budget shrank over two hops.
	if d, err := time.ParseDuration(inner["budget"].(string)); err != nil || d >= 2*time.Second {
		t.Errorf("budget at the second app: %v %v", d, err)
	}
	// And the greeter that answered is the one micro a fronts.
	direct, err := b.call("greeter", "Greeter.Hello", `{"name":"Bo"}`, nil)
	if err != nil || direct.status != 200 || direct.header.Get("Micro-Node") != aNodes[0] {
		t.Fatalf("greeter via b: %v %d node %q, want node %s", err, direct.status, direct.header.Get("Micro-Node"), aNodes[0])
	}
}

// TestBadInput: bad requests get a 4xx JSON error, a broken micro.toml edit is logged and
// the running config stays, and micro keeps serving through all of it.
func TestBadInput(t *testing.T) {
	t.Parallel()
	cfg := baseConfig(t.TempDir(), greeterService("greeter", 1, "")) + "\n"
	cfg = strings.Replace(cfg, `drain_timeout = "5s"`, `drain_timeout = "5s"`+"\nmax_body = \"1KiB\"", 1)
	m := startMicro(t, cfg)
	good := func() {
		t.Helper()
		r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 200 {
			t.Fatalf("good call after bad input: %v %d %s", err, r.status, r.body)
		}
	}
	for _, tc := range []struct {
		name, path, body, timeout string
		code                      int
		detail                    string
	}{
		{"unknown service", "/nosuch/X.Y", "{}", "", 404, `"nosuch"`},
		{"malformed path", "//Greeter.Hello", "{}", "", 400, "/{service}/{path}"},
		{"bad service name", "/Greeter/Greeter.Hello", "{}", "", 400, "not allowed"},
		// Any path is the app's: the greeter itself answers one it does not know.
		{"the app's 404", "/greeter/a/b", "{}", "", 404, ""},
		{"bad timeout", "/greeter/Greeter.Hello", "{}", "fast", 400, `"fast"`},
		{"oversized body", "/greeter/Greeter.Hello", strings.Repeat("x", 2048), "", 413, "1024 bytes"},
		{"app rejects", "/greeter/Greeter.Hello", "not json", "", 400, ""},
	} {
		hdr := map[string]string{}
		if tc.timeout != "" {
			hdr["Micro-Timeout"] = tc.timeout
		}
		r, err := m.post(tc.path, tc.body, hdr)
		if err != nil || r.status != tc.code {
			t.Errorf("%s: %v %d %s, want %d", tc.name, err, r.status, r.body, tc.code)
			continue
		}
		if tc.detail != "" {
			e := r.json(t)
			if e["code"] != float64(tc.code) || !strings.Contains(fmt.Sprint(e["detail"]), tc.detail) {
				t.Errorf("%s: body %s, want detail with %q", tc.name, r.body, tc.detail)
			}
		}
		good()
	}

	// A broken edit: logged, and micro keeps its config and serves.
	m.writeConfig(strings.Replace(cfg, "[client]", "[client]\nstrategy = \"fastest\"", 1))
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(m.logs.String(), "fastest") {
			return errors.New("the broken edit is not logged")
		}
		return nil
	})
	good()
	m.writeConfig("this is [not toml")
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(m.logs.String(), "micro.toml:1:") {
			return errors.New("the TOML syntax error is not logged with its line")
		}
		return nil
	})
	good()

	// A good edit afterwards applies: a second service appears.
	m.writeConfig(cfg + greeterService("hello", 1, ""))
	eventually(t, 30*time.Second, func() error {
		r, err := m.call("hello", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 200 {
			return fmt.Errorf("hello: %v %d %s", err, r.status, r.body)
		}
		return nil
	})
	good()
}

// TestGracefulStop: SIGINT deregisters at once, stops the apps and exits 0; the CLI's call
// and services commands work against the running micro before that.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	m := startMicro(t, baseConfig(reg, greeterService("greeter", 2, "")))
	watcher := startMicro(t, baseConfig(reg, ""))
	nodesOf(t, watcher, "greeter", 2)

	out, err := exec.Command(bins.micro, "call", "-address", strings.TrimPrefix(m.ingress, "http://"), "greeter", "Greeter.Hello", `{"name":"Ada"}`).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"Hello, Ada!"`) {
		t.Fatalf("micro call: %v\n%s", err, out)
	}
	out, err = exec.Command(bins.micro, "services", "-address", strings.TrimPrefix(m.ingress, "http://")).CombinedOutput()
	if err != nil || strings.Count(string(out), "\ngreeter ") != 2 || !strings.Contains(string(out), "zone=a") || !strings.Contains(string(out), "1.0.0") {
		t.Fatalf("micro services: %v\n%s", err, out)
	}

	kids := m.children()
	m.kill(syscall.SIGINT)
	if m.exitErr != nil {
		t.Fatalf("micro exited with %v, want 0", m.exitErr)
	}
	// Deregistered at stop, not after the TTL: the other micro's listing is empty at once.
	if ids := mustServices(t, watcher)["greeter"]; len(ids) != 0 {
		t.Errorf("nodes still registered after a graceful stop: %v", ids)
	}
	if len(kids) != 2 {
		t.Fatalf("micro had children %v, want 2 app instances", kids)
	}
	for _, pid := range kids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) && !zombie(pid) {
			t.Errorf("app process %d still alive after micro stopped", pid)
		}
	}
}

func mustServices(t *testing.T, m *micro) map[string][]string {
	t.Helper()
	s, err := m.services()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// nodesOf waits until service has n nodes in the registry as m sees it, and returns them.
func nodesOf(t *testing.T, m *micro, service string, n int) []string {
	t.Helper()
	var ids []string
	eventually(t, 30*time.Second, func() error {
		ids = mustServices(t, m)[service]
		if len(ids) != n {
			return fmt.Errorf("%s has nodes %v, want %d", service, ids, n)
		}
		return nil
	})
	return ids
}

func without(all, some []string) []string {
	var out []string
	for _, s := range all {
		if !slices.Contains(some, s) {
			out = append(out, s)
		}
	}
	return out
}

// TestLiveRoutes: canary weights and a version filter in [routes] apply live, without a
// restart, and the per-service metrics count the calls.
func TestLiveRoutes(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	v1 := greeterService("greeter", 1, "")
	v2 := strings.Replace(greeterService("greeter", 1, ""), `"1.0.0"`, `"2.0.0"`, 1)
	startMicro(t, baseConfig(reg, v2))
	base := baseConfig(reg, v1)
	m := startMicro(t, base)
	nodesOf(t, m, "greeter", 2)

	versions := func(n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for range n {
			r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
			if err != nil || r.status != 200 {
				t.Fatalf("call: %v %d %s", err, r.status, r.body)
			}
			seen[r.header.Get("Micro-Node")]++
		}
		return seen
	}
	if seen := versions(40); len(seen) != 2 {
		t.Fatalf("without routes, calls went to %v, want both nodes", seen)
	}
	own := nodesOfMicro(t, m)

	// Only version 1.0.0 (this micro's own node) by filter.
	m.writeConfig(base + "\n[routes.greeter]\nversion = \"1.0.0\"\n")
	eventually(t, 10*time.Second, func() error {
		if seen := versions(20); len(seen) != 1 || seen[own] != 20 {
			return fmt.Errorf("with version = 1.0.0, calls went to %v", seen)
		}
		return nil
	})
	// All of it to 2.0.0 by weight.
	m.writeConfig(base + "\n[routes.greeter]\nweights = { \"1.0.0\" = 0, \"2.0.0\" = 100 }\n")
	eventually(t, 10*time.Second, func() error {
		if seen := versions(20); len(seen) != 1 || seen[own] != 0 {
			return fmt.Errorf("with weights 0/100, calls went to %v", seen)
		}
		return nil
	})

	resp, err := http.Get(m.ingress + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`micro_client_calls_total{code="200",service="greeter"}`, `micro_client_call_duration_seconds_bucket{service="greeter"`, `micro_inbound_calls_total{code="200",service="greeter"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// nodesOfMicro returns the ID of the one node that m itself fronts, from its log.
func nodesOfMicro(t *testing.T, m *micro) string {
	t.Helper()
	sub := regexp.MustCompile(`instance ready.* node=(\S+)`).FindStringSubmatch(m.logs.String())
	if sub == nil {
		t.Fatal("no ready node in the log")
	}
	return sub[1]
}

// TestStreamCLI: `micro call --stream` carries messages both ways to the greeter's
// WebSocket endpoint through two micro processes (ingress, transport, inbound); a stream
// whose app side dies ends with an error, not a hang.
func TestStreamCLI(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	startMicro(t, baseConfig(reg, greeterService("greeter", 1, "")))
	caller := startMicro(t, baseConfig(reg, ""))
	nodesOf(t, caller, "greeter", 1)
	addr := strings.TrimPrefix(caller.ingress, "http://")

	out, err := exec.Command(bins.micro, "call", "--stream", "-address", addr, "-timeout", "2s", "greeter", "Greeter.Stream", "Ada", "Bo").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"greeting":"Hello, Ada!"`) || !strings.Contains(string(out), `"greeting":"Hello, Bo!"`) || !strings.Contains(string(out), `"seq":2`) {
		t.Fatalf("micro call --stream: %v\n%s", err, out)
	}

	start := time.Now()
	out, err = exec.Command(bins.micro, "call", "--stream", "-address", addr, "greeter", "Greeter.Stream", `{"die":true}`).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "app closed the stream") {
		t.Fatalf("a stream whose app died: %v\n%s", err, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the broken stream took %v to end", took)
	}
}
