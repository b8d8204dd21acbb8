package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/microhost/micro/abi"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/security"
	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/transport"
)

// This file signs what micro sends over a transport plugin, which cannot carry TLS (NATS):
// every message is signed with this micro's certificate, and every message received must
// be signed by a micro of the trust domain, so that a client of the plugin's backend
// without a micro identity can neither call a service nor answer a call.
//
// A call's request carries a fresh nonce (headerNonce) and the time it was signed
// (headerSignedAt). Each message of the call, requests and replies alike, is signed over
// the nonce, its direction and its number within the call, so that a reply answers its own
// request and no other, and no message can be replayed in another place of the call. A
// reply that does not verify is ignored: the next reply to the same request is read, as the
// real node's answer may come after a forged one.

const (
	// headerNonce carries the nonce of a call, in its first request.
	headerNonce = abi.HeaderNonce
	// headerSignedAt carries when the first request of a call was signed, in Unix
	// milliseconds.
	headerSignedAt = abi.HeaderSignedAt
	// signedSkew is how far a call's signing time may be from the receiver's clock.
	signedSkew = 2 * time.Minute
	// maxForged is how many replies that do not verify a call ignores before it fails.
	maxForged = 8
)

// errUnsigned is wrapped by the errors of messages that are not signed by a micro of the
// trust domain.
var errUnsigned = errors.New("message not signed by a micro of the trust domain")

// signedTransport signs and checks every message of the transport it wraps.
type signedTransport struct {
	transport.Transport
	src    *security.Source
	logger *slog.Logger
	forged *sparseLog
}

func newSignedTransport(t transport.Transport, src *security.Source, logger *slog.Logger) *signedTransport {
	return &signedTransport{Transport: t, src: src, logger: logger, forged: &sparseLog{every: 10 * time.Second}}
}

// Dial implements transport.Transport.
func (t *signedTransport) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	c, err := t.Transport.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &signedConn{t: t, Conn: c, client: true}, nil
}

// Listen implements transport.Transport.
func (t *signedTransport) Listen(ctx context.Context, addr string) (transport.Listener, error) {
	l, err := t.Transport.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &signedListener{Listener: l, t: t}, nil
}

// Health passes on the wrapped transport's health, when it reports one.
func (t *signedTransport) Health() error {
	if h, ok := t.Transport.(interface{ Health() error }); ok {
		return h.Health()
	}
	return nil
}

// logForged logs a message that did not verify, at most every 10s.
func (t *signedTransport) logForged(side string, err error) {
	if n, ok := t.forged.due(time.Now()); ok {
		t.logger.Warn("transport: ignored a message not signed by a micro of the trust domain", "side", side, "err", err, "ignored_since_last_logged", n)
	}
}

type signedListener struct {
	transport.Listener
	t *signedTransport
}

// Accept implements transport.Listener.
func (l *signedListener) Accept() (transport.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &signedConn{t: l.t, Conn: c}, nil
}

// signedConn signs what it sends and checks what it receives. A client Conn starts a call
// (a new nonce) with each request, unless it carries a stream, whose messages all belong
// to the stream's first request; a server Conn carries one call.
type signedConn struct {
	transport.Conn
	t      *signedTransport
	client bool

	mu       sync.Mutex
	nonce    string
	stream   bool
	sent     int // messages sent in the call
	received int // messages received in the call
	peer     server.Peer
}

// Send implements transport.Conn.
func (c *signedConn) Send(ctx context.Context, m *transport.Message) error {
	c.mu.Lock()
	h := make(map[string]string, len(m.Header)+4)
	for k, v := range m.Header {
		if k != security.SignatureHeader && k != security.SignerHeader && k != headerNonce && k != headerSignedAt {
			h[k] = v
		}
	}
	if c.client && !c.stream {
		// A new call.
		var b [16]byte
		_, _ = rand.Read(b[:])
		c.nonce, c.sent, c.received = hex.EncodeToString(b[:]), 0, 0
		c.stream = m.Header[transport.HeaderStream] == "1"
		h[headerNonce] = c.nonce
		h[headerSignedAt] = strconv.FormatInt(time.Now().UnixMilli(), 10)
	}
	c.sent++
	nonce := c.position(c.client, c.sent)
	c.mu.Unlock()
	sig, err := c.t.src.Sign(nonce, h, m.Body)
	if err != nil {
		return fmt.Errorf("signing a message: %w", err)
	}
	maps.Copy(h, sig)
	return c.Conn.Send(ctx, &transport.Message{Header: h, Body: m.Body})
}

// position is what a message is signed over: the call's nonce, who sent it and its number.
func (c *signedConn) position(fromClient bool, n int) string {
	side := "reply"
	if fromClient {
		side = "request"
	}
	return c.nonce + "/" + side + "/" + strconv.Itoa(n)
}

// Recv implements transport.Conn. A client ignores replies that do not verify; a server
// refuses a call whose first request does not (an error with StatusCode 403, which the
// inbound answers).
func (c *signedConn) Recv(ctx context.Context) (*transport.Message, error) {
	for forged := 0; ; forged++ {
		m, err := c.Conn.Recv(ctx)
		if err != nil {
			return nil, err
		}
		err = c.check(m)
		if err == nil {
			return m, nil
		}
		if !c.client {
			return nil, &refusedError{err: err}
		}
		c.t.logForged("client", err)
		if forged+1 >= maxForged {
			return nil, fmt.Errorf("%d replies in a row not signed by a micro of the trust domain; the last: %w", maxForged, err)
		}
	}
}

// check verifies m, the next message of the call, and strips its signature headers.
func (c *signedConn) check(m *transport.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.client && c.received == 0 {
		nonce := m.Header[headerNonce]
		if len(nonce) != 32 {
			return fmt.Errorf("%w: the request has no valid %s", errUnsigned, headerNonce)
		}
		ms, err := strconv.ParseInt(m.Header[headerSignedAt], 10, 64)
		if err != nil {
			return fmt.Errorf("%w: the request has no valid %s", errUnsigned, headerSignedAt)
		}
		if d := time.Since(time.UnixMilli(ms)); d > signedSkew || d < -signedSkew {
			return fmt.Errorf("%w: the request was signed %v ago, more than %v", errUnsigned, d.Round(time.Second), signedSkew)
		}
		c.nonce = nonce
		c.stream = m.Header[transport.HeaderStream] == "1"
	}
	id, err := c.t.src.Verify(c.position(!c.client, c.received+1), m.Header, m.Body)
	if err != nil {
		return fmt.Errorf("%w: %w", errUnsigned, err)
	}
	c.received++
	if !c.client && c.received == 1 {
		c.peer = peerOf(id)
	}
	for _, k := range []string{security.SignatureHeader, security.SignerHeader, headerNonce, headerSignedAt} {
		delete(m.Header, k)
	}
	return nil
}

// Reusable reports what the wrapped Conn reports, for the pool: whether it may carry
// another call. A Conn that cannot tell may.
func (c *signedConn) Reusable() bool {
	r, ok := c.Conn.(interface{ Reusable() bool })
	return !ok || r.Reusable()
}

// Context carries the caller that the call's first request proved, for the inbound.
func (c *signedConn) Context() context.Context {
	ctx := context.Background()
	if cc, ok := c.Conn.(interface{ Context() context.Context }); ok {
		ctx = cc.Context()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return server.WithPeer(ctx, c.peer)
}

// refusedError is a server's refusal of a call that is not signed by a micro of the trust
// domain.
type refusedError struct{ err error }

func (e *refusedError) Error() string   { return "refused: " + e.err.Error() }
func (e *refusedError) Unwrap() error   { return e.err }
func (e *refusedError) StatusCode() int { return http.StatusForbidden }
