package status

import (
	"cmp"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/tracing"
)

// Window is the longest span of time the rates and quantiles of a Snapshot cover.
const Window = 10 * time.Second

// minSampleGap is how close two samples of the metrics may be: snapshots asked for more
// often share the last sample.
const minSampleGap = 900 * time.Millisecond

// maxFailed is how many recent failed calls a Snapshot lists.
const maxFailed = 20

// Sources are where a Collector reads what micro keeps. Any may be nil.
type Sources struct {
	// Instance names this micro process.
	Instance string
	// Metrics are micro's Prometheus metrics.
	Metrics prometheus.Gatherer
	// Selector returns the selector's view of the called services' nodes.
	Selector func() []selector.ServiceState
	// Wrappers returns the loaded wrappers' reports, in chain order.
	Wrappers func() []metrics.NamedReport
	// Plugins returns the registry, transport and broker in use, given the problems
	// Health reported (which say how the plugins are).
	Plugins func(problems []string) []Plugin
	// Config returns where the config came from and how its last reload went.
	Config func() Config
	// Health returns "ok" or "degraded", and the problems.
	Health func() (string, []string)
	// Failed returns up to n of the most recent failed traces, newest first.
	Failed func(n int) []tracing.TraceData
	// Now returns the time; nil means time.Now.
	Now func() time.Time
}

// Collector makes Snapshots. It samples the metrics when asked for a snapshot, at most
// about once a second, and keeps the samples of the last Window to compute rates and
// quantiles from: nothing runs while nobody looks. It is safe for concurrent use.
type Collector struct {
	src Sources

	mu      sync.Mutex
	samples []*sample // oldest first, spanning at most Window (and one sample before it)
}

// sample is the counters read at one time.
type sample struct {
	at       time.Time
	services map[string]*counts // by service label
	nodes    map[[2]string]*counts
	routes   map[[3]string]*counts
	wrappers map[[2]string]metrics.NamedReport // by name and side
}

// counts are the counters of one service, node or route at one time.
type counts struct {
	requests, ok    float64
	retries, hedges float64
	ejections       float64
	buckets         []bucket // cumulative, by upper bound
}

// bucket is one cumulative histogram bucket.
type bucket struct{ le, n float64 }

// New returns a Collector that reads src.
func New(src Sources) *Collector {
	if src.Now == nil {
		src.Now = time.Now
	}
	return &Collector{src: src}
}

// Snapshot returns what micro is doing now, with rates over the window up to now.
func (c *Collector) Snapshot() Snapshot {
	now := c.src.Now()
	first, last := c.sample(now)
	s := Snapshot{Time: now, Instance: c.src.Instance, Health: "ok", Services: []Service{}, Routes: []Route{},
		Wrappers: []Wrapper{}, Plugins: []Plugin{}, Failed: []FailedCall{}}
	if first != nil {
		s.Window = last.at.Sub(first.at).Seconds()
	}
	if c.src.Health != nil {
		s.Health, s.Errors = c.src.Health()
	}
	states := map[[3]string][]string{} // reported states by service, node and endpoint
	if c.src.Wrappers != nil {
		for _, w := range c.src.Wrappers() {
			s.Wrappers = append(s.Wrappers, wrapperOf(w, first, now))
			for _, st := range w.States {
				k := [3]string{st.Service, st.Node, st.Endpoint}
				states[k] = append(states[k], st.Value)
			}
		}
	}
	s.Services = c.services(first, last, states)
	for k, cur := range last.routes {
		r := Route{Service: k[0], Endpoint: k[1], Node: k[2], Stats: stats(cur, prior(first, func(p *sample) *counts { return p.routes[k] }), s.Window)}
		s.Routes = append(s.Routes, r)
	}
	slices.SortFunc(s.Routes, func(a, b Route) int {
		return cmp.Or(cmp.Compare(b.RPS, a.RPS), strings.Compare(a.Service, b.Service),
			strings.Compare(a.Endpoint, b.Endpoint), strings.Compare(a.Node, b.Node))
	})
	if c.src.Plugins != nil {
		s.Plugins = c.src.Plugins(s.Errors)
	}
	if c.src.Config != nil {
		s.Config = c.src.Config()
	}
	if c.src.Failed != nil {
		for _, t := range c.src.Failed(maxFailed) {
			s.Failed = append(s.Failed, failedCall(t))
		}
	}
	return s
}

// sample reads the counters, unless the last sample is recent, drops samples that fell
// out of the window, and returns the oldest sample to compare with (nil when there is
// none yet) and the newest.
func (c *Collector) sample(now time.Time) (first, last *sample) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.samples); n > 0 && now.Sub(c.samples[n-1].at) > Window {
		c.samples = c.samples[:0] // nobody looked for a while: rates over that time mislead
	}
	if n := len(c.samples); n == 0 || now.Sub(c.samples[n-1].at) >= minSampleGap || now.Before(c.samples[n-1].at) {
		c.samples = append(c.samples, c.read(now))
	}
	// Keep one sample at or before the window's start, so the window is covered whole.
	for len(c.samples) > 2 && now.Sub(c.samples[1].at) >= Window {
		c.samples = c.samples[1:]
	}
	last = c.samples[len(c.samples)-1]
	if len(c.samples) > 1 {
		first = c.samples[0]
	}
	return first, last
}

// read takes a sample of the counters at now.
func (c *Collector) read(now time.Time) *sample {
	s := &sample{at: now, services: map[string]*counts{}, nodes: map[[2]string]*counts{},
		routes: map[[3]string]*counts{}, wrappers: map[[2]string]metrics.NamedReport{}}
	if c.src.Wrappers != nil {
		for _, w := range c.src.Wrappers() {
			s.wrappers[[2]string{w.Name, w.Side}] = w
		}
	}
	if c.src.Metrics == nil {
		return s
	}
	families, _ := c.src.Metrics.Gather() // a partial gather is still worth showing
	service := func(m *dto.Metric) *counts { return at(s.services, label(m, "service")) }
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case metrics.NameCalls:
				n := m.GetCounter().GetValue()
				cs := service(m)
				cs.requests += n
				if code := label(m, "code"); len(code) == 3 && code < "500" { // not "other", an unknown status
					cs.ok += n
				}
			case metrics.NameCallDuration:
				service(m).buckets = buckets(m.GetHistogram())
			case metrics.NameEjections:
				service(m).ejections += m.GetCounter().GetValue()
			case metrics.NameAttempts:
				n := m.GetCounter().GetValue()
				svc, ep, node := label(m, "service"), label(m, "endpoint"), label(m, "node")
				nc, rc := at(s.nodes, [2]string{svc, node}), at(s.routes, [3]string{svc, ep, node})
				for _, cs := range []*counts{nc, rc} {
					cs.requests += n
					if label(m, "outcome") == metrics.AttemptOK {
						cs.ok += n
					}
				}
				// A service's requests are its calls, counted apart; its retries and hedges
				// are its attempts', as its nodes' and routes' are.
				for _, cs := range []*counts{at(s.services, svc), nc, rc} {
					switch label(m, "reason") {
					case metrics.ReasonRetry:
						cs.retries += n
					case metrics.ReasonHedge:
						cs.hedges += n
					}
				}
			case metrics.NameAttemptDuration:
				svc, ep, node := label(m, "service"), label(m, "endpoint"), label(m, "node")
				b := buckets(m.GetHistogram())
				nc := at(s.nodes, [2]string{svc, node})
				nc.buckets = addBuckets(nc.buckets, b)
				at(s.routes, [3]string{svc, ep, node}).buckets = b
			}
		}
	}
	return s
}

// at returns m's counts at k, adding them when there are none.
func at[K comparable](m map[K]*counts, k K) *counts {
	cs := m[k]
	if cs == nil {
		cs = &counts{}
		m[k] = cs
	}
	return cs
}

// label returns the value of m's label name.
func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// buckets returns h's cumulative buckets, +Inf last.
func buckets(h *dto.Histogram) []bucket {
	out := make([]bucket, 0, len(h.GetBucket())+1)
	for _, b := range h.GetBucket() {
		out = append(out, bucket{b.GetUpperBound(), float64(b.GetCumulativeCount())})
	}
	return append(out, bucket{math.Inf(1), float64(h.GetSampleCount())})
}

// addBuckets adds b to sum, which has the same bounds or none.
func addBuckets(sum, b []bucket) []bucket {
	if sum == nil {
		return slices.Clone(b)
	}
	for i := range min(len(sum), len(b)) {
		sum[i].n += b[i].n
	}
	return sum
}

// prior returns what get finds in first, or nil when there is no first sample.
func prior(first *sample, get func(*sample) *counts) *counts {
	if first == nil {
		return nil
	}
	return get(first)
}

// stats computes the Stats of cur over window seconds since prev (nil: zero then).
func stats(cur, prev *counts, window float64) Stats {
	if prev == nil {
		prev = &counts{}
	}
	st := Stats{Requests: uint64(cur.requests)}
	if window <= 0 {
		return st
	}
	n := cur.requests - prev.requests
	st.RPS = n / window
	st.Retries = (cur.retries - prev.retries) / window
	st.Hedges = (cur.hedges - prev.hedges) / window
	if n > 0 {
		ok := min(max((cur.ok-prev.ok)/n, 0), 1)
		st.Success = &ok
	}
	delta := make([]bucket, len(cur.buckets))
	for i, b := range cur.buckets {
		delta[i] = b
		if i < len(prev.buckets) {
			delta[i].n -= prev.buckets[i].n
		}
	}
	st.P50, st.P99 = quantile(0.5, delta), quantile(0.99, delta)
	return st
}

// quantile estimates the q-quantile of the observations counted in cumulative buckets b,
// in milliseconds, interpolating linearly within a bucket as Prometheus's
// histogram_quantile does; nil when b counts none.
func quantile(q float64, b []bucket) *float64 {
	if len(b) == 0 || b[len(b)-1].n <= 0 {
		return nil
	}
	rank := q * b[len(b)-1].n
	lower, below := 0.0, 0.0
	for _, bk := range b {
		if bk.n >= rank {
			v := bk.le
			if math.IsInf(v, 1) {
				v = lower // past the last bound: the last bound is the best we know
			} else if in := bk.n - below; in > 0 {
				v = lower + (bk.le-lower)*(rank-below)/in
			}
			ms := v * 1000
			return &ms
		}
		lower, below = bk.le, bk.n
	}
	return nil
}

// services makes the Services of the snapshot: those the selector knows, with their
// nodes, and those the metrics name.
func (c *Collector) services(first, last *sample, states map[[3]string][]string) []Service {
	window := 0.0
	if first != nil {
		window = last.at.Sub(first.at).Seconds()
	}
	byName := map[string]*Service{}
	get := func(name string) *Service {
		svc := byName[name]
		if svc == nil {
			svc = &Service{Name: name, Nodes: []Node{}}
			byName[name] = svc
		}
		return svc
	}
	if c.src.Selector != nil {
		for _, ss := range c.src.Selector() {
			svc := get(ss.Name)
			for _, ns := range ss.Nodes {
				n := Node{ID: ns.ID, Address: ns.Address, Version: ns.Version, InFlight: ns.InFlight,
					Score: float64(ns.Cost) / float64(time.Millisecond), Ejected: ns.Ejected > 0, Gone: ns.Gone}
				longest := ns.Ejected
				for _, ep := range slices.Sorted(maps.Keys(ns.EjectedEndpoints)) {
					n.EjectedEndpoints = append(n.EjectedEndpoints, ep)
					longest = max(longest, ns.EjectedEndpoints[ep])
				}
				n.EjectedFor = longest.Seconds()
				n.Breaker = breaker(states, ss.Name, ns.ID)
				k := [2]string{ss.Name, ns.ID}
				if cur := last.nodes[k]; cur != nil {
					n.Stats = stats(cur, prior(first, func(p *sample) *counts { return p.nodes[k] }), window)
				}
				svc.InFlight += ns.InFlight
				svc.Nodes = append(svc.Nodes, n)
			}
		}
	}
	for name, cur := range last.services {
		if name == "" {
			continue
		}
		svc := get(name)
		svc.Stats = stats(cur, prior(first, func(p *sample) *counts { return p.services[name] }), window)
		svc.Ejections = uint64(cur.ejections)
	}
	out := make([]Service, 0, len(byName))
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		out = append(out, *byName[name])
	}
	return out
}

// breakerRank orders breaker states from best to worst.
var breakerRank = map[string]int{"closed": 1, "half-open": 2, "open": 3}

// breaker returns the worst breaker state reported for node of service: for the node
// (with any endpoint), or for the whole service.
func breaker(states map[[3]string][]string, service, node string) string {
	worst := ""
	consider := func(vs []string) {
		for _, v := range vs {
			if breakerRank[v] > breakerRank[worst] {
				worst = v
			}
		}
	}
	for k, vs := range states {
		if (k[1] == node && (k[0] == "" || k[0] == service)) || (k[1] == "" && k[0] == service) {
			consider(vs)
		}
	}
	return worst
}

// wrapperOf makes the Wrapper of report w at now, with its rates since the sample first.
func wrapperOf(w metrics.NamedReport, first *sample, now time.Time) Wrapper {
	out := Wrapper{Name: w.Name, Side: w.Side, Instances: w.Instances, Calls: w.Calls, Rejects: w.Rejects,
		Faults: w.Faults}
	for _, st := range w.States {
		out.States = append(out.States, WrapperState{Service: st.Service, Endpoint: st.Endpoint, Node: st.Node, Value: st.Value})
	}
	if first == nil {
		return out
	}
	prev, ok := first.wrappers[[2]string{w.Name, w.Side}]
	window := now.Sub(first.at).Seconds()
	if !ok || prev.Calls > w.Calls || window <= 0 { // new, or reloaded since
		return out
	}
	calls := w.Calls - prev.Calls
	out.RPS = float64(calls) / window
	if calls > 0 {
		out.MicrosPerCall = float64(w.Time-prev.Time) / float64(time.Microsecond) / float64(calls)
	}
	return out
}

// failedCall makes the FailedCall of trace t: the service and endpoint of its first span
// that names them (the ingress's, when this micro took the call), the status of its first
// failed span, and the time of its root span, or of all its spans.
func failedCall(t tracing.TraceData) FailedCall {
	f := FailedCall{Trace: t.ID, Time: t.Last}
	var start, end time.Time
	for _, sp := range t.Spans {
		if f.Service == "" && sp.Attrs["micro.service"] != "" {
			f.Service, f.Endpoint = sp.Attrs["micro.service"], sp.Attrs["micro.endpoint"]
		}
		if f.Status == "" && sp.Failed {
			f.Status = sp.Status
		}
		if sp.Parent == "" {
			start, end = sp.Start, sp.End
		}
	}
	if start.IsZero() {
		for _, sp := range t.Spans {
			if start.IsZero() || sp.Start.Before(start) {
				start = sp.Start
			}
			if sp.End.After(end) {
				end = sp.End
			}
		}
	}
	f.Millis = float64(end.Sub(start)) / float64(time.Millisecond)
	return f
}
