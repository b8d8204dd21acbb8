// Package pool keeps idle transport connections per node address, so that calls to a node
// reuse a connection instead of dialing one each time. It works above any
// transport.Transport.
//
// A call takes a connection with Get and gives it back with Put, passing the call's error:
//
//	c, err := p.Get(ctx, addr)
//	if err != nil {
//		return err
//	}
//	err = c.Send(ctx, req)
//	if err == nil {
//		resp, err = c.Recv(ctx)
//	}
//	p.Put(addr, c, err)
//
// A connection may tell the pool whether it can carry another call by implementing
// Reusable; the pool checks it when a connection is given back and again before handing an
// idle one out.
package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// Defaults for the zero fields of Options.
const (
	DefaultMaxIdle = 16
	DefaultIdleTTL = 60 * time.Second
)

// Reusable is implemented by connections that know whether they can carry another call
// (no call half done, not broken by an error, not closed by the peer). Connections that do
// not implement it are taken as reusable after a call without error.
type Reusable interface {
	Reusable() bool
}

// Options configures a Pool.
type Options struct {
	// MaxIdle is the most idle connections kept per address. Zero means DefaultMaxIdle; a
	// negative value keeps none, so that every call dials.
	MaxIdle int
	// IdleTTL is how long a connection may sit idle before it is closed. Zero means
	// DefaultIdleTTL.
	IdleTTL time.Duration
	// Now is the clock; nil means time.Now. Tests inject their own. It is called with the
	// pool's lock held, so it must not call the pool.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.MaxIdle == 0 {
		o.MaxIdle = DefaultMaxIdle
	}
	if o.MaxIdle < 0 {
		o.MaxIdle = 0
	}
	if o.IdleTTL <= 0 {
		o.IdleTTL = DefaultIdleTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Stats are counters for metrics.
type Stats struct {
	// Idle is the number of idle connections held now, over all addresses.
	Idle int
	// Dials counts connections dialed successfully.
	Dials uint64
	// Reuses counts Gets served by an idle connection.
	Reuses uint64
}

// Pool lends transport connections per address. It is safe for concurrent use. A
// background reaper closes connections idle past IdleTTL; Close stops it.
type Pool struct {
	t transport.Transport

	mu     sync.Mutex
	opts   Options
	idle   map[string][]idleConn // per address, oldest first
	nidle  int
	closed bool

	dials  atomic.Uint64
	reuses atomic.Uint64

	wake chan struct{} // options changed: the reaper recomputes its interval
	stop chan struct{}
	done chan struct{}
}

type idleConn struct {
	c     transport.Conn
	since time.Time
}

// New returns a Pool that dials with t, and starts its reaper.
func New(t transport.Transport, opts Options) *Pool {
	p := &Pool{
		t:    t,
		opts: opts.withDefaults(),
		idle: make(map[string][]idleConn),
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go p.reaper()
	return p
}

// Get returns a connection to addr: the idle one given back last, if one is still fresh and
// reusable, or else a new one from the transport's Dial, whose errors it returns as they
// are (a *transport.ConnectError when the peer could not be reached).
func (p *Pool) Get(ctx context.Context, addr string) (transport.Conn, error) {
	for {
		c, stale, err := p.pop(addr)
		closeAll(stale)
		if err != nil {
			return nil, err
		}
		if c == nil {
			break
		}
		if reusable(c) {
			p.reuses.Add(1)
			return c, nil
		}
		_ = c.Close()
	}
	c, err := p.t.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	p.dials.Add(1)
	return c, nil
}

// Dial returns a new connection to addr that is not the pool's: for a stream, which is
// never reused. The caller closes it.
func (p *Pool) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	c, err := p.t.Dial(ctx, addr)
	if err == nil {
		p.dials.Add(1)
	}
	return c, err
}

// pop takes the newest idle connection for addr. When that one has expired, all older ones
// have too: they come back in stale for closing and c is nil.
func (p *Pool) pop(addr string) (c transport.Conn, stale []idleConn, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, fmt.Errorf("pool: get %s: %w", addr, transport.ErrClosed)
	}
	s := p.idle[addr]
	if len(s) == 0 {
		return nil, nil, nil
	}
	top := s[len(s)-1]
	if p.opts.Now().Sub(top.since) > p.opts.IdleTTL {
		stale = append([]idleConn(nil), s...)
		clear(s)
		p.idle[addr] = s[:0]
		p.nidle -= len(stale)
		return nil, stale, nil
	}
	s[len(s)-1] = idleConn{}
	p.idle[addr] = s[:len(s)-1]
	p.nidle--
	return top.c, nil, nil
}

// Put gives back c, a connection to addr from Get, after a call that ended with err. The
// pool keeps it idle when err is nil, the connection is reusable and the pool is open;
// otherwise Put closes it. When addr already has MaxIdle idle connections, the oldest is
// closed to make room. Put never fails.
func (p *Pool) Put(addr string, c transport.Conn, err error) {
	if c == nil {
		return
	}
	if err != nil || !reusable(c) {
		_ = c.Close()
		return
	}
	var evict transport.Conn
	p.mu.Lock()
	limit := p.opts.MaxIdle
	if p.closed || limit == 0 {
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	s := p.idle[addr]
	if len(s) >= limit {
		evict = s[0].c
		n := copy(s, s[1:])
		s[n] = idleConn{}
		s = s[:n]
		p.nidle--
	}
	p.idle[addr] = append(s, idleConn{c: c, since: p.opts.Now()})
	p.nidle++
	p.mu.Unlock()
	if evict != nil {
		_ = evict.Close()
	}
}

// SetOptions applies new limits at once: connections beyond the new MaxIdle and those idle
// past the new IdleTTL are closed.
func (p *Pool) SetOptions(opts Options) {
	opts = opts.withDefaults()
	var stale []idleConn
	p.mu.Lock()
	p.opts = opts
	for addr, s := range p.idle {
		if extra := len(s) - opts.MaxIdle; extra > 0 {
			stale = append(stale, s[:extra]...)
			n := copy(s, s[extra:])
			clear(s[n:])
			p.idle[addr] = s[:n]
			p.nidle -= extra
		}
	}
	p.mu.Unlock()
	closeAll(stale)
	p.reap()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	idle := p.nidle
	p.mu.Unlock()
	return Stats{Idle: idle, Dials: p.dials.Load(), Reuses: p.reuses.Load()}
}

// Close stops the reaper and closes every idle connection. Later Gets fail with
// transport.ErrClosed and later Puts close what they are given. Close does not close the
// transport.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var all []idleConn
	for _, s := range p.idle {
		all = append(all, s...)
	}
	p.idle = nil
	p.nidle = 0
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	var errs []error
	for _, ic := range all {
		if err := ic.c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pool: close: %w", err)
	}
	return nil
}

// reaper closes expired idle connections every half IdleTTL until Close.
func (p *Pool) reaper() {
	defer close(p.done)
	t := time.NewTimer(p.interval())
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.wake:
		case <-t.C:
			p.reap()
		}
		t.Reset(p.interval())
	}
}

func (p *Pool) interval() time.Duration {
	p.mu.Lock()
	d := p.opts.IdleTTL / 2
	p.mu.Unlock()
	return min(max(d, 10*time.Millisecond), 30*time.Second)
}

// reap closes the connections idle past IdleTTL and forgets addresses left with none.
func (p *Pool) reap() {
	var stale []idleConn
	p.mu.Lock()
	now := p.opts.Now()
	for addr, s := range p.idle {
		i := 0
		for i < len(s) && now.Sub(s[i].since) > p.opts.IdleTTL {
			i++
		}
		if i > 0 {
			stale = append(stale, s[:i]...)
			n := copy(s, s[i:])
			clear(s[n:])
			s = s[:n]
			p.nidle -= i
		}
		if len(s) == 0 {
			delete(p.idle, addr)
		} else {
			p.idle[addr] = s
		}
	}
	p.mu.Unlock()
	closeAll(stale)
}

func reusable(c transport.Conn) bool {
	r, ok := c.(Reusable)
	return !ok || r.Reusable()
}

func closeAll(s []idleConn) {
	for _, ic := range s {
		_ = ic.c.Close()
	}
}
