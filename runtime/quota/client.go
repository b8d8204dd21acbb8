package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/backoff"
	"github.com/microhost/micro/runtime/wrapper"
)

// Caller carries lease requests to the quota service.
type Caller interface {
	// Call sends body to the quota service's lease endpoint: to the instance at address
	// when address is not "", else to any instance the registry lists. It returns the
	// answer's status and body.
	Call(ctx context.Context, address string, body []byte) (status int, answer []byte, err error)
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// ID identifies this micro to the quota service (e.g. its node ID): 1 to MaxNameLen
	// bytes of [A-Za-z0-9._-], the same for the life of the process. Required.
	ID string
	// Caller reaches the quota service. Required.
	Caller Caller
	// Logger receives changes of state: a lease lost, the master changed, the service out
	// of reach and back. Nil discards them.
	Logger *slog.Logger
	// Now returns the current time; tests set it. Nil means time.Now.
	Now func() time.Time
	// CallTimeout bounds one call to the quota service; 0 means 2s.
	CallTimeout time.Duration
}

// Client holds this micro's leases and renews them in the background: it is the
// wrapper.Leases of a micro. Lease is safe for concurrent use and never blocks; Run does
// the renewing.
type Client struct {
	id          string
	caller      Caller
	log         *slog.Logger
	now         func() time.Time
	callTimeout time.Duration

	// entries maps resource names to their state. The map is replaced, never modified, so
	// that Lease reads it without a lock; mu serializes the writers.
	entries atomic.Pointer[map[string]*entry]
	mu      sync.Mutex
	// kick wakes Run when a resource is named for the first time.
	kick chan struct{}

	running                atomic.Bool
	loggedFull, loggedName atomic.Bool
	// onCycle, when set (by tests, before Run), is called after each cycle of Run.
	onCycle func()

	// The rest belongs to Run's goroutine.
	master      string    // the master's address; "" means any instance
	failures    int       // failed exchanges in a row
	retryAt     time.Time // no request before it, after a failure
	unreachable bool      // the last exchange failed
	// lastRefresh and lastLease are the last intervals the server gave, for the resources
	// it has not answered about yet.
	lastRefresh, lastLease time.Duration
}

// entry is the state of one resource. Lease uses its atomics; the rest belongs to Run.
type entry struct {
	name string
	// demand counts the calls reported since the last renewal took them.
	demand atomic.Uint64
	// asked is set by every Lease, and cleared by each renewal.
	asked atomic.Bool
	// rate is the float64 bits of the rate held, or notHeld.
	rate atomic.Uint64

	taken    time.Time // when the demand was last taken, or the entry made
	due      time.Time // when to renew
	leaseEnd time.Time // when the lease held ends, counted from the request's sending
	held     bool
	has      float64 // the rate held
	refresh  time.Duration
	idle     int  // renewals in a row with no Lease in between
	gone     bool // released and forgotten
}

// notHeld is the value of entry.rate when no lease is held: a NaN no rate can be.
const notHeld = ^uint64(0)

// Tuning of the client.
const (
	// headroom and headroomAdd turn a measured demand into wants, so that a client whose
	// demand is steady is not starved by noise.
	headroom    = 1.05
	headroomAdd = 1
	// minWindow is the shortest time a demand is measured over: about the period at which
	// wrappers ask.
	minWindow = 100 * time.Millisecond
	// idleRenewals is how many renewals in a row without a Lease release a resource.
	idleRenewals = 3
	// minRefresh bounds how often a resource is renewed, whatever the server says.
	minRefresh = 100 * time.Millisecond
	// maxLease bounds a lease a server may grant.
	maxLease = time.Hour
	// maxHops bounds the calls of one exchange: one to a remembered master, one to any
	// instance, and redirects.
	maxHops = 4
	// releaseTimeout bounds the release at the end of Run.
	releaseTimeout = time.Second
	// retryBase and retryMax bound the wait after a failed exchange.
	retryBase, retryMax = 250 * time.Millisecond, 5 * time.Second
)

var _ wrapper.Leases = (*Client)(nil)

// NewClient returns a Client. Call Run to have it fetch and renew leases.
func NewClient(opts ClientOptions) (*Client, error) {
	if err := checkName(opts.ID); err != nil {
		return nil, fmt.Errorf("quota client: ID %q: %w", opts.ID, err)
	}
	if opts.Caller == nil {
		return nil, errors.New("quota client: no caller")
	}
	c := &Client{
		id: opts.ID, caller: opts.Caller, log: opts.Logger, now: opts.Now, callTimeout: opts.CallTimeout,
		kick:        make(chan struct{}, 1),
		lastRefresh: DefaultRefresh, lastLease: DefaultLease,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.callTimeout <= 0 {
		c.callTimeout = 2 * time.Second
	}
	empty := make(map[string]*entry)
	c.entries.Store(&empty)
	return c, nil
}

// Lease implements wrapper.Leases: it adds demand to what resource saw since the last
// renewal and returns the rate held for it. A resource named for the first time is asked
// for at once, in the background; until its lease comes, and after it expired, held is
// false. Past MaxResources resources, or for an invalid name, Lease returns (0, false).
func (c *Client) Lease(resource string, demand uint64) (rate float64, held bool) {
	e := (*c.entries.Load())[resource]
	if e == nil {
		if e = c.add(resource); e == nil {
			return 0, false
		}
	}
	if demand != 0 {
		e.demand.Add(demand)
	}
	if !e.asked.Load() {
		e.asked.Store(true)
	}
	bits := e.rate.Load()
	if bits == notHeld {
		return 0, false
	}
	return math.Float64frombits(bits), true
}

// add creates the entry of a resource named for the first time and wakes Run. It returns
// nil when the name is invalid or the client holds MaxResources resources.
func (c *Client) add(name string) *entry {
	if !validName(name) {
		if !c.loggedName.Swap(true) {
			c.log.Error("quota: invalid resource name; no lease for it", "resource", fmt.Sprintf("%.140q", name), "err", checkName(name))
		}
		return nil
	}
	c.mu.Lock()
	old := *c.entries.Load()
	e := old[name]
	if e == nil {
		if len(old) >= MaxResources {
			c.mu.Unlock()
			if !c.loggedFull.Swap(true) {
				c.log.Error("quota: too many resources; no lease for more", "resource", name, "max", MaxResources)
			}
			return nil
		}
		now := c.now()
		e = &entry{name: name, taken: now, due: now}
		e.rate.Store(notHeld)
		next := make(map[string]*entry, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		next[name] = e
		c.entries.Store(&next)
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return e
}

// forget removes entries that Run released.
func (c *Client) forget(gone []*entry) {
	if len(gone) == 0 {
		return
	}
	c.mu.Lock()
	old := *c.entries.Load()
	next := make(map[string]*entry, len(old))
	for k, v := range old {
		next[k] = v
	}
	for _, e := range gone {
		if next[e.name] == e {
			delete(next, e.name)
		}
	}
	c.entries.Store(&next)
	c.mu.Unlock()
	if len(next) < MaxResources {
		c.loggedFull.Store(false)
	}
}

// Run fetches and renews the leases of the resources that Lease was asked about, each at
// the refresh interval the quota service gave, until ctx ends. Then it releases them
// (within a second) and returns nil. Run may be called only once at a time.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("quota client: already running")
	}
	defer c.running.Store(false)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := c.cycle(ctx)
		if c.onCycle != nil {
			c.onCycle()
		}
		var wake <-chan time.Time
		if !next.IsZero() {
			timer.Reset(max(next.Sub(c.now()), 0))
			wake = timer.C
		}
		select {
		case <-ctx.Done():
			c.release(ctx)
			return nil
		case <-c.kick:
		case <-wake:
		}
	}
}

// cycle ends the leases that expired, renews the resources that are due, and returns when
// it next has something to do (zero: nothing until a kick).
func (c *Client) cycle(ctx context.Context) time.Time {
	now := c.now()
	entries := *c.entries.Load()
	c.expire(entries, now)
	if !now.Before(c.retryAt) && ctx.Err() == nil {
		due := false
		for _, e := range entries {
			if !now.Before(e.due) {
				due = true
				break
			}
		}
		if due {
			// Renew what falls due within half an interval too, so that the resources
			// named at different times come to share one request.
			var batch []*entry
			for _, e := range entries {
				if e.due.Before(now.Add(e.refreshOr(c.lastRefresh) / 2)) {
					batch = append(batch, e)
				}
			}
			c.renew(ctx, batch, now)
		}
	}

	var renewAt, expireAt time.Time
	for _, e := range *c.entries.Load() {
		renewAt = earliest(renewAt, e.due)
		if e.held {
			expireAt = earliest(expireAt, e.leaseEnd)
		}
	}
	if !renewAt.IsZero() && renewAt.Before(c.retryAt) {
		renewAt = c.retryAt
	}
	return earliest(renewAt, expireAt)
}

// earliest returns the earlier of a and b, where zero means none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// refreshOr returns e's refresh interval, or def before the server gave one.
func (e *entry) refreshOr(def time.Duration) time.Duration {
	if e.refresh > 0 {
		return e.refresh
	}
	return def
}

// expire ends the leases that ran out by now.
func (c *Client) expire(entries map[string]*entry, now time.Time) {
	for _, e := range entries {
		if e.held && !now.Before(e.leaseEnd) {
			c.drop(e, "the lease expired without renewal")
		}
	}
}

// drop marks e's lease as no longer held, and logs why when it was and why is not "".
func (c *Client) drop(e *entry, why string) {
	if e.held && why != "" {
		c.log.Warn("quota: lease lost", "resource", e.name, "reason", why)
	}
	e.held, e.has = false, 0
	e.rate.Store(notHeld)
}

// renew sends one request for batch and applies the answer.
func (c *Client) renew(ctx context.Context, batch []*entry, now time.Time) {
	req := Request{Client: c.id, Resources: make([]ResourceRequest, len(batch))}
	demands := make([]uint64, len(batch))
	asked := make([]bool, len(batch))
	windows := make([]time.Duration, len(batch))
	var gone []*entry
	for i, e := range batch {
		demands[i] = e.demand.Load()
		asked[i] = e.asked.Load()
		windows[i] = max(now.Sub(e.taken), minWindow)
		rr := ResourceRequest{Name: e.name, Has: e.has}
		if asked[i] || e.idle+1 < idleRenewals {
			rr.Wants = min(float64(demands[i])/windows[i].Seconds()*headroom+headroomAdd, MaxRate)
		} else {
			// Nobody asked about it for several intervals: give it back and forget it.
			e.gone = true
			c.drop(e, "")
			gone = append(gone, e)
		}
		req.Resources[i] = rr
	}
	c.forget(gone)
	body, err := json.Marshal(&req)
	if err != nil { // not reached: names are valid and rates finite
		c.log.Error("quota: encode lease request", "err", err)
		return
	}

	// Give up on the exchange before a lease held ends, so that it ends on time.
	limit := maxHops * c.callTimeout
	for _, e := range *c.entries.Load() {
		if e.held {
			limit = min(limit, e.leaseEnd.Sub(now))
		}
	}
	ectx, cancel := context.WithTimeout(ctx, max(limit, minRefresh))
	sent := c.now()
	resp, retryAfter, err := c.exchange(ectx, body)
	cancel()
	recv := c.now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		c.failures++
		wait := max(retryAfter, backoff.Jitter(backoff.Exp(retryBase, retryMax, c.failures-1)))
		c.retryAt = recv.Add(wait)
		if !c.unreachable {
			c.unreachable = true
			c.log.Warn("quota: the quota service is out of reach; keeping leases until they expire", "err", err, "retry_in", wait)
		}
		return
	}
	if c.unreachable {
		c.unreachable = false
		c.log.Info("quota: the quota service is reachable again")
	}
	c.failures, c.retryAt = 0, time.Time{}

	grants := make(map[string]*Grant, len(resp.Resources))
	for i := range resp.Resources {
		grants[resp.Resources[i].Name] = &resp.Resources[i]
	}
	for i, e := range batch {
		if e.gone {
			continue
		}
		// The demand reported is counted: take it, keeping what came in since.
		if d := demands[i]; d != 0 {
			e.demand.Add(^(d - 1))
		}
		if asked[i] {
			e.asked.CompareAndSwap(true, false)
			e.idle = 0
		} else {
			e.idle++
		}
		e.taken = now
		g := grants[e.name]
		switch {
		case g == nil:
			c.drop(e, "the quota service did not answer for it")
			e.due = recv.Add(e.refreshOr(c.lastRefresh))
		case g.Code != 0 || g.LeaseMS <= 0:
			why := g.Error
			if why == "" {
				why = fmt.Sprintf("refused with code %d", g.Code)
			}
			c.drop(e, why)
			e.due = recv.Add(clampRefresh(time.Duration(g.RefreshMS)*time.Millisecond, c.lastRefresh, c.lastLease))
		default:
			lease := min(time.Duration(g.LeaseMS)*time.Millisecond, maxLease)
			e.refresh = clampRefresh(time.Duration(g.RefreshMS)*time.Millisecond, c.lastRefresh, lease)
			c.lastRefresh, c.lastLease = e.refresh, lease
			e.leaseEnd = sent.Add(lease)
			// A demand measured over a short window (a resource just named) is a poor
			// guess: measure again soon, over a window four times as long, up to the
			// refresh interval.
			e.due = sent.Add(min(e.refresh, max(4*windows[i], minRefresh)))
			if e.due.Before(recv) {
				e.due = recv
			}
			if !e.held {
				c.log.Debug("quota: lease held", "resource", e.name, "rate", g.Rate)
			}
			e.held, e.has = true, g.Rate
			e.rate.Store(math.Float64bits(g.Rate))
		}
	}
}

// clampRefresh bounds a refresh interval from a server: def when it gave none, at least
// minRefresh, and less than the lease it goes with.
func clampRefresh(d, def, lease time.Duration) time.Duration {
	if d <= 0 {
		d = def
	}
	if d >= lease {
		d = lease / 2
	}
	return max(d, minRefresh)
}

// exchange sends body to the quota service: to the master when it is known, following
// redirects, and to any instance when the master cannot be reached. It returns the answer,
// or an error and how long the service asked to wait.
func (c *Client) exchange(ctx context.Context, body []byte) (*Response, time.Duration, error) {
	addr := c.master
	var lastErr error
	for range maxHops {
		cctx, cancel := context.WithTimeout(ctx, c.callTimeout)
		status, answer, err := c.caller.Call(cctx, addr, body)
		cancel()
		if err != nil {
			lastErr = fmt.Errorf("call the quota service at %s: %w", orAny(addr), err)
			if addr != "" && ctx.Err() == nil {
				c.setMaster("", "") // it may be gone: ask any instance
				addr = ""
				continue
			}
			return nil, 0, lastErr
		}
		switch status {
		case http.StatusOK:
			resp, err := decodeResponse(answer)
			if err != nil {
				return nil, 0, fmt.Errorf("quota service at %s: %w", orAny(addr), err)
			}
			return resp, 0, nil
		case http.StatusTemporaryRedirect:
			r := decodeRefusal(answer)
			if r.Address == "" || r.Address == addr {
				return nil, 0, fmt.Errorf("quota service at %s: a redirect to %q", orAny(addr), r.Address)
			}
			c.setMaster(r.Node, r.Address)
			addr = r.Address
			lastErr = fmt.Errorf("quota service: too many redirects (last to %s)", addr)
			continue
		default:
			r := decodeRefusal(answer)
			if addr != "" {
				c.setMaster("", "") // it answers, but not as master: ask any instance next time
			}
			wait := time.Duration(min(max(r.RetryAfterMS, 0), int64(time.Minute/time.Millisecond))) * time.Millisecond
			detail := r.Detail
			if detail == "" {
				detail = fmt.Sprintf("%.200q", answer)
			}
			return nil, wait, fmt.Errorf("quota service at %s: status %d: %s", orAny(addr), status, detail)
		}
	}
	return nil, 0, lastErr
}

// setMaster remembers where the master is; "" forgets it.
func (c *Client) setMaster(node, addr string) {
	if addr == c.master {
		return
	}
	if addr != "" {
		c.log.Info("quota: master changed", "node", node, "address", addr)
	}
	c.master = addr
}

// orAny names an address for errors.
func orAny(addr string) string {
	if addr == "" {
		return "any instance"
	}
	return addr
}

// release gives every lease back, at the end of Run.
func (c *Client) release(ctx context.Context) {
	entries := *c.entries.Load()
	if len(entries) == 0 {
		return
	}
	req := Request{Client: c.id}
	all := make([]*entry, 0, len(entries))
	for _, e := range entries {
		req.Resources = append(req.Resources, ResourceRequest{Name: e.name, Has: e.has})
		// Stop using the share before the server hands it to others.
		e.gone, e.held, e.has = true, false, 0
		e.rate.Store(notHeld)
		all = append(all, e)
	}
	c.forget(all)
	body, err := json.Marshal(&req)
	if err != nil { // not reached: names are valid and rates finite
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if _, _, err := c.exchange(rctx, body); err != nil {
		c.log.Warn("quota: release leases", "err", err)
	}
}
