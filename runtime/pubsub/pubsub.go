// Package pubsub is micro's third call beside Call and Stream: it publishes messages to a
// broker, and delivers the messages of the topics that the services fronted here subscribe
// to, each as a call to the subscribing service's endpoint, at least once.
//
// A delivery is a call through the client, so selection, client wrappers and budgets apply
// to it as to any call. Its answer decides what happens to the message:
//   - 2xx: done (acknowledged).
//   - The subscriber failed it (an answer other than 2xx, a timeout, a failed upstream):
//     delivered again after a jittered exponential backoff, until broker.max_deliveries
//     deliveries have failed; then it goes to the dead-letter topic.
//   - It never reached the subscriber (a client wrapper refused it, 429 or an open breaker;
//     no node is up): the delivery is held and tried again later, slower each time, without
//     counting against the message.
//
// A switch of brokers moves publishing at once; the old broker's subscriptions go on until
// it holds nothing more for them (or broker.drain_timeout ends), and then it closes.
package pubsub

import (
	"context"
	"crypto/rand"
	"errors"
	jitter "github.com/microhost/micro/runtime/backoff"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"

	"github.com/microhost/micro/runtime/tracing"
)

// ID names pubsub in the errors it returns.
const ID = "micro.broker"

// ackMargin is added to broker.delivery_timeout to make a subscription's AckTimeout: the
// time a delivery may go without Extend before the broker gives it to another consumer.
const ackMargin = 10 * time.Second

// backlogEvery is how often the backlog of each subscription is read for the metrics and
// for draining.
const backlogEvery = 5 * time.Second

// Caller makes the calls that carry messages to subscribers; *client.Client is one.
type Caller interface {
	Call(ctx context.Context, req *client.Request) (*client.Response, error)
}

// Subscription is one topic a service consumes, and the endpoint its messages go to.
type Subscription struct {
	Service  string
	Topic    string
	Endpoint string
}

// Options are the settings of [broker] that apply live.
type Options struct {
	// MaxMessage bounds a published message (body and headers).
	MaxMessage int64
	// MaxDeliveries is how many failed deliveries send a message to the dead-letter topic.
	MaxDeliveries int
	// DeliveryTimeout is the budget of one delivery.
	DeliveryTimeout time.Duration
	// PublishTimeout is the budget of a publish whose context has no deadline.
	PublishTimeout time.Duration
	// Backoff and BackoffMax bound the wait before a redelivery.
	Backoff, BackoffMax time.Duration
	// MaxInflight bounds the deliveries in flight per subscription; it applies to
	// subscriptions made after it changes.
	MaxInflight int
	// DeadLetter maps a topic to its dead-letter topic.
	DeadLetter func(topic string) string
	// DrainTimeout bounds how long an old broker delivers after a switch.
	DrainTimeout time.Duration
}

// PubSub publishes to the current broker and runs the subscriptions of the services
// fronted here. It is safe for concurrent use.
type PubSub struct {
	caller Caller
	log    *slog.Logger
	met    *metrics
	opts   atomic.Pointer[Options]
	tracer *tracing.Tracer

	mu       sync.Mutex
	cur      *generation
	subs     map[Subscription]bool
	draining sync.WaitGroup
	closed   bool
}

// SetTracer makes t record a span of each delivery of a sampled message, under its
// publish's span. Call it before SetSubscriptions.
func (p *PubSub) SetTracer(t *tracing.Tracer) { p.tracer = t }

// generation is one broker and the consumers running on it.
type generation struct {
	name      string
	b         broker.Broker
	consumers map[Subscription]*consumer
}

// New returns a PubSub that publishes to b (named name in logs) and delivers through
// caller. Its metrics go on reg.
func New(b broker.Broker, name string, caller Caller, reg prometheus.Registerer, logger *slog.Logger, o Options) *PubSub {
	p := &PubSub{
		caller: caller,
		log:    logger,
		met:    newMetrics(reg),
		cur:    &generation{name: name, b: b, consumers: map[Subscription]*consumer{}},
		subs:   map[Subscription]bool{},
	}
	p.opts.Store(&o)
	return p
}

// SetOptions changes the settings of later publishes and deliveries.
func (p *PubSub) SetOptions(o Options) { p.opts.Store(&o) }

// Broker returns the broker that takes publishes now, and its name.
func (p *PubSub) Broker() (broker.Broker, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.b, p.cur.name
}

// Publish stores a message on topic with the current broker and returns its ID. Its
// errors are *callerr.Error: 400 a bad topic, 413 a message too large, 503 a broker that
// is full or cannot be reached, 504 a budget (ctx) that ended first.
func (p *PubSub) Publish(ctx context.Context, topic string, header map[string]string, body []byte) (string, error) {
	if err := broker.ValidTopic(topic); err != nil {
		return "", callerr.New(ID, http.StatusBadRequest, "%v", err)
	}
	o := p.opts.Load()
	m := &broker.Message{ID: rand.Text(), Topic: topic, Header: header, Body: body}
	if n := m.Size(); int64(n) > o.MaxMessage {
		return "", callerr.New(ID, http.StatusRequestEntityTooLarge, "message to %s is %d bytes (body and headers), more than broker.max_message (%d bytes)", topic, n, o.MaxMessage)
	}
	if _, ok := ctx.Deadline(); !ok && o.PublishTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.PublishTimeout)
		defer cancel()
	}
	b, name := p.Broker()
	if err := b.Publish(ctx, m); err != nil {
		return "", publishError(ctx, name, topic, err)
	}
	p.met.published(topic)
	return m.ID, nil
}

// publishError is the caller's error for a publish to topic that broker name refused.
func publishError(ctx context.Context, name, topic string, err error) *callerr.Error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return callerr.New(ID, http.StatusGatewayTimeout, "the budget ended before broker %s accepted the message to %s", name, topic)
	case ctx.Err() != nil:
		return callerr.New(ID, callerr.StatusClientClosed, "the publisher went away before broker %s accepted the message to %s", name, topic)
	case errors.Is(err, broker.ErrTooLarge):
		return callerr.New(ID, http.StatusRequestEntityTooLarge, "broker %s: %v", name, err)
	}
	e := callerr.New(ID, http.StatusServiceUnavailable, "broker %s did not accept the message to %s: %v", name, topic, err)
	e.RetryAfter = "1"
	return e
}

// Messages returns up to limit messages the current broker holds for topic, oldest first.
func (p *PubSub) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	if err := broker.ValidTopic(topic); err != nil {
		return nil, callerr.New(ID, http.StatusBadRequest, "%v", err)
	}
	b, name := p.Broker()
	ms, err := b.Messages(ctx, topic, limit)
	if err != nil {
		return nil, callerr.New(ID, http.StatusServiceUnavailable, "broker %s: reading %s: %v", name, topic, err)
	}
	return ms, nil
}

// Delete removes the message id from topic in the current broker.
func (p *PubSub) Delete(ctx context.Context, topic, id string) error {
	if err := broker.ValidTopic(topic); err != nil {
		return callerr.New(ID, http.StatusBadRequest, "%v", err)
	}
	if !validID(id) {
		return callerr.New(ID, http.StatusBadRequest, "invalid message id %q: want letters, digits, '-' and '_'", id)
	}
	b, name := p.Broker()
	if err := b.Delete(ctx, topic, id); err != nil {
		return callerr.New(ID, http.StatusServiceUnavailable, "broker %s: deleting %s from %s: %v", name, id, topic, err)
	}
	return nil
}

// SetSubscriptions makes subs the subscriptions that run: it starts the new ones and
// stops those no longer wanted, letting their deliveries in flight finish.
func (p *PubSub) SetSubscriptions(subs []Subscription) {
	want := make(map[Subscription]bool, len(subs))
	for _, s := range subs {
		want[s] = true
		p.met.knowTopic(s.Topic)
		p.met.knowTopic(p.opts.Load().DeadLetter(s.Topic))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.subs = want
	var stopping []*consumer
	for s, c := range p.cur.consumers {
		if !want[s] {
			stopping = append(stopping, c)
			delete(p.cur.consumers, s)
		}
	}
	for s := range want {
		if p.cur.consumers[s] == nil {
			p.cur.consumers[s] = p.start(p.cur, s)
		}
	}
	for _, c := range stopping {
		p.log.Info("subscription stopped", "service", c.sub.Service, "topic", c.sub.Topic)
		p.draining.Add(1)
		go func() {
			defer p.draining.Done()
			c.stop(p.opts.Load().DeliveryTimeout + time.Second)
		}()
	}
}

// Swap makes b (named name) the broker that takes publishes, and starts the subscriptions
// on it. The broker it replaces goes on delivering what it holds for them, until it holds
// nothing or broker.drain_timeout ends; then its consumers stop and it closes.
func (p *PubSub) Swap(b broker.Broker, name string) {
	next := &generation{name: name, b: b, consumers: map[Subscription]*consumer{}}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = b.Close()
		return
	}
	for s := range p.subs {
		next.consumers[s] = p.start(next, s)
	}
	old := p.cur
	p.cur = next
	p.draining.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.draining.Done()
		p.drain(old)
	}()
}

// drain lets g's consumers deliver what g's broker holds for them, then stops them and
// closes the broker.
func (p *PubSub) drain(g *generation) {
	o := p.opts.Load()
	start := time.Now()
	deadline := start.Add(o.DrainTimeout)
	var wg sync.WaitGroup
	var left atomic.Int64
	for _, c := range g.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.waitEmpty(deadline)
			left.Add(n)
			c.stop(o.DeliveryTimeout + time.Second)
		}()
	}
	wg.Wait()
	if err := g.b.Close(); err != nil {
		p.log.Warn("broker switch: closing the old broker", "broker", g.name, "err", err)
	}
	if n := left.Load(); n > 0 {
		p.log.Warn("broker switch: the old broker still holds messages for subscriptions here after broker.drain_timeout; they stay in its store",
			"broker", g.name, "messages", n, "drain_timeout", o.DrainTimeout)
		return
	}
	p.log.Info("broker switch: the old broker is drained and closed", "broker", g.name, "took", time.Since(start).Round(time.Millisecond))
}

// Close stops every subscription, letting deliveries in flight finish within ctx, and
// closes the brokers.
func (p *PubSub) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	g := p.cur
	p.mu.Unlock()
	grace := time.Second
	if d, ok := ctx.Deadline(); ok {
		grace = time.Until(d)
	}
	var wg sync.WaitGroup
	for _, c := range g.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop(grace)
		}()
	}
	wg.Wait()
	err := g.b.Close()
	p.draining.Wait()
	return err
}

// start starts the consumer of s on g.
func (p *PubSub) start(g *generation, s Subscription) *consumer {
	ctx, cancel := context.WithCancel(context.Background())
	dctx, dcancel := context.WithCancel(context.Background())
	c := &consumer{p: p, g: g, sub: s, fetch: cancel, stopping: ctx.Done(), abort: dcancel, done: make(chan struct{})}
	go c.run(ctx, dctx)
	return c
}

// validID reports whether id may be a message ID that a caller names: 1 to 64 letters,
// digits, '-' and '_'.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// backoff is the wait before delivery attempt+1: Backoff doubled per failed attempt, up to
// BackoffMax, with jitter down to half of it.
func backoff(o *Options, attempt int) time.Duration {
	return jitter.Jitter(jitter.Exp(o.Backoff, o.BackoffMax, attempt-1))
}

// header is the header of a delivery of d: the publisher's, and micro's own.
func header(d *broker.Delivery) map[string]string {
	h := make(map[string]string, len(d.Header)+3)
	maps.Copy(h, d.Header)
	h[broker.HeaderTopic] = d.Topic
	h[broker.HeaderMessageID] = d.ID
	h[broker.HeaderDelivery] = strconv.Itoa(d.Attempt)
	return h
}
