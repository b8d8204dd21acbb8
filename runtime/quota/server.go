package quota

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// ServerOptions configures a Server. The zero value is usable.
type ServerOptions struct {
	// Lease is how long a grant holds; 0 means DefaultLease.
	Lease time.Duration
	// Refresh is how often clients renew; 0 means DefaultRefresh. It must be shorter than
	// Lease.
	Refresh time.Duration
	// Learning is how long a new master grants no more than clients report they hold; 0
	// means Lease, the longest a lease from the previous master may still run. A negative
	// value turns learning off, which is safe only for a server that never had a
	// predecessor.
	Learning time.Duration
	// MaxClients bounds the clients of one resource; 0 means DefaultMaxClients. A new
	// client past it is refused (Grant.Code 503) rather than let the table grow.
	MaxClients int
	// Now returns the current time; tests set it. Nil means time.Now.
	Now func() time.Time
}

// Server is the logic of a quota master: it knows the resources and their capacities,
// keeps a table of the clients of each resource with their wants, what they were granted
// and when that expires, and answers lease requests. It does no I/O; Service serves it.
// It is safe for concurrent use.
type Server struct {
	lease, refresh, learning time.Duration
	maxClients               int
	now                      func() time.Time

	mu         sync.Mutex
	resources  map[string]*resource
	learnUntil time.Time
}

// resource is the state of one resource.
type resource struct {
	capacity float64
	clients  map[string]*holder
	// wants holds the wants of every client, sorted ascending, for waterLevel.
	wants []float64
	// sumHas is Σ has over the clients, kept as grants change and summed afresh at every
	// sweep and every resumEvery grants, so that rounding does not drift.
	sumHas  float64
	updates int
	// level caches waterLevel(wants, capacity) while levelOK.
	level   float64
	levelOK bool
	// earliest is a time no client expires before; sweep does nothing until it.
	earliest time.Time
	// learned is Σ has that clients reported when they first asked during this term's
	// learning period: the part of the capacity they are known to hold. What the clients
	// not heard from yet may hold is at most capacity − learned.
	learned float64
}

// holder is one client of a resource.
type holder struct {
	wants, has float64
	expiry     time.Time
}

// resumEvery is how many grants may update sumHas between exact sums.
const resumEvery = 1024

// NewServer returns a server of the given resources (name → capacity in calls per second)
// that starts in learning mode, as a new master does.
func NewServer(capacities map[string]float64, opts ServerOptions) (*Server, error) {
	s := &Server{
		lease: opts.Lease, refresh: opts.Refresh, learning: opts.Learning,
		maxClients: opts.MaxClients, now: opts.Now,
		resources: make(map[string]*resource),
	}
	if s.lease == 0 {
		s.lease = DefaultLease
	}
	if s.refresh == 0 {
		s.refresh = DefaultRefresh
	}
	if s.learning == 0 {
		s.learning = s.lease
	}
	if s.maxClients == 0 {
		s.maxClients = DefaultMaxClients
	}
	if s.now == nil {
		s.now = time.Now
	}
	switch {
	case s.lease < time.Millisecond:
		return nil, fmt.Errorf("quota server: lease %v is shorter than 1ms", s.lease)
	case s.refresh < time.Millisecond || s.refresh >= s.lease:
		return nil, fmt.Errorf("quota server: refresh %v must be at least 1ms and shorter than the lease (%v)", s.refresh, s.lease)
	case s.maxClients < 0:
		return nil, fmt.Errorf("quota server: max clients %d is negative", s.maxClients)
	}
	if err := s.SetResources(capacities); err != nil {
		return nil, err
	}
	s.StartTerm()
	return s, nil
}

// SetResources replaces the resources and their capacities, live. A resource that is gone
// ends its leases: its clients are refused (Grant.Code 404) when they renew. A capacity
// lowered takes effect as clients renew; no grant made after it pushes the total over it.
func (s *Server) SetResources(capacities map[string]float64) error {
	for name, c := range capacities {
		if err := checkName(name); err != nil {
			return fmt.Errorf("quota resource %q: name %w", name, err)
		}
		if err := checkRate(c); err != nil {
			return fmt.Errorf("quota resource %q: capacity %w", name, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.resources {
		if _, ok := capacities[name]; !ok {
			delete(s.resources, name)
		}
	}
	for name, c := range capacities {
		if r := s.resources[name]; r != nil {
			r.capacity, r.levelOK = c, false
			continue
		}
		s.resources[name] = &resource{capacity: c, clients: make(map[string]*holder)}
	}
	return nil
}

// StartTerm forgets every client and enters learning mode: Service calls it each time this
// instance becomes master, as what it knew from an earlier term is stale.
func (s *Server) StartTerm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.resources {
		*r = resource{capacity: r.capacity, clients: make(map[string]*holder)}
	}
	s.learnUntil = time.Time{}
	if s.learning > 0 {
		s.learnUntil = s.now().Add(s.learning)
	}
}

// Learning reports whether the server is in learning mode: for the learning period after
// a term starts, it grants a client no more than the capacity that clients reported they
// hold and that is not granted again since, so that leases the previous master gave out
// and that have not been renewed here yet are never granted twice.
func (s *Server) Learning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now().Before(s.learnUntil)
}

// Lease answers a lease request, one Grant per requested resource. It returns an error,
// wrapping ErrBadRequest, only for a request that fails Validate.
//
// A client's grant is its fair share (the max-min fair split of the capacity over the
// wants of the resource's clients), but no more than the capacity minus what the other
// clients hold now, so that the total never exceeds the capacity while others still hold
// more than their new share: what it misses, it gets when it renews after them. In
// learning mode the bound is what clients are known to hold instead of the capacity, and a
// new client that holds nothing is refused (503), so that it keeps its own safe share until
// what is free is known. A
// request with wants 0 releases the client's lease. The cost of a grant is O(log n) in
// the clients of the resource, and O(n) when their wants changed and exceed the capacity.
func (s *Server) Lease(req *Request) (*Response, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return s.answer(req), nil
}

// answer answers a valid request.
func (s *Server) answer(req *Request) *Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	learning := now.Before(s.learnUntil)
	resp := &Response{Resources: make([]Grant, len(req.Resources))}
	for i, rr := range req.Resources {
		r := s.resources[rr.Name]
		if r == nil {
			resp.Resources[i] = Grant{Name: rr.Name, Code: http.StatusNotFound, Error: fmt.Sprintf("unknown resource %q", rr.Name)}
			continue
		}
		resp.Resources[i] = s.grant(r, now, learning, req.Client, rr)
	}
	return resp
}

// grant answers client's request for r.
func (s *Server) grant(r *resource, now time.Time, learning bool, client string, rr ResourceRequest) Grant {
	g := Grant{Name: rr.Name, LeaseMS: s.lease.Milliseconds(), RefreshMS: s.refresh.Milliseconds()}
	r.sweep(now)
	h := r.clients[client]
	if rr.Wants == 0 {
		if h != nil {
			r.drop(client, h)
		}
		return g
	}
	if h == nil && learning && rr.Has == 0 {
		// What is free is unknown until the clients of the last master have reported what
		// they hold: a client that holds nothing keeps its own safe share meanwhile.
		return Grant{Name: rr.Name, Code: http.StatusServiceUnavailable,
			Error: fmt.Sprintf("the quota service's master is new and learns what its clients hold until %s; use the safe share", s.learnUntil.Format(time.RFC3339))}
	}
	if h == nil {
		if len(r.clients) >= s.maxClients {
			return Grant{Name: rr.Name, Code: http.StatusServiceUnavailable,
				Error: fmt.Sprintf("resource %q has %d clients, the most it may have", rr.Name, len(r.clients))}
		}
		h = &holder{wants: rr.Wants}
		r.clients[client] = h
		r.wants = sortedInsert(r.wants, rr.Wants)
		r.levelOK = false
		if learning {
			r.learned += min(rr.Has, r.capacity)
		}
	} else if h.wants != rr.Wants {
		r.wants = sortedInsert(sortedRemove(r.wants, h.wants), rr.Wants)
		h.wants = rr.Wants
		r.levelOK = false
	}
	others := max(r.sumHas-h.has, 0)
	var rate float64
	if learning {
		rate = min(rr.Wants, min(r.capacity, r.learned)-others)
	} else {
		rate = min(rr.Wants, r.fairLevel(), r.capacity-others)
	}
	rate = max(rate, 0)
	r.sumHas += rate - h.has
	h.has = rate
	h.expiry = now.Add(s.lease)
	if r.earliest.IsZero() {
		r.earliest = h.expiry
	}
	if r.updates++; r.updates >= resumEvery {
		r.resum()
	}
	g.Rate = rate
	return g
}

// fairLevel returns the water level of r's wants over its capacity.
func (r *resource) fairLevel() float64 {
	if !r.levelOK {
		r.level, r.levelOK = waterLevel(r.wants, r.capacity), true
	}
	return r.level
}

// sweep drops the clients whose grant expired by now. It walks the table only when one of
// them may have.
func (r *resource) sweep(now time.Time) {
	if r.earliest.IsZero() || now.Before(r.earliest) {
		return
	}
	r.earliest = time.Time{}
	for id, h := range r.clients {
		if !now.Before(h.expiry) {
			r.drop(id, h)
			continue
		}
		if r.earliest.IsZero() || h.expiry.Before(r.earliest) {
			r.earliest = h.expiry
		}
	}
	r.resum()
}

// drop removes a client from r.
func (r *resource) drop(id string, h *holder) {
	delete(r.clients, id)
	r.wants = sortedRemove(r.wants, h.wants)
	r.sumHas = max(r.sumHas-h.has, 0)
	r.levelOK = false
}

// resum sums the clients' has afresh.
func (r *resource) resum() {
	var sum float64
	for _, h := range r.clients {
		sum += h.has
	}
	r.sumHas, r.updates = sum, 0
}

// holdings returns what each client of resource holds, for tests.
func (s *Server) holdings(name string) map[string]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]float64)
	if r := s.resources[name]; r != nil {
		for id, h := range r.clients {
			out[id] = h.has
		}
	}
	return out
}
