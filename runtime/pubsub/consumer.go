package pubsub

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"

	"github.com/microhost/micro/runtime/tracing"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// consumer runs one subscription on one broker: it subscribes (again, while that fails),
// takes deliveries and delivers each in its own goroutine.
type consumer struct {
	p   *PubSub
	g   *generation
	sub Subscription

	fetch    context.CancelFunc // stops taking deliveries
	stopping <-chan struct{}    // closed by fetch: held deliveries give up their wait
	abort    context.CancelFunc // cancels deliveries in flight
	done     chan struct{}      // closed once run has returned and its deliveries ended

	mu  sync.Mutex
	con broker.Consumer // nil until subscribed
}

// run subscribes and delivers until ctx (fetching) ends; deliveries run on dctx.
func (c *consumer) run(ctx, dctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		close(c.done)
	}()
	con := c.subscribe(ctx)
	if con == nil {
		return
	}
	go c.watchBacklog(ctx, con)
	failing := false
	for {
		d, err := con.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, broker.ErrClosed) {
				return
			}
			if !failing {
				c.p.log.Warn("subscription: taking messages from the broker failed; trying again", "service", c.sub.Service, "topic", c.sub.Topic, "broker", c.g.name, "err", err)
			}
			failing = true
			if !sleep(ctx, time.Second) {
				return
			}
			continue
		}
		failing = false
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.deliver(dctx, con, d)
		}()
	}
}

// subscribe subscribes on the consumer's broker, trying again every few seconds while that
// fails, until ctx ends (nil then).
func (c *consumer) subscribe(ctx context.Context) broker.Consumer {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		o := c.p.opts.Load()
		con, err := c.g.b.Subscribe(ctx, broker.Subscription{
			Topic: c.sub.Topic, Group: c.sub.Service,
			AckTimeout: o.DeliveryTimeout + ackMargin, MaxInflight: o.MaxInflight,
		})
		if err == nil {
			c.mu.Lock()
			c.con = con
			c.mu.Unlock()
			c.p.log.Info("subscribed", "service", c.sub.Service, "topic", c.sub.Topic, "endpoint", c.sub.Endpoint, "broker", c.g.name)
			return con
		}
		if ctx.Err() != nil {
			return nil
		}
		c.p.log.Warn("subscribing failed; trying again", "service", c.sub.Service, "topic", c.sub.Topic, "broker", c.g.name, "in", wait, "err", err)
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// verdict is what an answer to a delivery means for its message.
type verdict int

const (
	done   verdict = iota // delivered: acknowledge it
	held                  // it never reached the subscriber: try again later, uncounted
	failed                // the subscriber failed it: redeliver, or dead-letter it
)

// judge reads the answer to a delivery.
func judge(resp *client.Response, err error) (v verdict, reason string, retryAfter time.Duration) {
	if err != nil {
		e := callerr.As(ID, err)
		switch e.Code {
		case http.StatusNotFound, http.StatusServiceUnavailable, http.StatusTooManyRequests, callerr.StatusClientClosed:
			// No such service or no node now, or shed: nothing reached a subscriber.
			return held, e.Detail, seconds(e.RetryAfter)
		}
		if e.Unreached {
			// Every node tried was unreachable (a stale registration, say): the
			// subscriber never saw it.
			return held, e.Detail, seconds(e.RetryAfter)
		}
		return failed, e.Error(), 0
	}
	switch {
	case resp.Status >= 200 && resp.Status < 300:
		return done, "", 0
	case resp.Node == "":
		// A client wrapper refused it (a rate limit's 429, an open breaker's 503).
		return held, "refused by a client wrapper with " + strconv.Itoa(resp.Status), seconds(resp.Header["Retry-After"])
	}
	return failed, "the subscriber answered " + strconv.Itoa(resp.Status) + " " + http.StatusText(resp.Status), 0
}

// seconds reads a Retry-After value in seconds; 0 when there is none.
func seconds(v string) time.Duration {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(min(n, 3600)) * time.Second
}

// deliver carries d to the subscriber until it is done, failed or ctx ends; a held
// delivery also gives up when the subscription stops. The broker then has d back.
func (c *consumer) deliver(ctx context.Context, con broker.Consumer, d *broker.Delivery) {
	met := c.p.met
	hold := time.Duration(0)
	for {
		o := c.p.opts.Load()
		dctx, cancel := context.WithTimeout(ctx, o.DeliveryTimeout)
		// A delivery's span descends from its message's publish.
		_, tp := tracing.Lookup(d.Header, tracing.Header)
		dctx, span, _ := c.p.tracer.Start(dctx, tp, "deliver", trace.SpanKindConsumer)
		resp, err := c.p.caller.Call(dctx, &client.Request{
			Service: c.sub.Service, Endpoint: c.sub.Endpoint, Header: header(d), Body: d.Body,
			// Delivery is at least once: a delivery that may have reached the app is
			// repeated anyway, here or by the broker.
			Idempotent: true,
		})
		if span.Recording() {
			span.Set(attribute.String("messaging.destination.name", d.Topic), attribute.String("messaging.message.id", d.ID),
				attribute.String("micro.service", c.sub.Service), attribute.Int("messaging.delivery.count", d.Attempt))
			switch {
			case err != nil:
				span.Fail(err.Error())
			case resp.Status >= 300:
				span.Fail("the subscriber answered " + strconv.Itoa(resp.Status))
			}
			span.End()
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		v, reason, after := judge(resp, err)
		switch v {
		case done:
			if err := con.Ack(ctx, d); err != nil {
				c.p.log.Warn("delivery: acknowledging failed; the message may be delivered again", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "err", err)
			}
			met.delivered(d.Topic, c.sub.Service)
			return
		case held:
			hold = max(min(2*hold, o.BackoffMax), o.Backoff)
			wait := max(after, hold)
			c.p.log.Debug("delivery held", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "why", reason, "retry_in", wait)
			met.held(d.Topic, c.sub.Service)
			// The broker gives d to another consumer if it is not extended within its
			// AckTimeout, which is longer than a delivery plus ackMargin.
			for wait > 0 {
				if err := con.Extend(ctx, d); err != nil {
					if ctx.Err() == nil {
						c.p.log.Warn("delivery: extending a held message failed; the broker delivers it again", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "err", err)
					}
					return
				}
				step := min(wait, ackMargin/2)
				if !sleepUnless(ctx, c.stopping, step) {
					return // the subscription stops: the broker has d back
				}
				wait -= step
			}
			if err := con.Extend(ctx, d); err != nil {
				return
			}
		case failed:
			if d.Attempt >= o.MaxDeliveries {
				c.deadLetter(ctx, con, d, o, reason)
				return
			}
			wait := backoff(o, d.Attempt)
			c.p.log.Info("delivery failed; it will be delivered again", "service", c.sub.Service, "topic", d.Topic, "id", d.ID,
				"delivery", d.Attempt, "of", o.MaxDeliveries, "retry_in", wait.Round(time.Millisecond), "why", reason)
			if err := con.Nak(ctx, d, wait); err != nil && ctx.Err() == nil {
				c.p.log.Warn("delivery: returning a failed message to the broker failed; it is delivered again after its ack timeout", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "err", err)
			}
			met.redelivered(d.Topic, c.sub.Service)
			return
		}
	}
}

// deadLetter moves d, which failed its last delivery, to its dead-letter topic.
func (c *consumer) deadLetter(ctx context.Context, con broker.Consumer, d *broker.Delivery, o *Options, reason string) {
	topic := o.DeadLetter(d.Topic)
	h := make(map[string]string, len(d.Header)+3)
	for k, v := range d.Header {
		h[k] = v
	}
	h[broker.HeaderDeadTopic] = d.Topic
	h[broker.HeaderDeadGroup] = c.sub.Service
	h[broker.HeaderDeadReason] = truncate(reason, 512)
	m := &broker.Message{ID: rand.Text(), Topic: topic, Header: h, Body: d.Body}
	if err := c.g.b.Publish(ctx, m); err != nil {
		c.p.log.Error("dead letter: publishing failed; the message is delivered again", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "dead_letter", topic, "err", err)
		_ = con.Nak(ctx, d, backoff(o, d.Attempt))
		return
	}
	if err := con.Ack(ctx, d); err != nil {
		c.p.log.Warn("dead letter: acknowledging the original failed; it may be delivered again", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "err", err)
	}
	c.p.met.deadLettered(d.Topic, c.sub.Service)
	c.p.log.Warn("message dead-lettered", "service", c.sub.Service, "topic", d.Topic, "id", d.ID, "dead_letter", topic, "dead_id", m.ID,
		"deliveries", d.Attempt, "why", reason)
}

// watchBacklog records the subscription's backlog in the metrics until ctx ends.
func (c *consumer) watchBacklog(ctx context.Context, con broker.Consumer) {
	t := time.NewTicker(backlogEvery)
	defer t.Stop()
	defer c.p.met.forget(c.sub.Topic, c.sub.Service)
	for {
		if bl, err := con.Backlog(ctx); err == nil {
			c.p.met.backlog(c.sub.Topic, c.sub.Service, bl)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitEmpty waits until the group holds no message for the subscription, or deadline; it
// returns how many it still holds then.
func (c *consumer) waitEmpty(deadline time.Time) int64 {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for {
		c.mu.Lock()
		con := c.con
		c.mu.Unlock()
		var n int64 = -1
		if con != nil {
			if bl, err := con.Backlog(ctx); err == nil {
				n = bl.Messages
			}
		}
		if n == 0 {
			return 0
		}
		if !sleep(ctx, 250*time.Millisecond) {
			return max(n, 0)
		}
	}
}

// stop stops taking deliveries, gives those in flight grace to finish, then cancels them
// and closes the broker's consumer, which redelivers what was not acknowledged.
func (c *consumer) stop(grace time.Duration) {
	c.fetch()
	select {
	case <-c.done:
	case <-time.After(grace):
		c.abort()
		<-c.done
	}
	c.abort()
	c.mu.Lock()
	con := c.con
	c.mu.Unlock()
	if con != nil {
		_ = con.Close()
	}
}

// sleep waits d or until ctx ends; it reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool { return sleepUnless(ctx, nil, d) }

// sleepUnless waits d, or until ctx ends or stop is closed; it reports whether it waited d.
func sleepUnless(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
