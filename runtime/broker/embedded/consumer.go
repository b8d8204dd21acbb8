package embedded

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/microhost/micro/runtime/broker"
)

// maxQueued bounds how many ready entries a consumer keeps in memory, of those due and of
// those delayed each. When its ready directory holds more, it keeps the oldest and reads
// the directory again once it has delivered them.
const maxQueued = 1024

// consumer is a broker.Consumer of one group.
type consumer struct {
	b       *Broker
	sub     broker.Subscription
	t       *topicDirs
	ready   *dir
	infl    *dir
	owners  *dir
	watcher *fsnotify.Watcher // nil when file-system events are unavailable: poll

	mu      sync.Mutex
	closed  bool
	leases  map[string]*lease // by token
	due     entryHeap         // ready entries that may be delivered now, oldest first
	later   entryHeap         // ready entries not before a time, soonest first
	queued  map[string]bool   // names in due and later
	stale   bool              // ready may hold entries that are not queued: read it again
	partial bool              // ready held more than maxQueued: read it again when due is empty
	changed chan struct{}     // closed and replaced when Next may have something new to do
	foreign int64             // the earliest deadline of another owner's delivery, Unix ns; 0 if none
	checked time.Time         // when inflight was last looked at

	kick chan struct{} // a lease changed: the run loop recomputes its timer
	stop chan struct{}
	done chan struct{}
}

// lease is a delivery that the consumer holds.
type lease struct {
	e entry // its inflight entry
}

var _ broker.Consumer = (*consumer)(nil)

func (b *Broker) newConsumer(s broker.Subscription) (_ *consumer, err error) {
	c := &consumer{
		b:       b,
		sub:     s,
		leases:  make(map[string]*lease),
		later:   entryHeap{byNotBefore: true},
		queued:  make(map[string]bool),
		stale:   true,
		changed: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	defer func() {
		if err != nil {
			c.closeDirs()
		}
	}()
	root, err := b.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.close()
	if c.owners, err = root.sub("owners"); err != nil {
		return nil, err
	}
	if c.t, err = b.openTopic(root, s.Topic, false); err != nil {
		return nil, err
	}
	g, err := c.t.groups.sub(s.Group)
	if err != nil {
		return nil, err
	}
	defer g.close()
	if c.ready, err = g.sub("ready"); err != nil {
		return nil, err
	}
	if c.infl, err = g.sub("inflight"); err != nil {
		return nil, err
	}
	if w, err := fsnotify.NewWatcher(); err != nil {
		b.log.Warn("embedded broker: no file-system events, polling", "dir", c.ready.path, "err", err)
	} else if err := w.Add(c.ready.path); err != nil {
		w.Close()
		b.log.Warn("embedded broker: no file-system events, polling", "dir", c.ready.path, "err", err)
	} else {
		c.watcher = w
	}
	go c.run()
	return c, nil
}

func (c *consumer) closeDirs() {
	for _, d := range []*dir{c.ready, c.infl, c.owners} {
		if d != nil {
			d.close()
		}
	}
	if c.t != nil {
		c.t.close()
	}
}

// broadcastLocked wakes every Next that waits.
func (c *consumer) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Next claims the oldest ready message of the group, waiting for one when there is none or
// when the consumer holds MaxInflight deliveries.
func (c *consumer) Next(ctx context.Context) (*broker.Delivery, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, fmt.Errorf("embedded broker: next of %q on %q: %w", c.sub.Group, c.sub.Topic, broker.ErrClosed)
		}
		wait := time.Duration(-1)
		if len(c.leases) < c.sub.MaxInflight {
			if d := c.claimLocked(); d != nil {
				c.mu.Unlock()
				c.poke()
				return d, nil
			}
			if len(c.later.es) > 0 {
				wait = max(time.Until(time.Unix(0, c.later.es[0].notBefore)), 0)
			}
		}
		changed := c.changed
		c.mu.Unlock()
		var timer *time.Timer
		var fired <-chan time.Time
		if wait >= 0 {
			timer = time.NewTimer(wait)
			fired = timer.C
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil, fmt.Errorf("embedded broker: next of %q on %q: %w", c.sub.Group, c.sub.Topic, ctx.Err())
		case <-changed:
		case <-fired:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// poke tells the run loop that the leases changed.
func (c *consumer) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// claimLocked claims the oldest due entry it can, and returns its delivery, or nil when
// there is none.
func (c *consumer) claimLocked() *broker.Delivery {
	now := time.Now().UnixNano()
	c.promoteLocked(now)
	if c.stale || (len(c.due.es) == 0 && c.partial) {
		c.rescanLocked(now)
	}
	for len(c.due.es) > 0 {
		e := heap.Pop(&c.due).(entry)
		from := e.readyName()
		delete(c.queued, from)
		in := entry{time: e.time, hash: e.hash, n: min(e.n+1, maxAttempts), owner: c.b.owner.id,
			deadline: now + int64(c.sub.AckTimeout)}
		name := in.inflightName()
		if err := c.ready.rename(from, c.infl, name); err != nil {
			if !errors.Is(err, fs.ErrNotExist) { // gone: another consumer has it
				c.b.warnOnce(unreadableMsg, c.ready.join(from), err)
			}
			continue
		}
		m, err := c.read(name, e)
		if err != nil {
			c.moveAside(name, err)
			continue
		}
		c.leases[name] = &lease{e: in}
		return &broker.Delivery{Message: *m, Attempt: in.n, Token: name}
	}
	return nil
}

// promoteLocked moves the delayed entries whose time has come to due.
func (c *consumer) promoteLocked(now int64) {
	for len(c.later.es) > 0 && c.later.es[0].notBefore <= now {
		heap.Push(&c.due, heap.Pop(&c.later))
	}
}

// rescanLocked reads the ready directory again, keeping the oldest maxQueued entries due and
// the soonest maxQueued delayed.
func (c *consumer) rescanLocked(now int64) {
	due, later := entryHeap{max: true}, entryHeap{max: true, byNotBefore: true}
	truncated := false
	err := c.ready.each(func(name string, typ fs.FileMode) bool {
		e, ok := parseReady(name)
		if !ok || !typ.IsRegular() {
			c.b.warnOnce(strayMsg, c.ready.join(name), fmt.Errorf("not a message entry (%v)", typ))
			return true
		}
		h := &due
		if e.notBefore > now {
			h = &later
		}
		heap.Push(h, e)
		if h.Len() > maxQueued {
			heap.Pop(h)
			truncated = true
		}
		return true
	})
	if err != nil {
		c.b.log.Warn("embedded broker: reading a group's ready messages", "dir", c.ready.path, "err", err)
	}
	clear(c.queued)
	c.due = entryHeap{es: due.es}
	c.later = entryHeap{es: later.es, byNotBefore: true}
	heap.Init(&c.due)
	heap.Init(&c.later)
	for _, h := range []*entryHeap{&c.due, &c.later} {
		for _, e := range h.es {
			c.queued[e.readyName()] = true
		}
	}
	c.stale = err != nil
	c.partial = truncated
}

// read reads the message of the inflight entry name, which must be the message of e.
func (c *consumer) read(name string, e entry) (*broker.Message, error) {
	data, err := c.infl.readFile(name, c.b.readLimit)
	if err != nil {
		return nil, err
	}
	m, err := decodeRecord(data)
	if err != nil {
		return nil, err
	}
	if m.Topic != c.sub.Topic || idHash(m.ID) != e.hash || m.Time.UnixNano() != e.time {
		return nil, fmt.Errorf("record of topic %q, ID %q, published at %v does not belong here", m.Topic, m.ID, m.Time)
	}
	return m, nil
}

// moveAside moves the inflight entry name, which cannot be delivered, to the topic's corrupt
// directory.
func (c *consumer) moveAside(name string, why error) {
	var r [4]byte
	rand.Read(r[:])
	to := name + "." + hex.EncodeToString(r[:])
	if err := c.infl.rename(name, c.t.corrupt, to); err != nil {
		c.b.warnOnce(unreadableMsg, c.infl.join(name), fmt.Errorf("%w; moving it aside: %w", why, err))
		return
	}
	c.b.log.Warn(asideMsg, "topic", c.sub.Topic, "group", c.sub.Group, "file", c.t.corrupt.join(to), "err", why)
}

// take removes the lease of d, and returns it if it is still the consumer's.
func (c *consumer) take(op string, d *broker.Delivery) (*lease, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("embedded broker: %s: %w", op, broker.ErrClosed)
	}
	l := c.leases[d.Token]
	if l == nil {
		return nil, fmt.Errorf("embedded broker: %s %q: %w", op, d.Token, broker.ErrUnknownDelivery)
	}
	delete(c.leases, d.Token)
	c.broadcastLocked()
	if l.e.deadline <= time.Now().UnixNano() {
		c.requeue(l.e, 0)
		return nil, fmt.Errorf("embedded broker: %s %q: past its ack timeout: %w", op, d.Token, broker.ErrUnknownDelivery)
	}
	return l, nil
}

// requeue puts the inflight entry e back in ready, not to be delivered before notBefore.
func (c *consumer) requeue(e entry, notBefore int64) error {
	back := entry{time: e.time, hash: e.hash, n: e.n, notBefore: notBefore}
	return c.infl.rename(e.inflightName(), c.ready, back.readyName())
}

// lost returns the error of an operation on a delivery whose entry was renamed or removed
// under it: another consumer found its deadline passed.
func lost(op string, d *broker.Delivery, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("embedded broker: %s %q: %w", op, d.Token, broker.ErrUnknownDelivery)
	}
	return fmt.Errorf("embedded broker: %s %q: %w", op, d.Token, err)
}

// Ack removes the delivery's message from the group.
func (c *consumer) Ack(ctx context.Context, d *broker.Delivery) error {
	l, err := c.take("ack", d)
	if err != nil {
		return err
	}
	c.poke()
	if err := c.infl.remove(l.e.inflightName()); err != nil {
		return lost("ack", d, err)
	}
	c.b.release(c.t.ids, l.e.hash)
	return nil
}

// Nak puts the delivery's message back, to be delivered again no sooner than delay from now.
func (c *consumer) Nak(ctx context.Context, d *broker.Delivery, delay time.Duration) error {
	l, err := c.take("nak", d)
	if err != nil {
		return err
	}
	c.poke()
	if err := c.requeue(l.e, time.Now().Add(max(delay, 0)).UnixNano()); err != nil {
		return lost("nak", d, err)
	}
	return nil
}

// Extend starts the delivery's ack timeout again.
func (c *consumer) Extend(ctx context.Context, d *broker.Delivery) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("embedded broker: extend: %w", broker.ErrClosed)
	}
	l := c.leases[d.Token]
	if l == nil {
		return fmt.Errorf("embedded broker: extend %q: %w", d.Token, broker.ErrUnknownDelivery)
	}
	now := time.Now().UnixNano()
	if l.e.deadline <= now {
		delete(c.leases, d.Token)
		c.broadcastLocked()
		c.requeue(l.e, 0)
		return fmt.Errorf("embedded broker: extend %q: past its ack timeout: %w", d.Token, broker.ErrUnknownDelivery)
	}
	e := l.e
	e.deadline = now + int64(c.sub.AckTimeout)
	if err := c.infl.rename(l.e.inflightName(), c.infl, e.inflightName()); err != nil {
		delete(c.leases, d.Token)
		c.broadcastLocked()
		return lost("extend", d, err)
	}
	l.e = e
	c.poke()
	return nil
}

// Backlog counts the group's ready and inflight entries.
func (c *consumer) Backlog(ctx context.Context) (broker.Backlog, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return broker.Backlog{}, fmt.Errorf("embedded broker: backlog: %w", broker.ErrClosed)
	}
	var n, oldest int64
	count := func(parse func(string) (entry, bool)) func(string, fs.FileMode) bool {
		return func(name string, typ fs.FileMode) bool {
			if e, ok := parse(name); ok && typ.IsRegular() {
				n++
				if oldest == 0 || e.time < oldest {
					oldest = e.time
				}
			}
			return ctx.Err() == nil
		}
	}
	err := errors.Join(c.ready.each(count(parseReady)), c.infl.each(count(parseInflight)), ctx.Err())
	if err != nil {
		return broker.Backlog{}, fmt.Errorf("embedded broker: backlog of %q on %q: %w", c.sub.Group, c.sub.Topic, err)
	}
	bl := broker.Backlog{Messages: n}
	if n > 0 {
		bl.Oldest = time.Unix(0, oldest)
	}
	return bl, nil
}

// Close stops the consumer and puts back at once what it holds, counted as delivered.
func (c *consumer) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	leases := c.leases
	c.leases = nil
	c.broadcastLocked()
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	var errs []error
	for _, l := range leases {
		if err := c.requeue(l.e, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if c.watcher != nil {
		c.watcher.Close()
	}
	c.closeDirs()
	c.b.forget(c)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("embedded broker: close consumer of %q on %q: %w", c.sub.Group, c.sub.Topic, err)
	}
	return nil
}

// run follows the ready directory's events, and looks at inflight every livenessInterval and
// at the deadlines it knows of.
func (c *consumer) run() {
	defer close(c.done)
	var events <-chan fsnotify.Event
	var errs <-chan error
	if c.watcher != nil {
		events, errs = c.watcher.Events, c.watcher.Errors
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	rescanned := time.Now()
	for {
		select {
		case <-c.stop:
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
			}
			c.noteEvent(ev, ok)
			continue
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			c.b.log.Warn("embedded broker: file-system events", "dir", c.ready.path, "err", err)
			c.noteEvent(fsnotify.Event{}, false)
			continue
		case <-c.kick:
		case <-timer.C:
			c.reclaim()
			if c.watcher == nil || time.Since(rescanned) >= rescanInterval {
				rescanned = time.Now()
				c.noteEvent(fsnotify.Event{}, false)
			}
		}
		timer.Reset(c.nextCheck())
	}
}

// noteEvent queues the entry that ev says was created in ready; with ok false, it marks the
// queue stale instead.
func (c *consumer) noteEvent(ev fsnotify.Event, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ok {
		c.stale = true
		c.broadcastLocked()
		return
	}
	if !ev.Has(fsnotify.Create) {
		return
	}
	name := filepath.Base(ev.Name)
	e, ok := parseReady(name)
	if !ok || c.queued[name] {
		return
	}
	if len(c.queued) >= 2*maxQueued {
		c.partial = true
	} else if e.notBefore > time.Now().UnixNano() {
		heap.Push(&c.later, e)
		c.queued[name] = true
	} else {
		heap.Push(&c.due, e)
		c.queued[name] = true
	}
	c.broadcastLocked()
}

// nextCheck returns how long until inflight should be looked at again.
func (c *consumer) nextCheck() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.checked.Add(livenessInterval).UnixNano()
	if c.foreign != 0 {
		next = min(next, c.foreign)
	}
	for _, l := range c.leases {
		next = min(next, l.e.deadline)
	}
	return max(time.Until(time.Unix(0, next)), 0)
}

// reclaim puts back in ready the group's deliveries whose deadline has passed or whose owner
// died, and drops the consumer's own lapsed leases.
func (c *consumer) reclaim() {
	now := time.Now()
	ns := now.UnixNano()
	c.mu.Lock()
	c.checked = now
	for tok, l := range c.leases {
		if l.e.deadline <= ns {
			delete(c.leases, tok)
			c.broadcastLocked()
		}
	}
	c.mu.Unlock()
	var foreign int64
	live := make(map[string]bool)
	err := c.infl.each(func(name string, typ fs.FileMode) bool {
		e, ok := parseInflight(name)
		if !ok || !typ.IsRegular() {
			c.b.warnOnce(strayMsg, c.infl.join(name), fmt.Errorf("not a message entry (%v)", typ))
			return true
		}
		if e.deadline > ns {
			if e.owner == c.b.owner.id {
				return true
			}
			up, seen := live[e.owner]
			if !seen {
				up = alive(c.owners, e.owner)
				if len(live) < maxQueued {
					live[e.owner] = up
				}
			}
			if up {
				if foreign == 0 || e.deadline < foreign {
					foreign = e.deadline
				}
				return true
			}
		}
		if err := c.requeue(e, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.b.warnOnce(unreadableMsg, c.infl.join(name), err)
		}
		return true
	})
	if err != nil {
		c.b.log.Warn("embedded broker: reading a group's deliveries in flight", "dir", c.infl.path, "err", err)
	}
	c.mu.Lock()
	c.foreign = foreign
	c.mu.Unlock()
}
