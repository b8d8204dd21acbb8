package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/microhost/micro/plugins/internal/natsauth"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/sdk/transport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Connection settings. The client reconnects forever; while it is away, up to
// reconnectBuf bytes of outgoing messages wait in its buffer, and a call whose budget ends
// first fails with its context's error.
const (
	connName      = "micro transport-nats"
	reconnectWait = 150 * time.Millisecond
	reconnectBuf  = 8 << 20
	// connectTimeout bounds each attempt to connect; Init also gives up when its ctx ends.
	connectTimeout = 2 * time.Second
)

// addrScheme prefixes a listener's subject to make the address micro registers.
const addrScheme = "nats:"

// subjectPrefix starts every listener's subject; a random NUID follows it.
const subjectPrefix = "micro.inbound."

// headerEscape prefixes message header keys that NATS would otherwise read as its own: a
// reply header "Status: 503" with an empty body looks to nats.go like "no responders".
const headerEscape = "Micro-Nats-"

// natsTransport is a transport.Transport over a NATS connection.
//
// Addresses are "nats:<subject>". Listen subscribes to a subject of its own,
// "micro.inbound.<NUID>", and Addr returns "nats:micro.inbound.<NUID>". A call publishes
// the request to that subject with a reply subject of the client conn's own: the request
// Message's headers travel as NATS headers and its body as the payload; the listener
// answers on the request's reply subject, and the client conn returns every reply it gets
// there (see clientConn). Header values lose leading and trailing white space and have
// CR and LF turned into spaces, as NATS headers do.
type natsTransport struct {
	log *slog.Logger

	mu sync.RWMutex
	nc *nats.Conn // nil before Init
}

// newNATS returns a transport that logs to log. It connects on Init.
func newNATS(log *slog.Logger) *natsTransport {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &natsTransport{log: log}
}

var _ transport.Transport = (*natsTransport)(nil)

// Init connects to c.URL (nats.DefaultURL when empty) with c's credentials and TLS
// settings (see natsauth.Of). It fails if a file they name is missing or malformed, or if
// the first connection fails, saying so when the server refused the credentials or TLS
// failed; after that the connection comes back by itself whenever it drops. A second
// Init replaces the connection; listeners and conns made on the old one stop working.
func (t *natsTransport) Init(ctx context.Context, c transport.Config) error {
	u := c.URL
	if u == "" {
		u = nats.DefaultURL
	}
	shown := redactURLs(u)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("transport-nats: connect to NATS at %s: %w", shown, err)
	}
	sec, err := natsauth.Of(natsauth.Settings{
		URL: c.URL, CredentialsFile: c.CredentialsFile, NkeySeedFile: c.NkeySeedFile, TokenFile: c.TokenFile,
		User: c.User, PasswordFile: c.PasswordFile, TLSCAFile: c.TLSCAFile, TLSCertFile: c.TLSCertFile, TLSKeyFile: c.TLSKeyFile,
		TLSRequired: c.TLSRequired,
	})
	if err != nil {
		return fmt.Errorf("transport-nats: %w", err)
	}
	log := t.log.With("url", shown)
	opts := []nats.Option{
		nats.Name(connName),
		nats.Timeout(connectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectBufSize(reconnectBuf),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("transport-nats: disconnected from NATS; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("transport-nats: reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			log.Info("transport-nats: NATS connection closed")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("transport-nats: NATS error", "subject", subject, "err", err)
		}),
	}
	opts = append(opts, sec.Opts...)

	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(u, opts...)
		done <- result{nc, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() { // close the connection if it comes after all
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return fmt.Errorf("transport-nats: connect to NATS at %s: %w", shown, ctx.Err())
	}
	if r.err != nil {
		return fmt.Errorf("transport-nats: connect to NATS at %s: %w", shown, sec.Explain(r.err))
	}
	_, notTLS := r.nc.TLSConnectionState()
	log.Info("transport-nats: connected to NATS", "server", r.nc.ConnectedUrlRedacted(),
		"max_payload", r.nc.MaxPayload(), "credentials", sec.Auth, "tls", notTLS == nil)

	t.mu.Lock()
	old := t.nc
	t.nc = r.nc
	t.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes the NATS connection. The plugin process does not need it (it exits); tests do.
func (t *natsTransport) Close() error {
	t.mu.Lock()
	nc := t.nc
	t.nc = nil
	t.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
	return nil
}

// conn returns the NATS connection, or an error before Init.
func (t *natsTransport) conn() (*nats.Conn, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.nc == nil {
		return nil, errors.New("transport-nats: not initialised (Init was not called or failed)")
	}
	return t.nc, nil
}

// Listen subscribes to a new subject of its own and returns a listener whose Addr is
// "nats:" followed by that subject. addr (micro's server.inbound) has no use here.
func (t *natsTransport) Listen(ctx context.Context, _ string) (transport.Listener, error) {
	nc, err := t.conn()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("transport-nats: listen: %w", err)
	}
	subject := subjectPrefix + nuid.Next()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return nil, fmt.Errorf("transport-nats: listen on subject %s: %w", subject, err)
	}
	// Make sure the server has the subscription before micro registers the address, so
	// that the first call does not find "no responders". A flush that fails (the
	// connection is away) is no error: the subscription is sent on reconnect.
	fctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil && ctx.Err() != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("transport-nats: listen on subject %s: %w", subject, ctx.Err())
	}
	return &listener{nc: nc, sub: sub, subject: subject, closed: make(chan struct{})}, nil
}

// Dial returns a client Conn for the listener at addr, "nats:<subject>". Nothing is sent
// until the first call; a listener that is not there shows as a connect error from Recv.
func (t *natsTransport) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	nc, err := t.conn()
	if err != nil {
		return nil, err
	}
	subject, err := parseAddr(addr)
	if err != nil {
		return nil, &connectError{addr: addr, err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, &connectError{addr: addr, err: err}
	}
	if nc.IsClosed() {
		return nil, &connectError{addr: addr, err: nats.ErrConnectionClosed}
	}
	return newClientConn(nc, addr, subject), nil
}

// parseAddr returns the subject of a "nats:<subject>" address.
func parseAddr(addr string) (string, error) {
	subject, ok := strings.CutPrefix(addr, addrScheme)
	if !ok {
		return "", fmt.Errorf("address %q is not of the form nats:<subject>", addr)
	}
	if !validSubject(subject) {
		return "", fmt.Errorf("address %q: %q is not a NATS subject without wildcards", addr, subject)
	}
	return subject, nil
}

// validSubject reports whether s is a NATS subject one can publish to: dot-separated
// non-empty tokens with no white space and no wildcards.
func validSubject(s string) bool {
	if s == "" {
		return false
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		if strings.ContainsAny(tok, " \t\r\n") {
			return false
		}
	}
	return true
}

// connectError is a call that did not reach the listener: a bad address, no responders on
// its subject (the node is gone), or no NATS connection to send it on. It is safe to retry
// on another node. Its text says "connect", and its gRPC status is UNAVAILABLE.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string {
	if errors.Is(e.err, nats.ErrNoResponders) {
		return fmt.Sprintf("transport-nats: connect %s: no responders (no node listens there): %v", e.addr, e.err)
	}
	return fmt.Sprintf("transport-nats: connect %s: %v", e.addr, e.err)
}

func (e *connectError) Unwrap() error { return e.err }

// GRPCStatus makes the plugin server send a connect error as UNAVAILABLE, which micro
// reads as a connect error (the call may go to another node).
func (e *connectError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error())
}

// listener receives the calls sent to its subject.
type listener struct {
	nc      *nats.Conn
	sub     *nats.Subscription
	subject string

	closeOnce sync.Once
	closed    chan struct{}
}

// Accept waits for the next request on the listener's subject. Messages with no reply
// subject (not requests) are dropped.
func (l *listener) Accept(ctx context.Context) (transport.Conn, error) {
	for {
		select {
		case <-l.closed:
			return nil, fmt.Errorf("transport-nats: accept on %s: %w", l.Addr(), net.ErrClosed)
		default:
		}
		m, err := l.sub.NextMsgWithContext(ctx)
		if err != nil {
			select {
			case <-l.closed:
				return nil, fmt.Errorf("transport-nats: accept on %s: %w", l.Addr(), net.ErrClosed)
			default:
			}
			if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
				return nil, fmt.Errorf("transport-nats: accept on %s: %w: %w", l.Addr(), net.ErrClosed, err)
			}
			return nil, fmt.Errorf("transport-nats: accept on %s: %w", l.Addr(), err)
		}
		if m.Reply == "" {
			continue
		}
		if m.Header.Get(transport.HeaderStream) != "1" {
			return newServerConn(l.nc, m), nil
		}
		st, err := acceptStream(l.nc, l.Addr(), m)
		if err != nil {
			// The client's open fails by its budget; the listener carries on.
			continue
		}
		c := newServerConn(l.nc, m)
		c.st = st
		return c, nil
	}
}

// Addr returns "nats:" followed by the listener's subject.
func (l *listener) Addr() string { return addrScheme + l.subject }

// Close unsubscribes. Conns already accepted can still reply.
func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.sub.Unsubscribe()
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
			err = nil
		}
	})
	if err != nil {
		return fmt.Errorf("transport-nats: close listener %s: %w", l.Addr(), err)
	}
	return nil
}

// serverConn is one accepted call: Recv returns the request, Send answers it once, and
// then Recv returns io.EOF (the call is over). Recv and Send may run concurrently, as the
// plugin server's pump runs them. A stream (st != nil) carries any number of messages
// each way after the request, until either side closes (see stream.go).
type serverConn struct {
	nc    *nats.Conn
	reply string  // the request's reply subject
	st    *stream // nil for a call

	mu      sync.Mutex
	req     *nats.Msg // nil once received
	replied bool

	doneOnce sync.Once
	done     chan struct{} // closed once the reply is sent or the conn closed
}

func newServerConn(nc *nats.Conn, req *nats.Msg) *serverConn {
	return &serverConn{nc: nc, reply: req.Reply, req: req, done: make(chan struct{})}
}

// Recv returns the request; after that it waits until the reply is sent or the conn
// closed, and returns io.EOF.
func (c *serverConn) Recv(ctx context.Context) (*transport.Message, error) {
	c.mu.Lock()
	req := c.req
	c.req = nil
	c.mu.Unlock()
	if req != nil {
		return fromNATS(req), nil
	}
	if c.st != nil {
		msg, err := c.st.recv(ctx)
		if err != nil {
			return nil, err
		}
		return fromNATS(msg), nil
	}
	select {
	case <-c.done:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Send answers the request with m. A call has one answer; a second Send is an error.
func (c *serverConn) Send(ctx context.Context, m *transport.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.st != nil {
		return c.st.send(ctx, toNATS("", m))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.replied {
		return errors.New("transport-nats: reply already sent on this call")
	}
	msg := toNATS(c.reply, m)
	if err := checkSize(c.nc, msg); err != nil {
		return err
	}
	if err := c.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("transport-nats: reply to %s: %w", c.reply, err)
	}
	c.replied = true
	c.doneOnce.Do(func() { close(c.done) })
	return nil
}

// Close ends the call. A call closed without a reply leaves its caller to its budget. A
// stream's peer is told, and its Recv returns io.EOF.
func (c *serverConn) Close() error {
	c.doneOnce.Do(func() { close(c.done) })
	if c.st != nil {
		return c.st.close()
	}
	return nil
}

// maxReplies bounds the replies a client Conn takes for one request. A listener answers
// once, so more than one means that something else answers on its subject too (a NATS
// client that subscribes to micro.inbound.>); micro skips replies that are not signed by
// a micro, and a bound keeps a flood of them from holding memory or reaching micro. Later
// replies to the request are dropped.
const maxReplies = 8

// clientConn carries one call at a time to a listener's subject. Send publishes the
// request with a reply subject of its own, and Recv returns the replies to it in the
// order they arrive: the first, and then, for a further Recv before the next Send, the
// next one, which only comes when something other than the listener answers too (micro
// verifies each reply and skips a forged one). At most maxReplies are taken per request.
// Recv may be called before Send (the plugin server's pump waits in Recv); it then waits
// for the request's replies.
//
// Replies come on one subscription per conn, to inbox+".*", made at the first call. Each
// request gets a fresh, unguessable reply subject under it; the next Send and Close retire
// it, so a late reply to an earlier request is dropped and never returned for a later one.
//
// A first message with HeaderStream = "1" makes the conn a stream for good: that Send
// opens it and waits, within its ctx, for the listener to acknowledge; later Sends and
// Recvs carry messages until either side closes (see stream.go).
type clientConn struct {
	nc      *nats.Conn
	addr    string
	subject string

	closeOnce sync.Once
	closed    chan struct{}

	sendMu  sync.Mutex    // serialises Send, and so the opening of a stream
	opening bool          // a stream's first message was sent (under sendMu)
	opened  chan struct{} // closed once the stream is open or failed to open

	mu       sync.Mutex
	st       *stream // the open stream; set before opened is closed
	openErr  error   // why the stream did not open; set before opened is closed
	isClosed bool    // Close was called

	// Calls, under mu.
	wake    chan struct{}      // closed (and replaced) whenever the call state changes
	sub     *nats.Subscription // the replies' subscription; nil before the first call
	inbox   string             // sub's subject without the ".*"
	reply   string             // the current request's reply subject; "" for none
	replies []*nats.Msg        // replies to the current request that Recv has not returned
	taken   int                // replies taken for the current request, returned or not
	callErr error              // why the current request failed; Recv returns it until the next Send
}

func newClientConn(nc *nats.Conn, addr, subject string) *clientConn {
	return &clientConn{nc: nc, addr: addr, subject: subject,
		closed: make(chan struct{}), opened: make(chan struct{}), wake: make(chan struct{})}
}

// changed wakes every Recv that waits for a reply; c.mu is held.
func (c *clientConn) changed() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// handle takes one message on the replies' subscription: a reply to the current request,
// up to maxReplies, or NATS's "no responders" in place of any reply.
func (c *clientConn) handle(msg *nats.Msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if msg.Subject != c.reply || c.taken >= maxReplies || c.callErr != nil {
		return // to an earlier request, one too many, or after the request failed
	}
	if isNoResponders(msg) {
		// NATS says so only when nobody got the request, so never after a reply.
		if c.taken == 0 {
			c.callErr = &connectError{addr: c.addr, err: nats.ErrNoResponders}
			c.changed()
		}
		return
	}
	c.taken++
	c.replies = append(c.replies, msg)
	c.changed()
}

// sendStream opens the stream with m, or sends m on the stream opened before.
func (c *clientConn) sendStream(ctx context.Context, m *transport.Message) error {
	if c.opening { // the open has completed: it does so under sendMu
		if c.openErr != nil {
			return c.openErr
		}
		return c.st.send(ctx, toNATS("", m))
	}
	c.mu.Lock()
	called := c.sub != nil
	c.mu.Unlock()
	if called {
		return fmt.Errorf("transport-nats: send to %s: this conn has carried calls; a stream needs a conn of its own", c.addr)
	}
	c.opening = true
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // Close ends the wait for the acknowledgement
		select {
		case <-c.closed:
			cancel()
		case <-octx.Done():
		}
	}()
	st, err := openStream(octx, c.nc, c.addr, toNATS(c.subject, m))
	c.mu.Lock()
	if c.isClosed { // closed while opening: tell the listener
		if st != nil {
			_ = st.close()
		}
		err = fmt.Errorf("transport-nats: open stream to %s: %w", c.addr, net.ErrClosed)
	}
	if err != nil {
		c.openErr = err
	} else {
		c.st = st
	}
	c.mu.Unlock()
	close(c.opened)
	return err
}

// Send publishes m as the request of the next call, after checking that NATS will take
// it. The previous request's replies that Recv has not returned are dropped, and so is
// every later reply to it. A failure to publish is also what Recv returns.
func (c *clientConn) Send(ctx context.Context, m *transport.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-c.closed:
		return fmt.Errorf("transport-nats: send to %s: %w", c.addr, net.ErrClosed)
	default:
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.opening || (m != nil && m.Header[transport.HeaderStream] == "1") {
		return c.sendStream(ctx, m)
	}
	msg := toNATS(c.subject, m)
	if err := checkSize(c.nc, msg); err != nil {
		return err
	}
	if err := c.startCall(msg); err != nil {
		return err
	}
	if err := c.nc.PublishMsg(msg); err != nil {
		err = c.callError(err)
		c.mu.Lock()
		if c.reply == msg.Reply {
			c.callErr = err
			c.changed()
		}
		c.mu.Unlock()
		return err
	}
	return nil
}

// startCall retires the previous request and gives msg a fresh reply subject, subscribing
// to the replies first if this is the conn's first call.
func (c *clientConn) startCall(msg *nats.Msg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed {
		return fmt.Errorf("transport-nats: send to %s: %w", c.addr, net.ErrClosed)
	}
	if c.sub == nil {
		inbox := c.nc.NewInbox()
		sub, err := c.nc.Subscribe(inbox+".*", c.handle)
		if err != nil {
			return c.callError(err)
		}
		c.sub, c.inbox = sub, inbox
	}
	c.reply = c.inbox + "." + rand.Text()
	clear(c.replies)
	c.replies = c.replies[:0]
	c.taken = 0
	c.callErr = nil
	msg.Reply = c.reply
	c.changed()
	return nil
}

// callError is what a call returns when NATS refuses to subscribe or publish for it: a
// connect error when there is no connection to send it on.
func (c *clientConn) callError(err error) error {
	switch {
	case errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrReconnectBufExceeded):
		return &connectError{addr: c.addr, err: err}
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("transport-nats: call %s: message exceeds the NATS server's max payload of %d: %w",
			c.addr, c.nc.MaxPayload(), err)
	}
	return fmt.Errorf("transport-nats: call %s: %w", c.addr, err)
}

// Recv returns the next reply to the request Send published last, waiting for it (or
// for the request) until ctx ends. A request that nobody received fails with a connect
// error, which every Recv returns until the next Send.
func (c *clientConn) Recv(ctx context.Context) (*transport.Message, error) {
	for {
		select {
		case <-c.opened:
			return c.recvStream(ctx)
		case <-c.closed:
			return nil, fmt.Errorf("transport-nats: receive from %s: %w", c.addr, net.ErrClosed)
		default:
		}
		c.mu.Lock()
		if len(c.replies) > 0 {
			msg := c.replies[0]
			c.replies[0] = nil
			c.replies = c.replies[1:]
			c.mu.Unlock()
			return fromNATS(msg), nil
		}
		err, wake := c.callErr, c.wake
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-wake:
		case <-c.opened:
		case <-c.closed:
		case <-ctx.Done():
			return nil, fmt.Errorf("transport-nats: receive from %s: %w", c.addr, ctx.Err())
		}
	}
}

// recvStream returns the stream's next message, or why it did not open.
func (c *clientConn) recvStream(ctx context.Context) (*transport.Message, error) {
	if c.openErr != nil {
		return nil, c.openErr
	}
	m, err := c.st.recv(ctx)
	if err != nil {
		return nil, err
	}
	return fromNATS(m), nil
}

// Close ends the conn: a waiting Recv returns, and the replies' subscription goes, so no
// reply arrives after it. A stream's close tells the listener (its Recv returns io.EOF).
func (c *clientConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	c.mu.Lock()
	c.isClosed = true
	st, sub := c.st, c.sub
	c.reply = ""
	c.replies = nil
	c.mu.Unlock()
	var err error
	if sub != nil {
		if uerr := sub.Unsubscribe(); uerr != nil &&
			!errors.Is(uerr, nats.ErrConnectionClosed) && !errors.Is(uerr, nats.ErrBadSubscription) {
			err = fmt.Errorf("transport-nats: close conn to %s: %w", c.addr, uerr)
		}
	}
	if st != nil {
		if serr := st.close(); err == nil {
			err = serr
		}
	}
	return err
}

// toNATS makes the NATS message that carries m to subject.
func toNATS(subject string, m *transport.Message) *nats.Msg {
	msg := &nats.Msg{Subject: subject}
	if m == nil {
		return msg
	}
	msg.Data = m.Body
	if len(m.Header) > 0 {
		msg.Header = make(nats.Header, len(m.Header))
		for k, v := range m.Header {
			// NATS headers are lines: a value of several values travels as several.
			msg.Header[escapeKey(k)] = strings.Split(v, transport.ValueSep)
		}
	}
	return msg
}

// fromNATS makes the Message that msg carries. Its Header is never nil.
func fromNATS(msg *nats.Msg) *transport.Message {
	m := &transport.Message{Header: make(map[string]string, len(msg.Header)), Body: msg.Data}
	for k, vs := range msg.Header {
		if len(vs) > 0 {
			m.Header[unescapeKey(k)] = strings.Join(vs, transport.ValueSep)
		}
	}
	return m
}

// escapeKey keeps NATS's own header keys out of the way of the Message's.
func escapeKey(k string) string {
	if k == "Status" || k == "Description" || strings.HasPrefix(k, headerEscape) {
		return headerEscape + k
	}
	return k
}

// unescapeKey undoes escapeKey.
func unescapeKey(k string) string {
	if s, ok := strings.CutPrefix(k, headerEscape); ok {
		return s
	}
	return k
}

// checkSize returns an error if msg is larger than the server's max payload.
func checkSize(nc *nats.Conn, msg *nats.Msg) error {
	max := nc.MaxPayload()
	if max <= 0 {
		return nil
	}
	n := int64(len(msg.Data) + headerSize(msg.Header))
	if n > max {
		return fmt.Errorf("transport-nats: message of %d bytes exceeds the NATS server's max payload of %d", n, max)
	}
	return nil
}

// headerSize is the encoded size of h, as nats.go writes it.
func headerSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(strings.TrimSpace(v)) + len(": \r\n")
		}
	}
	return n
}

// redactURLs returns the comma-separated NATS URLs in s with their passwords hidden.
func redactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				p = u.Redacted()
			} else {
				u.User = url.User("xxxxx") // a bare user name may be a token
				p = u.String()
			}
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
