package pool

// Tests of the pool over the real HTTP transport, against an in-process listener.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/transport/httptransport"
)

// echoServer is a Listener whose calls are answered with their own body, except endpoint
// "hang", which is answered only when the server stops.
type echoServer struct {
	l    transport.Listener
	stop chan struct{}
	wg   sync.WaitGroup
}

func startEcho(t testing.TB, tr transport.Transport, addr string) *echoServer {
	t.Helper()
	l, err := tr.Listen(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{l: l, stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				m, err := c.Recv(context.Background())
				if err != nil {
					return
				}
				if m.Header[transport.HeaderEndpoint] == "hang" {
					<-s.stop
					return
				}
				_ = c.Send(context.Background(), &transport.Message{Header: map[string]string{}, Body: m.Body})
			}()
		}
	}()
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and waits for its goroutines. It may be called more than once.
func (s *echoServer) Close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	_ = s.l.Close()
	s.wg.Wait()
}

func message(endpoint, body string) *transport.Message {
	return &transport.Message{
		Header: map[string]string{transport.HeaderService: "echo", transport.HeaderEndpoint: endpoint},
		Body:   []byte(body),
	}
}

// roundTrip makes one call through p as a client would.
func roundTrip(ctx context.Context, p *Pool, addr string, m *transport.Message) (*transport.Message, error) {
	c, err := p.Get(ctx, addr)
	if err != nil {
		return nil, err
	}
	err = c.Send(ctx, m)
	var resp *transport.Message
	if err == nil {
		resp, err = c.Recv(ctx)
	}
	p.Put(addr, c, err)
	return resp, err
}

func httpSetup(t *testing.T, opts Options) (*httptransport.Transport, *echoServer, *Pool) {
	t.Helper()
	tr := httptransport.New(httptransport.Options{})
	t.Cleanup(func() { _ = tr.Close() })
	s := startEcho(t, tr, "127.0.0.1:0")
	return tr, s, newPool(t, tr, opts)
}

func TestHTTPKeepAliveReuse(t *testing.T) {
	_, s, p := httpSetup(t, Options{})
	const n = 50
	for i := range n {
		resp, err := roundTrip(context.Background(), p, s.l.Addr(), message("e", "hello"))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if string(resp.Body) != "hello" {
			t.Fatalf("call %d: body %q", i, resp.Body)
		}
	}
	st := p.Stats()
	if st.Dials != 1 || st.Reuses != n-1 || st.Idle != 1 {
		t.Fatalf("after %d sequential calls: %+v, want 1 dial, %d reuses, 1 idle", n, st, n-1)
	}
}

func TestHTTPMaxIdle(t *testing.T) {
	_, s, p := httpSetup(t, Options{MaxIdle: 2})
	addr := s.l.Addr()
	ctx := context.Background()
	var cs []transport.Conn
	for range 4 {
		c, err := p.Get(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		if _, err := callOn(ctx, c); err != nil {
			t.Fatal(err)
		}
		p.Put(addr, c, nil)
	}
	if st := p.Stats(); st.Idle != 2 || st.Dials != 4 {
		t.Fatalf("%+v, want 2 idle of 4 dialed", st)
	}
	// The two kept are the two put last, and they work.
	for range 2 {
		c, err := p.Get(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		if c != cs[2] && c != cs[3] {
			t.Fatal("Get returned a conn that should have been evicted")
		}
		if _, err := callOn(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
}

func callOn(ctx context.Context, c transport.Conn) (*transport.Message, error) {
	if err := c.Send(ctx, message("e", "x")); err != nil {
		return nil, err
	}
	return c.Recv(ctx)
}

func TestHTTPBrokenConnNotReused(t *testing.T) {
	_, s, p := httpSetup(t, Options{})
	addr := s.l.Addr()
	if _, err := roundTrip(context.Background(), p, addr, message("e", "warm")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	// The hanging call's conn is given back with the error, as a client does.
	if _, err := roundTrip(ctx, p, addr, message("hang", "")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging call: %v, want DeadlineExceeded", err)
	}
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("idle %d after a timed-out call, want 0", st.Idle)
	}
	// Even a caller that wrongly reports success cannot put a broken conn back.
	c, err := p.Get(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	_, err = callOn2(ctx2, c, "hang")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second hanging call: %v", err)
	}
	p.Put(addr, c, nil)
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("a broken conn put back with a nil error was kept")
	}
	resp, err := roundTrip(context.Background(), p, addr, message("e", "after"))
	if err != nil || string(resp.Body) != "after" {
		t.Fatalf("call after broken conns: %v %q", err, resp.Body)
	}
	if st := p.Stats(); st.Dials != 3 {
		t.Errorf("dials %d, want 3 (first, after each broken conn)", st.Dials)
	}
}

func callOn2(ctx context.Context, c transport.Conn, endpoint string) (*transport.Message, error) {
	if err := c.Send(ctx, message(endpoint, "")); err != nil {
		return nil, err
	}
	return c.Recv(ctx)
}

// Idle conns to a server that stops are not handed out again; the calls fail cleanly while
// it is down and work again once it is back on the same address.
func TestHTTPServerRestart(t *testing.T) {
	tr, s, p := httpSetup(t, Options{})
	addr := s.l.Addr()
	ctx := context.Background()
	// Two idle conns.
	c1, _ := p.Get(ctx, addr)
	c2, _ := p.Get(ctx, addr)
	for _, c := range []transport.Conn{c1, c2} {
		if c == nil {
			t.Fatal("Get failed")
		}
		if _, err := callOn(ctx, c); err != nil {
			t.Fatal(err)
		}
		p.Put(addr, c, nil)
	}
	s.Close()

	// The server's close reaches the idle conns asynchronously: a call may fail at Get
	// (the dead conns are skipped and the dial is refused) or, if the close has not
	// arrived yet, on the stale conn. Either way it fails with an error, not a hang, and
	// no conn survives.
	for i := range 3 {
		cctx, cancel := context.WithTimeout(ctx, testTimeout)
		_, err := roundTrip(cctx, p, addr, message("e", "down"))
		cancel()
		if err == nil {
			t.Fatalf("call %d to a stopped server succeeded", i)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d to a stopped server hung: %v", i, err)
		}
	}
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("idle %d while the server is down", st.Idle)
	}
	_, err := p.Get(ctx, addr)
	if !transport.IsConnectError(err) {
		t.Fatalf("Get while the server is down: %v, want a ConnectError", err)
	}

	s2 := startEcho(t, tr, addr)
	resp, err := roundTrip(ctx, p, s2.l.Addr(), message("e", "back"))
	if err != nil || string(resp.Body) != "back" {
		t.Fatalf("call after restart: %v %q", err, resp.Body)
	}
}

// The server closing idle conns is noticed at Get: the call goes through on a fresh dial.
func TestHTTPStaleIdleConnSkipped(t *testing.T) {
	tr := httptransport.New(httptransport.Options{IdleTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { _ = tr.Close() })
	s := startEcho(t, tr, "127.0.0.1:0")
	p := newPool(t, tr, Options{})
	addr := s.l.Addr()
	ctx := context.Background()
	c, err := p.Get(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := callOn(ctx, c); err != nil {
		t.Fatal(err)
	}
	p.Put(addr, c, nil)
	// Wait until the server's idle timeout has closed it.
	r := c.(Reusable)
	deadline := time.Now().Add(testTimeout)
	for r.Reusable() {
		if time.Now().After(deadline) {
			t.Fatal("the server did not close the idle conn")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := roundTrip(ctx, p, addr, message("e", "x")); err != nil {
		t.Fatalf("call after the server closed the idle conn: %v", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.Reuses != 0 {
		t.Errorf("%+v, want 2 dials and no reuse of the stale conn", st)
	}
}

func TestHTTPConcurrentCalls(t *testing.T) {
	_, s, p := httpSetup(t, Options{MaxIdle: 4})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				resp, err := roundTrip(context.Background(), p, s.l.Addr(), message("e", "c"))
				if err != nil || string(resp.Body) != "c" {
					t.Errorf("call: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := p.Stats()
	if st.Dials > 8 || st.Idle > 4 {
		t.Errorf("%+v: more dials than callers, or more idle than MaxIdle", st)
	}
}

const testTimeout = 10 * time.Second

// BenchmarkRoundTrip is one call through pool and HTTP transport to an in-process echo
// listener on loopback: Get, Send, Recv, Put.
func BenchmarkRoundTrip(b *testing.B) {
	tr := httptransport.New(httptransport.Options{})
	defer tr.Close()
	s := startEcho(b, tr, "127.0.0.1:0")
	p := New(tr, Options{})
	defer p.Close()
	addr := s.l.Addr()
	ctx := context.Background()
	m := message("Greeter.Hello", `{"name":"Ada"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := roundTrip(ctx, p, addr, m); err != nil {
			b.Fatal(err)
		}
	}
	if st := p.Stats(); st.Dials != 1 {
		b.Errorf("dials %d, want 1", st.Dials)
	}
}
