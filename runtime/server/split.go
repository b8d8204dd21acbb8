package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// h2Preface starts every HTTP/2 connection without TLS.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Listeners are the three listeners Split divides connections among.
type Listeners struct {
	// Fast gets plain HTTP/1.1 connections, for fasthttp.
	Fast net.Listener
	// Upgrade gets the connections whose first request asks to upgrade (an Upgrade
	// header), for net/http: streams.
	Upgrade net.Listener
	// H2 gets the connections that speak HTTP/2 without TLS (h2c, with prior knowledge),
	// for net/http: gRPC and any HTTP/2 app.
	H2 net.Listener
}

// Split divides the connections that ln accepts by what their first bytes ask for (see
// Listeners). A connection that has not shown its first request's header block within
// timeout, or within max bytes, goes to Fast, which answers (or drops) it as it deserves.
// The bytes read to decide are read again by whoever gets the connection. Closing any of
// the three closes ln, and so all of them.
func Split(ln net.Listener, timeout time.Duration, max int) Listeners {
	return SplitTLS(ln, timeout, max, nil, nil, nil)
}

// SplitTLS is Split for a listener whose connections speak TLS with cfg: each connection's
// handshake must end within timeout, and identify must accept what it proved, before its
// first bytes are read; the Peer it returns goes with the connection (PeerOf). A connection
// whose handshake or identification fails is closed, and onError is told why.
func SplitTLS(ln net.Listener, timeout time.Duration, max int, cfg *tls.Config, identify Identify, onError func(remote net.Addr, err error)) Listeners {
	s := &splitter{ln: ln, timeout: timeout, max: max, done: make(chan struct{}), tls: cfg, identify: identify, onError: onError}
	s.fast = &chanListener{s: s, conns: make(chan net.Conn)}
	s.upgrade = &chanListener{s: s, conns: make(chan net.Conn)}
	s.h2 = &chanListener{s: s, conns: make(chan net.Conn)}
	go s.run()
	return Listeners{Fast: s.fast, Upgrade: s.upgrade, H2: s.h2}
}

type splitter struct {
	ln                net.Listener
	timeout           time.Duration
	max               int
	fast, upgrade, h2 *chanListener

	tls      *tls.Config // nil: plain connections
	identify Identify
	onError  func(net.Addr, error)

	done      chan struct{} // closed when ln fails or is closed
	err       error         // why; set before done is closed
	closeOnce sync.Once
}

func (s *splitter) run() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			s.err = err
			close(s.done)
			return
		}
		go s.route(c)
	}
}

// route reads the start of c and hands it to the listener it belongs to.
func (s *splitter) route(c net.Conn) {
	var who Peer
	if s.tls != nil {
		tc, peer, err := s.handshake(c)
		if err != nil {
			if s.onError != nil {
				s.onError(c.RemoteAddr(), err)
			}
			c.Close()
			return
		}
		c, who = tc, peer
	}
	_ = c.SetReadDeadline(time.Now().Add(s.timeout))
	buf := make([]byte, 0, 1024)
	to := s.fast
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= s.max {
				break
			}
			buf = append(buf, make([]byte, min(cap(buf), s.max-len(buf)))...)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) >= len(h2Preface) && string(buf[:len(h2Preface)]) == h2Preface {
			to = s.h2
			break
		}
		if len(buf) < len(h2Preface) && h2Preface[:len(buf)] == string(buf) && err == nil {
			continue // could still be the preface
		}
		if end := bytes.Index(buf, []byte("\r\n\r\n")); end >= 0 {
			if hasUpgrade(buf[:end+2]) {
				to = s.upgrade
			}
			break
		}
		if err != nil {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	pc := &prefixConn{Conn: c, prefix: buf, who: who}
	select {
	case to.conns <- pc:
	case <-s.done:
		c.Close()
	case <-to.closed():
		c.Close()
	}
}

// handshake runs the TLS handshake of c within the splitter's timeout and identifies the
// peer.
func (s *splitter) handshake(c net.Conn) (*tls.Conn, Peer, error) {
	tc := tls.Server(c, s.tls)
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, Peer{}, err
	}
	if s.identify == nil {
		return tc, Peer{}, nil
	}
	who, err := s.identify(tc.ConnectionState())
	return tc, who, err
}

// hasUpgrade reports whether a request's header block has an Upgrade header.
func hasUpgrade(head []byte) bool {
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		if len(line) > 8 && line[7] == ':' && bytes.EqualFold(line[:7], []byte("upgrade")) {
			return true
		}
	}
	return false
}

// chanListener is one of a splitter's listeners: it accepts the connections routed to it.
type chanListener struct {
	s     *splitter
	conns chan net.Conn

	mu   sync.Mutex
	done chan struct{} // made on first use, closed by Close
}

func (l *chanListener) closed() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		l.done = make(chan struct{})
	}
	return l.done
}

// Accept returns the next connection routed to l.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.s.done:
		return nil, l.s.err
	case <-l.closed():
		return nil, net.ErrClosed
	}
}

// Close stops l and closes the listener it shares with its sibling.
func (l *chanListener) Close() error {
	done := l.closed()
	l.mu.Lock()
	select {
	case <-done:
	default:
		close(done)
	}
	l.mu.Unlock()
	var err error
	l.s.closeOnce.Do(func() { err = l.s.ln.Close() })
	return err
}

// Addr is the shared listener's address.
func (l *chanListener) Addr() net.Addr { return l.s.ln.Addr() }

// prefixConn is a connection whose first bytes were read already: Read returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
	who    Peer // what the connection's TLS handshake proved
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the connection under c.
func (c *prefixConn) NetConn() net.Conn { return c.Conn }
