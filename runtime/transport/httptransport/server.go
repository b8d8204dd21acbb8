package httptransport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// RequestError is what a server Conn's Recv returns for a request that is not a valid call:
// Status is the HTTP status to answer with (400 bad path or body, 405 not POST, 408 body too
// slow, 413 body too large). The Conn stays open so that the caller can Send that answer.
type RequestError struct {
	Status int
	Err    error
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("httptransport: %d %s: %v", e.Status, http.StatusText(e.Status), e.Err)
}

// Unwrap returns the underlying error.
func (e *RequestError) Unwrap() error { return e.Err }

// StatusCode returns Status, so that callers can read it through an
// interface{ StatusCode() int } without importing this package.
func (e *RequestError) StatusCode() int { return e.Status }

// errClientGone is returned by a server Conn's Send when the client disconnected first.
var errClientGone = errors.New("client went away before the response")

// listener is a transport.Listener: an http.Server whose handler hands each request to
// Accept as a serverConn.
type listener struct {
	ln     net.Listener
	srv    *http.Server
	opts   Options
	log    *slog.Logger
	forget func(*listener)

	accept    chan *serverConn
	done      chan struct{} // closed by Close
	serveDone chan struct{} // closed when Serve returns
	serveErr  error         // set before serveDone closes

	closeOnce sync.Once
	closeErr  error
}

var _ transport.Listener = (*listener)(nil)

func newListener(ln net.Listener, opts Options, forget func(*listener)) *listener {
	l := &listener{
		ln:        ln,
		opts:      opts,
		log:       opts.Logger.With("listener", ln.Addr().String()),
		forget:    forget,
		accept:    make(chan *serverConn),
		done:      make(chan struct{}),
		serveDone: make(chan struct{}),
	}
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.serveHTTP),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelWarn),
		ConnContext:       opts.ConnContext,
	}
	go func() {
		defer close(l.serveDone)
		if err := l.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			l.serveErr = err
			l.log.Error("httptransport: serve stopped", "err", err)
		}
	}()
	return l
}

// Accept waits for the next request. It returns transport.ErrClosed after Close.
func (l *listener) Accept() (transport.Conn, error) {
	select {
	case <-l.done:
		return nil, transport.ErrClosed
	default:
	}
	select {
	case sc := <-l.accept:
		return sc, nil
	case <-l.done:
		return nil, transport.ErrClosed
	case <-l.serveDone:
		if l.serveErr != nil {
			return nil, fmt.Errorf("httptransport: accept on %s: %w", l.Addr(), l.serveErr)
		}
		return nil, transport.ErrClosed
	}
}

// Addr returns the bound address as host:port.
func (l *listener) Addr() string { return l.ln.Addr().String() }

// Close stops accepting and shuts the HTTP server down: idle connections close at once,
// requests not yet accepted get 503, and calls already accepted have up to
// Options.ShutdownTimeout to be answered before their connections are closed. Close
// returns when the server has stopped.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		ctx, cancel := context.WithTimeout(context.Background(), l.opts.ShutdownTimeout)
		defer cancel()
		if err := l.srv.Shutdown(ctx); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				l.log.Warn("httptransport: calls still open at shutdown timeout; closing them",
					"timeout", l.opts.ShutdownTimeout)
			} else {
				l.closeErr = fmt.Errorf("httptransport: close %s: %w", l.Addr(), err)
			}
			_ = l.srv.Close()
		}
		<-l.serveDone
		l.forget(l)
	})
	return l.closeErr
}

// serveHTTP turns one HTTP request into a serverConn, hands it to Accept, and writes the
// response that the Conn's Send passes back.
func (l *listener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	sc := &serverConn{
		w:      w,
		rc:     http.NewResponseController(w),
		ctx:    r.Context(),
		remote: r.RemoteAddr,
		opts:   &l.opts,
		send:   make(chan sendReq),
		result: make(chan error, 1),
		closed: make(chan struct{}),
		gone:   make(chan struct{}),
	}
	defer close(sc.gone)
	if !sc.readRequest(r) {
		return
	}
	// The request's context ends when the client goes away, and also when reading the
	// body failed (net/http cancels it on any read error): a request that failed that way
	// is still answered, with its error.
	clientGone := r.Context().Done()
	if sc.reqErr != nil {
		clientGone = nil
	}
	select {
	case l.accept <- sc:
	case <-l.done:
		http.Error(w, "transport: listener closed", http.StatusServiceUnavailable)
		return
	case <-clientGone:
		return
	}
	select {
	case req := <-sc.send:
		if req.upgrade {
			sc.result <- sc.hijack(req.ctx)
			return
		}
		sc.result <- sc.write(req)
	case <-sc.closed:
		if sc.stream {
			// A stream closed before it began: the client sees it open and end.
			if sc.hijack(context.Background()) == nil {
				_ = sc.st.Load().close()
			}
			return
		}
		l.log.Debug("httptransport: call closed without a response", "remote", sc.remote)
		http.Error(w, "transport: call closed without a response", http.StatusBadGateway)
	case <-clientGone:
	}
}

// serverConn is a server transport.Conn: one HTTP request and its response. Only the
// handler goroutine touches the ResponseWriter; Send hands it the response.
type serverConn struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	ctx    context.Context // the request's: done when the client goes away
	remote string
	opts   *Options

	msg    *transport.Message
	reqErr error
	stream bool // the request asked to open a stream

	upMu sync.Mutex             // serializes upgrade
	st   atomic.Pointer[stream] // set once the connection is a stream

	recvd     atomic.Bool
	sent      atomic.Bool
	send      chan sendReq
	result    chan error
	closed    chan struct{}
	closeOnce sync.Once
	gone      chan struct{} // closed when the handler returns
}

type sendReq struct {
	ctx     context.Context
	m       *transport.Message
	status  int
	upgrade bool // switch the connection to a stream instead of writing m
}

var _ transport.Conn = (*serverConn)(nil)

// readRequest reads r into sc.msg or sc.reqErr. It reports false when the client went away
// and there is no one left to answer.
func (sc *serverConn) readRequest(r *http.Request) bool {
	body, err := sc.readBody(r)
	switch {
	case err == nil:
	case errors.Is(err, ErrBodyTooLarge):
		sc.reqErr = &RequestError{Status: http.StatusRequestEntityTooLarge, Err: err}
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		sc.reqErr = &RequestError{Status: http.StatusRequestTimeout,
			Err: fmt.Errorf("request body not received within %v", sc.opts.BodyTimeout)}
		return true
	case r.Context().Err() != nil || errors.Is(err, io.ErrUnexpectedEOF):
		return false
	default:
		sc.reqErr = &RequestError{Status: http.StatusBadRequest, Err: fmt.Errorf("reading request body: %w", err)}
		return true
	}
	service, endpoint, target, err := transport.ParseTarget(r.URL.EscapedPath(), r.URL.RawQuery)
	if err != nil {
		sc.reqErr = &RequestError{Status: http.StatusBadRequest, Err: err}
		return true
	}
	upgrade := strings.EqualFold(r.Header.Get("Upgrade"), upgradeToken) &&
		headerHasToken(r.Header, "Connection", "upgrade")
	if r.Header.Get(transport.HeaderStream) == "1" {
		if !upgrade {
			sc.reqErr = &RequestError{Status: http.StatusBadRequest,
				Err: fmt.Errorf("stream request without Connection: Upgrade and Upgrade: %s", upgradeToken)}
			return true
		}
		sc.stream = true
	}
	h := toMessageHeader(r.Header, 4)
	h[transport.HeaderService] = service
	h[transport.HeaderEndpoint] = endpoint
	h[transport.HeaderMethod] = r.Method
	h[transport.HeaderPath] = target
	sc.msg = &transport.Message{Header: h, Body: body}
	return true
}

// readBody reads the request body within the size and time limits.
func (sc *serverConn) readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength > sc.opts.MaxBody {
		return nil, fmt.Errorf("request body of %d bytes exceeds the limit of %d: %w",
			r.ContentLength, sc.opts.MaxBody, ErrBodyTooLarge)
	}
	if r.ContentLength == 0 {
		return nil, nil
	}
	_ = sc.rc.SetReadDeadline(time.Now().Add(sc.opts.BodyTimeout))
	body, err := readBody(http.MaxBytesReader(sc.w, r.Body, sc.opts.MaxBody), r.ContentLength, sc.opts.MaxBody)
	if err == nil {
		// Clear the deadline: net/http keeps reading in the background to notice a client
		// that goes away, and a deadline firing there would look like one. After a failed
		// read it stays, so that net/http, which may read what is left of the body before
		// it answers, gives up at once.
		_ = sc.rc.SetReadDeadline(time.Time{})
	} else {
		sc.w.Header().Set("Connection", "close")
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, fmt.Errorf("request body exceeds the limit of %d bytes: %w", mbe.Limit, ErrBodyTooLarge)
	}
	return body, err
}

// headerHasToken reports whether a comma-separated list in header key holds token.
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h[key] {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Recv returns the request. A request that is not a valid call yields a *RequestError. A
// server Conn carries one request: a second Recv returns io.EOF.
//
// On a stream, a second Recv switches the connection to the stream if no Send did yet,
// and returns the next frame, or io.EOF once the client has closed the stream.
func (sc *serverConn) Recv(ctx context.Context) (*transport.Message, error) {
	if sc.stream && sc.recvd.Load() {
		st, err := sc.upgrade(ctx)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			return nil, fmt.Errorf("httptransport: stream recv from %s: %w", sc.remote, err)
		}
		return st.recv(ctx)
	}
	select {
	case <-sc.closed:
		return nil, fmt.Errorf("httptransport: recv: %w", transport.ErrClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("httptransport: recv: %w", err)
	}
	if !sc.recvd.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("httptransport: recv: %w", io.EOF)
	}
	if sc.reqErr != nil {
		return nil, sc.reqErr
	}
	return sc.msg, nil
}

// Send writes m as the response: status from transport.HeaderStatus (200 when absent),
// every other header, and the body. A Message that cannot be sent (a bad status or header,
// a body over the limit) fails before anything is written and the Conn stays open for
// another Send.
//
// On a stream, Send writes m as a frame, first switching the connection to the stream (101
// Switching Protocols) if needed. The exception is a first Send, before any second Recv,
// whose transport.HeaderStatus is 300 or more: it refuses the stream, and is written as a
// plain HTTP response that ends the Conn.
func (sc *serverConn) Send(ctx context.Context, m *transport.Message) error {
	if sc.stream {
		return sc.sendStream(ctx, m)
	}
	return sc.sendResponse(ctx, m)
}

// sendStream is Send on a stream.
func (sc *serverConn) sendStream(ctx context.Context, m *transport.Message) error {
	if refusal(m) && sc.st.Load() == nil {
		sc.upMu.Lock()
		if sc.st.Load() == nil {
			defer sc.upMu.Unlock()
			return sc.sendResponse(ctx, m)
		}
		sc.upMu.Unlock()
	}
	st, err := sc.upgrade(ctx)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("stream already refused by a plain response")
		}
		return fmt.Errorf("httptransport: stream send to %s: %w", sc.remote, err)
	}
	return st.send(ctx, m)
}

// sendResponse writes m as the HTTP response.
func (sc *serverConn) sendResponse(ctx context.Context, m *transport.Message) error {
	status, err := sc.check(m)
	if err != nil {
		return err
	}
	if !sc.sent.CompareAndSwap(false, true) {
		return errors.New("httptransport: send: response already sent")
	}
	select {
	case sc.send <- sendReq{ctx: ctx, m: m, status: status}:
		if err := <-sc.result; err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return fmt.Errorf("httptransport: send to %s: %w: %w", sc.remote, cerr, err)
			}
			return fmt.Errorf("httptransport: send to %s: %w", sc.remote, err)
		}
		return nil
	case <-sc.gone:
		return fmt.Errorf("httptransport: send to %s: %w", sc.remote, errClientGone)
	case <-sc.closed:
		return fmt.Errorf("httptransport: send: %w", transport.ErrClosed)
	case <-ctx.Done():
		sc.sent.Store(false)
		return fmt.Errorf("httptransport: send to %s: %w", sc.remote, ctx.Err())
	}
}

// refusal reports whether m, as a stream's first Send, refuses the stream.
func refusal(m *transport.Message) bool {
	if m == nil {
		return false
	}
	n, err := strconv.Atoi(m.Header[transport.HeaderStatus])
	return err == nil && n >= 300
}

// upgrade switches the connection to a stream once, and returns the stream. It returns
// io.EOF if a refusal was sent instead.
func (sc *serverConn) upgrade(ctx context.Context) (*stream, error) {
	if st := sc.st.Load(); st != nil {
		return st, nil
	}
	sc.upMu.Lock()
	defer sc.upMu.Unlock()
	if st := sc.st.Load(); st != nil {
		return st, nil
	}
	if !sc.sent.CompareAndSwap(false, true) {
		return nil, io.EOF // refused by a plain response
	}
	select {
	case sc.send <- sendReq{ctx: ctx, upgrade: true}:
	case <-sc.gone:
		return nil, errClientGone
	case <-sc.closed:
		return nil, transport.ErrClosed
	}
	if err := <-sc.result; err != nil {
		return nil, err
	}
	st := sc.st.Load()
	select {
	case <-sc.closed:
		_ = st.close() // Close may have run before st was stored
		return nil, transport.ErrClosed
	default:
	}
	return st, nil
}

// hijack takes the connection from net/http, answers 101 Switching Protocols, and stores
// the stream over it in sc.st. It runs on the handler goroutine.
func (sc *serverConn) hijack(ctx context.Context) error {
	nc, brw, err := sc.rc.Hijack()
	if err != nil {
		return fmt.Errorf("switching to a stream: %w", err)
	}
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(sc.opts.WriteTimeout)
	}
	_ = nc.SetWriteDeadline(d)
	_, err = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + upgradeToken + "\r\n\r\n")
	if err == nil {
		err = brw.Flush()
	}
	_ = nc.SetWriteDeadline(time.Time{})
	if err != nil {
		_ = nc.Close()
		return fmt.Errorf("switching to a stream: %w", err)
	}
	// Read past net/http's reader: keep what it buffered (frames the client sent early),
	// then read the socket directly.
	var r io.Reader = nc
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(early)), nc)
	}
	sc.st.Store(newStream(nc, bufio.NewReaderSize(r, bufSize), bufio.NewWriterSize(nc, bufSize), sc.remote, sc.opts))
	return nil
}

// check validates m as a response and returns its status.
func (sc *serverConn) check(m *transport.Message) (int, error) {
	if m == nil {
		return 0, errors.New("httptransport: send: nil message")
	}
	status := http.StatusOK
	if s, ok := m.Header[transport.HeaderStatus]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 200 || n > 599 {
			return 0, fmt.Errorf("httptransport: send: header %s: status %q is not a number from 200 to 599",
				transport.HeaderStatus, s)
		}
		status = n
	}
	if n := int64(len(m.Body)); n > sc.opts.MaxBody {
		return 0, fmt.Errorf("httptransport: send: body of %d bytes exceeds the limit of %d: %w",
			n, sc.opts.MaxBody, ErrBodyTooLarge)
	}
	if len(m.Body) > 0 && !bodyAllowed(status) {
		return 0, fmt.Errorf("httptransport: send: status %d allows no body, have %d bytes", status, len(m.Body))
	}
	for k, v := range m.Header {
		if _, err := headerValues(k, v); err != nil {
			return 0, fmt.Errorf("httptransport: send: %w", err)
		}
	}
	return status, nil
}

func bodyAllowed(status int) bool {
	return status != http.StatusNoContent && status != http.StatusNotModified
}

// write writes the response on the handler goroutine, bounded by the Send context's
// deadline (or Options.WriteTimeout) and cancellation.
func (sc *serverConn) write(req sendReq) error {
	h := sc.w.Header()
	for k, v := range req.m.Header {
		ck := http.CanonicalHeaderKey(k)
		if ck == transport.HeaderStatus || framing(ck) {
			continue
		}
		h[ck] = strings.Split(v, transport.ValueSep)
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // no sniffing: send no Content-Type rather than a guess
	}
	if bodyAllowed(req.status) {
		h["Content-Length"] = []string{strconv.Itoa(len(req.m.Body))}
	}
	d, ok := req.ctx.Deadline()
	if !ok {
		d = time.Now().Add(sc.opts.WriteTimeout)
	}
	_ = sc.rc.SetWriteDeadline(d)
	var mu sync.Mutex
	finished := false
	stop := alwaysTrue
	if req.ctx.Done() != nil {
		stop = context.AfterFunc(req.ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if !finished {
				_ = sc.rc.SetWriteDeadline(time.Unix(1, 0))
			}
		})
	}
	sc.w.WriteHeader(req.status)
	_, err := sc.w.Write(req.m.Body)
	if err == nil {
		err = sc.rc.Flush()
	}
	stop()
	mu.Lock()
	finished = true
	mu.Unlock()
	if err == nil {
		// The next request on this keep-alive connection must not inherit the deadline.
		err = sc.rc.SetWriteDeadline(time.Time{})
	}
	return err
}

// Close ends the call. Before a Send, the client is answered 502.
//
// On a stream, Close ends the stream: the client's Recv returns io.EOF.
func (sc *serverConn) Close() error {
	sc.closeOnce.Do(func() { close(sc.closed) })
	if st := sc.st.Load(); st != nil {
		return st.close()
	}
	return nil
}

// RemoteAddr returns the client's address, host:port.
func (sc *serverConn) RemoteAddr() string { return sc.remote }

// Context is done when the client goes away before the call is answered (it closed the
// connection), and once the call has been answered. On a stream it is never done: the
// stream's Recv reports the end of the connection. Either way it carries the values that
// Options.ConnContext put in the connection's context.
func (sc *serverConn) Context() context.Context {
	if sc.stream {
		return context.WithoutCancel(sc.ctx)
	}
	return sc.ctx
}
