package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// memCaller is a Caller that serves calls in memory, and records them.
type memCaller struct {
	mu    sync.Mutex
	serve func(ctx context.Context, address string, body []byte) (int, []byte, error)
	calls []string   // the addresses called
	reqs  []*Request // the requests sent
}

func (m *memCaller) Call(ctx context.Context, address string, body []byte) (int, []byte, error) {
	req, err := DecodeRequest(body)
	if err != nil {
		return 0, nil, fmt.Errorf("the client sent a bad request: %w", err)
	}
	m.mu.Lock()
	m.calls = append(m.calls, address)
	m.reqs = append(m.reqs, req)
	serve := m.serve
	m.mu.Unlock()
	return serve(ctx, address, body)
}

func (m *memCaller) setServe(f func(ctx context.Context, address string, body []byte) (int, []byte, error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.serve = f
}

// takeCalls returns the addresses called since the last take.
func (m *memCaller) takeCalls() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls
	m.calls = nil
	return c
}

func (m *memCaller) lastRequest() *Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.reqs) == 0 {
		return nil
	}
	return m.reqs[len(m.reqs)-1]
}

// serveServer answers calls with srv, as a master does.
func serveServer(srv *Server) func(context.Context, string, []byte) (int, []byte, error) {
	return func(_ context.Context, _ string, body []byte) (int, []byte, error) {
		req, err := DecodeRequest(body)
		if err != nil {
			return 400, newRefusal(400, err.Error(), nil), nil
		}
		resp, err := srv.Lease(req)
		if err != nil {
			return 400, newRefusal(400, err.Error(), nil), nil
		}
		b, err := json.Marshal(resp)
		return 200, b, err
	}
}

var errDown = errors.New("connection refused")

func serveDown(context.Context, string, []byte) (int, []byte, error) { return 0, nil, errDown }

func newTestClient(t testing.TB, id string, caller Caller, clock *fakeClock, logs *syncBuffer) *Client {
	t.Helper()
	opts := ClientOptions{ID: id, Caller: caller}
	if clock != nil {
		opts.Now = clock.Now
	}
	if logs != nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	c, err := NewClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// peek returns what Lease would, without counting demand.
func (c *Client) peek(resource string) (float64, bool) {
	e := (*c.entries.Load())[resource]
	if e == nil {
		return 0, false
	}
	if b := e.rate.Load(); b != notHeld {
		return math.Float64frombits(b), true
	}
	return 0, false
}

func TestNewClientValidates(t *testing.T) {
	if _, err := NewClient(ClientOptions{ID: "a b", Caller: &memCaller{}}); err == nil {
		t.Error("a bad ID passes")
	}
	if _, err := NewClient(ClientOptions{ID: "a"}); err == nil {
		t.Error("no caller passes")
	}
}

// TestClientsConverge runs three clients with steady demands of 250, 50 and 50 calls/s
// against a server of 300, with wrappers asking every 100ms.
func TestClientsConverge(t *testing.T) {
	clock := newFakeClock()
	srv := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{})
	caller := &memCaller{serve: serveServer(srv)}
	demand := map[string]float64{"a": 250, "b": 50, "c": 50}
	clients := map[string]*Client{}
	for id := range demand {
		clients[id] = newTestClient(t, id, caller, clock, nil)
	}
	ctx := context.Background()
	rates := map[string]float64{}
	for range 150 { // 15s
		var sum float64
		for id, c := range clients {
			c.Lease("api", uint64(demand[id]/10))
			c.cycle(ctx)
			rates[id], _ = c.peek("api")
			sum += rates[id]
		}
		if sum > 300+eps {
			t.Fatalf("clients hold %v of 300: %v", sum, rates)
		}
		clock.Advance(100 * time.Millisecond)
	}
	// With headroom they want about 263.5, 53.5 and 53.5: b and c get all they want and
	// a the rest.
	if rates["b"] < 50 || rates["c"] < 50 || rates["a"] < 185 || rates["a"]+rates["b"]+rates["c"] < 299 {
		t.Fatalf("rates %v, want about 193, 53.5, 53.5", rates)
	}
	if n := len(caller.takeCalls()); n > 3*(15/2+2) {
		t.Errorf("%d calls in 15s from 3 clients renewing every 2s", n)
	}
}

func TestClientKeepsLeaseThroughOutage(t *testing.T) {
	clock := newFakeClock()
	srv := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{})
	caller := &memCaller{serve: serveServer(srv)}
	logs := &syncBuffer{}
	c := newTestClient(t, "a", caller, clock, logs)
	ctx := context.Background()

	start := clock.Now()
	c.Lease("api", 10)
	c.cycle(ctx)
	if r, held := c.Lease("api", 0); !held || r != 106 {
		t.Fatalf("lease %v %v, want 10 calls in 100ms, ×1.05 + 1: 106, held", r, held)
	}
	leaseEnd := start.Add(DefaultLease)

	caller.setServe(serveDown)
	for clock.Now().Before(leaseEnd) {
		next := c.cycle(ctx)
		if next.After(leaseEnd) || next.IsZero() {
			t.Fatalf("the next cycle is at %v, after the lease ends at %v", next, leaseEnd)
		}
		if _, held := c.Lease("api", 1); !held {
			t.Fatalf("lease lost at %v, before it ends", clock.Now().Sub(start))
		}
		clock.Advance(next.Sub(clock.Now()))
	}
	c.cycle(ctx)
	if _, held := c.Lease("api", 1); held {
		t.Fatal("lease held after it ended")
	}
	if n := len(caller.takeCalls()); n < 2 || n > 20 {
		t.Errorf("%d calls during a 10s outage", n)
	}
	if got := strings.Count(logs.String(), "out of reach"); got != 1 {
		t.Errorf("%d logs of the outage, want 1:\n%s", got, logs)
	}
	if got := strings.Count(logs.String(), "lease lost"); got != 1 {
		t.Errorf("%d logs of the lost lease, want 1:\n%s", got, logs)
	}

	// The service comes back: the next cycle after the backoff gets a lease again.
	caller.setServe(serveServer(srv))
	for range 100 {
		next := c.cycle(ctx)
		if _, held := c.Lease("api", 1); held {
			break
		}
		clock.Advance(next.Sub(clock.Now()))
	}
	if _, held := c.Lease("api", 1); !held {
		t.Fatal("no lease after the service came back")
	}
	if !strings.Contains(logs.String(), "reachable again") {
		t.Errorf("no log of the recovery:\n%s", logs)
	}
}

func TestClientMeasuresSoonAfterFirstAsk(t *testing.T) {
	clock := newFakeClock()
	srv := newTestServer(t, clock, map[string]float64{"api": 1000}, ServerOptions{})
	c := newTestClient(t, "a", &memCaller{serve: serveServer(srv)}, clock, nil)
	ctx := context.Background()
	c.Lease("api", 0) // a wrapper's first ask, before it saw any call
	next := c.cycle(ctx)
	if r, held := c.peek("api"); !held || r != 1 {
		t.Fatalf("first lease %v %v, want 1 held", r, held)
	}
	if d := next.Sub(clock.Now()); d != 4*minWindow {
		t.Fatalf("renews %v after the first ask, want %v", d, 4*minWindow)
	}
	for range 4 { // 100 calls/s
		clock.Advance(minWindow)
		c.Lease("api", 10)
	}
	c.cycle(ctx)
	if r, _ := c.peek("api"); r != 106 {
		t.Fatalf("second lease %v, want 100/s ×1.05 + 1 = 106", r)
	}
}

func TestClientHonoursRetryAfter(t *testing.T) {
	clock := newFakeClock()
	caller := &memCaller{serve: func(context.Context, string, []byte) (int, []byte, error) {
		return 503, newRefusal(503, "no master", func(r *Refusal) { r.RetryAfterMS = 3000 }), nil
	}}
	c := newTestClient(t, "a", caller, clock, nil)
	c.Lease("api", 1)
	next := c.cycle(context.Background())
	if want := clock.Now().Add(3 * time.Second); !next.Equal(want) {
		t.Fatalf("next cycle at +%v, want +3s", next.Sub(clock.Now()))
	}
	clock.Advance(2 * time.Second)
	c.cycle(context.Background())
	if n := len(caller.takeCalls()); n != 1 {
		t.Fatalf("%d calls before retry_after, want 1", n)
	}
}

func TestClientFollowsRedirects(t *testing.T) {
	el := newFakeElector()
	clock := newFakeClock()
	m := startInstance(t, el, "m", clock, nil)
	m.waitRole(t, true)
	f := startInstance(t, el, "f", clock, nil)
	mDown := false
	var mu sync.Mutex
	caller := &memCaller{serve: func(ctx context.Context, address string, body []byte) (int, []byte, error) {
		mu.Lock()
		down := mDown
		mu.Unlock()
		switch address {
		case m.self.Address:
			if down {
				return 0, nil, errDown
			}
			status, answer := m.svc.Handle(ctx, Endpoint, body)
			return status, answer, nil
		case "", f.self.Address:
			status, answer := f.svc.Handle(ctx, Endpoint, body)
			return status, answer, nil
		}
		return 0, nil, fmt.Errorf("no instance at %q", address)
	}}
	logs := &syncBuffer{}
	c := newTestClient(t, "a", caller, clock, logs)
	ctx := context.Background()
	clock.Advance(DefaultLease) // past the new master's learning period

	c.Lease("api", 1)
	c.cycle(ctx)
	if got := caller.takeCalls(); fmt.Sprint(got) != fmt.Sprint([]string{"", "m:7000"}) {
		t.Fatalf("calls %q, want any instance, then the master", got)
	}
	if _, held := c.Lease("api", 1); !held {
		t.Fatal("no lease through the redirect")
	}
	if !strings.Contains(logs.String(), "master changed") {
		t.Errorf("no log of the master:\n%s", logs)
	}
	clock.Advance(DefaultRefresh)
	c.cycle(ctx)
	if got := caller.takeCalls(); fmt.Sprint(got) != fmt.Sprint([]string{"m:7000"}) {
		t.Fatalf("renewal calls %q, want the master alone", got)
	}

	// The master dies; f takes over. The client falls back to any instance.
	mu.Lock()
	mDown = true
	mu.Unlock()
	el.depose("quota")
	f.waitRole(t, true)
	clock.Advance(DefaultRefresh)
	c.cycle(ctx)
	if got := caller.takeCalls(); fmt.Sprint(got) != fmt.Sprint([]string{"m:7000", ""}) {
		t.Fatalf("calls %q, want the old master, then any instance", got)
	}
	if _, held := c.Lease("api", 1); !held {
		t.Fatal("no lease from the new master")
	}
}

func TestClientReleasesOnClose(t *testing.T) {
	srv := newTestServer(t, newFakeClock(), map[string]float64{"api": 300, "db": 10}, ServerOptions{})
	caller := &memCaller{serve: serveServer(srv)}
	c := newTestClient(t, "a", caller, nil, nil)
	cycles := make(chan struct{}, 1)
	c.onCycle = func() {
		select {
		case cycles <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	// A name asked for the first time is fetched at once, without waiting for a timer.
	c.Lease("api", 5)
	c.Lease("db", 5)
	for {
		_, apiHeld := c.peek("api")
		_, dbHeld := c.peek("db")
		if apiHeld && dbHeld {
			break
		}
		select {
		case <-cycles:
		case <-time.After(10 * time.Second):
			t.Fatal("no lease fetched")
		}
	}
	if err := c.Run(ctx); err == nil {
		t.Error("a second Run passes")
	}
	if len(srv.holdings("api")) != 1 || len(srv.holdings("db")) != 1 {
		t.Fatalf("server holdings %v %v", srv.holdings("api"), srv.holdings("db"))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(srv.holdings("api")) != 0 || len(srv.holdings("db")) != 0 {
		t.Fatalf("after close, the server still holds %v %v", srv.holdings("api"), srv.holdings("db"))
	}
	req := caller.lastRequest()
	if len(req.Resources) != 2 || req.Resources[0].Wants != 0 || req.Resources[1].Wants != 0 {
		t.Fatalf("release request %+v", req)
	}
	if _, held := c.peek("api"); held {
		t.Fatal("lease held after close")
	}
}

func TestClientForgetsIdleResources(t *testing.T) {
	clock := newFakeClock()
	srv := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{})
	caller := &memCaller{serve: serveServer(srv)}
	c := newTestClient(t, "a", caller, clock, nil)
	ctx := context.Background()
	c.Lease("api", 1)
	c.cycle(ctx)
	for i := range 10 {
		clock.Advance(DefaultRefresh)
		c.cycle(ctx)
		if len(*c.entries.Load()) == 0 {
			if i < 2 {
				t.Fatalf("forgotten after %d intervals", i+1)
			}
			break
		}
	}
	if n := len(*c.entries.Load()); n != 0 {
		t.Fatalf("%d resources left, nobody asked about them", n)
	}
	if req := caller.lastRequest(); req.Resources[0].Wants != 0 {
		t.Fatalf("last request %+v, want a release", req)
	}
	if h := srv.holdings("api"); len(h) != 0 {
		t.Fatalf("server holdings %v after the release", h)
	}
}

func TestClientUnknownResource(t *testing.T) {
	clock := newFakeClock()
	srv := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{})
	c := newTestClient(t, "a", &memCaller{serve: serveServer(srv)}, clock, nil)
	c.Lease("nope", 1)
	c.Lease("api", 1)
	c.cycle(context.Background())
	if _, held := c.Lease("nope", 1); held {
		t.Error("a lease on an unknown resource")
	}
	if _, held := c.Lease("api", 1); !held {
		t.Error("no lease on a known resource asked with it")
	}
}

func TestClientBounds(t *testing.T) {
	logs := &syncBuffer{}
	c := newTestClient(t, "a", &memCaller{serve: serveDown}, newFakeClock(), logs)
	for i := range MaxResources {
		c.Lease(fmt.Sprintf("r%d", i), 1)
	}
	for range 3 {
		if r, held := c.Lease("one-too-many", 1); r != 0 || held {
			t.Fatal("a lease past the bound")
		}
		c.Lease("bad name", 1)
	}
	if n := len(*c.entries.Load()); n != MaxResources {
		t.Fatalf("%d resources, want %d", n, MaxResources)
	}
	if got := strings.Count(logs.String(), "too many resources"); got != 1 {
		t.Errorf("%d logs of the bound, want 1", got)
	}
	if got := strings.Count(logs.String(), "invalid resource name"); got != 1 {
		t.Errorf("%d logs of the bad name, want 1", got)
	}
}

func TestLeaseDoesNotAllocate(t *testing.T) {
	c := newTestClient(t, "a", &memCaller{serve: serveDown}, nil, nil)
	c.Lease("api", 1)
	if n := testing.AllocsPerRun(1000, func() { c.Lease("api", 1) }); n != 0 {
		t.Fatalf("Lease allocates %v times", n)
	}
}

func BenchmarkLease(b *testing.B) {
	c := newTestClient(b, "a", &memCaller{serve: serveDown}, nil, nil)
	for i := range 32 {
		c.Lease(fmt.Sprintf("resource-%d", i), 1)
	}
	e := (*c.entries.Load())["resource-7"]
	e.rate.Store(math.Float64bits(100))
	b.ReportAllocs()
	for b.Loop() {
		c.Lease("resource-7", 3)
	}
}

func BenchmarkLeaseParallel(b *testing.B) {
	c := newTestClient(b, "a", &memCaller{serve: serveDown}, nil, nil)
	for i := range 32 {
		c.Lease(fmt.Sprintf("resource-%d", i), 1)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Lease("resource-7", 3)
		}
	})
}
