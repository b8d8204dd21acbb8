package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// countRefServices declares, behind one micro, the counter app twice: service "count"
// (named name, so that FAULT_DIR/name injects its faults) and service "ref" (named
// name+"-ref", which no fault names): two services on the same nodes, so that calls to
// "ref" measure what "count" would do without the fault, at the same time. Count.Safe is
// declared idempotent on both; Count.Once is not.
func countRefServices(name, countFile, faultDir string) string {
	return counterService(name, countFile, faultDir) + fmt.Sprintf(`
[services.ref]
command = [%q]
health = "/health"
idempotent = ["Count.Safe"]
env = { COUNT_FILE = %q, COUNT_NAME = %q, FAULT_DIR = %q }
`, bins.counter, countFile+"-ref", name+"-ref", faultDir)
}

// timed is a caller that keeps its connections to a micro's ingress, so that the latency
// it measures is micro's, not new connections'.
type timed struct {
	c    *http.Client
	base string
	body string
}

func newTimed(m *micro) *timed {
	return &timed{c: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, base: m.ingress, body: "{}"}
}

// call posts to /{service}/{endpoint} with call id id and the budget, and returns the
// status (0 when no answer came) and how long the call took.
func (c *timed) call(service, endpoint, id, budget string) (int, time.Duration) {
	status, _, d := c.do(service, endpoint, id, budget)
	return status, d
}

// do is call, and returns the answer's body too (or the error when none came).
func (c *timed) do(service, endpoint, id, budget string) (int, []byte, time.Duration) {
	req, err := http.NewRequest(http.MethodPost, c.base+"/"+service+"/"+endpoint, strings.NewReader(c.body))
	if err != nil {
		return 0, []byte(err.Error()), 0
	}
	req.Header.Set("X-Call-Id", id)
	req.Header.Set("Micro-Timeout", budget)
	start := time.Now()
	resp, err := c.c.Do(req)
	if err != nil {
		return 0, []byte(err.Error()), time.Since(start)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, body, time.Since(start)
}

// sample is what a run of calls measured.
type sample struct {
	calls, ok int
	lat       []time.Duration
}

func (s *sample) add(status int, d time.Duration) {
	s.calls++
	if status == http.StatusOK {
		s.ok++
	}
	s.lat = append(s.lat, d)
}

// quantile returns the q-th quantile of the latencies.
func (s *sample) quantile(q float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	l := slices.Clone(s.lat)
	slices.Sort(l)
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

func (s *sample) String() string {
	return fmt.Sprintf("%d calls, %.2f%% ok, p50 %v, p99 %v", s.calls, 100*float64(s.ok)/float64(max(s.calls, 1)),
		s.quantile(0.5).Round(10*time.Microsecond), s.quantile(0.99).Round(10*time.Microsecond))
}

// interleave makes n rounds of calls with workers goroutines; each round calls every
// target once, in turn, so that all targets see the same conditions. A target's call gets
// the round's id.
func interleave(n, workers int, targets ...func(id string) (int, time.Duration)) []*sample {
	out := make([]*sample, len(targets))
	for i := range out {
		out[i] = &sample{}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for round := range next {
				for i, f := range targets {
					status, d := f(fmt.Sprintf("r%d-%d", round, i))
					mu.Lock()
					out[i].add(status, d)
					mu.Unlock()
				}
			}
		})
	}
	for round := range n {
		next <- round
	}
	close(next)
	wg.Wait()
	return out
}

// startNodes starts three micros that front count and ref, sharing a registry, and waits
// until each service has its three nodes.
func startNodes(t *testing.T, reg, countFile, faults string) []*micro {
	t.Helper()
	var nodes []*micro
	for _, name := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, startMicro(t, baseConfig(reg, countRefServices(name, countFile, faults))))
	}
	eventually(t, 20*time.Second, func() error {
		s := mustServices(t, nodes[0])
		if len(s["count"]) != 3 || len(s["ref"]) != 3 {
			return fmt.Errorf("nodes: %v", s)
		}
		return nil
	})
	return nodes
}

// TestHungNodeAdaptive: one of three nodes accepts calls and never answers. With a 250ms
// budget, calls to an endpoint declared safe to repeat still succeed (≥ 99.9%), and their
// p99 stays within twice that of the same calls to healthy nodes at the same time: an
// attempt on the hung node costs a hedge delay or an attempt timeout learned from the
// endpoint's latencies, not the budget, and the node is soon ejected.
func TestHungNodeAdaptive(t *testing.T) {
	reg, faults := t.TempDir(), t.TempDir()
	countFile := filepath.Join(t.TempDir(), "count")
	startNodes(t, reg, countFile, faults)
	caller := startMicro(t, baseConfig(reg, ""))
	c := newTimed(caller)
	eventually(t, 20*time.Second, func() error {
		if s := mustServices(t, caller); len(s["count"]) != 3 || len(s["ref"]) != 3 {
			return fmt.Errorf("nodes: %v", s)
		}
		return nil
	})
	call := func(service string) func(string) (int, time.Duration) {
		return func(id string) (int, time.Duration) { return c.call(service, "Count.Safe", id, "250ms") }
	}
	// The caller learns both endpoints' latencies.
	warm := interleave(300, 4, call("count"), call("ref"))
	t.Logf("warm-up: count %s; ref %s", warm[0], warm[1])

	if err := os.WriteFile(filepath.Join(faults, "n3"), []byte("hang"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := interleave(2000, 4, call("count"), call("ref"))
	hung, healthy := got[0], got[1]
	t.Logf("one node hung: %s; healthy nodes: %s", hung, healthy)
	if rate := float64(hung.ok) / float64(hung.calls); rate < 0.999 {
		t.Errorf("%.2f%% of calls succeeded with a hung node, want at least 99.9%%", 100*rate)
	}
	if p99, base := hung.quantile(0.99), healthy.quantile(0.99); p99 > 2*base {
		t.Errorf("p99 with a hung node %v, want at most twice the healthy p99 (%v)", p99, base)
	}
}

// TestHedgingCutsP99: with one of three nodes answering slowly 5% of the time, hedging
// at least halves the p99 of calls safe to repeat, against a caller with hedging off at
// the same time, for at most 10% more executions; calls to an endpoint not declared safe
// run once each, hedging or not.
func TestHedgingCutsP99(t *testing.T) {
	reg, faults := t.TempDir(), t.TempDir()
	countFile := filepath.Join(t.TempDir(), "count")
	startNodes(t, reg, countFile, faults)
	// Round robin keeps the slow node's share of calls at a third; p2c would steer away
	// from it after each slow answer, and there would be less left to hedge.
	rr := func(hedge bool) string {
		return strings.Replace(baseConfig(reg, ""), "[client]", fmt.Sprintf("[client]\nstrategy = \"round_robin\"\nhedge = { enabled = %t }", hedge), 1)
	}
	on, off := startMicro(t, rr(true)), startMicro(t, rr(false))
	con, coff := newTimed(on), newTimed(off)
	for _, m := range []*micro{on, off} {
		eventually(t, 20*time.Second, func() error {
			if s := mustServices(t, m); len(s["count"]) != 3 {
				return fmt.Errorf("nodes: %v", s)
			}
			return nil
		})
	}
	if err := os.WriteFile(filepath.Join(faults, "n3"), []byte("slow 0.05 200ms"), 0o644); err != nil {
		t.Fatal(err)
	}
	safe := func(c *timed, prefix string) func(string) (int, time.Duration) {
		return func(id string) (int, time.Duration) { return c.call("count", "Count.Safe", prefix+id, "2s") }
	}
	once := func(c *timed, prefix string) func(string) (int, time.Duration) {
		return func(id string) (int, time.Duration) { return c.call("count", "Count.Once", prefix+id, "2s") }
	}
	interleave(200, 4, safe(con, "warm-on-"), safe(coff, "warm-off-"))
	got := interleave(1500, 4, safe(con, "on-"), safe(coff, "off-"), once(con, "once-"))
	hedged, plain, onceS := got[0], got[1], got[2]
	execs := executions(t, countFile)
	extra, onceRuns := 0, 0
	for id, n := range execs {
		switch {
		case strings.HasPrefix(id, "on-"):
			extra += n - 1
		case strings.HasPrefix(id, "once-"):
			onceRuns += n
			if n != 1 {
				t.Errorf("call %s to Count.Once ran %d times, want once", id, n)
			}
		}
	}
	load := float64(extra) / float64(hedged.calls)
	t.Logf("hedging on: %s, %.1f%% extra executions; off: %s; Count.Once with hedging on: %s, %d executions",
		hedged, 100*load, plain, onceS, onceRuns)
	if hedged.ok != hedged.calls || plain.ok != plain.calls || onceS.ok != onceS.calls {
		t.Errorf("failed calls: on %s, off %s, once %s", hedged, plain, onceS)
	}
	if on, off := hedged.quantile(0.99), plain.quantile(0.99); on*2 > off {
		t.Errorf("p99 with hedging %v, without %v: want at most half", on, off)
	}
	if load > 0.10 {
		t.Errorf("hedging added %.1f%% executions, want at most 10%%", 100*load)
	}
	if onceRuns != onceS.calls {
		t.Errorf("%d calls to Count.Once ran %d times", onceS.calls, onceRuns)
	}
}
