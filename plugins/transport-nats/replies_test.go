package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/transport"
	"github.com/nats-io/nats.go"
)

// rogueClient connects a plain NATS client (no micro) to url that subscribes to every
// listener's subject, as a foreign client with that permission can, and calls answer with
// every request it sees. After answer returns, the rogue flushes, so that whatever answer
// published has reached the NATS server, and then sends on the returned channel: a node
// that waits for it answers after the rogue.
func rogueClient(t *testing.T, url string, answer func(nc *nats.Conn, req *nats.Msg)) <-chan struct{} {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("rogue: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	answered := make(chan struct{}, 16)
	_, err = nc.Subscribe(subjectPrefix+">", func(req *nats.Msg) {
		answer(nc, req)
		if err := nc.Flush(); err != nil {
			t.Errorf("rogue: flush: %v", err)
		}
		answered <- struct{}{}
	})
	if err != nil {
		t.Fatalf("rogue: subscribe: %v", err)
	}
	// The server has the subscription once the flush returns.
	if err := nc.Flush(); err != nil {
		t.Fatalf("rogue: flush: %v", err)
	}
	return answered
}

// publish publishes msg for the rogue, failing the test if NATS refuses it.
func publish(t *testing.T, nc *nats.Conn, msg *nats.Msg) {
	t.Helper()
	if err := nc.PublishMsg(msg); err != nil {
		t.Errorf("rogue: publish to %s: %v", msg.Subject, err)
	}
}

// afterRogue wraps h so that the node answers each request only once the rogue has
// answered it (or the test ends).
func afterRogue(t *testing.T, answered <-chan struct{}, h handler) handler {
	return func(req *transport.Message) *transport.Message {
		select {
		case <-answered:
		case <-t.Context().Done():
			return nil
		}
		return h(req)
	}
}

// TestForgedReplyFirst: a rogue answers every request before the node. The client Conn's
// first Recv returns the rogue's reply and the second the node's, call after call on one
// conn; a forged "no responders" after a reply is no error.
func TestForgedReplyFirst(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	answered := rogueClient(t, s.URL, func(nc *nats.Conn, req *nats.Msg) {
		publish(t, nc, &nats.Msg{Subject: req.Reply, Data: []byte("forged " + string(req.Data))})
		// NATS's own "no responders" looks like this; the node is there, so it is forged.
		publish(t, nc, &nats.Msg{Subject: req.Reply, Header: nats.Header{"Status": []string{"503"}}})
	})
	l := serve(t, srv, afterRogue(t, answered, echo))

	ctx, c := dialTest(t, cli, l.Addr())
	for i := range 3 {
		body := fmt.Sprint("call ", i)
		if err := c.Send(ctx, &transport.Message{Body: []byte(body)}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		first, err := c.Recv(ctx)
		if err != nil {
			t.Fatalf("call %d: first Recv: %v", i, err)
		}
		if got, want := string(first.Body), "forged "+body; got != want {
			t.Errorf("call %d: first reply %q, want the rogue's %q", i, got, want)
		}
		second, err := c.Recv(ctx)
		if err != nil {
			t.Fatalf("call %d: second Recv: %v", i, err)
		}
		if string(second.Body) != body || second.Header["Served"] != "yes" {
			t.Errorf("call %d: second reply %q %v, want the node's echo of %q", i, second.Body, second.Header, body)
		}
	}
}

// TestStaleRepliesDropped: the next Send drops the replies to the earlier request that
// Recv has not returned, and a reply to it that arrives after that Send is never returned
// for the new request.
func TestStaleRepliesDropped(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	var first string // the reply subject of request 1, for the rogue's late answer
	answered := rogueClient(t, s.URL, func(nc *nats.Conn, req *nats.Msg) {
		switch string(req.Data) {
		case "1":
			first = req.Reply // the rogue's handler runs on one goroutine
		case "2":
			// The node has answered request 1 and the client has sent request 2: answer
			// request 1 now, then request 2 (NATS keeps the order of one publisher).
			publish(t, nc, &nats.Msg{Subject: first, Data: []byte("late reply to 1")})
			publish(t, nc, &nats.Msg{Subject: req.Reply, Data: []byte("rogue reply to 2")})
		case "3":
			publish(t, nc, &nats.Msg{Subject: req.Reply, Data: []byte("rogue reply to 3")})
		}
	})
	// The node answers each request after the rogue has seen it (and answered it).
	l := serve(t, srv, afterRogue(t, answered, echo))

	ctx, c := dialTest(t, cli, l.Addr())
	callWant := func(body string, replies ...string) {
		t.Helper()
		if err := c.Send(ctx, &transport.Message{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		for _, want := range replies {
			m, err := c.Recv(ctx)
			if err != nil {
				t.Fatalf("call %s: Recv: %v", body, err)
			}
			if string(m.Body) != want {
				t.Errorf("call %s: reply %q, want %q", body, m.Body, want)
			}
		}
	}
	callWant("1", "1")
	callWant("2", "rogue reply to 2")
	// The node's reply to 2 is held, not returned: the node's reply to 1, the rogue's two
	// and the node's reply to 2 have been handled.
	waitHandled(ctx, t, c.(*clientConn), 4)
	callWant("3", "rogue reply to 3", "3")
}

// waitHandled waits until c's replies subscription has handled n messages. nats.go counts
// a message as delivered before its handler runs, and as pending until it has returned.
func waitHandled(ctx context.Context, t *testing.T, c *clientConn, n int64) {
	t.Helper()
	for {
		pending, _, err := c.sub.Pending()
		if err != nil {
			t.Fatal(err)
		}
		delivered, err := c.sub.Delivered()
		if err != nil {
			t.Fatal(err)
		}
		if delivered == n && pending == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("delivered %d of %d replies, %d pending", delivered, n, pending)
		case <-time.After(time.Millisecond):
		}
	}
}

// TestRepliesBounded: a request takes at most maxReplies replies; the rest, the node's
// included when it comes after them, are dropped.
func TestRepliesBounded(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	cli := newTransport(t, s.URL)
	const flood = maxReplies + 2
	answered := rogueClient(t, s.URL, func(nc *nats.Conn, req *nats.Msg) {
		for i := range flood {
			publish(t, nc, &nats.Msg{Subject: req.Reply, Data: fmt.Appendf(nil, "forged %d", i)})
		}
	})
	l := serve(t, srv, afterRogue(t, answered, echo))

	ctx, conn := dialTest(t, cli, l.Addr())
	if err := conn.Send(ctx, &transport.Message{Body: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	// Every message has been handled: the rogue's and the node's, which comes after them.
	waitHandled(ctx, t, conn.(*clientConn), flood+1)
	for i := range maxReplies {
		m, err := conn.Recv(ctx)
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if want := fmt.Sprint("forged ", i); string(m.Body) != want {
			t.Errorf("reply %d: %q, want %q", i, m.Body, want)
		}
	}
	// Nothing more is held: a Recv whose ctx has ended returns its error.
	done, stop := context.WithCancel(ctx)
	stop()
	if m, err := conn.Recv(done); !errors.Is(err, context.Canceled) {
		t.Errorf("Recv after %d replies = %v, %v; want nothing more (context canceled)", maxReplies, m, err)
	}
}

// TestForgedReplyOverGRPC: through the sdk's plugin server, as micro uses the plugin, a
// Dial stream carries every reply to micro in order: the rogue's, then the node's; a late
// reply to an earlier request never comes after the next request.
func TestForgedReplyOverGRPC(t *testing.T) {
	s := natstest.Start(t)
	srv := newTransport(t, s.URL)
	client := pluginClient(t, s.URL)
	var first string
	answered := rogueClient(t, s.URL, func(nc *nats.Conn, req *nats.Msg) {
		if first != "" {
			publish(t, nc, &nats.Msg{Subject: first, Data: []byte("late")})
		}
		first = req.Reply
		publish(t, nc, &nats.Msg{Subject: req.Reply, Data: []byte("forged")})
	})
	l := serve(t, srv, afterRogue(t, answered, echo))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ds, err := client.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: l.Addr()}}); err != nil {
		t.Fatal(err)
	}
	if f, err := ds.Recv(); err != nil || f.GetConnected() == nil {
		t.Fatalf("dial: want connected, got %v, %v", f, err)
	}
	for i := range 3 {
		body := fmt.Sprint("call ", i)
		send(t, ds, nil, body)
		for _, want := range []string{"forged", body} {
			f, err := ds.Recv()
			if err != nil {
				t.Fatalf("call %d: dial recv: %v", i, err)
			}
			if got := string(f.GetMessage().GetBody()); got != want {
				t.Errorf("call %d: reply %q, want %q", i, got, want)
			}
		}
	}
	_ = ds.CloseSend()
	if _, err := ds.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("dial stream after CloseSend: %v, want its end", err)
	}
}

// dialTest dials addr through cli, with a context that ends with the test (10s at most);
// the connection is closed then too.
func dialTest(t *testing.T, cli *natsTransport, addr string) (context.Context, transport.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	c, err := cli.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ctx, c
}
