package selector

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// mapSource is a Source over a map the test sets.
type mapSource struct {
	mu       sync.Mutex
	services map[string]*registry.Service
	err      error
}

func (m *mapSource) Get(_ context.Context, name string) (*registry.Service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	s, ok := m.services[name]
	if !ok {
		return nil, fmt.Errorf("get service %q: %w", name, registry.ErrNotFound)
	}
	return s, nil
}

// set publishes a new snapshot of name, as a cache does on a change.
func (m *mapSource) set(name string, nodes ...*registry.Node) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.services == nil {
		m.services = make(map[string]*registry.Service)
	}
	m.services[name] = &registry.Service{Name: name, Nodes: nodes}
}

func source(name string, nodes ...*registry.Node) *mapSource {
	s := &mapSource{}
	s.set(name, nodes...)
	return s
}

type nodeOpt func(*registry.Node)

func version(v string) nodeOpt { return func(n *registry.Node) { n.Version = v } }
func zone(z string) nodeOpt {
	return func(n *registry.Node) { n.Metadata = map[string]string{"zone": z} }
}
func endpoints(e ...string) nodeOpt { return func(n *registry.Node) { n.Endpoints = e } }

func mkNode(id string, opts ...nodeOpt) *registry.Node {
	n := &registry.Node{ID: id, Address: id + ":1", Version: "1.0.0"}
	for _, o := range opts {
		o(n)
	}
	return n
}

func mkNodes(n int) []*registry.Node {
	out := make([]*registry.Node, n)
	for i := range out {
		out[i] = mkNode(fmt.Sprintf("n%02d", i))
	}
	return out
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// pick selects and completes at once with the given outcome, returning the node ID.
func pick(t *testing.T, s *Selector, service, endpoint string, tried []string, latency time.Duration, o Outcome) string {
	t.Helper()
	p, err := s.Select(context.Background(), service, endpoint, tried)
	if err != nil {
		t.Fatalf("Select(%q, %q, %v): %v", service, endpoint, tried, err)
	}
	p.Done(latency, o)
	return p.Node().ID
}

// counts picks n times (each completed at once with success) and counts the node IDs.
func counts(t *testing.T, s *Selector, service, endpoint string, n int) map[string]int {
	t.Helper()
	c := make(map[string]int)
	for range n {
		c[pick(t, s, service, endpoint, nil, time.Millisecond, Success)]++
	}
	return c
}

func TestRoundRobinAlternatesAcrossCalls(t *testing.T) {
	src := source("svc", mkNodes(3)...)
	s := New(src, Policy{Strategy: StrategyRoundRobin}, Options{})
	var got []string
	for range 9 {
		got = append(got, pick(t, s, "svc", "", nil, time.Millisecond, Success))
	}
	for i := range got {
		if i >= 1 && got[i] == got[i-1] {
			t.Fatalf("round robin repeated a node: %v", got)
		}
		if i >= 3 && got[i] != got[i-3] {
			t.Fatalf("round robin is not a cycle of 3: %v", got)
		}
	}
	// A new snapshot of the same service does not break the rotation's fairness.
	src.set("svc", mkNodes(3)...)
	c := counts(t, s, "svc", "", 300)
	for id, n := range c {
		if n != 100 {
			t.Fatalf("node %s got %d of 300 calls, want 100: %v", id, n, c)
		}
	}
}

func TestRandomCoversAll(t *testing.T) {
	s := New(source("svc", mkNodes(10)...), Policy{Strategy: StrategyRandom}, Options{})
	c := counts(t, s, "svc", "", 10000)
	if len(c) != 10 {
		t.Fatalf("random picked %d of 10 nodes: %v", len(c), c)
	}
	for id, n := range c {
		// Expected 1000 each; ±30% is over 10 standard deviations.
		if n < 700 || n > 1300 {
			t.Fatalf("node %s got %d of 10000 picks, want about 1000: %v", id, n, c)
		}
	}
}

func TestP2CPrefersFasterNode(t *testing.T) {
	clk := newFakeClock()
	s := New(source("svc", mkNode("fast"), mkNode("slow")), Policy{}, Options{Now: clk.Now})
	latency := map[string]time.Duration{"fast": time.Millisecond, "slow": 100 * time.Millisecond}
	c := make(map[string]int)
	for range 1000 {
		p, err := s.Select(context.Background(), "svc", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		id := p.Node().ID
		c[id]++
		p.Done(latency[id], Success)
		clk.Advance(time.Millisecond)
	}
	// Until both have a sample, an unsampled node costs nothing, so the slow one is
	// tried once or twice; after that the fast one wins every pairwise comparison.
	if c["slow"] > 5 {
		t.Fatalf("p2c picked the slow node %d of 1000 times: %v", c["slow"], c)
	}
}

func TestP2CWeighsInFlight(t *testing.T) {
	clk := newFakeClock()
	s := New(source("svc", mkNode("a"), mkNode("b")), Policy{}, Options{Now: clk.Now})
	// Both sampled: a at 1ms, b at 5ms.
	pa, _ := s.Select(context.Background(), "svc", "", []string{"b"})
	pa.Done(time.Millisecond, Success)
	pb, _ := s.Select(context.Background(), "svc", "", []string{"a"})
	pb.Done(5*time.Millisecond, Success)
	// Ten calls in flight on a make it cost 11ms against b's 5ms.
	var held []Pick
	for range 10 {
		p, _ := s.Select(context.Background(), "svc", "", []string{"b"})
		held = append(held, p)
	}
	if id := pick(t, s, "svc", "", nil, 0, Success); id != "b" {
		t.Fatalf("with 10 calls in flight on a, p2c picked %s, want b", id)
	}
	for _, p := range held {
		p.Done(time.Millisecond, Success)
	}
	if id := pick(t, s, "svc", "", nil, time.Millisecond, Success); id != "a" {
		t.Fatalf("with nothing in flight, p2c picked %s, want a", id)
	}
}

func TestP2CRetriesSlowNodeAfterDecay(t *testing.T) {
	clk := newFakeClock()
	s := New(source("svc", mkNode("fast"), mkNode("slow")), Policy{}, Options{Now: clk.Now})
	pick(t, s, "svc", "", []string{"slow"}, time.Millisecond, Success)
	pick(t, s, "svc", "", []string{"fast"}, time.Second, Success) // one bad sample
	if id := pick(t, s, "svc", "", nil, time.Millisecond, Success); id != "fast" {
		t.Fatalf("picked %s right after slow's bad sample, want fast", id)
	}
	// Fast keeps answering; slow's estimate decays toward zero (decay 10s) until it is
	// cheaper than fast's 1ms, so it gets a call again and its latency is re-learned.
	sawSlow := false
	for range 120 {
		clk.Advance(time.Second)
		if pick(t, s, "svc", "", nil, time.Millisecond, Success) == "slow" {
			sawSlow = true
			break
		}
	}
	if !sawSlow {
		t.Fatal("a node with one old slow sample never got a call again")
	}
}

func TestP2CGivesNewNodesTraffic(t *testing.T) {
	src := source("svc", mkNode("a"), mkNode("b"))
	s := New(src, Policy{}, Options{})
	for range 100 {
		pick(t, s, "svc", "", nil, time.Millisecond, Success)
	}
	src.set("svc", mkNode("a"), mkNode("b"), mkNode("new"))
	if c := counts(t, s, "svc", "", 10); c["new"] == 0 {
		t.Fatalf("a new node got no calls: %v", c)
	}
}

func TestFilters(t *testing.T) {
	src := source("svc",
		mkNode("a", version("1.0.0"), zone("z1"), endpoints("Greeter.Hello", "Greeter.Bye")),
		mkNode("b", version("1.0.0"), zone("z2")),
		mkNode("c", version("2.0.0"), zone("z1"), endpoints("Greeter.Bye")),
	)
	tests := []struct {
		name     string
		route    Route
		endpoint string
		want     []string
	}{
		{"none", Route{}, "", []string{"a", "b", "c"}},
		{"version", Route{Version: "1.0.0"}, "", []string{"a", "b"}},
		{"metadata", Route{Metadata: map[string]string{"zone": "z1"}}, "", []string{"a", "c"}},
		{"version and metadata", Route{Version: "2.0.0", Metadata: map[string]string{"zone": "z1"}}, "", []string{"c"}},
		{"endpoint", Route{}, "Greeter.Hello", []string{"a", "b"}}, // b lists no endpoints: serves any
		{"endpoint and zone", Route{Metadata: map[string]string{"zone": "z1"}}, "Greeter.Bye", []string{"a", "c"}},
		{"missing label", Route{Metadata: map[string]string{"rack": "r1"}}, "", nil},
		{"no such version", Route{Version: "3.0.0"}, "", nil},
		{"endpoint nobody serves", Route{Metadata: map[string]string{"zone": "z1"}}, "Other.Call", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(src, Policy{Strategy: StrategyRoundRobin, Routes: map[string]Route{"svc": tt.route}}, Options{})
			if tt.want == nil {
				_, err := s.Select(context.Background(), "svc", tt.endpoint, nil)
				if !errors.Is(err, ErrNoNodes) {
					t.Fatalf("err = %v, want ErrNoNodes", err)
				}
				return
			}
			c := counts(t, s, "svc", tt.endpoint, 30*len(tt.want))
			if len(c) != len(tt.want) {
				t.Fatalf("picked %v, want exactly %v", c, tt.want)
			}
			for _, id := range tt.want {
				if c[id] != 30 {
					t.Fatalf("picked %v, want %v 30 times each", c, tt.want)
				}
			}
		})
	}
}

func TestRouteForOtherServiceDoesNotApply(t *testing.T) {
	src := source("svc", mkNode("a", version("1")), mkNode("b", version("2")))
	s := New(src, Policy{Strategy: StrategyRoundRobin, Routes: map[string]Route{"other": {Version: "1"}}}, Options{})
	if c := counts(t, s, "svc", "", 10); len(c) != 2 {
		t.Fatalf("a route for another service filtered this one: %v", c)
	}
}

func TestCanaryWeights(t *testing.T) {
	src := source("svc",
		mkNode("s1", version("1.0.0")), mkNode("s2", version("1.0.0")),
		mkNode("c1", version("1.1.0")),
		mkNode("x1", version("0.9.0")), // unlisted: no calls
		mkNode("z1", version("2.0.0")), // weight 0: no calls
	)
	routes := map[string]Route{"svc": {Weights: map[string]int{"1.0.0": 90, "1.1.0": 10, "2.0.0": 0}}}
	for _, strategy := range []string{StrategyP2CEWMA, StrategyRoundRobin, StrategyRandom} {
		t.Run(strategy, func(t *testing.T) {
			s := New(src, Policy{Strategy: strategy, Routes: routes}, Options{})
			c := counts(t, s, "svc", "", 10000)
			stable, canary := c["s1"]+c["s2"], c["c1"]
			if c["x1"] != 0 || c["z1"] != 0 {
				t.Fatalf("unlisted or zero-weight versions got calls: %v", c)
			}
			// Expected 1000 canary calls; the binomial standard deviation is 30.
			if canary < 850 || canary > 1150 || stable+canary != 10000 {
				t.Fatalf("canary got %d and stable %d of 10000, want about 1000 and 9000", canary, stable)
			}
			if c["s1"] == 0 || c["s2"] == 0 {
				t.Fatalf("stable nodes not both used: %v", c)
			}
		})
	}
}

func TestCanaryFallsBackWhenChosenVersionUnavailable(t *testing.T) {
	src := source("svc", mkNode("s1", version("1")), mkNode("c1", version("2")))
	s := New(src, Policy{Routes: map[string]Route{"svc": {Weights: map[string]int{"1": 1, "2": 99}}}}, Options{})
	// The call already tried the canary: its retry goes to the stable version.
	for range 100 {
		if id := pick(t, s, "svc", "", []string{"c1"}, time.Millisecond, Success); id != "s1" {
			t.Fatalf("retry after the canary picked %s, want s1", id)
		}
	}
	// A weighted version with no node at all leaves the weights to the versions present.
	src.set("svc", mkNode("s1", version("1")))
	if c := counts(t, s, "svc", "", 10); c["s1"] != 10 {
		t.Fatalf("with the canary gone, picked %v", c)
	}
	// Only unweighted versions present: nothing may be called.
	src.set("svc", mkNode("x", version("3")))
	if _, err := s.Select(context.Background(), "svc", "", nil); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("err = %v, want ErrNoNodes", err)
	}
}

func TestTriedExclusion(t *testing.T) {
	for _, strategy := range []string{StrategyP2CEWMA, StrategyRoundRobin, StrategyRandom} {
		t.Run(strategy, func(t *testing.T) {
			s := New(source("svc", mkNodes(3)...), Policy{Strategy: strategy}, Options{})
			for range 100 {
				if id := pick(t, s, "svc", "", []string{"n00", "n02"}, time.Millisecond, Success); id != "n01" {
					t.Fatalf("picked %s, want the one untried node n01", id)
				}
			}
			c := make(map[string]int)
			for range 300 {
				c[pick(t, s, "svc", "", []string{"n01", "n00"}, time.Millisecond, Success)]++
				c[pick(t, s, "svc", "", []string{"n02"}, time.Millisecond, Success)]++
			}
			if c["n02"] != 300 || c["n00"]+c["n01"] != 300 {
				t.Fatalf("tried nodes were picked: %v", c)
			}
			// Every candidate tried: pick among all again.
			all := []string{"n00", "n01", "n02"}
			seen := make(map[string]bool)
			for range 300 {
				seen[pick(t, s, "svc", "", all, time.Millisecond, Success)] = true
			}
			if len(seen) != 3 {
				t.Fatalf("with every node tried, picked only %v", seen)
			}
		})
	}
}

type ejectEvent struct {
	service, node, endpoint string
	d                       time.Duration
}

type ejectLog struct {
	mu  sync.Mutex
	got []ejectEvent
}

func (l *ejectLog) record(service, node, endpoint string, d time.Duration) {
	l.mu.Lock()
	l.got = append(l.got, ejectEvent{service, node, endpoint, d})
	l.mu.Unlock()
}

func (l *ejectLog) all() []ejectEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ejectEvent(nil), l.got...)
}

// failEndpointN makes n calls to endpoint on node id of svc that its app fails, steering
// with tried.
func failEndpointN(t *testing.T, s *Selector, nodes []string, id, endpoint string, n int) {
	t.Helper()
	others := slices.DeleteFunc(slices.Clone(nodes), func(o string) bool { return o == id })
	for range n {
		if got := pick(t, s, "svc", endpoint, others, time.Millisecond, EndpointFailure); got != id {
			t.Fatalf("steering a failure to %s picked %s", id, got)
		}
	}
}

// TestEjectionPerEndpoint: a node whose app fails one endpoint is ejected for that endpoint
// only and keeps serving the others; a failure of the node itself ejects it for all.
func TestEjectionPerEndpoint(t *testing.T) {
	clk := newFakeClock()
	log := &ejectLog{}
	ids := []string{"n00", "n01", "n02", "n03"}
	s := New(source("svc", mkNodes(4)...), Policy{Strategy: StrategyRoundRobin}, Options{Now: clk.Now, OnEject: log.record})

	failEndpointN(t, s, ids, "n00", "Greeter.Fail", 5)
	if got := log.all(); len(got) != 1 || got[0] != (ejectEvent{"svc", "n00", "Greeter.Fail", 30 * time.Second}) {
		t.Fatalf("ejections = %v, want n00 for Greeter.Fail for 30s", got)
	}
	for range 40 {
		if id := pick(t, s, "svc", "Greeter.Fail", nil, time.Millisecond, Success); id == "n00" {
			t.Fatal("n00 picked for the endpoint it is ejected for")
		}
	}
	hello := counts(t, s, "svc", "Greeter.Hello", 40)
	if hello["n00"] == 0 {
		t.Fatalf("n00 got no Greeter.Hello call while ejected only for Greeter.Fail: %v", hello)
	}

	// Interleaved successes on other endpoints do not reset an endpoint's failures.
	for range 4 {
		failEndpointN(t, s, ids, "n01", "Greeter.Slow", 1)
		pick(t, s, "svc", "Greeter.Hello", []string{"n00", "n02", "n03"}, time.Millisecond, Success)
	}
	failEndpointN(t, s, ids, "n01", "Greeter.Slow", 1)
	if got := log.all(); len(got) != 2 || got[1] != (ejectEvent{"svc", "n01", "Greeter.Slow", 30 * time.Second}) {
		t.Fatalf("ejections = %v, want n01 for Greeter.Slow next", got)
	}

	// A node failure ejects the node for every endpoint.
	failN(t, s, ids, "n02", 5)
	if got := log.all(); len(got) != 3 || got[2] != (ejectEvent{"svc", "n02", "", 30 * time.Second}) {
		t.Fatalf("ejections = %v, want n02 as a whole next", got)
	}
	for _, ep := range []string{"Greeter.Hello", "Greeter.Fail", "Other.Thing"} {
		if c := counts(t, s, "svc", ep, 40); c["n02"] != 0 {
			t.Fatalf("n02, ejected as a whole, got %s calls: %v", ep, c)
		}
	}

	// The cap counts per endpoint: with n00 out for Greeter.Fail, one more of four may go
	// out for it, and not a third.
	failEndpointN(t, s, ids, "n03", "Greeter.Fail", 5)
	failEndpointN(t, s, ids, "n01", "Greeter.Fail", 5)
	var fail []string
	for _, e := range log.all() {
		if e.endpoint == "Greeter.Fail" || e.endpoint == "" {
			fail = append(fail, e.node)
		}
	}
	if len(fail) != 2 || fail[0] != "n00" || fail[1] != "n02" {
		t.Fatalf("nodes out for Greeter.Fail = %v, want n00 and n02 only (half of 4)", fail)
	}

	// Once the ejection ends, the node serves the endpoint again.
	clk.Advance(31 * time.Second)
	if c := counts(t, s, "svc", "Greeter.Fail", 40); c["n00"] == 0 {
		t.Fatalf("n00 not back for Greeter.Fail after its ejection ended: %v", c)
	}
}

// TestEndpointHealthBounded: endpoint names come from callers; the health kept per node for
// them stays bounded however many fail.
func TestEndpointHealthBounded(t *testing.T) {
	s := New(source("svc", mkNodes(2)...), Policy{Strategy: StrategyRoundRobin}, Options{})
	for i := range 10 * maxEndpoints {
		pick(t, s, "svc", fmt.Sprintf("Junk.%d", i), nil, time.Millisecond, EndpointFailure)
	}
	svc := (*s.services.Load())["svc"]
	svc.mu.Lock()
	defer svc.mu.Unlock()
	for id, st := range svc.nodes {
		if n := len(*st.endpoints.Load()); n > maxEndpoints {
			t.Errorf("node %s keeps the health of %d endpoints, more than %d", id, n, maxEndpoints)
		}
	}
}

// failN makes n failed calls on node id of svc, steering with tried.
func failN(t *testing.T, s *Selector, nodes []string, id string, n int) {
	t.Helper()
	var others []string
	for _, o := range nodes {
		if o != id {
			others = append(others, o)
		}
	}
	for range n {
		if got := pick(t, s, "svc", "", others, time.Millisecond, NodeFailure); got != id {
			t.Fatalf("steering a failure to %s picked %s", id, got)
		}
	}
}

func available(t *testing.T, s *Selector, id string, n int) bool {
	t.Helper()
	for range n {
		if pick(t, s, "svc", "", nil, time.Millisecond, Success) == id {
			return true
		}
	}
	return false
}

func TestEjectionGrowsAndCaps(t *testing.T) {
	clk := newFakeClock()
	ids := []string{"n00", "n01", "n02", "n03"}
	log := &ejectLog{}
	s := New(source("svc", mkNodes(4)...), Policy{
		Strategy: StrategyRoundRobin,
		Ejection: Ejection{ConsecutiveFailures: 3, Base: 30 * time.Second, Max: 70 * time.Second},
	}, Options{Now: clk.Now, OnEject: log.record})

	// A success resets the count: 2 failures, a success, 2 failures eject nothing.
	succeed := func() { pick(t, s, "svc", "", []string{"n01", "n02", "n03"}, time.Millisecond, Success) }
	failN(t, s, ids, "n00", 2)
	succeed()
	failN(t, s, ids, "n00", 2)
	if len(log.all()) != 0 {
		t.Fatalf("ejected without consecutive failures: %v", log.all())
	}
	succeed()

	want := []time.Duration{30 * time.Second, 60 * time.Second, 70 * time.Second, 70 * time.Second}
	for i, d := range want {
		failN(t, s, ids, "n00", 3)
		got := log.all()
		if len(got) != i+1 || got[i] != (ejectEvent{"svc", "n00", "", d}) {
			t.Fatalf("ejection %d: OnEject calls %v, want the last to be n00 for %v", i+1, got, d)
		}
		if available(t, s, "n00", 40) {
			t.Fatalf("ejection %d: n00 picked while ejected", i+1)
		}
		// Even when every other node was tried, an ejected node is not picked.
		if id := pick(t, s, "svc", "", []string{"n01", "n02", "n03"}, time.Millisecond, Success); id == "n00" {
			t.Fatalf("ejection %d: the ejected node was picked as the only untried one", i+1)
		}
		clk.Advance(d - time.Second)
		if available(t, s, "n00", 40) {
			t.Fatalf("ejection %d: n00 back before %v", i+1, d)
		}
		clk.Advance(2 * time.Second)
		if !available(t, s, "n00", 40) {
			t.Fatalf("ejection %d: n00 not back after %v", i+1, d)
		}
	}

	// After staying in for Max, the out-time starts over at Base.
	clk.Advance(71 * time.Second)
	failN(t, s, ids, "n00", 3)
	if got := log.all(); got[len(got)-1].d != 30*time.Second {
		t.Fatalf("after a long healthy spell the ejection lasted %v, want 30s", got[len(got)-1].d)
	}
}

func TestEjectionMaxPercent(t *testing.T) {
	clk := newFakeClock()
	log := &ejectLog{}
	s := New(source("svc", mkNode("a"), mkNode("b")), Policy{}, Options{Now: clk.Now, OnEject: log.record})
	ids := []string{"a", "b"}
	failN(t, s, ids, "a", 5)
	// a is out; every call now goes to b, and b fails too.
	for range 20 {
		pick(t, s, "svc", "", nil, time.Millisecond, NodeFailure)
	}
	if got := log.all(); len(got) != 1 || got[0].node != "a" {
		t.Fatalf("ejections = %v, want only a: never more than half of 2 nodes", got)
	}
	if id := pick(t, s, "svc", "", nil, time.Millisecond, Success); id != "b" {
		t.Fatalf("picked %s, want b", id)
	}

	// A single-node service never ejects its node.
	one := New(source("svc", mkNode("solo")), Policy{}, Options{Now: clk.Now, OnEject: log.record})
	for range 20 {
		pick(t, one, "svc", "", nil, time.Millisecond, NodeFailure)
	}
	if got := log.all(); len(got) != 1 {
		t.Fatalf("ejections = %v; the only node of a service was ejected", got)
	}
}

func TestEjectionCapUnderConcurrency(t *testing.T) {
	log := &ejectLog{}
	s := New(source("svc", mkNodes(10)...), Policy{Strategy: StrategyRandom}, Options{OnEject: log.record})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				p, err := s.Select(context.Background(), "svc", "", nil)
				if err != nil {
					t.Error(err)
					return
				}
				p.Done(time.Millisecond, NodeFailure)
			}
		})
	}
	wg.Wait()
	if got := log.all(); len(got) != 5 {
		t.Fatalf("%d ejections of 10 always-failing nodes within the base out-time, want exactly 5: %v", len(got), got)
	}
}

func TestSetPolicyKeepsState(t *testing.T) {
	clk := newFakeClock()
	log := &ejectLog{}
	src := source("svc", mkNode("a"), mkNode("b"), mkNode("c"))
	s := New(src, Policy{Strategy: StrategyRoundRobin}, Options{Now: clk.Now, OnEject: log.record})
	failN(t, s, []string{"a", "b", "c"}, "a", 5)
	if len(log.all()) != 1 {
		t.Fatalf("a not ejected: %v", log.all())
	}
	// b is slow, c is fast.
	pick(t, s, "svc", "", []string{"a", "c"}, 100*time.Millisecond, Success)
	pick(t, s, "svc", "", []string{"a", "b"}, time.Millisecond, Success)

	if err := s.SetPolicy(Policy{Strategy: StrategyP2CEWMA}); err != nil {
		t.Fatal(err)
	}
	// The ejection survives the update, and the latencies learned under round robin steer p2c.
	for range 50 {
		if id := pick(t, s, "svc", "", nil, time.Millisecond, Success); id != "c" {
			t.Fatalf("after SetPolicy picked %s, want c (a ejected, b slow)", id)
		}
	}

	// A bad policy is refused and the running one stays.
	err := s.SetPolicy(Policy{Strategy: "fastest"})
	if err == nil || !strings.Contains(err.Error(), `"fastest"`) {
		t.Fatalf("SetPolicy(bad strategy) = %v, want an error naming it", err)
	}
	if id := pick(t, s, "svc", "", nil, time.Millisecond, Success); id != "c" {
		t.Fatalf("after a refused SetPolicy picked %s, want c", id)
	}

	// A route added live applies at once.
	if err := s.SetPolicy(Policy{Routes: map[string]Route{"svc": {Version: "none"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Select(context.Background(), "svc", "", nil); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("err = %v, want ErrNoNodes under the new route", err)
	}
}

func TestStateSurvivesSnapshotsAndIsDropped(t *testing.T) {
	clk := newFakeClock()
	log := &ejectLog{}
	src := source("svc", mkNode("a"), mkNode("b"), mkNode("c"))
	s := New(src, Policy{}, Options{Now: clk.Now, OnEject: log.record})
	failN(t, s, []string{"a", "b", "c"}, "a", 5)

	// A new snapshot with the same nodes keeps a ejected.
	src.set("svc", mkNode("a"), mkNode("b"), mkNode("c"))
	if available(t, s, "a", 40) {
		t.Fatal("ejection lost across a snapshot change")
	}
	// a leaves the registry; its state is kept for a while, then dropped.
	src.set("svc", mkNode("b"), mkNode("c"))
	pick(t, s, "svc", "", nil, 0, Success)
	clk.Advance(forgetAfter + time.Second)
	src.set("svc", mkNode("b"), mkNode("c"))
	pick(t, s, "svc", "", nil, 0, Success)
	svc := (*s.services.Load())["svc"]
	svc.mu.Lock()
	_, kept := svc.nodes["a"]
	n := len(svc.nodes)
	svc.mu.Unlock()
	if kept || n != 2 {
		t.Fatalf("state of a node gone for %v still kept (%d nodes)", forgetAfter, n)
	}
}

func TestErrors(t *testing.T) {
	src := source("svc", mkNode("a", version("1")))
	s := New(src, Policy{Routes: map[string]Route{"svc": {Version: "2"}}}, Options{})
	ctx := context.Background()

	if _, err := s.Select(ctx, "unknown", "", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("unknown service: err = %v, want registry.ErrNotFound", err)
	}
	_, err := s.Select(ctx, "svc", "", nil)
	if !errors.Is(err, ErrNoNodes) || errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("filtered out: err = %v, want ErrNoNodes", err)
	}
	src.set("empty")
	if _, err := s.Select(ctx, "empty", "", nil); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("service without nodes: err = %v, want ErrNoNodes", err)
	}
	src.mu.Lock()
	src.err = errors.New("registry down")
	src.mu.Unlock()
	if _, err := s.Select(ctx, "svc", "", nil); err == nil || errors.Is(err, ErrNoNodes) {
		t.Fatalf("source error: err = %v, want it passed through", err)
	}
	// A zero Pick is inert.
	var p Pick
	p.Done(time.Second, NodeFailure)
	if p.Node() != nil {
		t.Fatal("zero Pick has a node")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		p    Policy
		want string // substring of the error; empty means valid
	}{
		{Policy{}, ""},
		{Policy{Strategy: "round_robin", EWMADecay: time.Second}, ""},
		{Policy{Strategy: "fastest"}, `"fastest"`},
		{Policy{EWMADecay: -1}, "ewma decay"},
		{Policy{Ejection: Ejection{ConsecutiveFailures: -1}}, "consecutive failures"},
		{Policy{Ejection: Ejection{MaxPercent: 101}}, "max percent"},
		{Policy{Ejection: Ejection{Base: time.Minute, Max: time.Second}}, "less than base"},
		{Policy{Routes: map[string]Route{"svc": {Strategy: "x"}}}, `route "svc"`},
		{Policy{Routes: map[string]Route{"svc": {Weights: map[string]int{"1": -1}}}}, `version "1"`},
		{Policy{Routes: map[string]Route{"svc": {Weights: map[string]int{"1": 0}}}}, "all 0"},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Validate(%+v) = %v, want nil", tt.p, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Validate(%+v) = %v, want an error containing %s", tt.p, err, tt.want)
		}
	}
	// New with an invalid policy falls back to the defaults rather than failing calls.
	s := New(source("svc", mkNode("a")), Policy{Strategy: "fastest"}, Options{})
	if id := pick(t, s, "svc", "", nil, 0, Success); id != "a" {
		t.Fatalf("picked %s", id)
	}
}

func TestConcurrentSelectDone(t *testing.T) {
	src := source("svc", mkNodes(5)...)
	s := New(src, Policy{}, Options{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				ep := []string{"", "A.Get", "B.Get"}[i%3]
				p, err := s.Select(context.Background(), "svc", ep, nil)
				if err != nil {
					t.Error(err)
					return
				}
				p.Done(time.Duration(i%7)*time.Millisecond, Outcome(i%13%3))
				if g == 0 && i%100 == 0 {
					src.set("svc", mkNodes(5)...)
					_ = s.SetPolicy(Policy{Strategy: []string{"", StrategyRandom, StrategyRoundRobin}[i%3]})
				}
			}
		})
	}
	wg.Wait()
	svc := (*s.services.Load())["svc"]
	svc.mu.Lock()
	defer svc.mu.Unlock()
	for id, st := range svc.nodes {
		if n := st.inflight.Load(); n != 0 {
			t.Errorf("node %s has %d calls in flight after all were done", id, n)
		}
	}
}

func TestDecayFactor(t *testing.T) {
	const decay = float64(10 * time.Second)
	for _, dt := range []time.Duration{-time.Second, 0, time.Nanosecond, time.Microsecond, time.Millisecond,
		100 * time.Millisecond, 156 * time.Millisecond, 157 * time.Millisecond, time.Second, time.Minute} {
		want := 1.0
		if dt > 0 {
			want = math.Exp(-float64(dt) / decay)
		}
		if got := decayFactor(int64(dt), decay); math.Abs(got-want) > 1e-8 {
			t.Errorf("decayFactor(%v) = %v, want %v", dt, got, want)
		}
	}
}
