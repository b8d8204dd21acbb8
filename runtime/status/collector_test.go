package status

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/wrapper"
)

// TestSnapshot: rates, success and quantiles come from the metrics over the window, per
// service, node and route; the selector's view, the wrappers' reports and states, and the
// failed traces come as they are.
func TestSnapshot(t *testing.T) {
	m := metrics.New(metrics.Options{KnownService: func(n string) bool { return n == "greeter" }})
	now := time.Unix(1_700_000_000, 0)
	wrappers := []metrics.NamedReport{{Name: "breaker", Side: "client", Report: wrapper.Report{Instances: 1, Calls: 100, Time: 100 * time.Microsecond}}}
	c := New(Sources{
		Instance: "micro-1",
		Metrics:  m.Registry(),
		Now:      func() time.Time { return now },
		Selector: func() []selector.ServiceState {
			return []selector.ServiceState{{Name: "greeter", Nodes: []selector.NodeState{
				{ID: "a", Address: "127.0.0.1:1", InFlight: 2, Cost: 3 * time.Millisecond},
				{ID: "b", Address: "127.0.0.1:2", Ejected: 0, EjectedEndpoints: map[string]time.Duration{"Hello": 20 * time.Second}},
			}}}
		},
		Wrappers: func() []metrics.NamedReport { return wrappers },
		Health:   func() (string, []string) { return "degraded", []string{"registry: down"} },
		Failed: func(n int) []tracing.TraceData {
			t0 := now.Add(-time.Second)
			return []tracing.TraceData{{ID: "4bf92f3577b34da6a3ce929d0e0e4736", Failed: true, Last: now, Spans: []tracing.SpanData{
				{Span: "2", Parent: "1", Name: "attempt", Failed: true, Status: "node answered 500", Start: t0, End: t0.Add(time.Millisecond)},
				{Span: "1", Name: "ingress", Start: t0, End: t0.Add(5 * time.Millisecond), Attrs: map[string]string{"micro.service": "greeter", "micro.endpoint": "Hello"}},
			}}}
		},
	})

	s := c.Snapshot()
	if s.Window != 0 || s.Instance != "micro-1" || s.Health != "degraded" || len(s.Errors) != 1 {
		t.Fatalf("first snapshot: %+v", s)
	}
	if len(s.Services) != 1 || len(s.Services[0].Nodes) != 2 || s.Services[0].InFlight != 2 || s.Services[0].RPS != 0 {
		t.Fatalf("first snapshot's services: %+v", s.Services)
	}

	// 10 s later: 95 calls fine and 5 failed; node a answered 99 attempts (9 retries),
	// node b failed 10 attempts (1 hedge); the wrapper decided 1000 more calls.
	now = now.Add(10 * time.Second)
	for i := range 100 {
		code := 200
		if i < 5 {
			code = 502
		}
		m.Call("greeter", code, time.Duration(i+1)*100*time.Microsecond) // 0.1 to 10 ms
	}
	for i := range 99 {
		reason := metrics.ReasonFirst
		if i < 9 {
			reason = metrics.ReasonRetry
		}
		m.Attempt("greeter", "Hello", "a", reason, metrics.AttemptOK, 2*time.Millisecond, "")
	}
	for i := range 10 {
		reason := metrics.ReasonFirst
		if i == 0 {
			reason = metrics.ReasonHedge
		}
		m.Attempt("greeter", "Hello", "b", reason, metrics.AttemptFailed, 40*time.Millisecond, "")
	}
	m.Eject("greeter", "Hello", "b")
	wrappers = []metrics.NamedReport{{Name: "breaker", Side: "client", Report: wrapper.Report{Instances: 1, Calls: 1100, Time: 2100 * time.Microsecond,
		States: []wrapper.State{{Node: "b", Endpoint: "Hello", Value: "open"}, {Node: "a", Endpoint: "Hello", Value: "closed"}}}}}

	s = c.Snapshot()
	if s.Window != 10 {
		t.Fatalf("window = %v, want 10", s.Window)
	}
	svc := s.Services[0]
	if svc.Requests != 100 || svc.RPS != 10 || *svc.Success != 0.95 || svc.Ejections != 1 {
		t.Errorf("service stats = %+v, want 100 requests, 10/s, 95%% success, 1 ejection", svc.Stats)
	}
	if p50 := *svc.P50; p50 < 2.5 || p50 > 5 {
		t.Errorf("service p50 = %v ms, want between the buckets around 5 ms", p50)
	}
	a, b := svc.Nodes[0], svc.Nodes[1]
	if a.RPS != 9.9 || *a.Success != 1 || !near(a.Retries, 0.9) || a.Score != 3 || a.InFlight != 2 || a.Breaker != "closed" {
		t.Errorf("node a = %+v", a)
	}
	if *a.P99 <= 1 || *a.P99 > 2.5 {
		t.Errorf("node a p99 = %v ms, want in the 1–2.5 ms bucket", *a.P99)
	}
	if b.RPS != 1 || *b.Success != 0 || !near(b.Hedges, 0.1) || b.Ejected || len(b.EjectedEndpoints) != 1 || b.EjectedFor != 20 || b.Breaker != "open" {
		t.Errorf("node b = %+v", b)
	}
	if len(s.Routes) != 2 || s.Routes[0].Node != "a" || s.Routes[0].Endpoint != "Hello" || s.Routes[1].Node != "b" {
		t.Errorf("routes = %+v, want a's then b's", s.Routes)
	}
	w := s.Wrappers[0]
	if w.RPS != 100 || !near(w.MicrosPerCall, 2) || len(w.States) != 2 {
		t.Errorf("wrapper = %+v, want 100/s, 2 µs per call, 2 states", w)
	}
	if len(s.Failed) != 1 {
		t.Fatalf("failed = %+v", s.Failed)
	}
	if f := s.Failed[0]; f.Service != "greeter" || f.Endpoint != "Hello" || f.Status != "node answered 500" || f.Millis != 5 {
		t.Errorf("failed call = %+v", f)
	}

	// Past the window, the old sample is dropped and nothing new came: rates are zero.
	now = now.Add(11 * time.Second)
	s = c.Snapshot()
	now = now.Add(time.Second)
	s = c.Snapshot()
	if svc := s.Services[0]; svc.RPS != 0 || svc.Success != nil || svc.P50 != nil || svc.Requests != 100 {
		t.Errorf("after a quiet window: %+v", svc.Stats)
	}
	if s.Window < 1 || s.Window > 12 {
		t.Errorf("window = %v", s.Window)
	}
}

// TestSnapshotsShareSamples: snapshots asked for within a second share a sample, so any
// number of viewers reads the metrics about once a second.
func TestSnapshotsShareSamples(t *testing.T) {
	now := time.Unix(0, 0)
	reads := 0
	c := New(Sources{Now: func() time.Time { return now }, Wrappers: func() []metrics.NamedReport { reads++; return nil }})
	for range 10 {
		c.Snapshot()
	}
	if reads != 11 { // 1 sample, and the list of each snapshot
		t.Fatalf("%d reads for 10 snapshots in the same instant, want 11", reads)
	}
	for range 100 {
		now = now.Add(500 * time.Millisecond)
		c.Snapshot()
	}
	if n := len(c.samples); n > 13 {
		t.Fatalf("%d samples kept, want about a window's worth", n)
	}
}

func TestQuantile(t *testing.T) {
	b := []bucket{{0.001, 10}, {0.01, 90}, {0.1, 100}, {math.Inf(1), 100}}
	for _, c := range []struct{ q, want float64 }{{0.05, 0.5}, {0.5, 5.5}, {0.95, 55}, {1, 100}} {
		if got := quantile(c.q, b); got == nil || !near(*got, c.want) {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := quantile(0.99, []bucket{{0.1, 0}, {math.Inf(1), 5}}); got == nil || *got != 100 {
		t.Errorf("quantile past the last bound = %v, want the last bound", got)
	}
	if quantile(0.5, []bucket{{0.1, 0}, {math.Inf(1), 0}}) != nil || quantile(0.5, nil) != nil {
		t.Error("quantile of nothing is not nil")
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// BenchmarkSnapshot is what one snapshot costs, with its sample of the metrics, for 10
// services of 8 nodes and 4 endpoints each: the work of one viewer's second. It runs off
// the path of calls.
func BenchmarkSnapshot(b *testing.B) {
	m := metrics.New(metrics.Options{KnownService: func(string) bool { return true }})
	var sel []selector.ServiceState
	for s := range 10 {
		svc := fmt.Sprint("service-", s)
		st := selector.ServiceState{Name: svc}
		for n := range 8 {
			node := fmt.Sprint(svc, "-node-", n)
			st.Nodes = append(st.Nodes, selector.NodeState{ID: node, InFlight: 1, Cost: time.Millisecond})
			for e := range 4 {
				m.Attempt(svc, fmt.Sprint("E", e), node, metrics.ReasonFirst, metrics.AttemptOK, time.Millisecond, "")
			}
		}
		m.Call(svc, 200, time.Millisecond)
		sel = append(sel, st)
	}
	now := time.Unix(0, 0)
	c := New(Sources{Metrics: m.Registry(), Now: func() time.Time { return now }, Selector: func() []selector.ServiceState { return sel }})
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Second)
		c.Snapshot()
	}
}
