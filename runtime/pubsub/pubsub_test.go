package pubsub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
)

// These are unit tests of pubsub's decisions, on an in-memory broker. The brokers
// themselves are tested in their packages, and the whole path end to end in e2e/.

// memBroker is an in-memory broker.Broker: one queue per group, redelivery on Nak.
type memBroker struct {
	mu     sync.Mutex
	groups map[string]*memGroup // by topic "/" group
	held   map[string][]*broker.Message
	closed bool
	err    error // returned by Publish when set
}

type memGroup struct {
	ready chan *broker.Delivery
	out   map[string]*broker.Delivery // by token
	n     int
}

func newMemBroker() *memBroker {
	return &memBroker{groups: map[string]*memGroup{}, held: map[string][]*broker.Message{}}
}

func (b *memBroker) Publish(ctx context.Context, m *broker.Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return broker.ErrClosed
	}
	if b.err != nil {
		return b.err
	}
	m.Time = time.Now()
	found := false
	for key, g := range b.groups {
		if topicOf(key) == m.Topic {
			found = true
			g.ready <- &broker.Delivery{Message: *m, Attempt: 1}
		}
	}
	if !found {
		b.held[m.Topic] = append(b.held[m.Topic], m)
	}
	return nil
}

func topicOf(key string) string {
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '/' {
			return key[:i]
		}
	}
	return key
}

func (b *memBroker) Subscribe(ctx context.Context, s broker.Subscription) (broker.Consumer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := s.Topic + "/" + s.Group
	g := b.groups[key]
	if g == nil {
		g = &memGroup{ready: make(chan *broker.Delivery, 1000), out: map[string]*broker.Delivery{}}
		b.groups[key] = g
		for _, m := range b.held[s.Topic] {
			g.ready <- &broker.Delivery{Message: *m, Attempt: 1}
		}
		delete(b.held, s.Topic)
	}
	return &memConsumer{b: b, g: g, closed: make(chan struct{})}, nil
}

func (b *memBroker) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held[topic], nil
}

func (b *memBroker) Delete(ctx context.Context, topic, id string) error { return nil }

func (b *memBroker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

func (b *memBroker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

type memConsumer struct {
	b      *memBroker
	g      *memGroup
	once   sync.Once
	closed chan struct{}
}

func (c *memConsumer) Next(ctx context.Context) (*broker.Delivery, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closed:
		return nil, broker.ErrClosed
	case d := <-c.g.ready:
		c.b.mu.Lock()
		c.g.n++
		d.Token = strconv.Itoa(c.g.n)
		c.g.out[d.Token] = d
		c.b.mu.Unlock()
		return d, nil
	}
}

func (c *memConsumer) take(d *broker.Delivery) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	if c.g.out[d.Token] == nil {
		return broker.ErrUnknownDelivery
	}
	delete(c.g.out, d.Token)
	return nil
}

func (c *memConsumer) Ack(ctx context.Context, d *broker.Delivery) error { return c.take(d) }

func (c *memConsumer) Nak(ctx context.Context, d *broker.Delivery, delay time.Duration) error {
	if err := c.take(d); err != nil {
		return err
	}
	next := &broker.Delivery{Message: d.Message, Attempt: d.Attempt + 1}
	time.AfterFunc(min(delay, 10*time.Millisecond), func() { c.g.ready <- next })
	return nil
}

func (c *memConsumer) Extend(ctx context.Context, d *broker.Delivery) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	if c.g.out[d.Token] == nil {
		return broker.ErrUnknownDelivery
	}
	return nil
}

func (c *memConsumer) Backlog(ctx context.Context) (broker.Backlog, error) {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	return broker.Backlog{Messages: int64(len(c.g.ready) + len(c.g.out))}, nil
}

func (c *memConsumer) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// recorder is a Caller that answers with answer and records each delivery.
type recorder struct {
	mu     sync.Mutex
	calls  []*client.Request
	answer func(n int, req *client.Request) (*client.Response, error)
	got    chan *client.Request
}

func newRecorder(answer func(n int, req *client.Request) (*client.Response, error)) *recorder {
	return &recorder{answer: answer, got: make(chan *client.Request, 100)}
}

func (r *recorder) Call(ctx context.Context, req *client.Request) (*client.Response, error) {
	r.mu.Lock()
	r.calls = append(r.calls, req)
	n := len(r.calls)
	r.mu.Unlock()
	resp, err := r.answer(n, req)
	r.got <- req
	return resp, err
}

func ok(int, *client.Request) (*client.Response, error) {
	return &client.Response{Status: http.StatusOK, Node: "n1"}, nil
}

func testOptions() Options {
	return Options{
		MaxMessage: 1 << 10, MaxDeliveries: 3, DeliveryTimeout: time.Second, PublishTimeout: time.Second,
		Backoff: time.Millisecond, BackoffMax: 4 * time.Millisecond, MaxInflight: 4,
		DeadLetter:   func(t string) string { return t + ".dead" },
		DrainTimeout: 5 * time.Second,
	}
}

func newTestPubSub(t *testing.T, b broker.Broker, caller Caller) (*PubSub, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p := New(b, "mem", caller, reg, slog.New(slog.NewTextHandler(io.Discard, nil)), testOptions())
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p, reg
}

// wait returns the next delivery the recorder saw, failing the test after a while.
func (r *recorder) wait(t *testing.T) *client.Request {
	t.Helper()
	select {
	case req := <-r.got:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
		return nil
	}
}

func TestDeliveryCarriesMessage(t *testing.T) {
	b := newMemBroker()
	rec := newRecorder(ok)
	p, reg := newTestPubSub(t, b, rec)
	p.SetSubscriptions([]Subscription{{Service: "orders", Topic: "orders.created", Endpoint: "Orders.OnCreated"}})
	waitSubscribed(t, b, "orders.created/orders")
	id, err := p.Publish(context.Background(), "orders.created", map[string]string{"Content-Type": "application/json"}, []byte(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	req := rec.wait(t)
	if req.Service != "orders" || req.Endpoint != "Orders.OnCreated" || string(req.Body) != `{"n":1}` || !req.Idempotent {
		t.Errorf("delivery %+v", req)
	}
	for k, want := range map[string]string{broker.HeaderTopic: "orders.created", broker.HeaderMessageID: id, broker.HeaderDelivery: "1", "Content-Type": "application/json"} {
		if req.Header[k] != want {
			t.Errorf("header %s = %q, want %q", k, req.Header[k], want)
		}
	}
	waitCounter(t, reg, "micro_broker_delivered_total", 1)
	if n := testutil.ToFloat64(p.met.pub.WithLabelValues("orders.created")); n != 1 {
		t.Errorf("published = %v, want 1", n)
	}
}

func TestFailedDeliveriesAreRepeatedThenDone(t *testing.T) {
	b := newMemBroker()
	rec := newRecorder(func(n int, _ *client.Request) (*client.Response, error) {
		if n <= 2 {
			return &client.Response{Status: http.StatusInternalServerError, Node: "n1"}, nil
		}
		return &client.Response{Status: http.StatusOK, Node: "n1"}, nil
	})
	p, reg := newTestPubSub(t, b, rec)
	p.SetSubscriptions([]Subscription{{Service: "orders", Topic: "t", Endpoint: "E"}})
	waitSubscribed(t, b, "t/orders")
	if _, err := p.Publish(context.Background(), "t", nil, []byte("x")); err != nil {
		t.Fatal(err)
	}
	for want := 1; want <= 3; want++ {
		if got := rec.wait(t).Header[broker.HeaderDelivery]; got != strconv.Itoa(want) {
			t.Fatalf("delivery %d carries %s=%s", want, broker.HeaderDelivery, got)
		}
	}
	waitCounter(t, reg, "micro_broker_delivered_total", 1)
	if n := counter(t, reg, "micro_broker_redelivered_total"); n != 2 {
		t.Errorf("redelivered = %v, want 2", n)
	}
	if n := counter(t, reg, "micro_broker_dead_lettered_total"); n != 0 {
		t.Errorf("dead-lettered = %v, want 0", n)
	}
}

func TestAlwaysFailingGoesToDeadLetter(t *testing.T) {
	b := newMemBroker()
	rec := newRecorder(func(int, *client.Request) (*client.Response, error) {
		return nil, callerr.New("orders", http.StatusGatewayTimeout, "budget spent")
	})
	p, reg := newTestPubSub(t, b, rec)
	p.SetSubscriptions([]Subscription{{Service: "orders", Topic: "t", Endpoint: "E"}})
	waitSubscribed(t, b, "t/orders")
	id, err := p.Publish(context.Background(), "t", map[string]string{"K": "v"}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		rec.wait(t)
	}
	waitCounter(t, reg, "micro_broker_dead_lettered_total", 1)
	dead, _ := b.Messages(context.Background(), "t.dead", 10)
	if len(dead) != 1 {
		t.Fatalf("t.dead holds %d messages, want 1", len(dead))
	}
	d := dead[0]
	if string(d.Body) != "x" || d.Header["K"] != "v" || d.Header[broker.HeaderDeadTopic] != "t" || d.Header[broker.HeaderDeadGroup] != "orders" || d.Header[broker.HeaderDeadReason] == "" || d.ID == id {
		t.Errorf("dead letter %+v", d)
	}
	select {
	case req := <-rec.got:
		t.Errorf("a dead-lettered message was delivered again: %+v", req)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestRefusedByWrapperIsHeldNotCounted(t *testing.T) {
	b := newMemBroker()
	rec := newRecorder(func(n int, _ *client.Request) (*client.Response, error) {
		if n <= 4 { // a rate limit's rejection, more times than max_deliveries
			return &client.Response{Status: http.StatusTooManyRequests, Header: map[string]string{}}, nil
		}
		return &client.Response{Status: http.StatusOK, Node: "n1"}, nil
	})
	p, reg := newTestPubSub(t, b, rec)
	p.SetSubscriptions([]Subscription{{Service: "orders", Topic: "t", Endpoint: "E"}})
	waitSubscribed(t, b, "t/orders")
	if _, err := p.Publish(context.Background(), "t", nil, []byte("x")); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if got := rec.wait(t).Header[broker.HeaderDelivery]; got != "1" {
			t.Errorf("a held delivery counted: %s=%s", broker.HeaderDelivery, got)
		}
	}
	waitCounter(t, reg, "micro_broker_delivered_total", 1)
	if n := counter(t, reg, "micro_broker_held_total"); n != 4 {
		t.Errorf("held = %v, want 4", n)
	}
	if n := counter(t, reg, "micro_broker_dead_lettered_total") + counter(t, reg, "micro_broker_redelivered_total"); n != 0 {
		t.Errorf("a rejection by a wrapper counted as a failure (%v)", n)
	}
}

func TestJudge(t *testing.T) {
	tests := []struct {
		name string
		resp *client.Response
		err  error
		want verdict
	}{
		{"ok", &client.Response{Status: 204, Node: "n"}, nil, done},
		{"app 500", &client.Response{Status: 500, Node: "n"}, nil, failed},
		{"app 429", &client.Response{Status: 429, Node: "n"}, nil, failed},
		{"app 400", &client.Response{Status: 400, Node: "n"}, nil, failed},
		{"wrapper 429", &client.Response{Status: 429}, nil, held},
		{"breaker 503", &client.Response{Status: 503}, nil, held},
		{"no node", nil, callerr.New(client.ID, 503, "no node"), held},
		{"unknown service", nil, callerr.New(client.ID, 404, "unknown"), held},
		{"timeout", nil, callerr.New(client.ID, 504, "spent"), failed},
		{"upstream", nil, callerr.New(client.ID, 502, "failed"), failed},
		{"no node reachable", nil, &callerr.Error{ID: client.ID, Code: 502, Detail: "connect: connection refused", Unreached: true}, held},
		{"other error", nil, errors.New("boom"), failed},
	}
	for _, tt := range tests {
		if v, _, _ := judge(tt.resp, tt.err); v != tt.want {
			t.Errorf("%s: verdict %d, want %d", tt.name, v, tt.want)
		}
	}
}

func TestPublishErrors(t *testing.T) {
	b := newMemBroker()
	p, _ := newTestPubSub(t, b, newRecorder(ok))
	check := func(name string, ctx context.Context, topic string, body []byte, want int) {
		t.Helper()
		_, err := p.Publish(ctx, topic, nil, body)
		var e *callerr.Error
		if !errors.As(err, &e) || e.Code != want {
			t.Errorf("%s: error %v, want status %d", name, err, want)
		}
	}
	check("bad topic", context.Background(), "a..b", nil, http.StatusBadRequest)
	check("wildcard", context.Background(), "a.*", nil, http.StatusBadRequest)
	check("too large", context.Background(), "t", make([]byte, 2<<10), http.StatusRequestEntityTooLarge)
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	b.err = fmt.Errorf("waiting: %w", context.DeadlineExceeded)
	check("budget", ctx, "t", nil, http.StatusGatewayTimeout)
	b.err = fmt.Errorf("store: %w", broker.ErrFull)
	check("full", context.Background(), "t", nil, http.StatusServiceUnavailable)
	b.err = fmt.Errorf("nats: %w", broker.ErrUnavailable)
	check("unavailable", context.Background(), "t", nil, http.StatusServiceUnavailable)
	b.err = fmt.Errorf("nats: %w", broker.ErrTooLarge)
	check("too large for the broker", context.Background(), "t", nil, http.StatusRequestEntityTooLarge)
}

func TestSwapDrainsTheOldBroker(t *testing.T) {
	old, next := newMemBroker(), newMemBroker()
	release := make(chan struct{})
	rec := newRecorder(func(int, *client.Request) (*client.Response, error) {
		<-release
		return &client.Response{Status: http.StatusOK, Node: "n1"}, nil
	})
	p, reg := newTestPubSub(t, old, rec)
	p.SetSubscriptions([]Subscription{{Service: "orders", Topic: "t", Endpoint: "E"}})
	waitSubscribed(t, old, "t/orders")
	for i := range 3 {
		if _, err := p.Publish(context.Background(), "t", nil, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	p.Swap(next, "mem2")
	waitSubscribed(t, next, "t/orders")
	if _, err := p.Publish(context.Background(), "t", nil, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if b, name := p.Broker(); b != next || name != "mem2" {
		t.Fatalf("publishing goes to %s after the switch", name)
	}
	if old.isClosed() {
		t.Fatal("the old broker closed while it held messages")
	}
	close(release)
	waitCounter(t, reg, "micro_broker_delivered_total", 4)
	deadline := time.Now().Add(10 * time.Second)
	for !old.isClosed() {
		if time.Now().After(deadline) {
			t.Fatal("the old broker was not closed once drained")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSubscribed waits until a consumer has subscribed group key on b.
func waitSubscribed(t *testing.T, b *memBroker, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		_, ok := b.groups[key]
		b.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never subscribed", key)
		}
		time.Sleep(time.Millisecond)
	}
}

// counter sums the series of the named counter.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// waitCounter waits until the named counter reaches want.
func waitCounter(t *testing.T, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counter(t, reg, name) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, counter(t, reg, name), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCloseEndsHeldDeliveries: a delivery held back (a wrapper keeps refusing it) does not
// keep Close waiting for its grace: Close returns, and the message was not acknowledged.
func TestCloseEndsHeldDeliveries(t *testing.T) {
	b := newMemBroker()
	rec := newRecorder(func(int, *client.Request) (*client.Response, error) {
		return &client.Response{Status: http.StatusTooManyRequests, Header: map[string]string{"Retry-After": "3600"}}, nil
	})
	reg := prometheus.NewRegistry()
	p := New(b, "mem", rec, reg, slog.New(slog.DiscardHandler), testOptions())
	p.SetSubscriptions([]Subscription{{Service: "orders", Topic: "t", Endpoint: "E"}})
	waitSubscribed(t, b, "t/orders")
	if _, err := p.Publish(context.Background(), "t", nil, []byte("x")); err != nil {
		t.Fatal(err)
	}
	rec.wait(t)
	waitCounter(t, reg, "micro_broker_held_total", 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour) // the grace Close would wait
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := counter(t, reg, "micro_broker_delivered_total"); n != 0 {
		t.Errorf("delivered = %v, want 0", n)
	}
}
