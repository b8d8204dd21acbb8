// Package cache keeps the services a caller asks for in memory, so that finding the nodes of
// a service on the path of a call costs a map lookup rather than a registry round trip.
//
// A Cache fetches a service from its registry the first time it is asked for, serves it from
// memory afterwards, refetches it when the registry's Watch reports a change to it or when it
// is older than the TTL, and keeps serving the last good copy while the registry errs.
// Services the registry does not know are remembered for a short while too, so a caller
// hammering an unknown name does not hammer the registry.
//
// A cached *registry.Service is a snapshot: it is never modified once published, and a change
// publishes a new pointer. Callers may keep state derived from a snapshot and compare
// pointers to learn when to recompute it.
package cache

import (
	"context"
	"errors"
	"fmt"
	jitter "github.com/microhost/micro/runtime/backoff"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// Defaults for the zero values of Options.
const (
	DefaultTTL          = 30 * time.Second
	DefaultNegativeTTL  = time.Second
	DefaultFetchTimeout = 5 * time.Second
)

// MaxNegative bounds how many names the cache remembers as unknown to the registry.
const MaxNegative = 1024

// Backoff between attempts to reopen a failed watch.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// retryMax bounds how long a stale entry is served before the next refresh attempt while the
// registry errs.
const retryMax = time.Second

// Options configures a Cache. The zero value is usable.
type Options struct {
	// TTL is how long a service is served from memory before it is refetched. The refetch
	// runs in the background and the cached copy is served meanwhile. Default 30s.
	TTL time.Duration
	// NegativeTTL is how long a registry.ErrNotFound answer is remembered. A watch event
	// for the service forgets it at once. Default 1s.
	NegativeTTL time.Duration
	// FetchTimeout bounds one GetService call to the registry. Default 5s.
	FetchTimeout time.Duration
	// EmptyGrace is how long the last nodes of a service are still served after the
	// registry suddenly lists none, as when a registry restarts empty and its clients have
	// not yet heartbeated. Live nodes re-register within their TTL, so the registry's TTL
	// is the natural value. Zero drops them at once.
	EmptyGrace time.Duration
	// Logger receives warnings about a failing registry. Nil discards them.
	Logger *slog.Logger
}

// Cache is a read-through cache of registry services, kept current by the registry's Watch
// while Run runs. It is safe for concurrent use.
type Cache struct {
	reg          registry.Registry
	ttl          time.Duration
	negTTL       time.Duration
	retry        time.Duration
	fetchTimeout time.Duration
	emptyGrace   time.Duration
	now          func() time.Time
	log          *slog.Logger
	// afterFunc runs f after d and returns a func that cancels it; tests replace it.
	// Entries expire by timer rather than by reading the clock on every Get.
	afterFunc func(d time.Duration, f func()) (stop func() bool)

	// entries is replaced, never modified, so Get reads it without a lock.
	entries atomic.Pointer[map[string]*entry]

	mu        sync.Mutex // serializes writers of entries; guards flights and negatives
	flights   map[string]*flight
	negatives int // negative entries in entries
}

// entry is what the cache holds for one name: a service snapshot, or a negative answer.
// Its fields do not change once it is published, except the atomic flags.
type entry struct {
	svc *registry.Service // nil for a negative entry
	err error             // the error Get returns for a negative entry
	// failing is set while the last refresh failed and svc is served stale.
	failing bool
	// emptySince is when the registry first listed no node of a service whose svc is still
	// served, within Options.EmptyGrace; zero otherwise.
	emptySince time.Time
	// stop cancels the timer that sets expired; called under Cache.mu when the entry is
	// replaced.
	stop func() bool
	// expired is set by a timer when the entry is due for a refresh (positive) or is no
	// longer to be trusted (negative).
	expired atomic.Bool
	// refreshing is set by the Get that started a background refresh of this entry.
	refreshing atomic.Bool
}

// flight is one fetch of a service in progress; concurrent misses for the name wait on it.
type flight struct {
	done chan struct{}
	// again is set, under Cache.mu, when a watch event arrives during the fetch: the
	// answer may predate the change, so the service is fetched once more.
	again bool
	// svc and err are what Get would return once the fetch is published; set before done
	// is closed.
	svc *registry.Service
	err error
}

// New returns a cache over reg. It fetches services as they are asked for; call Run to keep
// them current with the registry's Watch.
func New(reg registry.Registry, opts Options) *Cache {
	c := &Cache{
		reg:          reg,
		ttl:          orDefault(opts.TTL, DefaultTTL),
		negTTL:       orDefault(opts.NegativeTTL, DefaultNegativeTTL),
		fetchTimeout: orDefault(opts.FetchTimeout, DefaultFetchTimeout),
		emptyGrace:   opts.EmptyGrace,
		now:          time.Now,
		log:          opts.Logger,
		afterFunc: func(d time.Duration, f func()) func() bool {
			return time.AfterFunc(d, f).Stop
		},
		flights: make(map[string]*flight),
	}
	c.retry = min(c.ttl, retryMax)
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	empty := make(map[string]*entry)
	c.entries.Store(&empty)
	return c
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Get returns the named service. A cached snapshot is returned as it is, without a copy or
// an allocation; callers must not modify it. On a miss, Get fetches the service from the
// registry and waits for it, sharing the fetch with concurrent callers. A snapshot older than
// the TTL is returned while a background fetch replaces it. When the registry errs, the last
// snapshot keeps being served. A service the registry does not know yields an error that
// matches registry.ErrNotFound.
func (c *Cache) Get(ctx context.Context, name string) (*registry.Service, error) {
	if e := (*c.entries.Load())[name]; e != nil {
		if !e.expired.Load() {
			return e.svc, e.err
		}
		if e.svc != nil {
			if e.refreshing.CompareAndSwap(false, true) {
				c.fetch(name, false)
			}
			return e.svc, nil
		}
		// An expired negative entry: ask the registry again.
	}
	f := c.fetchMiss(name)
	select {
	case <-f.done:
		return f.svc, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("get service %q: %w", name, context.Cause(ctx))
	}
}

// Known reports whether the registry listed nodes of the named service when the cache last
// asked it. It never asks the registry.
func (c *Cache) Known(name string) bool {
	e := (*c.entries.Load())[name]
	return e != nil && e.svc != nil
}

// Services returns the cached snapshots, sorted by name. Negative entries are left out.
func (c *Cache) Services() []*registry.Service {
	m := *c.entries.Load()
	out := make([]*registry.Service, 0, len(m))
	for _, e := range m {
		if e.svc != nil {
			out = append(out, e.svc)
		}
	}
	slices.SortFunc(out, func(a, b *registry.Service) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Run keeps the cache current until ctx ends. It holds a registry Watch open and, for every
// event about a cached service, refetches that service (events are hints; the registry's
// answer is what is cached). Each time a watch opens, Run refetches every cached service,
// since events may have been missed before. When the watch fails, Run reopens it with
// jittered exponential backoff. Run returns when ctx ends.
func (c *Cache) Run(ctx context.Context) {
	backoff := watchBackoffMin
	failing := false
	for {
		start := time.Now()
		w, err := c.reg.Watch(ctx)
		if err == nil {
			if failing {
				c.log.Info("registry watch restored")
				failing = false
			}
			err = c.watch(ctx, w)
		} else {
			err = fmt.Errorf("open registry watch: %w", err)
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > watchBackoffMax {
			backoff = watchBackoffMin // the watch was healthy for a while
		}
		if !failing {
			c.log.Warn("registry watch failed; cached services are refreshed by TTL until it is back",
				"err", err)
			failing = true
		}
		d := jitter.Jitter(backoff)
		backoff = min(backoff*2, watchBackoffMax)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watch refreshes every cached service, then feeds w's events to the cache until the
// watch fails or ctx ends.
func (c *Cache) watch(ctx context.Context, w registry.Watcher) error {
	defer w.Stop()
	stop := context.AfterFunc(ctx, w.Stop)
	defer stop()
	c.refreshAll()
	for {
		ev, err := w.Next()
		if err != nil {
			return fmt.Errorf("registry watch: %w", err)
		}
		if ev.Service != "" {
			c.hint(ev.Service)
		}
	}
}

// hint handles a watch event about name: a cached snapshot is refetched, a negative entry
// is forgotten so the next Get asks the registry, and an uncached name is ignored.
func (c *Cache) hint(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := (*c.entries.Load())[name]
	switch {
	case e == nil:
	case e.svc == nil:
		c.storeLocked(name, nil, 0)
	default:
		c.fetchLocked(name, true)
	}
}

// refreshAll refetches every cached service and forgets every negative entry.
func (c *Cache) refreshAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := *c.entries.Load()
	next := make(map[string]*entry, len(m))
	for name, e := range m {
		if e.svc == nil {
			e.stop()
			continue
		}
		next[name] = e
		c.fetchLocked(name, true)
	}
	c.negatives = 0
	c.entries.Store(&next)
}

// fetch starts a fetch of name unless one is in flight, and returns the flight.
func (c *Cache) fetch(name string, again bool) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetchLocked(name, again)
}

// fetchMiss is fetch for a Get that missed: a flight that finished between the miss and
// taking c.mu has published its answer, which is returned rather than fetched again.
func (c *Cache) fetchMiss(name string) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := (*c.entries.Load())[name]; e != nil && !e.expired.Load() {
		f := &flight{done: make(chan struct{}), svc: e.svc, err: e.err}
		close(f.done)
		return f
	}
	return c.fetchLocked(name, false)
}

// fetchLocked is fetch with c.mu held. When again is set and a fetch is in flight, the
// service is fetched once more after it, because the in-flight answer may predate a change.
func (c *Cache) fetchLocked(name string, again bool) *flight {
	if f := c.flights[name]; f != nil {
		if again {
			f.again = true
		}
		return f
	}
	f := &flight{done: make(chan struct{})}
	c.flights[name] = f
	go c.runFlight(name, f)
	return f
}

// runFlight fetches name from the registry, publishes the answer, and wakes the waiters.
// The fetch does not use any caller's context: a caller that gives up must not fail the
// others waiting on the same fetch.
func (c *Cache) runFlight(name string, f *flight) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), c.fetchTimeout)
		svc, err := c.reg.GetService(ctx, name)
		cancel()

		c.mu.Lock()
		svc, err = c.publishLocked(name, svc, err)
		if f.again {
			f.again = false
			c.mu.Unlock()
			continue
		}
		delete(c.flights, name)
		f.svc, f.err = svc, err
		c.mu.Unlock()
		close(f.done)
		return
	}
}

// publishLocked records the registry's answer for name and returns what Get now returns.
func (c *Cache) publishLocked(name string, svc *registry.Service, err error) (*registry.Service, error) {
	old := (*c.entries.Load())[name]
	switch {
	case err == nil && svc != nil:
		snap := snapshot(name, svc)
		if old != nil && old.svc != nil && equal(old.svc, snap) {
			snap = old.svc // unchanged: keep the pointer so derived state stays valid
		}
		if old != nil && old.failing {
			c.log.Info("registry answers again; cached service refreshed", "service", name)
		}
		c.storeLocked(name, &entry{svc: snap}, c.ttl)
		return snap, nil

	case (err == nil || errors.Is(err, registry.ErrNotFound)) && old != nil && old.svc != nil && c.withinGrace(old):
		since := old.emptySince
		if since.IsZero() {
			since = c.now()
			c.log.Warn("registry lists no node of a cached service; serving the last nodes while they may re-register",
				"service", name, "grace", c.emptyGrace)
		}
		c.storeLocked(name, &entry{svc: old.svc, failing: old.failing, emptySince: since}, min(c.retry, c.emptyGrace))
		return old.svc, nil

	case err == nil || errors.Is(err, registry.ErrNotFound):
		e := &entry{err: fmt.Errorf("get service %q: %w", name, registry.ErrNotFound)}
		c.storeLocked(name, e, c.negTTL)
		return nil, e.err

	case old != nil && old.svc != nil:
		if !old.failing {
			c.log.Warn("registry failed; serving cached service until it answers",
				"service", name, "err", err)
		}
		c.storeLocked(name, &entry{svc: old.svc, failing: true}, c.retry)
		return old.svc, nil

	default:
		return nil, fmt.Errorf("get service %q: %w", name, err)
	}
}

// withinGrace reports whether old, a positive entry, may still be served although the
// registry now lists no node of its service.
func (c *Cache) withinGrace(old *entry) bool {
	return c.emptyGrace > 0 && (old.emptySince.IsZero() || c.now().Sub(old.emptySince) < c.emptyGrace)
}

// storeLocked publishes a copy of the entries with name set to e, to expire after d, or
// with name removed when e is nil.
//
// Negative entries are bounded: names come from callers, so past MaxNegative of them a new
// one takes the place of another.
func (c *Cache) storeLocked(name string, e *entry, d time.Duration) {
	next := maps.Clone(*c.entries.Load())
	if old := next[name]; old != nil {
		old.stop()
		if old.svc == nil {
			c.negatives--
		}
	}
	if e == nil {
		delete(next, name)
	} else {
		if e.svc == nil {
			if c.negatives >= MaxNegative {
				for n, o := range next { // map order: an arbitrary one
					if o.svc == nil && n != name {
						o.stop()
						delete(next, n)
						c.negatives--
						break
					}
				}
			}
			c.negatives++
		}
		e.stop = c.afterFunc(d, func() { e.expired.Store(true) })
		next[name] = e
	}
	c.entries.Store(&next)
}

// snapshot returns a deep copy of s, named name, with nil nodes dropped and nodes sorted by
// ID, so the registry may reuse s and equal snapshots compare equal.
func snapshot(name string, s *registry.Service) *registry.Service {
	out := &registry.Service{Name: name, Nodes: make([]*registry.Node, 0, len(s.Nodes))}
	for _, n := range s.Nodes {
		if n == nil {
			continue
		}
		out.Nodes = append(out.Nodes, &registry.Node{
			ID:         n.ID,
			Address:    n.Address,
			Version:    n.Version,
			Metadata:   maps.Clone(n.Metadata),
			Endpoints:  slices.Clone(n.Endpoints),
			Idempotent: slices.Clone(n.Idempotent),
		})
	}
	slices.SortStableFunc(out.Nodes, func(a, b *registry.Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// equal reports whether two snapshots hold the same nodes in the same order.
func equal(a, b *registry.Service) bool {
	if a.Name != b.Name || len(a.Nodes) != len(b.Nodes) {
		return false
	}
	for i, x := range a.Nodes {
		y := b.Nodes[i]
		if x.ID != y.ID || x.Address != y.Address || x.Version != y.Version ||
			!maps.Equal(x.Metadata, y.Metadata) || !slices.Equal(x.Endpoints, y.Endpoints) || !slices.Equal(x.Idempotent, y.Idempotent) {
			return false
		}
	}
	return true
}
