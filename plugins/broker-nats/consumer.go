package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/microhost/micro/sdk/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Pulling.
const (
	// pullWait is how long one pull request waits on the server for messages. A pull is
	// also cut short when the connection drops or comes back, so that pulling resumes at
	// once after a reconnect. Close lets the pull in flight run out rather than cut it:
	// JetStream keeps a pull request until it expires, and would hand a message to a cut
	// one, where it would wait out its ack timeout. So Close takes up to pullWait.
	pullWait = 2 * time.Second
	// maxBatch bounds the messages one pull asks for.
	maxBatch = 256
	// retryWait is how long the puller waits after a failed pull before the next, unless
	// the connection changes first.
	retryWait = time.Second
)

// consumer is a broker.Consumer on a durable pull consumer. A goroutine (pull) asks
// JetStream for messages while Next waits and the consumer holds fewer than MaxInflight:
// it asks for as many as the consumer has room for, so that what it receives never
// waits long for Next, whose AckTimeout already runs. Held deliveries are named by their
// consumer sequence, unique to each delivery of the group.
type consumer struct {
	b   *natsBroker
	sub broker.Subscription
	log *slog.Logger

	mu      sync.Mutex
	jc      jetstream.Consumer
	held    map[string]jetstream.Msg // returned by Next, not yet acked or naked
	ready   []jetstream.Msg          // pulled, not yet returned by Next
	waiting int                      // Next calls waiting
	closed  bool
	more    chan struct{} // closed when ready grows or the consumer closes, then replaced

	wake      chan struct{} // tells pull that waiting or held changed
	stop      context.CancelFunc
	closing   chan struct{} // closed by Close: pull asks for no more, and naks what still comes
	done      chan struct{} // closed when pull returns
	closeOnce sync.Once
}

// newConsumer starts consuming s with jc.
func newConsumer(b *natsBroker, s broker.Subscription, jc jetstream.Consumer) *consumer {
	ctx, stop := context.WithCancel(context.Background())
	c := &consumer{
		b:       b,
		sub:     s,
		log:     b.log.With("topic", s.Topic, "group", s.Group, "consumer", consumerName(s.Topic, s.Group)),
		jc:      jc,
		held:    make(map[string]jetstream.Msg),
		more:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		stop:    stop,
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go c.pull(ctx)
	return c
}

// Next returns the next message pulled, waiting for one until ctx ends or the consumer
// closes.
func (c *consumer) Next(ctx context.Context) (*broker.Delivery, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiting++
	defer func() { c.waiting-- }()
	c.poke()
	for {
		if c.closed {
			return nil, fmt.Errorf("broker-nats: next of %s on %s: %w", c.sub.Group, c.sub.Topic, broker.ErrClosed)
		}
		for len(c.ready) > 0 {
			m := c.ready[0]
			c.ready[0] = nil
			c.ready = c.ready[1:]
			d, err := c.delivery(m)
			if err != nil {
				// Not a JetStream delivery (it has no metadata): nothing can ack it.
				c.log.Error("broker-nats: dropped a message with no JetStream metadata", "err", err)
				continue
			}
			if err := checkMessage(&d.Message); err != nil {
				// Published to the stream by something other than micro, and more than
				// micro's protocol carries: it would stop the group at every delivery.
				c.log.Error("broker-nats: terminated a message that micro cannot deliver; it stays in the stream",
					"id", d.ID, "err", err)
				if err := m.TermWithReason("micro cannot deliver it: " + err.Error()); err != nil {
					c.log.Warn("broker-nats: terminate failed", "id", d.ID, "err", err)
				}
				continue
			}
			c.held[d.Token] = m
			return d, nil
		}
		more := c.more
		c.mu.Unlock()
		select {
		case <-more:
			c.mu.Lock()
		case <-ctx.Done():
			c.mu.Lock()
			return nil, fmt.Errorf("broker-nats: next of %s on %s: %w", c.sub.Group, c.sub.Topic, ctx.Err())
		}
	}
}

// delivery returns the Delivery of m.
func (c *consumer) delivery(m jetstream.Msg) (*broker.Delivery, error) {
	meta, err := m.Metadata()
	if err != nil {
		return nil, err
	}
	h := m.Headers()
	return &broker.Delivery{
		Message: broker.Message{
			ID:     messageID(h, meta.Sequence.Stream),
			Topic:  c.sub.Topic,
			Header: fromNATSHeader(h),
			Body:   m.Data(),
			Time:   meta.Timestamp,
		},
		Attempt: int(min(meta.NumDelivered, uint64(maxAttempt))),
		Token:   strconv.FormatUint(meta.Sequence.Consumer, 10),
	}, nil
}

// maxAttempt caps Delivery.Attempt, an int, on a 32-bit platform.
const maxAttempt = 1<<31 - 1

// poke tells pull that waiting or held changed. It does not block.
func (c *consumer) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take removes d from the deliveries the consumer holds and returns its message.
func (c *consumer) take(d *broker.Delivery) (jetstream.Msg, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.held[d.Token]
	if !ok {
		return nil, c.unknown(d)
	}
	delete(c.held, d.Token)
	c.poke()
	return m, nil
}

// unknown is the error for a delivery the consumer does not hold.
func (c *consumer) unknown(d *broker.Delivery) error {
	return fmt.Errorf("broker-nats: delivery %q of message %s to %s on %s: %w",
		d.Token, d.ID, c.sub.Group, c.sub.Topic, broker.ErrUnknownDelivery)
}

// Ack acknowledges d and waits for JetStream to confirm it, until ctx ends or the
// connection drops (then it fails as unavailable: the confirmation is lost with the
// connection). Whatever the outcome the consumer no longer holds d: an ack that did not
// reach JetStream leaves the message to be delivered again after AckTimeout.
func (c *consumer) Ack(ctx context.Context, d *broker.Delivery) error {
	m, err := c.take(d)
	if err != nil {
		return err
	}
	actx, cancel := untilChanged(ctx, c.b.changed())
	defer cancel()
	if err := m.DoubleAck(actx); err != nil {
		return fmt.Errorf("broker-nats: ack message %s of %s on %s: %w", d.ID, c.sub.Group, c.sub.Topic, requestError(actx, err))
	}
	return nil
}

// Nak hands d back to JetStream, to be delivered again after delay.
func (c *consumer) Nak(_ context.Context, d *broker.Delivery, delay time.Duration) error {
	m, err := c.take(d)
	if err != nil {
		return err
	}
	if err := nak(m, delay); err != nil {
		return fmt.Errorf("broker-nats: nak message %s of %s on %s: %w", d.ID, c.sub.Group, c.sub.Topic, unavailable(err))
	}
	return nil
}

// nak naks m, to be delivered again after delay.
func nak(m jetstream.Msg, delay time.Duration) error {
	if delay > 0 {
		return m.NakWithDelay(delay)
	}
	return m.Nak()
}

// Extend tells JetStream that d is in progress, which starts its AckTimeout again.
func (c *consumer) Extend(_ context.Context, d *broker.Delivery) error {
	c.mu.Lock()
	m, ok := c.held[d.Token]
	c.mu.Unlock()
	if !ok {
		return c.unknown(d)
	}
	if err := m.InProgress(); err != nil {
		return fmt.Errorf("broker-nats: extend message %s of %s on %s: %w", d.ID, c.sub.Group, c.sub.Topic, unavailable(err))
	}
	return nil
}

// Backlog reports the group's pending and unacknowledged messages, and when the first
// message after its ack floor was stored.
func (c *consumer) Backlog(ctx context.Context) (broker.Backlog, error) {
	st, err := c.b.state()
	if err != nil {
		return broker.Backlog{}, err
	}
	ctx, cancel := untilChanged(ctx, c.b.changed())
	defer cancel()
	ci, err := st.js.Consumer(ctx, streamName, consumerName(c.sub.Topic, c.sub.Group))
	if err != nil {
		return broker.Backlog{}, fmt.Errorf("broker-nats: backlog of %s on %s: %w", c.sub.Group, c.sub.Topic, requestError(ctx, err))
	}
	info := ci.CachedInfo()
	n := int64(info.NumPending) + int64(info.NumAckPending)
	if n == 0 {
		return broker.Backlog{}, nil
	}
	raw, err := st.str.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(subject(c.sub.Topic)))
	if errors.Is(err, jetstream.ErrMsgNotFound) { // removed meanwhile (max_age)
		return broker.Backlog{Messages: n}, nil
	}
	if err != nil {
		return broker.Backlog{}, fmt.Errorf("broker-nats: backlog of %s on %s: oldest message: %w", c.sub.Group, c.sub.Topic, requestError(ctx, err))
	}
	return broker.Backlog{Messages: n, Oldest: raw.Time}, nil
}

// Close stops pulling and naks every message the consumer holds, so that JetStream
// delivers them again at once.
func (c *consumer) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		<-c.done // the pull in flight has run out
		c.stop()
		c.mu.Lock()
		c.closed = true
		close(c.more)
		ms := c.ready
		c.ready = nil
		for _, m := range c.held {
			ms = append(ms, m)
		}
		clear(c.held)
		c.mu.Unlock()
		for _, m := range ms {
			if err := m.Nak(); err != nil {
				c.log.Warn("broker-nats: close: nak failed; the message is delivered again after the ack timeout", "err", err)
			}
		}
	})
	return nil
}

// pull asks JetStream for messages, for as long as ctx lasts, while Next waits and the
// consumer has room.
func (c *consumer) pull(ctx context.Context) {
	defer close(c.done)
	for {
		n, ok := c.room(ctx)
		if !ok {
			return
		}
		changed := c.b.changed()
		err := c.fetch(ctx, changed, n)
		if err == nil || ctx.Err() != nil {
			continue
		}
		c.log.Warn("broker-nats: pull failed; trying again", "err", err)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
			errors.Is(err, nats.ErrConnectionClosed) {
			c.rebind(ctx)
		}
		t := time.NewTimer(retryWait)
		select {
		case <-ctx.Done():
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// room waits until Next waits for more than is ready and the consumer holds fewer than
// MaxInflight, and returns how many messages to pull. It returns false when ctx ends.
func (c *consumer) room(ctx context.Context) (int, bool) {
	for {
		select {
		case <-c.closing:
			return 0, false
		default:
		}
		c.mu.Lock()
		n := c.sub.MaxInflight - len(c.held) - len(c.ready)
		want := c.waiting > len(c.ready)
		c.mu.Unlock()
		if n > 0 && want {
			return min(n, maxBatch), true
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
			return 0, false
		case <-c.closing:
			return 0, false
		}
	}
}

// fetch pulls up to n messages into ready, waiting up to pullWait for them, or until
// changed is closed or ctx ends.
func (c *consumer) fetch(ctx context.Context, changed <-chan struct{}, n int) error {
	fctx, cancel := context.WithTimeout(ctx, pullWait)
	defer cancel()
	go func() {
		select {
		case <-changed:
			cancel()
		case <-fctx.Done():
		}
	}()
	c.mu.Lock()
	jc := c.jc
	c.mu.Unlock()
	batch, err := jc.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		return unavailable(err)
	}
	for m := range batch.Messages() {
		select {
		case <-c.closing:
			// Nobody takes it now: back to the group at once.
			if err := m.Nak(); err != nil {
				c.log.Warn("broker-nats: close: nak failed; the message is delivered again after the ack timeout", "err", err)
			}
			continue
		default:
		}
		c.mu.Lock()
		c.ready = append(c.ready, m)
		close(c.more)
		c.more = make(chan struct{})
		c.mu.Unlock()
	}
	if err := batch.Error(); err != nil && fctx.Err() == nil {
		return unavailable(err)
	}
	return nil
}

// rebind makes the consumer again, after it was deleted or the connection replaced.
func (c *consumer) rebind(ctx context.Context) {
	st, err := c.b.state()
	if err != nil {
		return
	}
	jc, err := ensureConsumer(ctx, st, c.sub)
	if err != nil {
		c.log.Warn("broker-nats: cannot make the consumer again", "err", err)
		return
	}
	c.mu.Lock()
	c.jc = jc
	c.mu.Unlock()
	c.log.Info("broker-nats: consumer made again")
}
