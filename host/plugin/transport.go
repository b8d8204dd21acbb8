package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"github.com/microhost/micro/runtime/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// closeGrace bounds how long a closed Conn's stream waits for the plugin to end it, after
// micro closed its side, before micro cancels it.
const closeGrace = 5 * time.Second

// relistenRetry is how long a listener waits between attempts to listen again after its
// Listen stream failed while the plugin process still runs.
const relistenRetry = time.Second

// errMalformed is wrapped by the errors for frames that break the protocol.
var errMalformed = errors.New("malformed frame from the plugin")

// Transport is a runtime/transport.Transport served by a plugin process (abi/transportpb).
//
// Every Conn is one gRPC stream to the plugin. When the process exits, or stops answering,
// Transport restarts it in the background as Registry does, and calls Init again. Conns in
// flight then fail at once (their streams end), Dial fails with a *transport.ConnectError
// while the plugin is down, and each open Listener listens again on the new process:
// first on the address it had, so that its Addr stays the same where the plugin can
// manage that, and else on the address given to Listen. Accept waits meanwhile.
type Transport struct {
	cfg TransportConfig
	s   *supervisor

	mu        sync.Mutex
	listeners map[*listener]struct{}
}

var _ transport.Transport = (*Transport)(nil)

// OpenTransport starts the transport plugin that cfg names and initialises it with cfg's
// URL and Auth, as OpenRegistry does for registry plugins: it builds the executable from source
// when cfg.Path is empty, checks cfg.SHA256, and fails when the handshake (or the protocol
// version) or Init fails, leaving no process running then. The plugin's log lines go to
// logger with plugin=<cfg.Name>.
func OpenTransport(ctx context.Context, cfg TransportConfig, logger *slog.Logger) (*Transport, error) {
	if logger != nil && validName(cfg.Name) {
		logger.With("plugin", cfg.Name).Debug("opening transport plugin", "config", cfg)
	}
	init := func(ctx context.Context, in *instance) error {
		_, err := in.transport.Init(ctx, cfg.initRequest())
		return err
	}
	s, err := openSupervisor(ctx, transportKind, cfg.proc(), logger, init)
	if err != nil {
		return nil, err
	}
	return &Transport{cfg: cfg, s: s, listeners: map[*listener]struct{}{}}, nil
}

// initRequest returns the Init request that c's settings make.
func (c TransportConfig) initRequest() *transportpb.InitRequest {
	a := c.Auth
	return &transportpb.InitRequest{
		Url:             c.URL,
		CredentialsFile: a.CredentialsFile, NkeySeedFile: a.NkeySeedFile, TokenFile: a.TokenFile,
		User: a.User, PasswordFile: a.PasswordFile,
		TlsCaFile: a.TLSCAFile, TlsCertFile: a.TLSCertFile, TlsKeyFile: a.TLSKeyFile, TlsRequired: a.TLSRequired,
	}
}

// Health returns nil while the plugin runs, and else why it does not.
func (t *Transport) Health() error {
	_, err := t.s.current()
	return err
}

// Close stops the plugin and its supervision. Listeners close; Conns fail.
func (t *Transport) Close() error {
	t.mu.Lock()
	ls := make([]*listener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	t.s.close()
	return nil
}

// pid returns the process id of the running plugin, or 0.
func (t *Transport) pid() int { return t.s.pid() }

// errorf returns an error naming the plugin.
func (t *Transport) errorf(format string, args ...any) error {
	return fmt.Errorf("transport plugin %q: "+format, append([]any{t.cfg.Name}, args...)...)
}

// Dial implements transport.Transport. A failure to reach the peer, or a plugin that is
// down, is a *transport.ConnectError. ctx bounds the dial only.
func (t *Transport) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	in, err := t.s.current()
	if err != nil {
		return nil, &transport.ConnectError{Addr: addr, Err: err}
	}
	sctx, cancel := context.WithCancel(t.s.ctx)
	fail := func(err error) (transport.Conn, error) {
		cancel()
		t.s.check(err)
		return nil, &transport.ConnectError{Addr: addr, Err: t.errorf("dial: %w", rpcError(err))}
	}
	stream, err := in.transport.Dial(sctx)
	if err != nil {
		return fail(err)
	}
	if err := stream.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: addr}}); err != nil {
		_, err = stream.Recv() // the stream's status says why
		return fail(err)
	}
	stop := context.AfterFunc(ctx, cancel)
	f, err := stream.Recv()
	if !stop() {
		cancel()
		return nil, &transport.ConnectError{Addr: addr, Err: t.errorf("dial: %w", ctx.Err())}
	}
	if err != nil {
		return fail(err)
	}
	if _, ok := f.GetFrame().(*transportpb.Frame_Connected); !ok {
		cancel()
		return nil, t.errorf("dial %s: %w: %s, want connected", addr, errMalformed, frameKind(f.GetFrame()))
	}
	return newConn(t, stream, sctx, cancel, false, func(m *transportpb.Message) *transportpb.DialFrame {
		return &transportpb.DialFrame{Frame: &transportpb.DialFrame_Message{Message: m}}
	}), nil
}

// conn is a transport.Conn over a Dial or Serve stream.
type conn[Req any] struct {
	t      *Transport
	stream grpc.BidiStreamingClient[Req, transportpb.Frame]
	wrap   func(*transportpb.Message) *Req
	sctx   context.Context    // the stream's context
	cancel context.CancelFunc // ends the stream

	// frames carries what read reads from the stream to Recv; read closes it when the
	// stream has ended. It is unbuffered, so that ended is set only once every message
	// before the stream's end has been taken.
	frames chan frame
	ended  atomic.Bool // read has seen the stream end

	sendMu sync.Mutex
	recvMu sync.Mutex
	// awaitConnected says that the next frame must be Connected (a Serve stream, which
	// Accept returns without waiting for it). Guarded by recvMu.
	awaitConnected bool
	inFlight       atomic.Int64 // messages sent minus messages received
	closed         atomic.Bool
	broken         atomic.Value // error: why the conn failed
}

// frame is one result of the stream's Recv.
type frame struct {
	f   *transportpb.Frame
	err error
}

// newConn returns a conn over stream, whose context is sctx, and starts reading it.
func newConn[Req any](t *Transport, stream grpc.BidiStreamingClient[Req, transportpb.Frame], sctx context.Context, cancel context.CancelFunc, awaitConnected bool, wrap func(*transportpb.Message) *Req) *conn[Req] {
	c := &conn[Req]{
		t:              t,
		stream:         stream,
		wrap:           wrap,
		sctx:           sctx,
		cancel:         cancel,
		frames:         make(chan frame),
		awaitConnected: awaitConnected,
	}
	go c.read()
	return c
}

// read passes the stream's frames to Recv until the stream ends.
func (c *conn[Req]) read() {
	defer close(c.frames)
	for {
		f, err := c.stream.Recv()
		if err != nil {
			c.ended.Store(true)
		}
		select {
		case c.frames <- frame{f: f, err: err}:
		case <-c.sctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// fail ends the stream for err and returns err; later calls return it too.
func (c *conn[Req]) fail(err error) error {
	c.broken.CompareAndSwap(nil, err)
	c.cancel()
	return err
}

// usable returns an error when the conn is closed or has failed.
func (c *conn[Req]) usable(op string) error {
	if c.closed.Load() {
		return c.t.errorf("%s: %w", op, transport.ErrClosed)
	}
	if err, _ := c.broken.Load().(error); err != nil {
		return err
	}
	return nil
}

// Reusable implements runtime/pool.Reusable: the conn can carry another call when it is
// open, has not failed, has every response it waits for, and its stream has not ended
// (the plugin ends it when the peer closed the connection, or when the plugin died).
func (c *conn[Req]) Reusable() bool {
	return c.usable("") == nil && !c.ended.Load() && c.inFlight.Load() <= 0
}

// Send implements transport.Conn. A message over transportpb.MaxMessageSize is refused,
// and the Conn stays usable. When ctx ends first, the Conn fails.
func (c *conn[Req]) Send(ctx context.Context, m *transport.Message) error {
	if err := c.usable("send"); err != nil {
		return err
	}
	if m == nil {
		return c.t.errorf("send: nil message")
	}
	pm := &transportpb.Message{Header: m.Header, Body: m.Body}
	if err := transportpb.CheckSize(pm); err != nil {
		return c.t.errorf("send: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return c.t.errorf("send: %w", err)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	stop := context.AfterFunc(ctx, c.cancel)
	err := c.stream.Send(c.wrap(pm))
	if !stop() {
		return c.fail(c.t.errorf("send: %w", ctx.Err()))
	}
	if errors.Is(err, io.EOF) {
		// The stream has ended; Recv reads why.
		return c.fail(c.t.errorf("send: the connection has ended"))
	}
	if err != nil {
		c.t.s.check(err)
		return c.fail(c.t.errorf("send: %w", rpcError(err)))
	}
	c.inFlight.Add(1)
	return nil
}

// grpcTooLarge matches gRPC's error for a frame over its receive limit.
var grpcTooLarge = regexp.MustCompile(`received message larger than max \((\d+) vs\. (\d+)\)`)

// Recv implements transport.Conn. The peer's closing the Conn is io.EOF. When ctx ends
// first, the Conn fails. A message with no header has an empty header map.
func (c *conn[Req]) Recv(ctx context.Context) (*transport.Message, error) {
	if err := c.usable("recv"); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, c.t.errorf("recv: %w", err)
	}
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	for {
		var fr frame
		var ok bool
		select {
		case fr, ok = <-c.frames:
		case <-ctx.Done():
			return nil, c.fail(c.t.errorf("recv: %w", ctx.Err()))
		}
		if !ok || c.closed.Load() {
			if err := c.usable("recv"); err != nil {
				return nil, err
			}
			return nil, c.t.errorf("recv: %w", transport.ErrClosed)
		}
		if err := fr.err; err != nil {
			if errors.Is(err, io.EOF) {
				return nil, c.fail(c.t.errorf("recv: the peer closed the connection: %w", io.EOF))
			}
			if m := grpcTooLarge.FindStringSubmatch(status.Convert(err).Message()); m != nil {
				return nil, c.fail(c.t.errorf("recv: a frame of %s bytes from the plugin exceeds the limit of %s", m[1], m[2]))
			}
			c.t.s.check(err)
			return nil, c.fail(c.t.errorf("recv: %w", rpcError(err)))
		}
		switch f := fr.f.GetFrame().(type) {
		case *transportpb.Frame_Connected:
			if c.awaitConnected {
				c.awaitConnected = false
				continue
			}
			return nil, c.fail(c.t.errorf("recv: %w: connected, on an established connection", errMalformed))
		case *transportpb.Frame_Message:
			if c.awaitConnected {
				return nil, c.fail(c.t.errorf("recv: %w: a message before connected", errMalformed))
			}
			if f.Message == nil {
				return nil, c.fail(c.t.errorf("recv: %w: a message frame without a message", errMalformed))
			}
			if err := transportpb.CheckSize(f.Message); err != nil {
				return nil, c.fail(c.t.errorf("recv: refused a message from the plugin: %w", err))
			}
			h := f.Message.GetHeader()
			if h == nil {
				h = map[string]string{}
			}
			c.inFlight.Add(-1)
			return &transport.Message{Header: h, Body: f.Message.GetBody()}, nil
		default:
			return nil, c.fail(c.t.errorf("recv: %w: %s", errMalformed, frameKind(f)))
		}
	}
}

// Close implements transport.Conn. With no Send or Recv in progress it closes micro's side
// of the stream and lets the plugin end it, so that a message just sent is delivered
// (within closeGrace); otherwise it ends the stream at once, failing them.
func (c *conn[Req]) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	graceful := c.sendMu.TryLock()
	if graceful {
		graceful = c.stream.CloseSend() == nil
		c.sendMu.Unlock()
	}
	if !graceful || !c.recvMu.TryLock() {
		c.cancel()
		return nil
	}
	go func() {
		defer c.recvMu.Unlock()
		t := time.AfterFunc(closeGrace, c.cancel)
		defer t.Stop()
		for range c.frames {
		}
		c.cancel()
	}()
	return nil
}

// Listen implements transport.Transport. It returns once the plugin listens; ctx bounds
// that only.
func (t *Transport) Listen(ctx context.Context, addr string) (transport.Listener, error) {
	in, err := t.s.current()
	if err != nil {
		return nil, err
	}
	l := &listener{t: t, want: addr, accepted: make(chan accepted), done: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancel(t.s.ctx)
	stream, got, cancel, err := l.listen(ctx, in, addr)
	if err != nil {
		l.cancel()
		return nil, err
	}
	l.addr = got
	t.mu.Lock()
	t.listeners[l] = struct{}{}
	t.mu.Unlock()
	go l.run(in, stream, cancel)
	return l, nil
}

// accepted is an accepted connection, waiting for Accept.
type accepted struct {
	in *instance
	id uint64
}

// listener is a transport.Listener over a Listen stream, which it opens again when the
// plugin restarts.
type listener struct {
	t        *Transport
	want     string // the address given to Listen
	accepted chan accepted
	ctx      context.Context // ends at Close
	cancel   context.CancelFunc
	done     chan struct{} // closed when run returns

	mu   sync.Mutex
	addr string
}

// listen opens a Listen stream on in for addr and reads the listener's address from it.
func (l *listener) listen(ctx context.Context, in *instance, addr string) (transportpb.Transport_ListenClient, string, context.CancelFunc, error) {
	sctx, cancel := context.WithCancel(l.ctx)
	stream, err := in.transport.Listen(sctx, &transportpb.ListenRequest{Addr: addr})
	if err != nil {
		cancel()
		l.t.s.check(err)
		return nil, "", nil, l.t.errorf("listen %s: %w", addr, rpcError(err))
	}
	stop := context.AfterFunc(ctx, cancel)
	a, err := stream.Recv()
	if !stop() {
		cancel()
		return nil, "", nil, l.t.errorf("listen %s: %w", addr, ctx.Err())
	}
	if err != nil {
		cancel()
		l.t.s.check(err)
		return nil, "", nil, l.t.errorf("listen %s: %w", addr, rpcError(err))
	}
	if a.GetAddr() == "" || a.GetConnId() != 0 {
		cancel()
		return nil, "", nil, l.t.errorf("listen %s: %w: the first event of a listener must carry its address and no conn_id", addr, errMalformed)
	}
	return stream, a.GetAddr(), cancel, nil
}

// run forwards accepted connections to Accept, and listens again after the stream fails,
// until Close.
func (l *listener) run(in *instance, stream transportpb.Transport_ListenClient, cancel context.CancelFunc) {
	defer close(l.done)
	log := l.t.s.log
	for {
		err := l.forward(in, stream)
		cancel()
		if l.ctx.Err() != nil {
			return
		}
		l.t.s.check(err)
		log.Warn("transport plugin listener failed; listening again", "addr", l.Addr(), "err", err)
		for {
			// A new process, or after relistenRetry the same one (its listener may have
			// failed on its own).
			wctx, wcancel := context.WithTimeout(l.ctx, relistenRetry)
			next, err := l.t.s.next(wctx, in)
			wcancel()
			if l.ctx.Err() != nil {
				return
			}
			if err != nil {
				if next, err = l.t.s.current(); err != nil {
					continue
				}
			}
			in = next
			old := l.Addr()
			var addr string
			stream, addr, cancel, err = l.listen(l.ctx, in, old)
			if err != nil && l.want != old {
				stream, addr, cancel, err = l.listen(l.ctx, in, l.want)
			}
			if err != nil {
				if l.ctx.Err() != nil {
					return
				}
				log.Warn("transport plugin: listening again failed", "addr", old, "err", err)
				select {
				case <-l.ctx.Done():
					return
				case <-time.After(relistenRetry):
				}
				continue
			}
			l.mu.Lock()
			l.addr = addr
			l.mu.Unlock()
			if addr != old {
				log.Warn("transport plugin listener listens again, on another address", "addr", addr, "was", old)
			} else {
				log.Info("transport plugin listener listens again", "addr", addr)
			}
			break
		}
	}
}

// forward passes the connections that stream accepts to Accept until the stream fails.
func (l *listener) forward(in *instance, stream transportpb.Transport_ListenClient) error {
	for {
		a, err := stream.Recv()
		if err != nil {
			return rpcError(err)
		}
		if a.GetConnId() == 0 || a.GetAddr() != "" {
			return l.t.errorf("listener %s: %w: an accepted connection must carry a conn_id and no address", l.Addr(), errMalformed)
		}
		select {
		case l.accepted <- accepted{in: in, id: a.GetConnId()}:
		case <-l.ctx.Done():
			return l.ctx.Err()
		}
	}
}

// Accept implements transport.Listener. It waits across restarts of the plugin, and
// returns transport.ErrClosed after Close.
func (l *listener) Accept() (transport.Conn, error) {
	for {
		var a accepted
		select {
		case a = <-l.accepted:
		case <-l.ctx.Done():
			return nil, l.t.errorf("accept on %s: %w", l.Addr(), transport.ErrClosed)
		}
		sctx, cancel := context.WithCancel(l.t.s.ctx)
		stream, err := a.in.transport.Serve(sctx)
		if err == nil {
			err = stream.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_ConnId{ConnId: a.id}})
		}
		if err != nil {
			cancel()
			l.t.s.check(err)
			l.t.s.log.Warn("transport plugin: lost an accepted connection", "addr", l.Addr(), "err", rpcError(err))
			continue
		}
		return newConn(l.t, stream, sctx, cancel, true, func(m *transportpb.Message) *transportpb.ServeFrame {
			return &transportpb.ServeFrame{Frame: &transportpb.ServeFrame_Message{Message: m}}
		}), nil
	}
}

// Addr implements transport.Listener: the address the plugin reported, which may change
// when the plugin restarts.
func (l *listener) Addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// Close implements transport.Listener. Conns already accepted stay usable.
func (l *listener) Close() error {
	l.cancel()
	<-l.done
	l.t.mu.Lock()
	delete(l.t.listeners, l)
	l.t.mu.Unlock()
	return nil
}

// frameKind names a frame's oneof field for errors.
func frameKind(f any) string {
	switch f.(type) {
	case nil:
		return "an empty frame"
	case *transportpb.Frame_Message:
		return "a message"
	case *transportpb.Frame_Connected:
		return "connected"
	}
	return fmt.Sprintf("a %T", f)
}
