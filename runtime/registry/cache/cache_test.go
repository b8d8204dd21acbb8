package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// fakeRegistry is an in-memory registry.Registry whose failures the test controls.
type fakeRegistry struct {
	mu       sync.Mutex
	services map[string]*registry.Service
	getErr   error         // returned by GetService when set
	watchErr error         // returned by Watch when set
	gate     chan struct{} // when set, GetService waits for it to be closed
	watchers []*fakeWatcher

	gets    atomic.Int64
	watches atomic.Int64
	opened  chan *fakeWatcher // receives every watcher Watch opens
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{
		services: make(map[string]*registry.Service),
		opened:   make(chan *fakeWatcher, 16),
	}
}

func (r *fakeRegistry) set(name string, nodes ...*registry.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(nodes) == 0 {
		delete(r.services, name)
		return
	}
	r.services[name] = &registry.Service{Name: name, Nodes: nodes}
}

func (r *fakeRegistry) setGetErr(err error) {
	r.mu.Lock()
	r.getErr = err
	r.mu.Unlock()
}

func (r *fakeRegistry) Register(ctx context.Context, s *registry.Service, ttl time.Duration) error {
	r.set(s.Name, s.Nodes...)
	return nil
}

func (r *fakeRegistry) Deregister(ctx context.Context, s *registry.Service) error {
	r.set(s.Name)
	return nil
}

func (r *fakeRegistry) GetService(ctx context.Context, name string) (*registry.Service, error) {
	r.gets.Add(1)
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.getErr != nil {
		return nil, r.getErr
	}
	s, ok := r.services[name]
	if !ok {
		return nil, registry.ErrNotFound
	}
	return s, nil
}

func (r *fakeRegistry) ListServices(ctx context.Context) ([]*registry.Service, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*registry.Service
	for _, s := range r.services {
		out = append(out, s)
	}
	return out, nil
}

func (r *fakeRegistry) Watch(ctx context.Context) (registry.Watcher, error) {
	r.watches.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchErr != nil {
		return nil, r.watchErr
	}
	w := &fakeWatcher{events: make(chan registry.Event, 16), stopped: make(chan struct{}), failed: make(chan error, 1)}
	r.watchers = append(r.watchers, w)
	r.opened <- w
	return w, nil
}

func (r *fakeRegistry) Close() error { return nil }

type fakeWatcher struct {
	events  chan registry.Event
	failed  chan error
	once    sync.Once
	stopped chan struct{}
}

func (w *fakeWatcher) Next() (registry.Event, error) {
	select {
	case ev := <-w.events:
		return ev, nil
	case err := <-w.failed:
		return registry.Event{}, err
	case <-w.stopped:
		return registry.Event{}, errors.New("watcher stopped")
	}
}

func (w *fakeWatcher) Stop() { w.once.Do(func() { close(w.stopped) }) }

func (w *fakeWatcher) send(name string) {
	w.events <- registry.Event{Type: registry.EventUpdate, Service: name}
}

// fakeClock is a manual clock whose timers fire when the test advances it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Duration
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Duration
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock { return &fakeClock{} }

// AfterFunc has the signature of Cache.afterFunc.
func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now + d, f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock and runs the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now += d
	var due []func()
	keep := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case t.at <= c.now:
			t.stopped = true
			due = append(due, t.f)
		default:
			keep = append(keep, t)
		}
	}
	c.timers = keep
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
}

// newCacheWithClock returns a cache whose entries expire by clk.
func newCacheWithClock(reg registry.Registry, opts Options, clk *fakeClock) *Cache {
	c := New(reg, opts)
	c.afterFunc = clk.AfterFunc
	return c
}

// countingHandler counts log records by message.
type countingHandler struct {
	mu     sync.Mutex
	counts map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = make(map[string]int)
	}
	h.counts[r.Message]++
	return nil
}

func (h *countingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

const staleMsg = "registry failed; serving cached service until it answers"

func node(id, version string) *registry.Node {
	return &registry.Node{ID: id, Address: "127.0.0.1:1", Version: version}
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func mustGet(t *testing.T, c *Cache, name string) *registry.Service {
	t.Helper()
	s, err := c.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("Get(%q): %v", name, err)
	}
	return s
}

func TestMissThenHit(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("b", "1"), node("a", "1"))
	c := New(reg, Options{})

	s1 := mustGet(t, c, "greeter")
	if got := reg.gets.Load(); got != 1 {
		t.Fatalf("GetService calls after miss = %d, want 1", got)
	}
	if s1.Name != "greeter" || len(s1.Nodes) != 2 || s1.Nodes[0].ID != "a" {
		t.Fatalf("snapshot = %+v, want greeter with nodes sorted a, b", s1)
	}
	s2 := mustGet(t, c, "greeter")
	if s2 != s1 {
		t.Fatal("hit returned a different pointer")
	}
	if got := reg.gets.Load(); got != 1 {
		t.Fatalf("GetService calls after hit = %d, want 1", got)
	}
	// The snapshot is a copy: the registry's record may change under it.
	reg.mu.Lock()
	reg.services["greeter"].Nodes[0].Address = "changed"
	reg.mu.Unlock()
	if s1.Nodes[1].Address == "changed" {
		t.Fatal("snapshot shares nodes with the registry's answer")
	}
	if got := c.Services(); len(got) != 1 || got[0] != s1 {
		t.Fatalf("Services() = %v, want [greeter]", got)
	}
}

func TestHitDoesNotAllocate(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	c := New(reg, Options{})
	ctx := context.Background()
	mustGet(t, c, "greeter")
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := c.Get(ctx, "greeter"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("cache hit allocates %v times, want 0", allocs)
	}
}

func TestConcurrentMissesShareOneFetch(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	gate := make(chan struct{})
	reg.gate = gate
	c := New(reg, Options{})

	const n = 20
	results := make(chan *registry.Service, n)
	for range n {
		go func() {
			s, err := c.Get(context.Background(), "greeter")
			if err != nil {
				t.Error(err)
			}
			results <- s
		}()
	}
	eventually(t, "the first fetch to start", func() bool { return reg.gets.Load() >= 1 })
	close(gate)
	first := <-results
	for range n - 1 {
		if s := <-results; s != first {
			t.Fatal("concurrent misses got different snapshots")
		}
	}
	if got := reg.gets.Load(); got != 1 {
		t.Fatalf("GetService calls = %d, want 1", got)
	}
}

func TestMissHonoursCallerContext(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	gate := make(chan struct{})
	reg.gate = gate
	c := New(reg, Options{})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Get(ctx, "greeter"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a cancelled context: err = %v, want context.Canceled", err)
	}
	// The shared fetch goes on for the others.
	close(gate)
	if s := mustGet(t, c, "greeter"); len(s.Nodes) != 1 {
		t.Fatalf("snapshot = %+v", s)
	}
}

func TestWatchEventRefreshes(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	c := New(reg, Options{TTL: time.Hour})
	old := mustGet(t, c, "greeter")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	w := <-reg.opened

	reg.set("greeter", node("a", "1"), node("b", "1"))
	w.send("greeter")
	eventually(t, "the event to refresh greeter", func() bool {
		return len(mustGet(t, c, "greeter").Nodes) == 2
	})
	if mustGet(t, c, "greeter") == old {
		t.Fatal("a change reused the old snapshot pointer")
	}

	// An event about a service nobody asked for is not fetched.
	reg.set("greeter", node("c", "1"))
	w.send("other")
	w.send("greeter") // events are handled in order: once this one is fetched, "other" was seen
	eventually(t, "the second greeter event", func() bool {
		return mustGet(t, c, "greeter").Nodes[0].ID == "c"
	})
	if c.knows("other") {
		t.Fatal("an event about an uncached service was fetched")
	}
}

func TestUnchangedRefreshKeepsPointer(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	clk := newFakeClock()
	c := newCacheWithClock(reg, Options{TTL: time.Minute}, clk)
	old := mustGet(t, c, "greeter")
	clk.Advance(2 * time.Minute)
	mustGet(t, c, "greeter")
	eventually(t, "the TTL refresh", func() bool { return reg.gets.Load() == 2 && len(c.flightsSnapshot()) == 0 })
	if mustGet(t, c, "greeter") != old {
		t.Fatal("an unchanged refresh published a new pointer")
	}
}

func TestTTLRefresh(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	clk := newFakeClock()
	c := newCacheWithClock(reg, Options{TTL: time.Minute}, clk)
	old := mustGet(t, c, "greeter")

	// A change without an event is not seen before the TTL.
	reg.set("greeter", node("a", "2"))
	clk.Advance(30 * time.Second)
	if mustGet(t, c, "greeter") != old {
		t.Fatal("entry refreshed before its TTL")
	}
	if got := reg.gets.Load(); got != 1 {
		t.Fatalf("GetService calls before TTL = %d, want 1", got)
	}

	// After the TTL the stale entry is served at once and replaced in the background.
	clk.Advance(31 * time.Second)
	if mustGet(t, c, "greeter") != old {
		t.Fatal("expired entry not served while it is refreshed")
	}
	eventually(t, "the TTL refresh", func() bool {
		return mustGet(t, c, "greeter").Nodes[0].Version == "2"
	})
	// Many Gets on the stale entry started one refresh.
	if got := reg.gets.Load(); got != 2 {
		t.Fatalf("GetService calls after TTL = %d, want 2", got)
	}
}

func TestStaleServedWhileRegistryErrs(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	clk := newFakeClock()
	logs := &countingHandler{}
	c := newCacheWithClock(reg, Options{TTL: time.Minute, Logger: slog.New(logs)}, clk)
	old := mustGet(t, c, "greeter")

	reg.setGetErr(errors.New("registry down"))
	// Several refresh attempts fail; each is one retry interval apart.
	for i := range 5 {
		clk.Advance(2 * time.Minute)
		if s := mustGet(t, c, "greeter"); s != old {
			t.Fatalf("attempt %d: Get returned %v, want the stale snapshot", i, s)
		}
		want := int64(2 + i)
		eventually(t, "a failed refresh", func() bool {
			return reg.gets.Load() == want && len(c.flightsSnapshot()) == 0
		})
		if s := mustGet(t, c, "greeter"); s != old {
			t.Fatalf("attempt %d: after the failed refresh Get returned %v, want stale", i, s)
		}
	}
	if got := logs.count(staleMsg); got != 1 {
		t.Fatalf("stale warnings in one error streak = %d, want 1", got)
	}

	// Within the retry interval the failing registry is not asked again.
	gets := reg.gets.Load()
	for range 10 {
		mustGet(t, c, "greeter")
	}
	if reg.gets.Load() != gets {
		t.Fatal("failing registry asked again before the retry interval")
	}

	// The registry recovers with a change.
	reg.set("greeter", node("a", "1"), node("b", "1"))
	reg.setGetErr(nil)
	clk.Advance(2 * time.Minute)
	mustGet(t, c, "greeter")
	eventually(t, "the recovery refresh", func() bool { return len(mustGet(t, c, "greeter").Nodes) == 2 })

	// A new error streak logs again, once.
	reg.setGetErr(errors.New("registry down again"))
	for range 3 {
		clk.Advance(2 * time.Minute)
		mustGet(t, c, "greeter")
		eventually(t, "a failed refresh", func() bool { return len(c.flightsSnapshot()) == 0 })
	}
	if got := logs.count(staleMsg); got != 2 {
		t.Fatalf("stale warnings over two error streaks = %d, want 2", got)
	}

	// A name never fetched has nothing stale to serve: the error reaches the caller.
	if _, err := c.Get(context.Background(), "unknown"); err == nil || errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get of an uncached name while the registry errs: err = %v, want the registry error", err)
	}
}

func TestNegativeCache(t *testing.T) {
	reg := newFakeRegistry()
	clk := newFakeClock()
	c := newCacheWithClock(reg, Options{NegativeTTL: 5 * time.Second}, clk)
	ctx := context.Background()

	_, err := c.Get(ctx, "greeter")
	if !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get of an unknown service: err = %v, want ErrNotFound", err)
	}
	reg.set("greeter", node("a", "1"))
	for range 10 {
		if _, err := c.Get(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("within NegativeTTL: err = %v, want ErrNotFound", err)
		}
	}
	if got := reg.gets.Load(); got != 1 {
		t.Fatalf("GetService calls within NegativeTTL = %d, want 1", got)
	}
	allocs := testing.AllocsPerRun(100, func() { _, _ = c.Get(ctx, "greeter") })
	if allocs != 0 {
		t.Fatalf("negative hit allocates %v times, want 0", allocs)
	}
	if len(c.Services()) != 0 {
		t.Fatalf("Services() lists negative entries: %v", c.Services())
	}

	clk.Advance(6 * time.Second)
	if s := mustGet(t, c, "greeter"); len(s.Nodes) != 1 {
		t.Fatalf("after NegativeTTL: %+v", s)
	}

	// A service that disappears becomes a negative entry.
	reg.set("greeter")
	clk.Advance(time.Hour)
	mustGet(t, c, "greeter") // stale, starts the refresh
	eventually(t, "the refresh to see the service gone", func() bool {
		_, err := c.Get(ctx, "greeter")
		return errors.Is(err, registry.ErrNotFound)
	})
}

// TestNegativeCacheBounded: names that the registry does not know come from callers; the
// cache remembers at most MaxNegative of them, and keeps every known service meanwhile.
func TestNegativeCacheBounded(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	c := New(reg, Options{NegativeTTL: time.Hour})
	mustGet(t, c, "greeter")
	for i := range 3 * MaxNegative {
		if _, err := c.Get(context.Background(), fmt.Sprintf("junk-%d", i)); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("junk-%d: err = %v, want ErrNotFound", i, err)
		}
	}
	m := *c.entries.Load()
	if len(m) > MaxNegative+1 {
		t.Fatalf("%d entries after %d unknown names, want at most %d", len(m), 3*MaxNegative, MaxNegative+1)
	}
	if !c.Known("greeter") || c.Known("junk-0") {
		t.Fatalf("Known: greeter %v, junk-0 %v; want the service kept and junk not known", c.Known("greeter"), c.Known("junk-0"))
	}
}

func TestWatchEventClearsNegativeEntry(t *testing.T) {
	reg := newFakeRegistry()
	c := New(reg, Options{NegativeTTL: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	w := <-reg.opened

	if _, err := c.Get(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	reg.set("greeter", node("a", "1"))
	w.send("greeter")
	eventually(t, "the event to clear the negative entry", func() bool {
		_, err := c.Get(ctx, "greeter")
		return err == nil
	})
}

func TestRewatchAfterWatchError(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	c := New(reg, Options{TTL: time.Hour})
	mustGet(t, c, "greeter")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	w1 := <-reg.opened

	// The watch breaks, and a change happens while it is down: its event is lost.
	reg.mu.Lock()
	reg.watchErr = errors.New("watch unavailable")
	reg.mu.Unlock()
	w1.failed <- errors.New("stream reset")
	eventually(t, "a failed reopen", func() bool { return reg.watches.Load() >= 2 })
	reg.set("greeter", node("a", "1"), node("b", "1"))
	reg.mu.Lock()
	reg.watchErr = nil
	reg.mu.Unlock()

	w2 := <-reg.opened
	// Reopening refetched the cached service, so the lost change is seen.
	eventually(t, "the refetch after reopening", func() bool {
		return len(mustGet(t, c, "greeter").Nodes) == 2
	})
	// And the new watch delivers events.
	reg.set("greeter", node("c", "1"))
	w2.send("greeter")
	eventually(t, "an event on the new watch", func() bool {
		return mustGet(t, c, "greeter").Nodes[0].ID == "c"
	})
}

func TestRunStopsWithContext(t *testing.T) {
	reg := newFakeRegistry()
	c := New(reg, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	w := <-reg.opened
	cancel()
	<-done
	select {
	case <-w.stopped:
	default:
		t.Fatal("Run returned without stopping its watcher")
	}
}

// TestEventDuringFetchRefetches checks that an event arriving while a fetch is in flight
// makes the cache fetch again, since the in-flight answer may predate the change.
func TestEventDuringFetchRefetches(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	c := New(reg, Options{TTL: time.Hour})
	mustGet(t, c, "greeter")

	gate := make(chan struct{})
	reg.mu.Lock()
	reg.gate = gate
	reg.mu.Unlock()
	c.hint("greeter") // starts a fetch that blocks at the gate
	eventually(t, "the blocked fetch", func() bool { return reg.gets.Load() == 2 })
	reg.set("greeter", node("b", "1"))
	c.hint("greeter") // the change's event, while the fetch is in flight
	close(gate)
	eventually(t, "the second fetch", func() bool {
		return mustGet(t, c, "greeter").Nodes[0].ID == "b"
	})
	if got := reg.gets.Load(); got != 3 {
		t.Fatalf("GetService calls = %d, want 3", got)
	}
}

// knows reports whether name has an entry or a fetch in flight.
func (c *Cache) knows(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, cached := (*c.entries.Load())[name]
	return cached || c.flights[name] != nil
}

func (c *Cache) flightsSnapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name := range c.flights {
		out = append(out, name)
	}
	return out
}

func BenchmarkGetHit(b *testing.B) {
	reg := newFakeRegistry()
	for i := range 100 {
		reg.set(fmt.Sprintf("svc%d", i), node("a", "1"))
	}
	c := New(reg, Options{TTL: time.Hour})
	ctx := context.Background()
	if _, err := c.Get(ctx, "svc42"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Get(ctx, "svc42"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestEmptyGrace(t *testing.T) {
	reg := newFakeRegistry()
	reg.set("greeter", node("a", "1"))
	clk := newFakeClock()
	c := newCacheWithClock(reg, Options{TTL: time.Minute, EmptyGrace: 10 * time.Second}, clk)
	base := time.Now()
	c.now = func() time.Time {
		clk.mu.Lock()
		defer clk.mu.Unlock()
		return base.Add(clk.now)
	}
	old := mustGet(t, c, "greeter")

	// The registry restarts empty: the last nodes are still served within the grace.
	reg.set("greeter")
	clk.Advance(61 * time.Second)
	mustGet(t, c, "greeter")
	eventually(t, "the refresh that finds no node", func() bool { return reg.gets.Load() >= 2 })
	for range 3 {
		clk.Advance(time.Second)
		if got := mustGet(t, c, "greeter"); got != old {
			t.Fatal("the last nodes were dropped within the grace")
		}
	}
	// They re-register: the registry's answer wins again.
	reg.set("greeter", node("a", "2"))
	eventually(t, "the re-registered node", func() bool {
		clk.Advance(100 * time.Millisecond)
		return mustGet(t, c, "greeter").Nodes[0].Version == "2"
	})

	// Gone for good: after the grace the service is not found.
	reg.set("greeter")
	eventually(t, "ErrNotFound after the grace", func() bool {
		clk.Advance(100 * time.Millisecond)
		_, err := c.Get(context.Background(), "greeter")
		return errors.Is(err, registry.ErrNotFound)
	})
}
