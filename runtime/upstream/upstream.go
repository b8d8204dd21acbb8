// Package upstream sends HTTP/1.1 requests to the places micro forwards calls to (apps,
// and the inbound servers of other micro processes) on pooled keep-alive connections. It
// writes and reads with fasthttp's request and response, and adds what micro's call path
// needs of a client: a context's deadline and cancellation on every exchange, and whether
// a failed exchange sent its request whole, so that the caller knows whether the peer may
// have acted on it.
package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/internal/peek"
	"github.com/microhost/micro/runtime/transport"
)

// Defaults for the zero fields of Options.
const (
	DefaultMaxIdle        = 64
	DefaultIdleTTL        = 60 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	DefaultMaxBody        = 4 << 20
	DefaultMaxHeaderBytes = 16 << 10
	DefaultInMemory       = 64 << 10
	DefaultBodyTimeout    = 30 * time.Second
	bufSize               = 4 << 10
)

// Options configures a Client. Zero fields take the defaults.
type Options struct {
	// MaxIdle bounds the idle connections kept per address; a negative one keeps none.
	MaxIdle int
	// IdleTTL closes a connection that stayed idle this long. Keep it below the idle
	// timeout of the servers called, so that none closes a connection being reused.
	IdleTTL time.Duration
	// DialTimeout bounds a dial whose context has no earlier deadline.
	DialTimeout time.Duration
	// MaxBody bounds a response body: one whose length is known to be larger fails the
	// exchange with fasthttp.ErrBodyTooLarge, and one that streams ends with that error when
	// it grows past it. SetMaxBody changes it.
	MaxBody int
	// InMemory is the largest response body read whole: a longer one, or one of unknown
	// length, streams to whoever reads the response (see Do).
	InMemory int
	// BodyTimeout bounds each read of a body that streams.
	BodyTimeout time.Duration
	// MaxHeaderBytes bounds a response's header block: it is the size of each
	// connection's read buffer, which the header must fit.
	MaxHeaderBytes int
	// TLS, when set, makes every connection speak TLS with it (mutual TLS to other micro
	// processes). The server should send no session tickets: an idle connection is
	// checked by peeking at its socket, where a ticket would look like unasked-for bytes.
	TLS *tls.Config
}

func (o Options) withDefaults() Options {
	if o.MaxIdle == 0 {
		o.MaxIdle = DefaultMaxIdle
	}
	if o.IdleTTL <= 0 {
		o.IdleTTL = DefaultIdleTTL
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.MaxBody <= 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.InMemory <= 0 {
		o.InMemory = DefaultInMemory
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	return o
}

// Client sends requests to addresses (host:port) on connections it pools per address. It
// is safe for concurrent use.
type Client struct {
	opts    Options
	dialer  net.Dialer
	maxBody atomic.Int64
	bufs    sync.Pool // of *[]byte, InMemory+1 long: bodies of unknown length are read into them

	mu     sync.Mutex
	idle   map[string][]*conn // per address; the most recently used last
	closed bool
}

// New returns a Client.
func New(opts Options) *Client {
	c := &Client{opts: opts.withDefaults(), idle: make(map[string][]*conn)}
	c.bufs.New = func() any { b := make([]byte, c.opts.InMemory+1); return &b }
	c.maxBody.Store(int64(c.opts.MaxBody))
	return c
}

// SetMaxBody changes the limit on response bodies of later exchanges.
func (c *Client) SetMaxBody(n int) {
	if n <= 0 {
		n = DefaultMaxBody
	}
	c.maxBody.Store(int64(n))
}

// conn is one pooled connection.
type conn struct {
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	peek *peek.Peeker
	used time.Time // when it went idle
}

// Do sends req to addr and reads the answer into resp, within ctx's deadline; ctx's
// cancellation aborts it. When it fails, sent reports whether the request was written whole,
// so that the peer may have acted on it: a failed dial or write means it cannot have. A
// dial failure is a *transport.ConnectError.
//
// A request body set as a stream (SetBodyStream) streams out. An answer's body longer than
// Options.InMemory, or of unknown length, is left as resp's body stream: it streams to
// whoever writes resp (a fasthttp server, for one), each read within Options.BodyTimeout,
// and the connection goes back to the pool when the stream is read to its end and closed.
func (c *Client) Do(ctx context.Context, addr string, req *fasthttp.Request, resp *fasthttp.Response) (sent bool, err error) {
	cn, err := c.get(ctx, addr)
	if err != nil {
		return false, err
	}
	deadline, _ := ctx.Deadline()
	_ = cn.nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = cn.nc.SetDeadline(time.Unix(1, 0)) })
	err = req.Write(cn.bw)
	if err == nil {
		err = cn.bw.Flush()
	}
	if err != nil {
		stop()
		cn.nc.Close()
		return false, c.ioError(ctx, "send to", addr, err)
	}
	stream, err := c.read(cn, addr, req.Header.IsHead(), resp)
	cancelled := !stop()
	if err != nil || cancelled {
		cn.nc.Close()
		if err == nil {
			err = ctx.Err()
		}
		if errors.Is(err, fasthttp.ErrBodyTooLarge) {
			return true, fmt.Errorf("upstream: read from %s: %w", addr, err)
		}
		return true, c.ioError(ctx, "read from", addr, err)
	}
	if stream != nil {
		stream.reuse = !resp.ConnectionClose() && !req.ConnectionClose()
		resp.SetBodyStream(stream, resp.Header.ContentLength())
		return true, nil
	}
	if resp.ConnectionClose() || req.ConnectionClose() {
		cn.nc.Close()
		return true, nil
	}
	c.put(addr, cn)
	return true, nil
}

// maxInterim bounds the interim (1xx) answers read before the final one.
const maxInterim = 8

// read reads an answer from cn, a connection to addr, into resp: its header, and its body
// when that is short enough to hold (the returned stream is nil then), or else the stream to
// read it from. head is set when the request was a HEAD, whose answer has no body whatever
// its header says.
func (c *Client) read(cn *conn, addr string, head bool, resp *fasthttp.Response) (*bodyStream, error) {
	resp.Reset()
	for n := 0; ; n++ {
		if err := resp.Header.Read(cn.br); err != nil {
			return nil, err
		}
		if st := resp.StatusCode(); st < 100 || st > 199 || st == fasthttp.StatusSwitchingProtocols {
			break
		}
		if n >= maxInterim {
			return nil, errors.New("more than 8 interim (1xx) answers")
		}
	}
	st := resp.StatusCode()
	if head || st < 200 || st == fasthttp.StatusNoContent || st == fasthttp.StatusNotModified {
		resp.SkipBody = true
		return nil, nil
	}
	max := int(c.maxBody.Load())
	hold := min(max, c.opts.InMemory)
	cl := resp.Header.ContentLength()
	switch {
	case cl > max:
		return nil, fasthttp.ErrBodyTooLarge
	case cl >= 0 && cl <= hold:
		return nil, resp.ReadBody(cn.br, max)
	}
	s := &bodyStream{r: cn.br, left: int64(max), timeout: c.opts.BodyTimeout, c: c, addr: addr, cn: cn}
	if cl >= 0 {
		s.r = &fixedBody{r: cn.br, left: int64(cl)}
		return s, nil
	}
	if cl == -1 {
		s.r, s.chunked = httputil.NewChunkedReader(cn.br), true
	} else {
		// No length: the body runs to the end of the connection, which cannot be reused.
		resp.SetConnectionClose()
	}
	// Of unknown length: read what may be held, and stream only a body longer than that.
	// One that is longer than max_body is refused whole, as one of known length is, while
	// max_body is no more than what may be held.
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := (*bp)[:hold+1]
	n, err := io.ReadFull(s, buf)
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		resp.SetBody(buf[:n])
		return nil, nil
	case err != nil:
		return nil, err
	case n > max:
		return nil, fasthttp.ErrBodyTooLarge
	}
	s.r, s.left = io.MultiReader(bytes.NewReader(bytes.Clone(buf[:n])), s.r), s.left+int64(n)
	return s, nil
}

// fixedBody reads a body of known length: one that ends early is io.ErrUnexpectedEOF.
type fixedBody struct {
	r    io.Reader
	left int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && b.left == 0 {
		err = io.EOF
	}
	return n, err
}

// bodyStream is an answer's body that streams from its connection. Closed once read to its
// end, it gives the connection back to the pool; closed before, it closes it.
type bodyStream struct {
	r       io.Reader
	chunked bool  // r is a chunked body: its trailer follows
	left    int64 // how much more the body may be: MaxBody
	timeout time.Duration

	c     *Client
	addr  string
	cn    *conn
	reuse bool // the connection may serve another exchange
	ended bool // read to its end, trailer included
}

func (s *bodyStream) Read(p []byte) (int, error) {
	if s.cn == nil {
		return 0, errors.New("upstream: read on a closed body")
	}
	if s.ended {
		return 0, io.EOF
	}
	_ = s.cn.nc.SetReadDeadline(time.Now().Add(s.timeout))
	n, err := s.r.Read(p)
	if s.left -= int64(n); s.left < 0 {
		return n, fmt.Errorf("upstream: read from %s: %w", s.addr, fasthttp.ErrBodyTooLarge)
	}
	if err == io.EOF && s.chunked {
		if terr := skipTrailer(s.cn.br); terr != nil {
			return n, fmt.Errorf("upstream: read from %s: %w", s.addr, terr)
		}
	}
	if err == io.EOF {
		s.ended = true
	} else if err != nil {
		err = fmt.Errorf("upstream: read from %s: %w", s.addr, err)
	}
	return n, err
}

// Close ends the stream: its connection goes back to the pool when the body was read whole.
func (s *bodyStream) Close() error {
	if s.cn == nil {
		return nil
	}
	if s.ended && s.reuse {
		s.c.put(s.addr, s.cn)
	} else {
		s.cn.nc.Close()
	}
	s.cn = nil
	return nil
}

// skipTrailer reads the trailer section of a chunked body, up to its empty line.
func skipTrailer(br *bufio.Reader) error {
	for range 64 {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
	return errors.New("trailer longer than 64 lines")
}

// ioError describes an I/O failure on a connection to addr, naming ctx's end when that is
// what stopped it.
func (c *Client) ioError(ctx context.Context, op, addr string, err error) error {
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); cerr == nil && ok && !time.Now().Before(dl) {
		// The connection's deadline fires at ctx's, a moment before ctx says so.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		return fmt.Errorf("upstream: %s %s: %w: %w", op, addr, cerr, err)
	}
	return fmt.Errorf("upstream: %s %s: %w", op, addr, err)
}

// get returns an idle connection to addr that is still open and quiet, or dials one. The
// check costs a syscall, made outside the lock: it is what keeps a call off a connection
// that an app closed as it shut down.
func (c *Client) get(ctx context.Context, addr string) (*conn, error) {
	now := time.Now()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, fmt.Errorf("upstream: dial %s: %w", addr, transport.ErrClosed)
		}
		list := c.idle[addr]
		if len(list) == 0 {
			delete(c.idle, addr)
			c.mu.Unlock()
			break
		}
		cn := list[len(list)-1]
		c.idle[addr] = list[:len(list)-1]
		c.mu.Unlock()
		if now.Sub(cn.used) < c.opts.IdleTTL && cn.peek.Alive() {
			return cn, nil
		}
		cn.nc.Close()
	}
	dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	raw, err := c.dialer.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, &transport.ConnectError{Addr: addr, Err: err}
	}
	nc := raw
	if c.opts.TLS != nil {
		tc := tls.Client(raw, c.opts.TLS)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return nil, &transport.ConnectError{Addr: addr, Err: fmt.Errorf("TLS handshake: %w", err)}
		}
		nc = tc
	}
	return &conn{
		nc:   nc,
		br:   bufio.NewReaderSize(nc, c.opts.MaxHeaderBytes),
		bw:   bufio.NewWriterSize(nc, bufSize),
		peek: peek.New(raw),
	}, nil
}

// put keeps cn idle for addr, or closes it when addr has MaxIdle idle connections.
func (c *Client) put(addr string, cn *conn) {
	_ = cn.nc.SetDeadline(time.Time{})
	cn.used = time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.idle[addr]) >= c.opts.MaxIdle || cn.br.Buffered() > 0 {
		cn.nc.Close()
		return
	}
	c.idle[addr] = append(c.idle[addr], cn)
}

// CloseIdle closes every idle connection whose address is not in keep, e.g. of apps or
// nodes that are gone. A nil keep closes them all.
func (c *Client) CloseIdle(keep func(addr string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, list := range c.idle {
		if keep != nil && keep(addr) {
			continue
		}
		for _, cn := range list {
			cn.nc.Close()
		}
		delete(c.idle, addr)
	}
}

// Close closes every idle connection; exchanges in flight finish on theirs, which close
// after.
func (c *Client) Close() {
	c.CloseIdle(nil)
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}
