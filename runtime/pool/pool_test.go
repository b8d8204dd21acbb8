package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// fakeTransport dials fakeConns and counts them.
type fakeTransport struct {
	mu    sync.Mutex
	conns []*fakeConn
	fail  error
}

func (t *fakeTransport) Dial(_ context.Context, addr string) (transport.Conn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fail != nil {
		return nil, &transport.ConnectError{Addr: addr, Err: t.fail}
	}
	c := &fakeConn{id: len(t.conns), addr: addr}
	c.reusable.Store(true)
	t.conns = append(t.conns, c)
	return c, nil
}

func (t *fakeTransport) Listen(context.Context, string) (transport.Listener, error) {
	return nil, errors.New("fake: no listen")
}

func (t *fakeTransport) Close() error { return nil }

func (t *fakeTransport) dialed() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

type fakeConn struct {
	id       int
	addr     string
	reusable atomic.Bool
	closed   atomic.Bool
}

func (c *fakeConn) Send(context.Context, *transport.Message) error   { return nil }
func (c *fakeConn) Recv(context.Context) (*transport.Message, error) { return nil, nil }
func (c *fakeConn) Close() error                                     { c.closed.Store(true); return nil }
func (c *fakeConn) Reusable() bool                                   { return c.reusable.Load() && !c.closed.Load() }

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newPool(t *testing.T, tr transport.Transport, opts Options) *Pool {
	t.Helper()
	p := New(tr, opts)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func get(t *testing.T, p *Pool, addr string) *fakeConn {
	t.Helper()
	c, err := p.Get(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*fakeConn)
}

func TestReuseIsLIFOPerAddress(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{})
	a1, a2 := get(t, p, "a"), get(t, p, "a")
	b1 := get(t, p, "b")
	p.Put("a", a1, nil)
	p.Put("a", a2, nil)
	p.Put("b", b1, nil)
	if got := get(t, p, "a"); got != a2 {
		t.Errorf("first Get for a: conn %d, want the last put (%d)", got.id, a2.id)
	}
	if got := get(t, p, "a"); got != a1 {
		t.Errorf("second Get for a: conn %d, want %d", got.id, a1.id)
	}
	if got := get(t, p, "b"); got != b1 {
		t.Errorf("Get for b: conn %d, want %d", got.id, b1.id)
	}
	get(t, p, "a") // none idle: dials
	st := p.Stats()
	if st.Dials != 4 || st.Reuses != 3 || st.Idle != 0 || tr.dialed() != 4 {
		t.Errorf("stats %+v with %d dialed, want 4 dials, 3 reuses, 0 idle", st, tr.dialed())
	}
}

func TestPutClosesFailedOrUnreusable(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{})
	c1, c2 := get(t, p, "a"), get(t, p, "a")
	p.Put("a", c1, errors.New("call failed"))
	c2.reusable.Store(false)
	p.Put("a", c2, nil)
	if !c1.closed.Load() || !c2.closed.Load() {
		t.Fatalf("closed: failed %v, unreusable %v; want both", c1.closed.Load(), c2.closed.Load())
	}
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("idle %d, want 0", st.Idle)
	}
	p.Put("a", nil, nil) // no panic
}

func TestGetSkipsConnsThatBrokeWhileIdle(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{})
	c := get(t, p, "a")
	p.Put("a", c, nil)
	c.reusable.Store(false) // e.g. the server closed it
	if got := get(t, p, "a"); got == c {
		t.Fatal("Get handed out a conn that is no longer reusable")
	}
	if !c.closed.Load() {
		t.Error("the dead idle conn was not closed")
	}
}

func TestMaxIdle(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{MaxIdle: 3})
	var cs []*fakeConn
	for range 5 {
		cs = append(cs, get(t, p, "a"))
	}
	for _, c := range cs {
		p.Put("a", c, nil)
	}
	if st := p.Stats(); st.Idle != 3 {
		t.Fatalf("idle %d, want 3", st.Idle)
	}
	for i, c := range cs {
		if want := i < 2; c.closed.Load() != want {
			t.Errorf("conn %d closed = %v, want %v (the oldest make room)", i, c.closed.Load(), want)
		}
	}
	// Per address: another address has its own room.
	b := get(t, p, "b")
	p.Put("b", b, nil)
	if st := p.Stats(); st.Idle != 4 || b.closed.Load() {
		t.Fatalf("idle %d after putting one for b, want 4", st.Idle)
	}
}

func TestNegativeMaxIdleKeepsNone(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{MaxIdle: -1})
	c := get(t, p, "a")
	p.Put("a", c, nil)
	if !c.closed.Load() || p.Stats().Idle != 0 {
		t.Fatal("a pool with negative MaxIdle kept a conn")
	}
}

func TestIdleTTLOnGet(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{IdleTTL: time.Minute, Now: clk.Now})
	old1, old2 := get(t, p, "a"), get(t, p, "a")
	p.Put("a", old1, nil)
	p.Put("a", old2, nil)

	clk.Advance(time.Minute) // exactly the TTL: still fresh
	c := get(t, p, "a")
	if c != old2 {
		t.Fatal("a conn idle for exactly IdleTTL was not reused")
	}
	p.Put("a", c, nil) // fresh again at t+1m

	clk.Advance(time.Minute + time.Second)
	got := get(t, p, "a")
	if got == old1 || got == old2 {
		t.Fatal("Get handed out a conn idle past IdleTTL")
	}
	if !old1.closed.Load() || !old2.closed.Load() {
		t.Error("expired conns were not closed")
	}
	if st := p.Stats(); st.Dials != 3 || st.Idle != 0 {
		t.Errorf("stats %+v, want 3 dials and none idle", st)
	}
}

func TestReapClosesOnlyExpired(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{IdleTTL: time.Minute, Now: clk.Now})
	old, young, other := get(t, p, "a"), get(t, p, "a"), get(t, p, "b")
	p.Put("a", old, nil)
	p.Put("b", other, nil)
	clk.Advance(40 * time.Second)
	p.Put("a", young, nil)
	clk.Advance(30 * time.Second) // old and other are 70s idle, young 30s

	p.reap()
	if !old.closed.Load() || !other.closed.Load() || young.closed.Load() {
		t.Fatalf("closed: old %v, other %v, young %v; want old and other only",
			old.closed.Load(), other.closed.Load(), young.closed.Load())
	}
	if st := p.Stats(); st.Idle != 1 {
		t.Fatalf("idle %d, want 1", st.Idle)
	}
	p.mu.Lock()
	_, kept := p.idle["b"]
	p.mu.Unlock()
	if kept {
		t.Error("an address with no idle conns left is still in the map")
	}
}

// The reaper runs on its own: with a short TTL and the real clock, an idle conn is closed
// without any Get or Put.
func TestReaperRuns(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{IdleTTL: 20 * time.Millisecond})
	c := get(t, p, "a")
	p.Put("a", c, nil)
	deadline := time.Now().Add(10 * time.Second)
	for !c.closed.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the reaper did not close an expired idle conn")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := p.Stats(); st.Idle != 0 {
		t.Errorf("idle %d after reaping, want 0", st.Idle)
	}
}

func TestSetOptions(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{MaxIdle: 5, IdleTTL: time.Hour, Now: clk.Now})
	var cs []*fakeConn
	for range 5 {
		cs = append(cs, get(t, p, "a"))
	}
	for _, c := range cs {
		p.Put("a", c, nil)
	}
	p.SetOptions(Options{MaxIdle: 2, IdleTTL: time.Hour, Now: clk.Now})
	if st := p.Stats(); st.Idle != 2 {
		t.Fatalf("idle %d after lowering MaxIdle to 2", st.Idle)
	}
	for i, c := range cs {
		if want := i < 3; c.closed.Load() != want {
			t.Errorf("conn %d closed = %v, want %v", i, c.closed.Load(), want)
		}
	}
	clk.Advance(2 * time.Minute)
	p.SetOptions(Options{MaxIdle: 2, IdleTTL: time.Minute, Now: clk.Now})
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("idle %d after lowering IdleTTL below their idle time", st.Idle)
	}
}

func TestDialError(t *testing.T) {
	tr := &fakeTransport{fail: errors.New("refused")}
	p := newPool(t, tr, Options{})
	_, err := p.Get(context.Background(), "a")
	if !transport.IsConnectError(err) {
		t.Fatalf("Get: %v, want the transport's ConnectError", err)
	}
	if st := p.Stats(); st.Dials != 0 {
		t.Errorf("dials %d after a failed dial", st.Dials)
	}
}

func TestClose(t *testing.T) {
	tr := &fakeTransport{}
	p := New(tr, Options{})
	c1, c2, out := get(t, p, "a"), get(t, p, "b"), get(t, p, "a")
	p.Put("a", c1, nil)
	p.Put("b", c2, nil)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if !c1.closed.Load() || !c2.closed.Load() {
		t.Fatal("Close left idle conns open")
	}
	if _, err := p.Get(context.Background(), "a"); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
	p.Put("a", out, nil)
	if !out.closed.Load() {
		t.Fatal("Put after Close kept the conn")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	tr := &fakeTransport{}
	p := newPool(t, tr, Options{MaxIdle: 4})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := fmt.Sprint("n", g%2)
			for i := range 200 {
				c, err := p.Get(context.Background(), addr)
				if err != nil {
					t.Error(err)
					return
				}
				var callErr error
				if i%17 == 0 {
					callErr = errors.New("boom")
				}
				p.Put(addr, c, callErr)
			}
			if g == 0 {
				p.SetOptions(Options{MaxIdle: 2})
			}
		}()
	}
	wg.Wait()
	st := p.Stats()
	if st.Idle > 4 {
		t.Errorf("idle %d over MaxIdle×addresses", st.Idle)
	}
	if got := int(st.Dials + st.Reuses); got != 8*200 {
		t.Errorf("dials+reuses = %d, want %d", got, 8*200)
	}
	open := 0
	tr.mu.Lock()
	for _, c := range tr.conns {
		if !c.closed.Load() {
			open++
		}
	}
	tr.mu.Unlock()
	if open != st.Idle {
		t.Errorf("%d conns open, but the pool holds %d idle: a conn leaked", open, st.Idle)
	}
}
