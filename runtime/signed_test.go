package runtime

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/security"
	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/transport"
)

// These are unit tests of the signatures' rules, over an in-memory pair of Conns; e2e's
// TestNATSSignedCalls runs them over a real NATS server with a rogue client.

// pipe is one end of an in-memory pair of transport Conns.
type pipe struct {
	in, out chan *transport.Message
}

func newPipe() (*pipe, *pipe) {
	a, b := make(chan *transport.Message, 16), make(chan *transport.Message, 16)
	return &pipe{in: a, out: b}, &pipe{in: b, out: a}
}

func (p *pipe) Send(ctx context.Context, m *transport.Message) error {
	p.out <- m
	return nil
}

func (p *pipe) Recv(ctx context.Context) (*transport.Message, error) {
	select {
	case m := <-p.in:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *pipe) Close() error { return nil }

// testSource is a Source from the local CA in dir, for services.
func testSource(t *testing.T, dir string, services ...string) *security.Source {
	t.Helper()
	src, err := security.NewSource(context.Background(), security.Options{Dir: dir, Services: services, Instance: "test-" + filepath.Base(t.TempDir()), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	return src
}

// signedPair returns a client Conn signed by client and a server Conn signed by srv,
// connected to each other, and the raw ends a rogue would write to.
func signedPair(client, srv *security.Source) (c, s *signedConn, toClient, toServer chan *transport.Message) {
	log := slog.New(slog.DiscardHandler)
	a, b := newPipe()
	c = &signedConn{Conn: a, t: newSignedTransport(nil, client, log), client: true}
	s = &signedConn{Conn: b, t: newSignedTransport(nil, srv, log)}
	return c, s, a.in, b.in
}

func request(body string) *transport.Message {
	return &transport.Message{Header: map[string]string{transport.HeaderService: "count", "X-A": "1"}, Body: []byte(body)}
}

func TestSignedCall(t *testing.T) {
	dir := t.TempDir()
	c, s, toClient, _ := signedPair(testSource(t, dir, "frontend"), testSource(t, dir, "count"))
	ctx := context.Background()
	if err := c.Send(ctx, request("hi")); err != nil {
		t.Fatal(err)
	}
	req, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(req.Body) != "hi" || req.Header["X-A"] != "1" || req.Header[security.SignatureHeader] != "" || req.Header[headerNonce] != "" {
		t.Errorf("request %+v", req)
	}
	if p := server.PeerFrom(s.Context()); len(p.Services) != 1 || p.Services[0] != "frontend" {
		t.Errorf("the server's peer is %+v, want frontend", p)
	}

	// A forged reply, then one signed for another call, come before the real one: both
	// are ignored.
	toClient <- &transport.Message{Header: map[string]string{transport.HeaderStatus: "200"}, Body: []byte("forged")}
	other, osrv, _, _ := signedPair(testSource(t, dir, "x"), testSource(t, dir, "count"))
	_ = other.Send(ctx, request("other"))
	if _, err := osrv.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	_ = osrv.Send(ctx, &transport.Message{Header: map[string]string{transport.HeaderStatus: "200"}, Body: []byte("stale")})
	toClient <- <-osrv.Conn.(*pipe).out
	if err := s.Send(ctx, &transport.Message{Header: map[string]string{transport.HeaderStatus: "200"}, Body: []byte("real")}); err != nil {
		t.Fatal(err)
	}
	reply, err := c.Recv(ctx)
	if err != nil || string(reply.Body) != "real" {
		t.Fatalf("reply %v %v, want the real one", reply, err)
	}
}

func TestSignedServerRefuses(t *testing.T) {
	dir := t.TempDir()
	srv := testSource(t, dir, "count")
	ctx := context.Background()
	check := func(name string, m *transport.Message) {
		t.Helper()
		_, s, _, toServer := signedPair(srv, srv)
		toServer <- m
		_, err := s.Recv(ctx)
		var se interface{ StatusCode() int }
		if !errors.As(err, &se) || se.StatusCode() != 403 || !errors.Is(err, errUnsigned) {
			t.Errorf("%s: %v, want a 403 refusal", name, err)
		}
	}
	check("unsigned", request("x"))

	// Signed by a micro of another CA.
	c, _, _, _ := signedPair(testSource(t, t.TempDir(), "frontend"), srv)
	_ = c.Send(ctx, request("x"))
	check("another CA", <-c.Conn.(*pipe).out)

	// Signed long ago: a replayed request.
	c, _, _, _ = signedPair(testSource(t, dir, "frontend"), srv)
	m := request("x")
	_ = c.Send(ctx, m)
	signed := <-c.Conn.(*pipe).out
	signed.Header[headerSignedAt] = strconv.FormatInt(time.Now().Add(-time.Hour).UnixMilli(), 10)
	check("an old request (its time changed, so its signature fails too)", signed)
}

func TestSignedClientGivesUp(t *testing.T) {
	dir := t.TempDir()
	c, _, toClient, _ := signedPair(testSource(t, dir, "frontend"), testSource(t, dir, "count"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = c.Send(ctx, request("hi"))
	for range maxForged {
		toClient <- &transport.Message{Header: map[string]string{}, Body: []byte("forged")}
	}
	if _, err := c.Recv(ctx); !errors.Is(err, errUnsigned) {
		t.Fatalf("after %d forged replies: %v", maxForged, err)
	}
}
