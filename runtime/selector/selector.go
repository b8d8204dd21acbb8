// Package selector picks the node that serves a call.
//
// A Selector reads a service's nodes from a Source (the registry cache), keeps the nodes that
// pass the route's filters (version, metadata, endpoint), chooses a version by the route's
// canary weights, drops ejected nodes and nodes the call has already tried, and then applies
// a strategy: p2c_ewma (the default), round_robin or random. Every Pick reports back through
// Done, which feeds the latency estimate and outlier ejection.
//
// Failures are counted per node and endpoint: a node whose app fails one endpoint is ejected
// for that endpoint only, and keeps serving the others. A failure of the node itself (it
// cannot be reached, or has no app to serve) counts for the whole node.
//
// On a cache hit, Select and Done allocate nothing.
package selector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// ErrNoNodes is returned by Select when the service is known but none of its nodes passes
// the filters or is available. Callers answer 503.
var ErrNoNodes = errors.New("no available node")

// Source returns the current snapshot of a service. A returned *registry.Service is never
// modified; a change comes as a new pointer. *cache.Cache is a Source.
type Source interface {
	Get(ctx context.Context, name string) (*registry.Service, error)
}

// Options configures a Selector. The zero value is usable.
type Options struct {
	// Logger receives ejections and policy problems. Nil discards them.
	Logger *slog.Logger
	// OnEject, when set, is called each time a node is ejected, with the endpoint it is
	// ejected for ("" for the whole node) and how long it is out. It must not block.
	OnEject func(service, nodeID, endpoint string, d time.Duration)
	// Now returns the current time; tests set it. Nil means time.Now.
	Now func() time.Time
}

// stackCandidates is how many candidates Select keeps without allocating.
const stackCandidates = 32

// forgetAfter is how long the state of a node gone from the registry is kept, in case it
// comes back (a restart, a flapping registration) with its ejection history.
const forgetAfter = 5 * time.Minute

// unsampledPenalty is the cost of a node that has a call in flight but has not yet answered
// one: it gets one call at a time until its latency is known (Finagle).
const unsampledPenalty = float64(time.Hour)

// Selector picks nodes. It is safe for concurrent use.
type Selector struct {
	src     atomic.Pointer[sourceBox]
	log     *slog.Logger
	onEject func(service, nodeID, endpoint string, d time.Duration)
	clock   func() int64 // monotonic nanoseconds, always ≥ 1

	pol atomic.Pointer[policy]

	mu       sync.Mutex                          // serializes writers of services
	services atomic.Pointer[map[string]*service] // replaced, never modified
}

// New returns a selector that reads nodes from src and picks them by p. An invalid p is
// logged and replaced by the defaults; callers that load p from a file check it first with
// Policy.Validate.
func New(src Source, p Policy, opts Options) *Selector {
	s := &Selector{log: opts.Logger, onEject: opts.OnEject}
	s.SetSource(src)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if now := opts.Now; now != nil {
		base := now()
		s.clock = func() int64 { return int64(now().Sub(base)) + 1 }
	} else {
		base := time.Now()
		s.clock = func() int64 { return int64(time.Since(base)) + 1 }
	}
	empty := make(map[string]*service)
	s.services.Store(&empty)
	if err := s.SetPolicy(p); err != nil {
		s.log.Error("invalid selector policy; using the defaults", "err", err)
		def, _ := compile(Policy{})
		s.pol.Store(def)
	}
	return s
}

// sourceBox holds a Source for an atomic pointer.
type sourceBox struct{ Source }

// SetSource makes src the source of every later Select, as when micro switches registries.
// The state kept per node ID carries over, so nodes that the new source also lists keep
// their latency estimates and ejections.
func (s *Selector) SetSource(src Source) { s.src.Store(&sourceBox{src}) }

// SetPolicy validates p and makes it the policy of every later Select. The state the
// selector keeps per node (latency estimates, calls in flight, failures, ejections) is kept.
// An invalid p is refused and the current policy stays.
func (s *Selector) SetPolicy(p Policy) error {
	c, err := compile(p)
	if err != nil {
		return err
	}
	s.pol.Store(c)
	return nil
}

// Pick is the node chosen for one attempt of a call. Call Done exactly once when the
// attempt ends.
type Pick struct {
	node     *registry.Node
	st       *nodeState
	svc      *service
	endpoint string
	at       int64 // clock time of the Select
}

// Node returns the chosen node. It is part of a registry snapshot: do not modify it.
func (p Pick) Node() *registry.Node { return p.node }

// Outcome is how an attempt went, as far as the node's health is concerned.
type Outcome uint8

// The outcomes.
const (
	// Success: the node did its part, whatever the call's status. A caller's mistake (a
	// 4xx) or a call that micro refused is a success for the node's health.
	Success Outcome = iota
	// EndpointFailure: the node's app failed the call's endpoint (a 5xx of its own, or no
	// answer in time). It counts against the node for that endpoint only.
	EndpointFailure
	// NodeFailure: the node itself failed (it could not be reached, or had no app to serve
	// the call). It counts against the node for every endpoint.
	NodeFailure
	// Abandoned: the call gave the attempt up before it ended, because another attempt
	// (a hedge) answered first: the node was slower than another node's whole answer.
	// It counts against the node for the endpoint as a failure does, so that a node that
	// hangs is ejected although the hedges hide it from callers; a node that is only
	// sometimes slow is not, since any success resets the count.
	Abandoned
)

// Done reports how the attempt went: its latency, and its outcome. A success resets the
// consecutive failures of the node and of its endpoint; enough failures in a row eject the
// node, for the endpoint or as a whole.
func (p Pick) Done(latency time.Duration, o Outcome) {
	st := p.st
	if st == nil {
		return
	}
	st.inflight.Add(-1)
	pol := p.svc.sel.pol.Load()
	latency = max(latency, 0)
	now := p.at + int64(latency)

	st.observe(float64(latency), now, pol.decay, o != Success)
	var h *health
	switch o {
	case Success:
		st.node.succeeded()
		if h := st.endpointHealth(p.endpoint); h != nil {
			h.succeeded()
		}
		return
	case NodeFailure:
		h = &st.node
	default:
		if h = st.endpointHealth(p.endpoint); h == nil {
			h = p.svc.addEndpoint(st, p.endpoint)
		}
	}
	if h.failures.Add(1) >= int64(pol.ej.ConsecutiveFailures) && h.ejectedUntil.Load() <= now {
		scope := p.endpoint
		if o == NodeFailure {
			scope = ""
		}
		p.svc.eject(st, h, scope, now, pol)
	}
}

// Skip ends an attempt that never reached the node (a wrapper refused it): the call no
// longer counts as in flight, and the node's latency and health are left as they were.
func (p Pick) Skip() {
	if p.st != nil {
		p.st.inflight.Add(-1)
	}
}

// Select picks a node of service for a call to endpoint. tried holds the IDs of the nodes
// this call has already tried; they are avoided while another candidate exists. The error
// matches registry.ErrNotFound when the service is unknown and ErrNoNodes when no node is
// available.
func (s *Selector) Select(ctx context.Context, service, endpoint string, tried []string) (Pick, error) {
	snap, err := s.src.Load().Get(ctx, service)
	if err != nil {
		return Pick{}, err
	}
	if snap == nil {
		return Pick{}, noNodes(service, endpoint)
	}
	svc := s.service(service)
	pol := s.pol.Load()
	v := svc.view.Load()
	if v == nil || v.snap != snap || v.pol != pol {
		v = svc.rebuild(snap, pol)
	}
	now := s.clock()

	var cands []*member
	if g := v.choose(); g != nil && len(tried) == 0 && now >= svc.outUntil.Load() &&
		(endpoint == "" || !g.endpoints) {
		// The common case: nothing to exclude, so the chosen group's members are the
		// candidates as they are.
		cands = g.all
	} else {
		var buf [stackCandidates]*member
		cands = v.candidates(buf[:0], g, endpoint, tried, now)
	}
	var m *member
	switch n := len(cands); {
	case n == 0:
		return Pick{}, noNodes(service, endpoint)
	case n == 1:
		m = cands[0]
	case v.strategy == roundRobin:
		m = cands[(svc.rr.Add(1)-1)%uint64(n)]
	case v.strategy == random:
		m = cands[rand.IntN(n)]
	default: // p2c_ewma: the cheaper of two distinct random candidates
		// Two indexes from one random number: the high and low 32 bits, each scaled
		// to its range by a multiply (Lemire), whose bias is negligible at these n.
		r := rand.Uint64()
		i := int((r >> 32) * uint64(n) >> 32)
		j := int((r & math.MaxUint32) * uint64(n-1) >> 32)
		if j >= i {
			j++
		}
		m = cands[i]
		if b := cands[j]; b.st.cost(now, pol.decay) < m.st.cost(now, pol.decay) {
			m = b
		}
	}
	m.st.inflight.Add(1)
	return Pick{node: m.node, st: m.st, svc: svc, endpoint: endpoint, at: now}, nil
}

func noNodes(service, endpoint string) error {
	if endpoint == "" {
		return fmt.Errorf("select %q: %w", service, ErrNoNodes)
	}
	return fmt.Errorf("select %q for %q: %w", service, endpoint, ErrNoNodes)
}

// service returns the state of the named service, creating it on first use.
func (s *Selector) service(name string) *service {
	if svc := (*s.services.Load())[name]; svc != nil {
		return svc
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := *s.services.Load()
	if svc := m[name]; svc != nil {
		return svc
	}
	svc := &service{name: name, sel: s, nodes: make(map[string]*nodeState)}
	next := maps.Clone(m)
	next[name] = svc
	s.services.Store(&next)
	return svc
}

// service is what the selector keeps for one called service.
type service struct {
	name string
	sel  *Selector
	rr   atomic.Uint64 // round-robin counter, across all calls
	view atomic.Pointer[view]
	// outUntil is the latest end of any of the service's ejections: from then on, no node
	// is ejected and Select skips the check. Only grows; written under mu.
	outUntil atomic.Int64

	mu    sync.Mutex // guards nodes and their ejection history; serializes rebuilds and ejections
	nodes map[string]*nodeState
}

// view is the work Select can do once per snapshot and policy: the route's filters applied
// and the nodes grouped by version for the weights.
type view struct {
	snap     *registry.Service
	pol      *policy
	strategy strategy
	all      []*nodeState // every node of snap, for the ejection cap
	groups   []group      // nodes that pass the route's version and metadata filters
	total    int          // sum of the groups' weights when there is more than one group
}

// group is the candidates of one version (or all candidates, when the route has no weights).
type group struct {
	cum       int // cumulative weight up to and including this group
	members   []member
	all       []*member // pointers to members, the candidates when nothing is excluded
	endpoints bool      // some member lists its endpoints
}

func newGroup(cum int, members []member) group {
	g := group{cum: cum, members: members, all: make([]*member, len(members))}
	for i := range members {
		g.all[i] = &members[i]
		if len(members[i].node.Endpoints) > 0 {
			g.endpoints = true
		}
	}
	return g
}

type member struct {
	node *registry.Node
	st   *nodeState
}

// rebuild makes the view of snap under pol, carrying the per-node state over by node ID.
func (svc *service) rebuild(snap *registry.Service, pol *policy) *view {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if v := svc.view.Load(); v != nil && v.snap == snap && v.pol == pol {
		return v
	}
	r := pol.routes[svc.name]
	v := &view{snap: snap, pol: pol, strategy: pol.strategy}
	if r != nil && r.strategy != inherit {
		v.strategy = r.strategy
	}

	present := make(map[string]bool, len(snap.Nodes))
	byVersion := make(map[string][]member)
	var kept []member
	for _, n := range snap.Nodes {
		if n == nil || present[n.ID] {
			continue
		}
		present[n.ID] = true
		st := svc.nodes[n.ID]
		if st == nil {
			st = &nodeState{id: n.ID}
			svc.nodes[n.ID] = st
		}
		st.goneSince = 0
		v.all = append(v.all, st)
		if !r.admits(n) {
			continue
		}
		kept = append(kept, member{node: n, st: st})
		byVersion[n.Version] = append(byVersion[n.Version], member{node: n, st: st})
	}

	now := svc.sel.clock()
	for id, st := range svc.nodes {
		switch {
		case present[id]:
		case st.goneSince == 0:
			st.goneSince = now
		case now-st.goneSince > int64(forgetAfter):
			delete(svc.nodes, id)
		}
	}

	switch {
	case r == nil || len(r.weights) == 0:
		if len(kept) > 0 {
			v.groups = []group{newGroup(0, kept)}
		}
	default:
		for _, version := range slices.Sorted(maps.Keys(byVersion)) {
			if w := r.weights[version]; w > 0 {
				v.total += w
				v.groups = append(v.groups, newGroup(v.total, byVersion[version]))
			}
		}
	}
	svc.view.Store(v)
	return v
}

// admits reports whether n passes the route's version and metadata filters. A nil route
// admits every node.
func (r *route) admits(n *registry.Node) bool {
	if r == nil {
		return true
	}
	if r.version != "" && n.Version != r.version {
		return false
	}
	for k, want := range r.metadata {
		if got, ok := n.Metadata[k]; !ok || got != want {
			return false
		}
	}
	return true
}

// choose returns the group of the version chosen by weight, or nil when there is none.
func (v *view) choose() *group {
	switch len(v.groups) {
	case 0:
		return nil
	case 1:
		return &v.groups[0]
	}
	r := rand.IntN(v.total)
	g := 0
	for r >= v.groups[g].cum {
		g++
	}
	return &v.groups[g]
}

// candidates appends to dst the nodes Select chooses among: those of group g (or of the
// other groups, when g has none available) that serve endpoint, are not ejected, and were
// not tried. When every such node was tried, tried is ignored.
func (v *view) candidates(dst []*member, g *group, endpoint string, tried []string, now int64) []*member {
	if g == nil {
		return dst
	}
	for pass := range 2 {
		skipTried := pass == 0
		if !skipTried && len(tried) == 0 {
			break
		}
		dst = g.collect(dst, endpoint, tried, skipTried, now)
		if len(dst) > 0 {
			return dst
		}
		for i := range v.groups {
			if o := &v.groups[i]; o != g {
				dst = o.collect(dst, endpoint, tried, skipTried, now)
			}
		}
		if len(dst) > 0 {
			return dst
		}
	}
	return dst
}

func (g *group) collect(dst []*member, endpoint string, tried []string, skipTried bool, now int64) []*member {
	for i := range g.members {
		m := &g.members[i]
		if m.st.out(endpoint, now) {
			continue
		}
		if endpoint != "" && len(m.node.Endpoints) > 0 && !slices.Contains(m.node.Endpoints, endpoint) {
			continue
		}
		if skipTried && slices.Contains(tried, m.node.ID) {
			continue
		}
		dst = append(dst, m)
	}
	return dst
}

// nodeState is what the selector knows about one node, kept across snapshots by node ID.
type nodeState struct {
	id       string
	inflight atomic.Int64
	// ewma is the peak-EWMA latency in nanoseconds (float64 bits) as of stamp, the clock
	// time of the last sample; stamp 0 means no sample yet. Written under mu, read without.
	ewma  atomic.Uint64
	stamp atomic.Int64
	// node is the health of the node as a whole: failures to reach it or to find an app.
	node health
	// endpoints holds the health of each endpoint whose app failed here, at most
	// maxEndpoints of them; the failures of further endpoints share overflow. The map is
	// replaced, never modified, under service.mu.
	endpoints atomic.Pointer[map[string]*health]
	overflow  health

	// Guarded by service.mu:
	goneSince int64 // clock time the node left the registry, 0 while present
}

// maxEndpoints bounds the endpoints whose health a node keeps apart. Endpoint names come
// from callers, so without a bound a caller could grow the map at will.
const maxEndpoints = 64

// health is the failure record of a node, or of one endpoint of a node.
type health struct {
	// ejectedUntil is the clock time the ejection ends; 0 or past means it is in. Written
	// under service.mu.
	ejectedUntil atomic.Int64
	// failures counts consecutive failures; a success resets it.
	failures atomic.Int64

	// Guarded by service.mu:
	ejections int   // ejections so far, for the growing out-time
	lastOut   int64 // when the last ejection ended
}

// succeeded resets the consecutive failures.
func (h *health) succeeded() {
	if h.failures.Load() != 0 { // no write, so no cache-line traffic, while healthy
		h.failures.Store(0)
	}
}

// endpointHealth returns the health kept for endpoint, or nil when there is none.
func (st *nodeState) endpointHealth(endpoint string) *health {
	m := st.endpoints.Load()
	if m == nil {
		return nil
	}
	return (*m)[endpoint]
}

// out reports whether the node is ejected at now, as a whole or for endpoint.
func (st *nodeState) out(endpoint string, now int64) bool {
	if st.node.ejectedUntil.Load() > now {
		return true
	}
	h := st.endpointHealth(endpoint)
	return h != nil && h.ejectedUntil.Load() > now
}

// addEndpoint returns the health of endpoint at st, making it, or the overflow health when
// st keeps maxEndpoints already.
func (svc *service) addEndpoint(st *nodeState, endpoint string) *health {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	old := st.endpoints.Load()
	if old != nil {
		if h := (*old)[endpoint]; h != nil {
			return h
		}
		if len(*old) >= maxEndpoints {
			return &st.overflow
		}
	}
	next := make(map[string]*health, 1)
	if old != nil {
		next = maps.Clone(*old)
	}
	h := new(health)
	next[endpoint] = h
	st.endpoints.Store(&next)
	return h
}

// observe feeds one latency sample into the peak EWMA: a sample above the estimate replaces
// it at once, and a lower one pulls it down with weight 1 - exp(-Δt/decay), where Δt is the
// time since the previous sample. A failed attempt never lowers the estimate, so a node
// that fails fast does not look fast. Concurrent samples are merged with compare-and-swap;
// one may see the other's stamp late, which only shifts its weight slightly.
func (st *nodeState) observe(rtt float64, now int64, decay float64, failed bool) {
	for {
		bits := st.ewma.Load()
		stamp := st.stamp.Load()
		next := rtt
		if stamp != 0 {
			cur := math.Float64frombits(bits)
			switch {
			case rtt > cur:
			case failed:
				next = cur
			default:
				w := decayFactor(now-stamp, decay)
				next = cur*w + rtt*(1-w)
			}
		}
		if st.ewma.CompareAndSwap(bits, math.Float64bits(next)) {
			break
		}
	}
	for {
		stamp := st.stamp.Load()
		if stamp >= now || st.stamp.CompareAndSwap(stamp, now) {
			return
		}
	}
}

// cost is the node's load for p2c: its latency estimate, decayed toward zero for the time
// since its last sample (so a node that was slow once is tried again), times its calls in
// flight plus one. A node with no sample costs nothing while idle, so new nodes get calls,
// and a large penalty while its first call is in flight.
func (st *nodeState) cost(now int64, decay float64) float64 {
	in := max(st.inflight.Load(), 0)
	stamp := st.stamp.Load()
	if stamp == 0 {
		if in == 0 {
			return 0
		}
		return unsampledPenalty + float64(in)
	}
	e := math.Float64frombits(st.ewma.Load()) * decayFactor(now-stamp, decay)
	return e * float64(in+1)
}

// decayFactor returns exp(-dt/decay), or 1 when dt is not positive. Between samples of a
// busy node dt/decay is tiny, and a cubic Taylor polynomial is exact to 1e-8 there at a
// fraction of math.Exp's cost.
func decayFactor(dt int64, decay float64) float64 {
	if dt <= 0 {
		return 1
	}
	x := float64(dt) / decay
	if x < 1.0/64 {
		return 1 - x*(1-x*(0.5-x/6))
	}
	return math.Exp(-x)
}

// eject takes st out of selection, for endpoint or as a whole when endpoint is "", if the
// failures in h still call for it and the service's cap on ejected nodes allows it. The cap
// counts the nodes that are out for the same endpoint (or as a whole).
func (svc *service) eject(st *nodeState, h *health, endpoint string, now int64, pol *policy) {
	svc.mu.Lock()
	v := svc.view.Load()
	out, member := 0, false
	for _, n := range v.all {
		if n == st {
			member = true
		}
		if n.node.ejectedUntil.Load() > now || (endpoint != "" && n.out(endpoint, now)) {
			out++
		}
	}
	if !member || (out+1)*100 > pol.ej.MaxPercent*len(v.all) ||
		h.failures.Load() < int64(pol.ej.ConsecutiveFailures) || h.ejectedUntil.Load() > now {
		svc.mu.Unlock()
		return
	}
	if h.lastOut != 0 && now-h.lastOut >= int64(pol.ej.Max) {
		h.ejections = 0 // in for a while since its last ejection: start over
	}
	h.ejections++
	d := pol.ej.Max
	if h.ejections <= int(pol.ej.Max/pol.ej.Base) {
		d = pol.ej.Base * time.Duration(h.ejections)
	}
	h.ejectedUntil.Store(now + int64(d))
	h.lastOut = now + int64(d)
	svc.outUntil.Store(max(svc.outUntil.Load(), now+int64(d)))
	h.failures.Store(0)
	n := h.ejections
	svc.mu.Unlock()
	if endpoint == "" {
		svc.sel.log.Warn("node ejected", "service", svc.name, "node", st.id, "for", d, "ejections", n)
	} else {
		svc.sel.log.Warn("node ejected for an endpoint", "service", svc.name, "node", st.id, "endpoint", endpoint, "for", d, "ejections", n)
	}
	if f := svc.sel.onEject; f != nil {
		f(svc.name, st.id, endpoint, d)
	}
}
