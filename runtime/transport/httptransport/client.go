package httptransport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/microhost/micro/runtime/internal/peek"
	"github.com/microhost/micro/runtime/transport"
)

const (
	// bufSize is the size of a client connection's read and write buffers.
	bufSize = 4 << 10
	// earlyWait bounds the wait for a response after writing the request failed.
	earlyWait = time.Second
)

// errBroken is wrapped by the errors of calls on a client Conn that an earlier failure or
// cancellation left in an unknown state.
var errBroken = errors.New("httptransport: connection broken by an earlier error")

// clientConn is a client transport.Conn: one TCP connection carrying calls one after
// another. Send and Recv must not be called concurrently with each other; Close may be
// called at any time.
type clientConn struct {
	nc   net.Conn
	addr string
	opts *Options

	lr   limitReader
	br   *bufio.Reader
	bw   *bufio.Writer
	peek *peek.Peeker

	// req, hdr and u are reused by every Send: Request.Write keeps none of them.
	req  http.Request
	hdr  http.Header
	u    url.URL
	body bytes.Reader

	pending     bool                   // a request was sent and its response not yet read
	early       *transport.Message     // a response read while the request was being written
	serverClose bool                   // the server asked to close the connection
	st          atomic.Pointer[stream] // set by the Send that opened a stream
	broken      atomic.Bool
	closed      atomic.Bool
}

// Reusable reports whether the conn can carry another call: no call is half done, no error
// or cancellation broke it, the server did not ask to close it, and (where the platform lets
// it be checked without blocking) the server has not closed it or sent anything unasked.
// A pool calls it before keeping the conn and before handing it out again.
func (c *clientConn) Reusable() bool {
	if c.pending || c.serverClose || c.broken.Load() || c.closed.Load() || c.st.Load() != nil {
		return false
	}
	if c.br.Buffered() > 0 {
		return false
	}
	return c.peek.Alive()
}

func newClientConn(nc net.Conn, addr string, opts Options) *clientConn {
	c := &clientConn{nc: nc, addr: addr, opts: &opts, hdr: make(http.Header)}
	c.lr = limitReader{r: nc, n: -1}
	c.br = bufio.NewReaderSize(&c.lr, bufSize)
	c.bw = bufio.NewWriterSize(nc, bufSize)
	c.peek = peek.New(nc)
	return c
}

// Send writes m as the request POST /{service}/{endpoint}. A Message that cannot be sent (no
// service or endpoint, a bad header, a body over the limit) fails with a
// *transport.MessageError before anything is written, and leaves the conn usable; an I/O
// error or cancellation breaks it. When Send fails otherwise, the server has not received
// the whole request, so it cannot have begun the call.
//
// A Message whose transport.HeaderStream is "1" opens a stream: the request also asks to
// upgrade the connection, and every later Send and Recv carries one frame.
func (c *clientConn) Send(ctx context.Context, m *transport.Message) error {
	if st := c.st.Load(); st != nil {
		return st.send(ctx, m)
	}
	if err := c.usable("send to"); err != nil {
		return err
	}
	if c.pending {
		return fmt.Errorf("httptransport: send to %s: the previous response was not read", c.addr)
	}
	if err := c.prepare(m); err != nil {
		return &transport.MessageError{Err: err}
	}
	if m.Header[transport.HeaderStream] == "1" {
		return c.openStream(ctx)
	}
	stop := c.arm(ctx, c.nc.SetWriteDeadline)
	err := c.req.Write(c.bw)
	if err == nil {
		err = c.bw.Flush()
	}
	if !stop() {
		c.broken.Store(true)
	}
	if err != nil {
		c.broken.Store(true)
		if ctx.Err() == nil {
			// A server may answer (413, say) and close before it has read the whole
			// request. Its answer is more useful to the caller than the write error.
			if m, rerr := c.earlyResponse(ctx); rerr == nil {
				c.early, c.pending = m, true
				return nil
			}
		}
		return c.ioError(ctx, "send to", err)
	}
	c.pending = true
	return nil
}

// openStream writes the prepared request as an upgrade to a stream. Its answer is read by
// the first Recv.
func (c *clientConn) openStream(ctx context.Context) error {
	c.hdr["Connection"] = []string{"Upgrade"}
	c.hdr["Upgrade"] = []string{upgradeToken}
	stop := c.arm(ctx, c.nc.SetWriteDeadline)
	err := c.req.Write(c.bw)
	if err == nil {
		err = c.bw.Flush()
	}
	if !stop() {
		c.broken.Store(true)
	}
	if err != nil {
		c.broken.Store(true)
		return c.ioError(ctx, "open stream to", err)
	}
	st := newStream(c.nc, c.br, c.bw, c.addr, c.opts)
	st.handshake = func() (*transport.Message, error) {
		m, err := c.readResponse(true)
		if err != nil || m == nil {
			return nil, err
		}
		// Refused: the connection carries nothing more.
		st.refused.Store(true)
		_ = c.nc.Close()
		return m, nil
	}
	c.st.Store(st)
	return nil
}

// earlyResponse reads a response that the server sent before its side of the connection
// failed, waiting at most earlyWait.
func (c *clientConn) earlyResponse(ctx context.Context) (*transport.Message, error) {
	d := time.Now().Add(earlyWait)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	if err := c.nc.SetReadDeadline(d); err != nil {
		return nil, err
	}
	return c.readResponse(false)
}

// prepare fills c.req from m, checking everything that could make the write fail.
func (c *clientConn) prepare(m *transport.Message) error {
	if m == nil {
		return fmt.Errorf("httptransport: send to %s: nil message", c.addr)
	}
	service := m.Header[transport.HeaderService]
	if service == "" || (m.Header[transport.HeaderEndpoint] == "" && m.Header[transport.HeaderPath] == "") {
		return fmt.Errorf("httptransport: send to %s: message needs %s, and %s or %s (have %q, %q, %q)",
			c.addr, transport.HeaderService, transport.HeaderEndpoint, transport.HeaderPath,
			service, m.Header[transport.HeaderEndpoint], m.Header[transport.HeaderPath])
	}
	if n := int64(len(m.Body)); n > c.opts.MaxBody {
		return fmt.Errorf("httptransport: send to %s: body of %d bytes exceeds the limit of %d: %w",
			c.addr, n, c.opts.MaxBody, ErrBodyTooLarge)
	}
	method, target, err := requestLine(m.Header)
	if err != nil {
		return fmt.Errorf("httptransport: send to %s: %w", c.addr, err)
	}
	clear(c.hdr)
	for k, v := range m.Header {
		ck := http.CanonicalHeaderKey(k)
		switch ck {
		case transport.HeaderService, transport.HeaderEndpoint, transport.HeaderMethod, transport.HeaderPath:
			continue
		}
		if framing(ck) {
			continue
		}
		vs, err := headerValues(k, v)
		if err != nil {
			return fmt.Errorf("httptransport: send to %s: %w", c.addr, err)
		}
		c.hdr[ck] = vs
	}
	c.u = url.URL{Opaque: "/" + url.PathEscape(service) + target}
	c.req = http.Request{
		Method:        method,
		URL:           &c.u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        c.hdr,
		Host:          c.addr,
		ContentLength: int64(len(m.Body)),
	}
	if len(m.Body) > 0 {
		c.body.Reset(m.Body)
		// io.NopCloser keeps the reader recognisable as in-memory to net/http, which then
		// writes headers and body in one go.
		c.req.Body = io.NopCloser(&c.body)
	}
	return nil
}

// requestLine returns the method and the target after the service (path and query) of a
// request message: its HeaderMethod (default POST) and HeaderPath (default "/" and the
// escaped endpoint).
func requestLine(h map[string]string) (method, target string, err error) {
	method, target = http.MethodPost, h[transport.HeaderPath]
	if m, ok := h[transport.HeaderMethod]; ok {
		if m == "" || strings.IndexFunc(m, func(r rune) bool { return r > 0x7e || !isTokenChar(byte(r)) }) >= 0 {
			return "", "", fmt.Errorf("header %s: invalid method %q", transport.HeaderMethod, m)
		}
		method = m
	}
	if target == "" {
		return method, "/" + url.PathEscape(h[transport.HeaderEndpoint]), nil
	}
	if target[0] != '/' || strings.ContainsAny(target, " #") || strings.IndexFunc(target, unicode.IsControl) >= 0 {
		return "", "", fmt.Errorf("header %s: invalid target %q: want an escaped path and query starting with /", transport.HeaderPath, target)
	}
	return method, target, nil
}

// Recv reads the response to the last Send. Its Header holds each response header (first
// value, canonical key) and transport.HeaderStatus, the status code in decimal. Any error
// breaks the conn, so a late response can never be read as the answer to another call.
//
// On a stream, Recv returns the next frame, or io.EOF once the server has closed the
// stream. A server that refused the stream (any status but 101) has its response returned
// as a message by the first Recv, and the conn is done: later Recvs return io.EOF.
func (c *clientConn) Recv(ctx context.Context) (*transport.Message, error) {
	if st := c.st.Load(); st != nil {
		return st.recv(ctx)
	}
	if m := c.early; m != nil && !c.closed.Load() {
		c.early, c.pending = nil, false
		return m, nil
	}
	if err := c.usable("recv from"); err != nil {
		return nil, err
	}
	if !c.pending {
		return nil, fmt.Errorf("httptransport: recv from %s: no request was sent", c.addr)
	}
	c.pending = false
	_, hasDeadline := ctx.Deadline()
	stop := c.arm(ctx, c.nc.SetReadDeadline)
	m, err := c.readResponse(false)
	if !stop() {
		c.broken.Store(true)
	} else if hasDeadline && err == nil {
		// Clear the deadline so that it does not fire while the conn sits in a pool.
		err = c.nc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		c.broken.Store(true)
		return nil, c.ioError(ctx, "recv from", err)
	}
	return m, nil
}

// readResponse reads a response. With upgrade, a 101 that switches to a stream returns a
// nil message and no error.
func (c *clientConn) readResponse(upgrade bool) (*transport.Message, error) {
	// Bound what the header block may take; the bufio buffer may read ahead into the body.
	c.lr.n = int64(c.opts.MaxHeaderBytes) + bufSize
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(c.br, &c.req)
		if err != nil {
			if c.lr.n == 0 {
				return nil, fmt.Errorf("response header exceeds %d bytes", c.opts.MaxHeaderBytes)
			}
			return nil, err
		}
		if resp.StatusCode >= 200 {
			break
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			if !upgrade {
				return nil, fmt.Errorf("unexpected response status %d", resp.StatusCode)
			}
			if u := resp.Header.Get("Upgrade"); !strings.EqualFold(u, upgradeToken) {
				return nil, fmt.Errorf("101 response upgrades to %q, want %q", u, upgradeToken)
			}
			c.lr.n = -1
			return nil, nil
		}
		// Skip informational responses (100 Continue, 103 Early Hints).
	}
	c.lr.n = -1
	if resp.Close {
		c.serverClose = true
	}
	body, err := readBody(resp.Body, resp.ContentLength, c.opts.MaxBody)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("response body: %w", err)
	}
	h := toMessageHeader(resp.Header, 1)
	h[transport.HeaderStatus] = strconv.Itoa(resp.StatusCode)
	return &transport.Message{Header: h, Body: body}, nil
}

// readBody reads a body of n bytes (n < 0: up to EOF) that may not exceed limit.
func readBody(r io.Reader, n, limit int64) ([]byte, error) {
	switch {
	case n > limit:
		return nil, fmt.Errorf("%d bytes exceed the limit of %d: %w", n, limit, ErrBodyTooLarge)
	case n == 0:
		return nil, nil
	case n > 0:
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("more than %d bytes: %w", limit, ErrBodyTooLarge)
	}
	if len(b) == 0 {
		return nil, nil
	}
	return b, nil
}

// Close closes the connection. A Send or Recv in progress fails.
func (c *clientConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	if st := c.st.Load(); st != nil {
		return st.close()
	}
	return c.nc.Close()
}

func (c *clientConn) usable(op string) error {
	if c.closed.Load() {
		return fmt.Errorf("httptransport: %s %s: %w", op, c.addr, transport.ErrClosed)
	}
	if c.broken.Load() {
		return fmt.Errorf("httptransport: %s %s: %w", op, c.addr, errBroken)
	}
	return nil
}

// arm applies ctx's deadline with set, and makes ctx's cancellation unblock the I/O by
// moving the deadline to the past. The returned stop reports false when the cancellation
// fired, in which case the conn must be treated as broken.
func (c *clientConn) arm(ctx context.Context, set func(time.Time) error) (stop func() bool) {
	d, _ := ctx.Deadline()
	_ = set(d) // an error here resurfaces as the I/O error
	if ctx.Done() == nil {
		return alwaysTrue
	}
	return context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
}

func alwaysTrue() bool { return true }

// ioError wraps err from op, making a deadline or cancellation of ctx visible to errors.Is.
func (c *clientConn) ioError(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("httptransport: %s %s: %w: %w", op, c.addr, cerr, err)
	}
	if _, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) {
		// The conn's deadline can fire a moment before ctx's own timer.
		return fmt.Errorf("httptransport: %s %s: %w: %w", op, c.addr, context.DeadlineExceeded, err)
	}
	if c.closed.Load() {
		return fmt.Errorf("httptransport: %s %s: %w: %w", op, c.addr, transport.ErrClosed, err)
	}
	return fmt.Errorf("httptransport: %s %s: %w", op, c.addr, err)
}

// limitReader reads from r until n bytes have been read; n < 0 means no limit.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, errHeaderLimit
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

var errHeaderLimit = errors.New("httptransport: response header too large")
