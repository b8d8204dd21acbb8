// Package upstream sends HTTP/1.1 requests to the places micro forwards calls to (apps,
// and the inbound servers of other micro processes) on pooled keep-alive connections. It
// writes and reads with fasthttp's request and response, and adds what micro's call path
// needs of a client: a context's deadline and cancellation on every exchange, and whether
// a failed exchange sent its request whole, so that the caller knows whether the peer may
// have acted on it.
package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
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
	// MaxBody bounds a response body; a larger one fails the exchange with
	// fasthttp.ErrBodyTooLarge. SetMaxBody changes it.
	MaxBody int
	// MaxHeaderBytes bounds a response's header block: it is the size of each
	// connection's read buffer, which the header must fit.
	MaxHeaderBytes int
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
	return o
}

// Client sends requests to addresses (host:port) on connections it pools per address. It
// is safe for concurrent use.
type Client struct {
	opts    Options
	dialer  net.Dialer
	maxBody atomic.Int64

	mu     sync.Mutex
	idle   map[string][]*conn // per address; the most recently used last
	closed bool
}

// New returns a Client.
func New(opts Options) *Client {
	c := &Client{opts: opts.withDefaults(), idle: make(map[string][]*conn)}
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
	err = resp.ReadLimitBody(cn.br, int(c.maxBody.Load()))
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
	if resp.ConnectionClose() || req.ConnectionClose() {
		cn.nc.Close()
		return true, nil
	}
	c.put(addr, cn)
	return true, nil
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

// get returns an idle connection to addr that is still open and quiet, or dials one.
func (c *Client) get(ctx context.Context, addr string) (*conn, error) {
	now := time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("upstream: dial %s: %w", addr, transport.ErrClosed)
	}
	for list := c.idle[addr]; len(list) > 0; list = c.idle[addr] {
		cn := list[len(list)-1]
		c.idle[addr] = list[:len(list)-1]
		if now.Sub(cn.used) < c.opts.IdleTTL && cn.peek.Alive() {
			c.mu.Unlock()
			return cn, nil
		}
		cn.nc.Close()
	}
	if len(c.idle[addr]) == 0 {
		delete(c.idle, addr)
	}
	c.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	nc, err := c.dialer.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, &transport.ConnectError{Addr: addr, Err: err}
	}
	return &conn{
		nc:   nc,
		br:   bufio.NewReaderSize(nc, c.opts.MaxHeaderBytes),
		bw:   bufio.NewWriterSize(nc, bufSize),
		peek: peek.New(nc),
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
