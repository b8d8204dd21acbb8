package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/backoff"
	"github.com/microhost/micro/runtime/registry"
)

// Member says how to reach one instance of the quota service. It is the value a candidate
// campaigns with, as JSON {"node": ..., "address": ...}.
type Member struct {
	// Node is the instance's node ID in the registry.
	Node string `json:"node"`
	// Address is host:port where the instance accepts calls.
	Address string `json:"address"`
}

// validate checks m.
func (m Member) validate() error {
	if m.Node == "" {
		return errors.New("node is empty")
	}
	if _, _, err := net.SplitHostPort(m.Address); err != nil {
		return fmt.Errorf("address %q is not host:port: %w", m.Address, err)
	}
	return nil
}

// ServiceOptions configures a Service. The zero value is usable.
type ServiceOptions struct {
	// Logger receives changes of role (master, follower). Nil discards them.
	Logger *slog.Logger
	// Now returns the current time; tests set it. Nil means time.Now.
	Now func() time.Time
	// LeaderTTL is how long a follower trusts what it last read of the master; 0 means
	// 500ms.
	LeaderTTL time.Duration
	// RetryAfter is what a 503 tells clients to wait when no master is known; 0 means 1s.
	RetryAfter time.Duration
}

// Service serves quota from one micro: its instances elect a master through the registry;
// the master answers lease requests with its Server, and the others redirect clients to it.
// Run campaigns; Handle serves calls. It is safe for concurrent use.
type Service struct {
	server     *Server
	log        *slog.Logger
	now        func() time.Time
	leaderTTL  time.Duration
	retryAfter time.Duration

	running atomic.Bool
	// onRole, when set (by tests, before Run), is called after each change of role.
	onRole func(master bool)
	// campaign is what Run was given, for followers to look the master up; nil before Run.
	campaign atomic.Pointer[campaign]
	// lead is the leadership held, or nil.
	lead atomic.Pointer[leadership]

	mu       sync.Mutex // guards the master cache
	cached   *leaderRead
	fetching chan struct{} // closed when a lookup in flight ends; nil when none is
}

// campaign is what Run campaigns with.
type campaign struct {
	elector registry.Elector
	name    string
	self    Member
}

// leadership boxes a registry.Leadership for an atomic pointer.
type leadership struct{ registry.Leadership }

// leaderRead is one lookup of the master.
type leaderRead struct {
	at     time.Time
	master Member
	err    error // registry.ErrNoLeader, or why the lookup failed
}

// NewService returns a Service that answers leases with server while it is master.
func NewService(server *Server, opts ServiceOptions) *Service {
	s := &Service{server: server, log: opts.Logger, now: opts.Now, leaderTTL: opts.LeaderTTL, retryAfter: opts.RetryAfter}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.leaderTTL <= 0 {
		s.leaderTTL = 500 * time.Millisecond
	}
	if s.retryAfter <= 0 {
		s.retryAfter = time.Second
	}
	return s
}

// Run campaigns for the leadership of name with self as its value, until ctx ends. While
// it leads, this instance is the master, and each leadership won starts a new term of the
// Server (learning mode). When the leadership is lost, it follows and campaigns again. At
// the end of ctx it resigns a leadership it holds, and returns nil. Run may be called only
// once at a time.
func (s *Service) Run(ctx context.Context, elector registry.Elector, name string, self Member) error {
	if elector == nil {
		return errors.New("quota service: no elector")
	}
	if name == "" {
		return errors.New("quota service: empty election name")
	}
	if err := self.validate(); err != nil {
		return fmt.Errorf("quota service: member: %w", err)
	}
	value, err := json.Marshal(self)
	if err != nil {
		return fmt.Errorf("quota service: encode member: %w", err)
	}
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("quota service: already running")
	}
	defer s.running.Store(false)
	s.campaign.Store(&campaign{elector: elector, name: name, self: self})
	defer s.campaign.Store(nil)

	s.log.Info("quota: following; campaigning for master", "election", name, "node", self.Node)
	failures := 0
	for {
		lead, err := elector.Campaign(ctx, name, string(value))
		if err == nil && lead == nil {
			err = errors.New("the elector returned no leadership")
		}
		if ctx.Err() != nil {
			if err == nil && lead != nil {
				s.resign(ctx, lead)
			}
			return nil
		}
		if err != nil {
			wait := backoff.Jitter(backoff.Exp(100*time.Millisecond, 5*time.Second, failures))
			failures++
			s.log.Warn("quota: campaign for master failed; trying again", "election", name, "err", err, "wait", wait)
			if !backoff.Sleep(ctx, wait) {
				return nil
			}
			continue
		}
		failures = 0
		s.server.StartTerm()
		s.forgetMaster()
		s.lead.Store(&leadership{lead})
		s.log.Info("quota: became master", "election", name, "node", self.Node, "learning", max(s.server.learning, 0))
		s.roleChanged(true)
		select {
		case <-lead.Lost():
			s.lead.Store(nil)
			s.forgetMaster()
			s.log.Warn("quota: lost the master role; following", "election", name, "node", self.Node)
			s.roleChanged(false)
		case <-ctx.Done():
			s.lead.Store(nil)
			s.resign(ctx, lead)
			return nil
		}
	}
}

// roleChanged tells the test hook.
func (s *Service) roleChanged(master bool) {
	if s.onRole != nil {
		s.onRole(master)
	}
}

// resign gives lead up, within a short time of its own as ctx has ended.
func (s *Service) resign(ctx context.Context, lead registry.Leadership) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := lead.Resign(rctx); err != nil {
		s.log.Warn("quota: resign the master role", "err", err)
		return
	}
	s.log.Info("quota: resigned the master role")
}

// Leading reports whether this instance is the master now.
func (s *Service) Leading() bool {
	l := s.lead.Load()
	if l == nil {
		return false
	}
	select {
	case <-l.Lost():
		return false
	default:
		return true
	}
}

// Handle serves one call to the quota service's endpoint with its request body. It
// returns the answer's status and JSON body:
//   - 200 and a Response, from the master;
//   - 307 and a Refusal naming the master's node and address, from another instance;
//   - 503 and a Refusal with retry_after_ms, when no master is known;
//   - 400 and a Refusal naming the bad field, for a bad request; 404 for an endpoint other
//     than Endpoint.
func (s *Service) Handle(ctx context.Context, endpoint string, body []byte) (status int, answer []byte) {
	if endpoint != Endpoint {
		return http.StatusNotFound, newRefusal(http.StatusNotFound, fmt.Sprintf("unknown endpoint %q: the quota service serves %q", endpoint, Endpoint), nil)
	}
	req, err := DecodeRequest(body)
	if err != nil {
		return http.StatusBadRequest, newRefusal(http.StatusBadRequest, err.Error(), nil)
	}
	if s.Leading() {
		b, err := json.Marshal(s.server.answer(req))
		if err != nil { // not reached: grants are finite
			return http.StatusInternalServerError, newRefusal(http.StatusInternalServerError, fmt.Sprintf("encode lease answer: %v", err), nil)
		}
		return http.StatusOK, b
	}
	c := s.campaign.Load()
	if c == nil {
		return s.unavailable("the quota service is not running here")
	}
	read := s.master(ctx, c)
	switch {
	case read.err != nil:
		return s.unavailable(fmt.Sprintf("no quota master is known: %v", read.err))
	case read.master.Node == c.self.Node:
		// The registry names this instance, but it does not lead (yet, or any more).
		return s.unavailable("the quota master is changing")
	}
	m := read.master
	return http.StatusTemporaryRedirect, newRefusal(http.StatusTemporaryRedirect,
		fmt.Sprintf("not the quota master: ask node %s at %s", m.Node, m.Address),
		func(r *Refusal) { r.Node, r.Address = m.Node, m.Address })
}

// unavailable answers 503 with retry_after_ms.
func (s *Service) unavailable(detail string) (int, []byte) {
	return http.StatusServiceUnavailable, newRefusal(http.StatusServiceUnavailable, detail,
		func(r *Refusal) { r.RetryAfterMS = s.retryAfter.Milliseconds() })
}

// master returns the master as last read from the registry, reading it again when the last
// read is older than LeaderTTL. Concurrent callers share one lookup.
func (s *Service) master(ctx context.Context, c *campaign) *leaderRead {
	for {
		s.mu.Lock()
		if r := s.cached; r != nil && s.now().Sub(r.at) < s.leaderTTL {
			s.mu.Unlock()
			return r
		}
		if wait := s.fetching; wait != nil {
			s.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return &leaderRead{err: ctx.Err()}
			}
		}
		done := make(chan struct{})
		s.fetching = done
		s.mu.Unlock()

		r := s.readMaster(ctx, c)

		s.mu.Lock()
		prev := s.cached
		if ctx.Err() == nil { // a lookup cut short by its caller is not the registry's answer
			s.cached = r
		}
		s.fetching = nil
		close(done)
		s.mu.Unlock()
		if r.err == nil && (prev == nil || prev.master != r.master) {
			s.log.Info("quota: following master", "node", r.master.Node, "address", r.master.Address)
		}
		return r
	}
}

// readMaster asks the registry who leads c.name.
func (s *Service) readMaster(ctx context.Context, c *campaign) *leaderRead {
	r := &leaderRead{at: s.now()}
	value, err := c.elector.Leader(ctx, c.name)
	if err != nil {
		if !errors.Is(err, registry.ErrNoLeader) {
			err = fmt.Errorf("look up the quota master: %w", err)
		}
		r.err = err
		return r
	}
	if err := json.Unmarshal([]byte(value), &r.master); err != nil {
		r.err = fmt.Errorf("the quota master's value %.64q is not a member: %w", value, err)
	} else if err := r.master.validate(); err != nil {
		r.err = fmt.Errorf("the quota master's value %.64q: %w", value, err)
	}
	return r
}

// forgetMaster drops what was read of the master, after a change of role.
func (s *Service) forgetMaster() {
	s.mu.Lock()
	s.cached = nil
	s.mu.Unlock()
}
