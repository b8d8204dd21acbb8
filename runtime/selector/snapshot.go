package selector

import (
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// ServiceState is what a Selector knows of one service's nodes at one moment.
type ServiceState struct {
	Name  string
	Nodes []NodeState // by node ID
}

// NodeState is what a Selector knows of one node at one moment.
type NodeState struct {
	ID, Address, Version string
	// InFlight counts the attempts out to the node.
	InFlight int64
	// Cost is the node's p2c cost: its peak-EWMA latency, decayed since its last sample,
	// times its attempts in flight plus one. Zero until its first sample.
	Cost time.Duration
	// Ejected is how long the node is still out of selection as a whole, zero when in.
	Ejected time.Duration
	// EjectedEndpoints maps each endpoint the node is out for alone to how long it is left.
	EjectedEndpoints map[string]time.Duration
	// Gone is set when the node has left the registry (the selector keeps its state for a
	// while, in case it comes back).
	Gone bool
}

// Snapshot returns the state of the nodes of every service the selector has picked for,
// by service name. It reads what Select and Done keep, and takes each service's lock
// briefly; calls go on meanwhile.
func (s *Selector) Snapshot() []ServiceState {
	m := *s.services.Load()
	out := make([]ServiceState, 0, len(m))
	now := s.clock()
	decay := s.pol.Load().decay
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[name].snapshot(now, decay))
	}
	return out
}

// snapshot returns the state of svc's nodes at clock time now.
func (svc *service) snapshot(now int64, decay float64) ServiceState {
	st := ServiceState{Name: svc.name}
	present := map[string]int{}
	if v := svc.view.Load(); v != nil {
		for _, n := range v.snap.Nodes {
			if n != nil {
				present[n.ID] = len(st.Nodes)
				st.Nodes = append(st.Nodes, NodeState{ID: n.ID, Address: n.Address, Version: n.Version})
			}
		}
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	for id, ns := range svc.nodes {
		i, ok := present[id]
		if !ok {
			i = len(st.Nodes)
			st.Nodes = append(st.Nodes, NodeState{ID: id, Gone: true})
		}
		n := &st.Nodes[i]
		n.InFlight = max(ns.inflight.Load(), 0)
		n.Cost = time.Duration(math.Min(ns.cost(now, decay), math.MaxInt64))
		n.Ejected = left(&ns.node, now)
		if eps := ns.endpoints.Load(); eps != nil {
			for ep, h := range *eps {
				if d := left(h, now); d > 0 {
					if n.EjectedEndpoints == nil {
						n.EjectedEndpoints = map[string]time.Duration{}
					}
					n.EjectedEndpoints[ep] = d
				}
			}
		}
	}
	slices.SortFunc(st.Nodes, func(a, b NodeState) int { return strings.Compare(a.ID, b.ID) })
	return st
}

// left is how long h's ejection has left at now, zero when it is in.
func left(h *health, now int64) time.Duration {
	return time.Duration(max(h.ejectedUntil.Load()-now, 0))
}
