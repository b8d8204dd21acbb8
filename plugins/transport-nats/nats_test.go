package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/transport"
	"github.com/nats-io/nats.go"
)

// slack is how far past its budget a call may return before the test calls it a hang. It
// is generous: the test is about hangs, not speed.
const slack = 5 * time.Second

// newTransport returns an initialised transport on url, closed when the test ends.
func newTransport(t testing.TB, url string) *natsTransport {
	t.Helper()
	return newLoggingTransport(t, url, slog.New(slog.DiscardHandler))
}

// newLoggingTransport is newTransport with a logger.
func newLoggingTransport(t testing.TB, url string, log *slog.Logger) *natsTransport {
	t.Helper()
	tr := newNATS(log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Init(ctx, transport.Config{URL: url}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// handler answers one request.
type handler func(req *transport.Message) *transport.Message

// echo answers with the request's body and headers, plus "Served: yes".
func echo(req *transport.Message) *transport.Message {
	h := map[string]string{"Served": "yes"}
	for k, v := range req.Header {
		h[k] = v
	}
	return &transport.Message{Header: h, Body: req.Body}
}

// serve listens on tr and answers every call with h until the test ends. A nil answer
// means no reply.
func serve(t testing.TB, tr *natsTransport, h handler) transport.Listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := tr.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatalf("Listen: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req, err := c.Recv(ctx)
				if err != nil {
					t.Errorf("server Recv: %v", err)
					return
				}
				if resp := h(req); resp != nil {
					if err := c.Send(ctx, resp); err != nil && ctx.Err() == nil {
						t.Errorf("server Send: %v", err)
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		_ = l.Close()
		wg.Wait()
	})
	return l
}

// call makes one call to addr over a new conn.
func call(ctx context.Context, tr *natsTransport, addr string, req *transport.Message) (*transport.Message, error) {
	c, err := tr.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Send(ctx, req); err != nil {
		return nil, err
	}
	return c.Recv(ctx)
}

func TestRoundTrip(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	l := serve(t, srv, echo)
	if !strings.HasPrefix(l.Addr(), "nats:micro.inbound.") {
		t.Fatalf("Addr = %q, want nats:micro.inbound.<id>", l.Addr())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	// The same conn carries several calls, one after another, as micro's pool uses it.
	for i := range 3 {
		req := &transport.Message{
			Header: map[string]string{
				"Content-Type": "application/json",
				"Micro-Id":     fmt.Sprint(i),
				"Status":       "503", // NATS's own key; must pass through as ours
				"Description":  "d",
				"Empty":        "",
				"Set-Cookie":   "a=1" + transport.ValueSep + "b=2", // several values
			},
			Body: []byte(fmt.Sprintf(`{"n":%d}`, i)),
		}
		if err := c.Send(ctx, req); err != nil {
			t.Fatalf("Send: %v", err)
		}
		resp, err := c.Recv(ctx)
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if !bytes.Equal(resp.Body, req.Body) {
			t.Errorf("body = %q, want %q", resp.Body, req.Body)
		}
		for k, v := range req.Header {
			if resp.Header[k] != v {
				t.Errorf("header %s = %q, want %q", k, resp.Header[k], v)
			}
		}
		if resp.Header["Served"] != "yes" {
			t.Errorf("header Served = %q, want yes", resp.Header["Served"])
		}
	}

	// An empty response: no headers, no body; Status/503 in the request must not make
	// the empty reply look like "no responders".
	empty := serve(t, srv, func(*transport.Message) *transport.Message {
		return &transport.Message{Header: map[string]string{"Status": "503"}}
	})
	resp, err := call(ctx, cli, empty.Addr(), &transport.Message{})
	if err != nil {
		t.Fatalf("call with empty reply: %v", err)
	}
	if len(resp.Body) != 0 || resp.Header["Status"] != "503" {
		t.Errorf("empty reply = %+v", resp)
	}
}

func TestServerConnRecvTwice(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := srv.Listen(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := call(ctx, cli, l.Addr(), &transport.Message{Body: []byte("x")})
		errc <- err
	}()
	c, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	// The next Recv waits for the reply, then says the call is over.
	eof := make(chan error, 1)
	go func() {
		_, err := c.Recv(ctx)
		eof <- err
	}()
	if err := c.Send(ctx, &transport.Message{}); err != nil {
		t.Fatal(err)
	}
	if err := <-eof; !errors.Is(err, io.EOF) {
		t.Errorf("Recv after the reply = %v, want io.EOF", err)
	}
	if err := c.Send(ctx, &transport.Message{}); err == nil {
		t.Error("second Send succeeded, want an error")
	}
	if err := <-errc; err != nil {
		t.Errorf("call: %v", err)
	}
	// Close stops Accept.
	_ = l.Close()
	if _, err := l.Accept(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

func TestClientRecvBeforeSend(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	l := serve(t, srv, echo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	// As the plugin server's pump does: Recv waits in a loop while Sends come.
	got := make(chan string)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				recvErr <- err
				return
			}
			got <- string(m.Body)
		}
	}()
	for i := range 3 {
		want := fmt.Sprint("call ", i)
		if err := c.Send(ctx, &transport.Message{Body: []byte(want)}); err != nil {
			t.Fatal(err)
		}
		if b := <-got; b != want {
			t.Errorf("reply %q, want %q", b, want)
		}
	}
	// Close ends the waiting Recv.
	_ = c.Close()
	if err := <-recvErr; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Recv after Close = %v, want net.ErrClosed", err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	l := serve(t, srv, echo)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const workers, calls = 16, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c, err := cli.Dial(ctx, l.Addr())
			if err != nil {
				t.Errorf("Dial: %v", err)
				return
			}
			defer c.Close()
			for i := range calls {
				body := fmt.Appendf(nil, "%d/%d", w, i)
				if err := c.Send(ctx, &transport.Message{Body: body}); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
				resp, err := c.Recv(ctx)
				if err != nil {
					t.Errorf("Recv: %v", err)
					return
				}
				if !bytes.Equal(resp.Body, body) {
					t.Errorf("body = %q, want %q", resp.Body, body)
				}
			}
		})
	}
	wg.Wait()
}

func TestDeadlineWhenListenerNeverReplies(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	l := serve(t, srv, func(*transport.Message) *transport.Message { return nil })

	const budget = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	_, err := call(ctx, cli, l.Addr(), &transport.Message{Body: []byte("hi")})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > budget+slack {
		t.Errorf("call returned after %v, budget %v", d, budget)
	}
}

func TestNoResponders(t *testing.T) {
	s := natstest.Start(t)
	cli := newTransport(t, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := call(ctx, cli, "nats:micro.inbound.nobody", &transport.Message{})
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("err = %v, want no responders", err)
	}
	var ce *connectError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "connect") || !strings.Contains(err.Error(), "no responders") {
		t.Errorf("err = %v, want a connect error that says no responders", err)
	}
	if ctx.Err() != nil {
		t.Errorf("no responders took the whole budget")
	}

	// A closed listener's address has no responders either.
	srv := newTransport(t, s.URL)
	l, err := srv.Listen(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	if err := srv.nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := call(ctx, cli, l.Addr(), &transport.Message{}); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("call to closed listener: err = %v, want no responders", err)
	}
}

func TestDialBadAddress(t *testing.T) {
	s := natstest.Start(t)
	cli := newTransport(t, s.URL)
	for _, addr := range []string{"", "127.0.0.1:8080", "http://x", "nats:", "nats:a..b", "nats:a.*", "nats:a.>", "nats:a b"} {
		_, err := cli.Dial(context.Background(), addr)
		var ce *connectError
		if !errors.As(err, &ce) {
			t.Errorf("Dial(%q) = %v, want a connect error", addr, err)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", addr)) {
			t.Errorf("Dial(%q) error %q does not name the address", addr, err)
		}
	}
}

func TestOversizedMessage(t *testing.T) {
	const max = 64 << 10
	s := natstest.Start(t, natstest.WithMaxPayload(max))
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	big := make([]byte, max+1)
	l := serve(t, srv, echo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := cli.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Send(ctx, &transport.Message{Body: big})
	want := fmt.Sprintf("message of %d bytes exceeds the NATS server's max payload of %d", max+1, max)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Send(big) = %v, want %q", err, want)
	}
	// Headers count too.
	err = c.Send(ctx, &transport.Message{Header: map[string]string{"K": "v"}, Body: big[:max-5]})
	if err == nil || !strings.Contains(err.Error(), "exceeds the NATS server's max payload") {
		t.Errorf("Send(headers+body over max) = %v, want max payload error", err)
	}
	// The conn still works after a refused message.
	if err := c.Send(ctx, &transport.Message{Body: []byte("small")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(ctx); err != nil {
		t.Fatal(err)
	}

}

func TestOversizedReplyError(t *testing.T) {
	const max = 64 << 10
	s := natstest.Start(t, natstest.WithMaxPayload(max))
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := srv.Listen(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { _, _ = call(ctx, cli, l.Addr(), &transport.Message{}) }()
	c, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	err = c.Send(ctx, &transport.Message{Body: make([]byte, max+10)})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("message of %d bytes exceeds the NATS server's max payload of %d", max+10, max)) {
		t.Errorf("Send(big reply) = %v", err)
	}
}

func TestInitUnreachable(t *testing.T) {
	// A port nothing listens on: bind one, then close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + ln.Addr().String()
	_ = ln.Close()

	tr := newNATS(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = tr.Init(ctx, transport.Config{URL: url})
	if err == nil {
		_ = tr.Close()
		t.Fatal("Init succeeded on an unreachable URL")
	}
	if !strings.Contains(err.Error(), url) {
		t.Errorf("Init error %q does not name %s", err, url)
	}
	if _, err := tr.Dial(ctx, "nats:x"); err == nil || !strings.Contains(err.Error(), "not initialised") {
		t.Errorf("Dial after failed Init = %v, want not initialised", err)
	}

	// Passwords are not shown.
	err = tr.Init(ctx, transport.Config{URL: "nats://me:secret@" + ln.Addr().String()})
	if err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("Init error %q: want the address without the password", err)
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestServerRestart(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	var logs syncBuffer
	cli := newLoggingTransport(t, s.URL, transport.NewLogger(&logs, slog.LevelDebug))
	l := serve(t, srv, echo)

	const budget = 500 * time.Millisecond
	// oneCall makes a call within budget, retrying connect errors (as micro does) until it
	// succeeds or the budget ends. It fails the test if it returns late.
	oneCall := func(body string) error {
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		defer cancel()
		start := time.Now()
		defer func() {
			if d := time.Since(start); d > budget+slack {
				t.Errorf("call took %v, budget %v", d, budget)
			}
		}()
		for {
			resp, err := call(ctx, cli, l.Addr(), &transport.Message{Body: []byte(body)})
			if err == nil {
				if string(resp.Body) != body {
					return fmt.Errorf("body %q, want %q", resp.Body, body)
				}
				return nil
			}
			var ce *connectError
			if !errors.As(err, &ce) || ctx.Err() != nil {
				return err
			}
			select { // back off a little before the retry
			case <-ctx.Done():
				return err
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	var (
		stop           = make(chan struct{})
		wg             sync.WaitGroup
		okN, failN, id atomic.Int64
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := oneCall(fmt.Sprint(id.Add(1))); err != nil {
					failN.Add(1)
				} else {
					okN.Add(1)
				}
			}
		})
	}
	waitOK := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for okN.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d calls succeeded, want %d", okN.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitOK(20)
	s.Stop()
	waitDisconnected(t, srv.nc)
	waitDisconnected(t, cli.nc)
	// Stay down for longer than a budget, so that calls in flight run out of it.
	time.Sleep(2 * budget)
	s.Restart()
	// Both clients reconnect by themselves.
	waitConnected(t, srv.nc)
	waitConnected(t, cli.nc)
	waitOK(okN.Load() + 20)
	close(stop)
	wg.Wait()
	t.Logf("calls: %d ok, %d failed during the restart", okN.Load(), failN.Load())
	for _, want := range []string{"connected to NATS", "disconnected from NATS", "reconnected to NATS"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}

	// Once it is back, every call within its budget succeeds.
	for i := range 20 {
		if err := oneCall(fmt.Sprint("after-", i)); err != nil {
			t.Errorf("call %d after restart: %v", i, err)
		}
	}
}

// waitDisconnected waits until nc has seen its server go.
func waitDisconnected(t *testing.T, nc *nats.Conn) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatalf("NATS client still connected after the server stopped")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitConnected waits until nc has reconnected.
func waitConnected(t *testing.T, nc *nats.Conn) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !nc.IsConnected() || nc.Stats().Reconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("NATS client not reconnected: %v", nc.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStoppedServerCallsEndByBudget(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	l := serve(t, srv, echo)
	s.Stop()
	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	_, err := call(ctx, cli, l.Addr(), &transport.Message{Body: []byte("x")})
	if err == nil {
		t.Fatal("call succeeded with the NATS server down")
	}
	if d := time.Since(start); d > budget+slack {
		t.Errorf("call returned after %v, budget %v", d, budget)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	s := natstest.Start(b)
	srv := newTransport(b, s.URL)
	cli := newTransport(b, s.URL)
	l := serve(b, srv, echo)
	ctx := context.Background()
	c, err := cli.Dial(ctx, l.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := &transport.Message{Header: map[string]string{"Content-Type": "application/json"}, Body: []byte(`{"name":"bench"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send(ctx, req); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Recv(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRoundTripParallel(b *testing.B) {
	s := natstest.Start(b)
	srv := newTransport(b, s.URL)
	cli := newTransport(b, s.URL)
	l := serve(b, srv, echo)
	ctx := context.Background()
	req := &transport.Message{Header: map[string]string{"Content-Type": "application/json"}, Body: []byte(`{"name":"bench"}`)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := cli.Dial(ctx, l.Addr())
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		for pb.Next() {
			if err := c.Send(ctx, req); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Recv(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
