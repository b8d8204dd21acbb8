package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/host/wasm"
)

// rateLimit is a server-side rate limit on greeter: burst calls, then almost nothing.
func rateLimit(path string, burst int) string {
	return fmt.Sprintf(`
[wrappers.ratelimit]
path = %q
services = ["greeter"]
[wrappers.ratelimit.config]
rate = 0.01
burst = %d
key = "service"
`, path, burst)
}

// TestRateLimitWrapper: a burst above the limit gets exactly burst 200s and 429s for the
// rest, with Retry-After; a live edit of the limit, and then removing the wrapper, apply.
func TestRateLimitWrapper(t *testing.T) {
	t.Parallel()
	base := baseConfig(t.TempDir(), greeterService("greeter", 1, ""))
	wasmPath := filepath.Join(t.TempDir(), "ratelimit.wasm")
	bin, err := os.ReadFile(bins.ratelimit)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wasmPath, bin, 0o644); err != nil {
		t.Fatal(err)
	}
	withLimit := func(burst int) string {
		return strings.Replace(base, "[server]\n", "[server]\nwrappers = [\"ratelimit\"]\n", 1) + rateLimit(wasmPath, burst)
	}
	m := startMicro(t, withLimit(5))
	burst := func(n int) (ok, limited int) {
		t.Helper()
		for range n {
			r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
			switch {
			case err != nil:
				t.Fatal(err)
			case r.status == 200:
				ok++
			case r.status == 429:
				limited++
				e := r.json(t)
				if e["code"] != float64(429) || !strings.Contains(fmt.Sprint(e["detail"]), "rate limit") || r.header.Get("Retry-After") == "" {
					t.Fatalf("429 reply: %v %s", r.header, r.body)
				}
			default:
				t.Fatalf("status %d: %s", r.status, r.body)
			}
		}
		return ok, limited
	}
	if ok, limited := burst(12); ok != 5 || limited != 7 {
		t.Fatalf("burst of 12 with burst = 5: %d ok, %d limited; want 5 and 7", ok, limited)
	}

	// A rebuilt .wasm is reloaded live: a fresh instance, a full bucket.
	tmp := wasmPath + ".new"
	if err := os.WriteFile(tmp, bin, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, wasmPath); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		if !strings.Contains(m.logs.String(), "wrapper files changed; reloading") {
			return fmt.Errorf("the rebuilt .wasm is not reloaded yet")
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		if ok, _ := burst(1); ok != 1 {
			return fmt.Errorf("the reloaded wrapper still limits")
		}
		return nil
	})
	if ok, limited := burst(12); ok != 4 || limited != 8 {
		t.Fatalf("after the reload (one call used): %d ok, %d limited; want 4 and 8", ok, limited)
	}

	// A larger burst, live: the wrapper is reloaded with a fresh bucket.
	m.writeConfig(withLimit(8))
	eventually(t, 30*time.Second, func() error {
		if ok, _ := burst(1); ok != 1 {
			return fmt.Errorf("the new limit is not in force yet")
		}
		return nil
	})
	if ok, limited := burst(12); ok != 7 || limited != 5 {
		t.Fatalf("after the edit to burst = 8 (one call used): %d ok, %d limited; want 7 and 5", ok, limited)
	}
	// No wrapper: no limit.
	m.writeConfig(base)
	eventually(t, 30*time.Second, func() error {
		if ok, limited := burst(20); limited > 0 || ok != 20 {
			return fmt.Errorf("%d limited after removing the wrapper", limited)
		}
		return nil
	})
}

// breakerConfig is the config of a micro with two greeter instances, which fail while
// failDir holds a file named for them, called through the breaker wrapper (a breaker per
// node and endpoint, opened by 3 faults in a row, probed after 1 s) with one attempt per
// call; extra is added to it.
func breakerConfig(regDir, failDir, extra string) string {
	cfg := baseConfig(regDir, greeterService("greeter", 2, fmt.Sprintf("env = { GREETER_FAIL_DIR = %q }", failDir))+extra)
	return strings.Replace(cfg, "[client]", `[client]
wrappers = ["breaker"]
attempts = 1`, 1) + fmt.Sprintf(`
[wrappers.breaker]
path = %q
[wrappers.breaker.config]
key = "node_endpoint"
consecutive_failures = 3
min_requests = 1000
cooldown = "1s"
`, bins.breaker)
}

// TestBreakerWrapper: breakers count only the nodes' faults, one breaker per node and
// endpoint. A caller's mistakes and the timeouts it chose open none; an endpoint that fails
// on every node opens its breakers while the nodes go on serving their other endpoints. An
// instance made to fail trips its breaker; later calls skip it with no failed call, and it
// closes again after the instance recovers.
func TestBreakerWrapper(t *testing.T) {
	t.Parallel()
	failDir := t.TempDir()
	cfg := breakerConfig(t.TempDir(), failDir, "")
	m := startMicro(t, cfg)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := runLoad(ctx, m, 2, nil)
	l.waitCalls(t, 50)

	// Not the nodes' faults: bad requests, and calls whose caller gave them less time than
	// they need (more than consecutive_failures on one node, whichever it is).
	for range 7 {
		if r, err := m.call("greeter", "Greeter.Hello", `{}`, nil); err != nil || r.status != 400 {
			t.Fatalf("a bad request: %v %d %s, want 400", err, r.status, r.body)
		}
		r, err := m.call("greeter", "Greeter.Sleep", `{"ms": 3000}`, map[string]string{"Micro-Timeout": "100ms"})
		if err != nil || r.status != 504 {
			t.Fatalf("a call that outlives its caller's budget: %v %d %s, want 504", err, r.status, r.body)
		}
	}
	if strings.Contains(m.logs.String(), "-> open") {
		t.Fatalf("a breaker opened on outcomes that were not the nodes' faults:\n%s", m.logs.String())
	}

	// Greeter.Fail fails on every node: its breakers open, one per node, and the nodes go
	// on serving Greeter.Hello to the load.
	eventually(t, 20*time.Second, func() error {
		r, err := m.call("greeter", "Greeter.Fail", `{}`, nil)
		if err != nil {
			return err
		}
		if n := strings.Count(m.logs.String(), "endpoint Greeter.Fail: closed -> open"); n < 2 {
			return fmt.Errorf("%d breakers for Greeter.Fail opened, want 2 (the last call: %d %s)", n, r.status, r.body)
		}
		return nil
	})
	l.mu.Lock()
	seen := maps.Clone(l.seen)
	l.mu.Unlock()
	eventually(t, 20*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, inst := range []string{"greeter-1", "greeter-2"} {
			if l.seen[inst] == seen[inst] {
				return fmt.Errorf("%s served no Greeter.Hello since its breaker for Greeter.Fail opened (served: %v)", inst, l.seen)
			}
		}
		return nil
	})
	l.waitCalls(t, 100)
	l.mu.Lock()
	failures := slices.Clone(l.failures)
	l.mu.Unlock()
	if len(failures) > 0 {
		t.Fatalf("%d calls of Greeter.Hello failed while Greeter.Fail's breakers were open; first: %s", len(failures), failures[0])
	}

	// greeter-1 fails: a few calls fail until its breaker for Greeter.Hello opens, then none.
	if err := os.WriteFile(filepath.Join(failDir, "greeter-1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if !strings.Contains(m.logs.String(), "endpoint Greeter.Hello: closed -> open") {
			return fmt.Errorf("no breaker for Greeter.Hello opened yet")
		}
		return nil
	})
	l.mu.Lock()
	failedAtTrip := len(l.failures)
	seen1 := l.seen["greeter-1"]
	l.mu.Unlock()
	if failedAtTrip == 0 || failedAtTrip > 10 {
		t.Fatalf("%d calls failed before the breaker opened, want 1 to 10 (consecutive_failures = 3, per node and endpoint)", failedAtTrip)
	}
	l.waitCalls(t, 200)
	l.mu.Lock()
	failedAfter := len(l.failures) - failedAtTrip
	served1 := l.seen["greeter-1"] - seen1
	l.mu.Unlock()
	if failedAfter > 3 {
		// A call already past the wrapper when the breaker opened may still fail.
		t.Fatalf("%d calls failed after the breaker opened", failedAfter)
	}
	if served1 != 0 {
		t.Fatalf("greeter-1 served %d calls while failing", served1)
	}

	// greeter-1 recovers: after the cool-down a probe closes the breaker, and it serves again.
	if err := os.Remove(filepath.Join(failDir, "greeter-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.seen["greeter-1"] == seen1 {
			return fmt.Errorf("greeter-1 not serving again")
		}
		return nil
	})

	// A live edit of the breaker's config reloads it under load, failing no call.
	m.writeConfig(strings.Replace(cfg, `cooldown = "1s"`, `cooldown = "2s"`, 1))
	eventually(t, 30*time.Second, func() error {
		if n := strings.Count(m.logs.String(), `msg="wrapper loaded" wrapper=breaker took=`); n < 2 {
			return fmt.Errorf("the breaker is not reloaded yet")
		}
		return nil
	})
	l.waitCalls(t, 100)
	cancel()
	ok, failures, _ := l.wait()
	if len(failures) > failedAtTrip+3 {
		t.Fatalf("%d calls failed in all (of %d); first: %s", len(failures), ok+len(failures), failures[0])
	}
}

// TestGuestFaults: guests that trap, loop and eat memory, on inbound calls: each call gets
// its wrapper's fail-open or fail-closed answer, the log names the wrapper, and micro keeps
// serving with fresh instances.
func TestGuestFaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	guest := func(name string) string {
		out := filepath.Join(dir, name+".wasm")
		if err := wasm.Build(context.Background(), "../host/wasm/testdata/"+name, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	cfg := baseConfig(t.TempDir(), greeterService("greeter", 1, ""))
	cfg = strings.Replace(cfg, "[server]\n", "[server]\nwrappers = [\"trap\", \"loop\", \"bomb\"]\n", 1) + fmt.Sprintf(`
[wrappers.trap]
path = %q
on_trap = "closed"
[wrappers.loop]
path = %q
on_trap = "open"
timeout = "100ms"
[wrappers.bomb]
path = %q
on_trap = "closed"
memory_limit = "32MiB"
`, guest("trap"), guest("loop"), guest("bomb"))
	m := startMicro(t, cfg)
	good := func() {
		t.Helper()
		if r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil); err != nil || r.status != 200 {
			t.Fatalf("a plain call after a fault: %v %d %s", err, r.status, r.body)
		}
	}
	good()
	for _, tc := range []struct {
		header, value string
		status        int
		log           string
	}{
		{"X-Trap", "panic", 503, "trap"},
		{"X-Loop", "1", 200, "loop"},
		{"X-Bomb", "1", 503, "bomb"},
		{"X-Trap", "nil", 503, "trap"},
	} {
		r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{tc.header: tc.value})
		// A fail-closed wrapper answers 503 at the inbound server; the calling micro tries
		// the node again (it is the only one) and then answers 502 with that 503's detail.
		if tc.status == 503 && r.status == 502 {
			r.status = 503
		}
		if err != nil || r.status != tc.status {
			t.Fatalf("%s: %v %d %s, want %d", tc.header, err, r.status, r.body, tc.status)
		}
		if tc.status == 503 && !strings.Contains(string(r.body), "wrapper "+tc.log) {
			t.Errorf("%s: the error does not name the wrapper: %s", tc.header, r.body)
		}
		good()
		good()
	}
	for _, w := range []string{"trap", "loop", "bomb"} {
		if !strings.Contains(m.logs.String(), "wrapper="+w) {
			t.Errorf("the log does not name wrapper %s", w)
		}
	}
}
