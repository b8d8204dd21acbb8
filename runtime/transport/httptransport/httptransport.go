// Package httptransport is micro's built-in transport: transport.Transport over HTTP/1.1,
// built on the standard library's net/http.
//
// A call is one HTTP exchange. The client writes
//
//	POST /{service}/{endpoint} HTTP/1.1
//
// with the service and endpoint taken from the Message's transport.HeaderService and
// transport.HeaderEndpoint (each path-escaped), every other Message header as an HTTP
// header, and the body with a Content-Length. The server answers with the status in the
// response Message's transport.HeaderStatus (200 when absent), its other headers and its
// body.
//
// A client Conn is one TCP connection that carries calls one after another (HTTP
// keep-alive). It reports through Reusable whether it can carry another call, which a pool
// above the transport checks. A server Conn is one HTTP request: Listener.Accept yields it,
// Recv returns the request, and Send writes the response and completes the exchange.
//
// # Streams
//
// A request Message whose transport.HeaderStream is "1" opens a stream (see package
// transport). The client's first Send writes it as the request above plus
// "Connection: Upgrade" and "Upgrade: micro-stream/1", and returns without waiting. The
// server Conn's Recv returns that request; its first Send, or its second Recv, answers
// "101 Switching Protocols" (net/http hands over the connection) and from then on both
// sides exchange frames over the raw connection. The client's first Recv reads the 101 and
// then a frame; frames the client sends before the 101 arrives are kept. A server that
// answers anything but 101 refuses the stream: the client's first Recv returns that
// response as a Message (transport.HeaderStatus set), later Recvs return io.EOF and Sends
// fail. The server Conn refuses this way when its first Send, before any second Recv,
// carries a transport.HeaderStatus of 300 or more; after the 101 such a message is an
// ordinary frame (a failing side's last word). A stream request without the Upgrade
// headers is a 400 *RequestError. A stream Conn is never Reusable.
//
// A frame is
//
//	length (4 bytes, big-endian) | count | count × (key, value) | body
//
// where count and the length of each key and value are unsigned varints and the body is
// the rest of the frame. Header names and values obey the same rules as HTTP headers, and
// keys are kept as sent. A frame whose header block exceeds Options.MaxHeaderBytes or whose
// body exceeds Options.MaxBody is refused (ErrFrameTooLarge): by Send before anything is
// written, by Recv as a stream-ending error. A malformed or torn frame ends the stream
// with an error.
//
// One Send and one Recv may run at once on a stream Conn; concurrent Sends serialize, as
// do concurrent Recvs. Each honours its ctx's deadline and cancellation; a Recv that gives
// up before a frame begins leaves the stream usable, any other I/O failure ends that
// direction. Close shuts the write side at once, so that the peer's Recv returns every
// frame sent and then io.EOF, and makes a Send or Recv in progress fail with
// transport.ErrClosed; the socket is closed once the peer closes its side, or after 5s, so
// that unread bytes never make the kernel reset the connection under frames the peer has
// yet to read. A reset seen at a frame boundary is reported as io.EOF.
//
// Hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding, Upgrade, TE, Trailer,
// Proxy-Connection), Content-Length, Host and Expect belong to HTTP's framing: they are
// neither sent from a Message nor reported in one.
package httptransport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// Defaults for the zero fields of Options.
const (
	DefaultMaxBody           = 4 << 20
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultDialTimeout       = 5 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 90 * time.Second
	DefaultShutdownTimeout   = 5 * time.Second
)

// Options configures a Transport. Zero fields take the Default values above.
type Options struct {
	// MaxBody is the largest body accepted in either direction, in bytes.
	MaxBody int64
	// MaxHeaderBytes bounds the header block of a request (server side) and of a response
	// (client side).
	MaxHeaderBytes int
	// DialTimeout bounds a Dial whose context has no earlier deadline.
	DialTimeout time.Duration
	// ReadHeaderTimeout bounds how long the server waits for a request's headers.
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds how long the server waits for a request's body once its headers
	// have arrived.
	BodyTimeout time.Duration
	// WriteTimeout bounds the server's write of a response when the Send context has no
	// deadline.
	WriteTimeout time.Duration
	// IdleTimeout is how long the server keeps an idle keep-alive connection open. Keep it
	// above the client pool's idle TTL so that clients drop connections before servers do.
	IdleTimeout time.Duration
	// ShutdownTimeout bounds how long Listener.Close waits for calls in flight before it
	// closes their connections.
	ShutdownTimeout time.Duration
	// Logger receives the transport's logs. Nil discards them.
	Logger *slog.Logger
	// ClientTLS, when set, makes Dial speak TLS with it on every connection (mutual TLS
	// between micro processes). The listener's side is the listener's business: Serve
	// takes connections that are TLS already, when they are.
	ClientTLS *tls.Config
	// ConnContext, when set, is the server's http.Server.ConnContext: it may put what a
	// connection proved (its peer) in the context that server Conns report.
	ConnContext func(ctx context.Context, c net.Conn) context.Context
}

func (o Options) withDefaults() Options {
	if o.MaxBody <= 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ErrBodyTooLarge is wrapped by the errors of a Send or Recv whose body exceeds
// Options.MaxBody.
var ErrBodyTooLarge = errors.New("httptransport: body too large")

// Transport is the HTTP transport. It is safe for concurrent use.
type Transport struct {
	opts Options

	mu        sync.Mutex
	closed    bool
	listeners map[*listener]struct{}
}

var _ transport.Transport = (*Transport)(nil)

// New returns a Transport configured by opts.
func New(opts Options) *Transport {
	return &Transport{
		opts:      opts.withDefaults(),
		listeners: make(map[*listener]struct{}),
	}
}

// Dial opens one TCP connection to addr (host:port) and returns a client Conn over it. A
// failure to connect is a *transport.ConnectError: the call never reached the peer.
func (t *Transport) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("httptransport: dial %s: %w", addr, transport.ErrClosed)
	}
	d := net.Dialer{Timeout: t.opts.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", err, cerr)
		}
		return nil, &transport.ConnectError{Addr: addr, Err: err}
	}
	if t.opts.ClientTLS != nil {
		tc := tls.Client(nc, t.opts.ClientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, &transport.ConnectError{Addr: addr, Err: fmt.Errorf("TLS handshake: %w", err)}
		}
		nc = tc
	}
	return newClientConn(nc, addr, t.opts), nil
}

// Listen binds addr (host:port; port 0 picks one) and serves HTTP on it. ctx bounds the bind
// only. The Listener's Close shuts its server down; Transport.Close closes every Listener
// this Transport made that is still open.
func (t *Transport) Listen(ctx context.Context, addr string) (transport.Listener, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("httptransport: listen %s: %w", addr, transport.ErrClosed)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("httptransport: listen %s: %w", addr, err)
	}
	l := newListener(ln, t.opts, t.forget)
	t.listeners[l] = struct{}{}
	return l, nil
}

// Serve accepts calls on ln, a listener bound elsewhere, as Listen does on the address it
// binds. Closing the returned Listener closes ln.
func (t *Transport) Serve(ln net.Listener) (transport.Listener, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("httptransport: serve on %s: %w", ln.Addr(), transport.ErrClosed)
	}
	l := newListener(ln, t.opts, t.forget)
	t.listeners[l] = struct{}{}
	return l, nil
}

func (t *Transport) forget(l *listener) {
	t.mu.Lock()
	delete(t.listeners, l)
	t.mu.Unlock()
}

// Close closes every Listener the Transport made that is still open and refuses later Dials
// and Listens. Client Conns already dialed stay usable until their owner closes them.
func (t *Transport) Close() error {
	t.mu.Lock()
	t.closed = true
	ls := make([]*listener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}
