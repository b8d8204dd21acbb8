package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/transport"
	"github.com/nats-io/nats.go"
)

// streamHandler serves one accepted stream conn; serveStreams closes the conn after it.
type streamHandler func(ctx context.Context, c transport.Conn)

// serveStreams listens on tr and runs h for every accepted conn until the test ends.
func serveStreams(t testing.TB, tr *natsTransport, h streamHandler) transport.Listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := tr.Listen(ctx, "")
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
				h(ctx, c)
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

// openMsg is a stream's first message.
func openMsg(body string) *transport.Message {
	return &transport.Message{Header: map[string]string{transport.HeaderStream: "1", "Micro-Endpoint": "S.Chat"}, Body: []byte(body)}
}

// dialStream dials addr on tr and opens a stream with openMsg(body).
func dialStream(t testing.TB, ctx context.Context, tr *natsTransport, addr, body string) transport.Conn {
	t.Helper()
	c, err := tr.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Send(ctx, openMsg(body)); err != nil {
		t.Fatalf("open stream: %v", err)
	}
	return c
}

func mustRecv(t testing.TB, ctx context.Context, c transport.Conn) *transport.Message {
	t.Helper()
	m, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return m
}

func mustSend(t testing.TB, ctx context.Context, c transport.Conn, m *transport.Message) {
	t.Helper()
	if err := c.Send(ctx, m); err != nil {
		t.Fatalf("Send: %v", err)
	}
}

// TestStreamInterleaved sends several messages each way, in batches, and checks order,
// headers and bodies; the server greets first, before the client sends anything more.
func TestStreamInterleaved(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	serverDone := make(chan error, 1)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		serverDone <- func() error {
			open, err := c.Recv(ctx)
			if err != nil {
				return err
			}
			if open.Header[transport.HeaderStream] != "1" || string(open.Body) != "hi" {
				return fmt.Errorf("open message %v %q", open.Header, open.Body)
			}
			if err := c.Send(ctx, &transport.Message{Header: map[string]string{"Kind": "greeting"}, Body: []byte("welcome")}); err != nil {
				return err
			}
			for {
				m, err := c.Recv(ctx)
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				// Echo, and a second message for every third.
				if err := c.Send(ctx, &transport.Message{Header: map[string]string{"N": m.Header["N"], "Status": "200"}, Body: m.Body}); err != nil {
					return err
				}
			}
		}()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "hi")
	if m := mustRecv(t, ctx, c); string(m.Body) != "welcome" || m.Header["Kind"] != "greeting" {
		t.Fatalf("greeting %v %q", m.Header, m.Body)
	}
	n := 0
	for _, batch := range []int{1, 3, 5, 2} {
		for i := range batch {
			mustSend(t, ctx, c, &transport.Message{Header: map[string]string{"N": strconv.Itoa(n + i)}, Body: []byte("m" + strconv.Itoa(n+i))})
		}
		for i := range batch {
			m := mustRecv(t, ctx, c)
			want := strconv.Itoa(n + i)
			if m.Header["N"] != want || string(m.Body) != "m"+want || m.Header["Status"] != "200" {
				t.Fatalf("echo %v %q, want N=%s body m%s Status=200", m.Header, m.Body, want, want)
			}
		}
		n += batch
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server: %v", err)
	}
}

// TestStreamClientClose: the server sees every message, then io.EOF.
func TestStreamClientClose(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	got := make(chan string, 10)
	end := make(chan error, 1)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				end <- err
				return
			}
			got <- string(m.Body)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "open")
	mustSend(t, ctx, c, &transport.Message{Body: []byte("one")})
	mustSend(t, ctx, c, &transport.Message{Body: []byte("two")})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-end; !errors.Is(err, io.EOF) {
		t.Fatalf("server Recv after client Close = %v, want io.EOF", err)
	}
	close(got)
	var all []string
	for b := range got {
		all = append(all, b)
	}
	if strings.Join(all, ",") != "open,one,two" {
		t.Errorf("server got %v, want open,one,two", all)
	}
	// The closed conn refuses more.
	if err := c.Send(ctx, &transport.Message{}); err == nil {
		t.Error("Send after Close succeeded")
	}
}

// TestStreamServerClose: the client sees the server's messages, then io.EOF, and a Send
// after that says the peer closed.
func TestStreamServerClose(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		if _, err := c.Recv(ctx); err != nil {
			t.Errorf("server Recv: %v", err)
			return
		}
		for _, b := range []string{"a", "b"} {
			if err := c.Send(ctx, &transport.Message{Body: []byte(b)}); err != nil {
				t.Errorf("server Send: %v", err)
			}
		}
		// serveStreams closes c.
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "")
	for _, want := range []string{"a", "b"} {
		if m := mustRecv(t, ctx, c); string(m.Body) != want {
			t.Fatalf("got %q, want %q", m.Body, want)
		}
	}
	for range 2 { // io.EOF stays
		if _, err := c.Recv(ctx); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv after server Close = %v, want io.EOF", err)
		}
	}
	if err := c.Send(ctx, &transport.Message{}); err == nil || !strings.Contains(err.Error(), "peer closed") {
		t.Errorf("Send after the peer closed = %v, want an error saying so", err)
	}
}

// TestStreamErrorThenClose: a failing server sends a last message with Micro-Status and a
// JSON body, then closes.
func TestStreamErrorThenClose(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	const body = `{"id":"app","code":500,"detail":"boom"}`
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		if _, err := c.Recv(ctx); err != nil {
			t.Errorf("server Recv: %v", err)
			return
		}
		_ = c.Send(ctx, &transport.Message{Header: map[string]string{"Micro-Status": "500", "Content-Type": "application/json"}, Body: []byte(body)})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "")
	m := mustRecv(t, ctx, c)
	if m.Header["Micro-Status"] != "500" || string(m.Body) != body {
		t.Errorf("last message %v %q, want Micro-Status 500 and %s", m.Header, m.Body, body)
	}
	if _, err := c.Recv(ctx); !errors.Is(err, io.EOF) {
		t.Errorf("Recv after the error = %v, want io.EOF", err)
	}
}

// TestStreamNoListener: opening a stream to a subject nobody listens on fails at once
// with a connect error, well within its budget.
func TestStreamNoListener(t *testing.T) {
	s := natstest.Start(t)
	cli := newTransport(t, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, "nats:micro.inbound.nobody")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recvErr := make(chan error, 1)
	go func() { _, err := c.Recv(ctx); recvErr <- err }() // waiting first, as the pump does
	err = c.Send(ctx, openMsg(""))
	var ce *connectError
	if !errors.As(err, &ce) || !errors.Is(err, nats.ErrNoResponders) || ctx.Err() != nil {
		t.Fatalf("open to no listener = %v, want a no-responders connect error before the budget ends", err)
	}
	if err := <-recvErr; !errors.As(err, &ce) {
		t.Errorf("Recv on the failed stream = %v, want the connect error", err)
	}
}

// TestStreamOpenUnanswered: a subject whose subscriber never acknowledges (a peer that
// vanished) fails the open when its budget ends, not later.
func TestStreamOpenUnanswered(t *testing.T) {
	s := natstest.Start(t)
	cli := newTransport(t, s.URL)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("micro.inbound.mute")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	c, err := cli.Dial(ctx, "nats:micro.inbound.mute")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	err = c.Send(ctx, openMsg(""))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open with no acknowledgement = %v, want the budget's deadline", err)
	}
	if d := time.Since(start); d > budget+slack {
		t.Errorf("open returned after %v, budget %v", d, budget)
	}
}

// TestStreamRecvHonoursCtx: a Recv with nothing to read ends with its ctx, and the stream
// still works afterwards.
func TestStreamRecvHonoursCtx(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	release := make(chan struct{})
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		_, _ = c.Recv(ctx)
		select {
		case <-release:
		case <-ctx.Done():
		}
		_ = c.Send(ctx, &transport.Message{Body: []byte("late")})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "")
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	if _, err := c.Recv(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv with nothing sent = %v, want its deadline", err)
	}
	close(release)
	if m := mustRecv(t, ctx, c); string(m.Body) != "late" {
		t.Errorf("got %q, want late", m.Body)
	}
}

// TestStreamOversized: a stream message over the server's max payload is refused with
// the max payload error, and the stream goes on.
func TestStreamOversized(t *testing.T) {
	const max = 64 << 10
	s := natstest.Start(t, natstest.WithMaxPayload(max))
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				return
			}
			if err := c.Send(ctx, m); err != nil {
				t.Errorf("server Send: %v", err)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := make([]byte, max+1)
	open := openMsg("")
	open.Body = big
	if err := c.Send(ctx, open); err == nil || !strings.Contains(err.Error(), "exceeds the NATS server's max payload") {
		t.Fatalf("open with a big body = %v, want the max payload error", err)
	}

	c = dialStream(t, ctx, cli, l.Addr(), "ok")
	mustRecv(t, ctx, c) // the echo of the open
	if err := c.Send(ctx, &transport.Message{Body: big}); err == nil || !strings.Contains(err.Error(), "exceeds the NATS server's max payload") {
		t.Fatalf("Send(big) = %v, want the max payload error", err)
	}
	mustSend(t, ctx, c, &transport.Message{Body: []byte("small")})
	if m := mustRecv(t, ctx, c); string(m.Body) != "small" {
		t.Errorf("got %q after the refused message", m.Body)
	}
}

// TestStreamConcurrent sends and receives at the same time on both sides.
func TestStreamConcurrent(t *testing.T) {
	const n = 500
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	serverErr := make(chan error, 2)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		if _, err := c.Recv(ctx); err != nil {
			serverErr <- err
			return
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range n {
				if err := c.Send(ctx, &transport.Message{Body: []byte(strconv.Itoa(i))}); err != nil {
					serverErr <- err
					return
				}
			}
		})
		for i := 0; ; i++ {
			m, err := c.Recv(ctx)
			if errors.Is(err, io.EOF) {
				if i != n {
					serverErr <- fmt.Errorf("server got %d messages, want %d", i, n)
				}
				break
			}
			if err != nil {
				serverErr <- err
				break
			}
			if string(m.Body) != strconv.Itoa(i) {
				serverErr <- fmt.Errorf("server got %q, want %d", m.Body, i)
				break
			}
		}
		wg.Wait()
		serverErr <- nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	recvd := make(chan error, 1)
	go func() { // Recv first, before the stream is open, as the plugin server's pump does
		for i := range n {
			m, err := c.Recv(ctx)
			if err != nil {
				recvd <- err
				return
			}
			if string(m.Body) != strconv.Itoa(i) {
				recvd <- fmt.Errorf("client got %q, want %d", m.Body, i)
				return
			}
		}
		recvd <- nil
	}()
	mustSend(t, ctx, c, openMsg(""))
	for i := range n {
		mustSend(t, ctx, c, &transport.Message{Body: []byte(strconv.Itoa(i))})
	}
	if err := <-recvd; err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-serverErr; err != nil {
		t.Fatalf("server: %v", err)
	}
}

// BenchmarkStreamOneWay measures messages per second one way on one stream: the client
// sends, the server receives.
func BenchmarkStreamOneWay(b *testing.B) {
	s := natstest.Start(b)
	srv, cli := newTransport(b, s.URL), newTransport(b, s.URL)
	got := make(chan int, 1)
	l := serveStreams(b, srv, func(ctx context.Context, c transport.Conn) {
		n := -1 // the open message
		for {
			if _, err := c.Recv(ctx); err != nil {
				got <- n
				return
			}
			n++
		}
	})
	ctx := context.Background()
	c := dialStream(b, ctx, cli, l.Addr(), "")
	m := &transport.Message{Header: map[string]string{"Content-Type": "application/json"}, Body: []byte(`{"name":"bench"}`)}
	b.ReportAllocs()
	start := time.Now()
	n := 0
	for b.Loop() {
		if err := c.Send(ctx, m); err != nil {
			b.Fatal(err)
		}
		n++
	}
	_ = c.Close()
	if r := <-got; r != n {
		b.Fatalf("server received %d messages, want %d", r, n)
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msgs/s")
}

// TestStreamFlowControl: a sender whose receiver does not read waits once the window is
// full (its Send ends with its ctx), and nothing is lost: the receiver then gets every
// message in order, and the stream goes on.
func TestStreamFlowControl(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	release := make(chan struct{})
	bodies := make(chan string, 1<<16)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		select {
		case <-release:
		case <-ctx.Done():
			return
		}
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				close(bodies)
				return
			}
			bodies <- string(m.Body[:8])
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "")
	body := make([]byte, 1024)
	sent := 0
	for {
		copy(body, fmt.Sprintf("%08d", sent))
		short, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := c.Send(short, &transport.Message{Body: body})
		scancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("Send %d: %v", sent, err)
		}
		sent++
		if sent > 2*streamWindow/len(body) {
			t.Fatalf("sent %d KiB to a receiver that does not read; want the window to stop it", sent)
		}
	}
	if sent < streamWindow/(len(body)+msgOverhead)/2 {
		t.Errorf("the window stopped the sender after %d messages of 1 KiB", sent)
	}
	close(release)
	for i := range sent {
		if b := <-bodies; b != fmt.Sprintf("%08d", i) {
			t.Fatalf("message %d is %q", i, b)
		}
	}
	// Large messages (near the 1 MiB max payload) pass the window one after another.
	big := make([]byte, 900<<10)
	for i := range 20 {
		copy(big, fmt.Sprintf("%08d", sent+i))
		mustSend(t, ctx, c, &transport.Message{Body: big})
	}
	for i := range 20 {
		if b := <-bodies; b != fmt.Sprintf("%08d", sent+i) {
			t.Fatalf("big message %d is %q", i, b)
		}
	}
}

// TestStreamCloseWhileOpening: Close ends an open that waits for its acknowledgement.
func TestStreamCloseWhileOpening(t *testing.T) {
	s := natstest.Start(t)
	cli := newTransport(t, s.URL)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("micro.inbound.mute")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, "nats:micro.inbound.mute")
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() { opened <- c.Send(ctx, openMsg("")) }()
	if _, err := sub.NextMsg(10 * time.Second); err != nil { // the open is out
		t.Fatal(err)
	}
	_ = c.Close()
	if err := <-opened; !errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		t.Errorf("open ended by Close = %v, want net.ErrClosed before the budget", err)
	}
}

// TestStreamGap: a message that NATS lost (shown here by one that skips a number) fails
// the receiver's Recv, after the messages before it, instead of going unnoticed; and the
// sequence header does not reach the caller.
func TestStreamGap(t *testing.T) {
	s := natstest.Start(t)
	srv, cli := newTransport(t, s.URL), newTransport(t, s.URL)
	l := serveStreams(t, srv, func(ctx context.Context, c transport.Conn) {
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		_ = c.Send(ctx, &transport.Message{Body: []byte("one")})
		<-ctx.Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dialStream(t, ctx, cli, l.Addr(), "")
	m := mustRecv(t, ctx, c)
	if string(m.Body) != "one" || len(m.Header) != 0 {
		t.Fatalf("got %v %q, want one with no headers", m.Header, m.Body)
	}
	// Message 3 straight into the client's inbox: message 2 is "lost".
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	inbox := c.(*clientConn).st.sub.Subject
	if err := nc.PublishMsg(&nats.Msg{Subject: inbox, Header: nats.Header{seqHeader: []string{"3"}}, Data: []byte("three")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(ctx); err == nil || !strings.Contains(err.Error(), "messages were lost") {
		t.Errorf("Recv after a gap = %v, want an error saying messages were lost", err)
	}
}
