package main

import (
	"bytes"
	"errors"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/sdk/broker"
)

// TestRequestLostWithConnection: a request whose reply is lost with the connection (an
// Ack waiting for JetStream's confirmation, a Publish waiting for JetStream's ack, and
// the JetStream API requests of Backlog, Messages, Delete and Subscribe) fails at once as
// unavailable when the connection drops, rather than waiting out its budget:
// nats.go does not fail a request in flight when the connection drops, and the server
// answered a connection that is gone. A consumer that acked in turn would otherwise stop
// consuming for the whole budget after a NATS restart (TestRestartLosesNothing).
func TestRequestLostWithConnection(t *testing.T) {
	for _, tc := range []struct {
		name string
		sent string // what the client sends for the request
		call func(t *testing.T, b *natsBroker, c broker.Consumer, d *broker.Delivery) error
	}{
		{"Ack", "+ACK", func(t *testing.T, _ *natsBroker, c broker.Consumer, d *broker.Delivery) error {
			return c.Ack(testCtx(t), d)
		}},
		{"Publish", "second", func(t *testing.T, b *natsBroker, _ broker.Consumer, _ *broker.Delivery) error {
			return b.Publish(testCtx(t), &broker.Message{ID: "m2", Topic: "t", Body: []byte("second")})
		}},
		{"Backlog", "CONSUMER.INFO", func(t *testing.T, _ *natsBroker, c broker.Consumer, _ *broker.Delivery) error {
			_, err := c.Backlog(testCtx(t))
			return err
		}},
		{"Messages", "CONSUMER.LIST", func(t *testing.T, b *natsBroker, _ broker.Consumer, _ *broker.Delivery) error {
			_, err := b.Messages(testCtx(t), "t", 10)
			return err
		}},
		{"Delete", "CONSUMER.LIST", func(t *testing.T, b *natsBroker, _ broker.Consumer, _ *broker.Delivery) error {
			return b.Delete(testCtx(t), "t", "m1")
		}},
		{"Subscribe", "CONSUMER.INFO", func(t *testing.T, b *natsBroker, _ broker.Consumer, _ *broker.Delivery) error {
			_, err := b.Subscribe(testCtx(t), broker.Subscription{Topic: "t", Group: "g2"})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startNATS(t)
			p := startHoldProxy(t, s.URL)
			b := newTestBroker(t, p.URL, broker.Config{})
			c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g"})
			publish(t, b, "t", "m1", "first", nil)
			d := next(t, c)

			p.hold()
			errc := make(chan error, 1)
			start := time.Now()
			go func() { errc <- tc.call(t, b, c, d) }()
			p.waitSent(t, tc.sent) // the request is out; its reply is held back
			p.drop()
			select {
			case err := <-errc:
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("%s when the connection dropped: %v, want ErrUnavailable", tc.name, err)
				}
				if e := time.Since(start); e > wait/2 {
					t.Errorf("%s failed after %v, want at once", tc.name, e)
				}
			case <-time.After(wait / 2):
				t.Fatalf("%s still waits %v after the connection dropped", tc.name, wait/2)
			}
		})
	}
}

// holdProxy is a TCP proxy to a NATS server that can hold back what the server sends,
// then drop the connections: a request sent meanwhile never gets its reply. Clients that
// connect again are proxied as usual.
type holdProxy struct {
	URL    string
	target string

	mu     sync.Mutex
	conns  []net.Conn
	held   bool
	sent   []byte        // what clients sent while held
	more   chan struct{} // closed when sent grows, then replaced
	closed bool
}

// startHoldProxy starts a proxy to the NATS server at serverURL, stopped when the test
// ends.
func startHoldProxy(t *testing.T, serverURL string) *holdProxy {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatalf("parse %s: %v", serverURL, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &holdProxy{URL: "nats://" + ln.Addr().String(), target: u.Host, more: make(chan struct{})}
	go p.serve(ln)
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.drop()
	})
	return p
}

// serve proxies each connection that ln accepts.
func (p *holdProxy) serve(ln net.Listener) {
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		go p.copy(server, client, true)
		go p.copy(client, server, false)
	}
}

// copy copies from src to dst until either closes. Client bytes (fromClient) are
// recorded while held; server bytes are dropped while held.
func (p *holdProxy) copy(dst, src net.Conn, fromClient bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			held := p.held
			if held && fromClient {
				p.sent = append(p.sent, buf[:n]...)
				close(p.more)
				p.more = make(chan struct{})
			}
			p.mu.Unlock()
			if !held || fromClient {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// hold makes the proxy hold back what the server sends, and record what clients send.
func (p *holdProxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held, p.sent = true, nil
}

// waitSent waits until a client sent s while held.
func (p *holdProxy) waitSent(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		p.mu.Lock()
		ok, more := bytes.Contains(p.sent, []byte(s)), p.more
		p.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("the client did not send %q within %v", s, wait)
		}
	}
}

// drop closes every connection and stops holding.
func (p *holdProxy) drop() {
	p.mu.Lock()
	conns := p.conns
	p.conns, p.held = nil, false
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
