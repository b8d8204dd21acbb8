package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// wait bounds each step of a test that should finish at once; it is generous, since the
// tests are about outcomes, not speed.
const wait = 20 * time.Second

// startNATS runs a NATS server with JetStream on a store in a temporary directory.
func startNATS(t testing.TB, opts ...natstest.Option) *natstest.Server {
	t.Helper()
	return natstest.Start(t, append([]natstest.Option{natstest.WithJetStream(t.TempDir())}, opts...)...)
}

// newTestBroker returns a broker initialised with c (c.URL set to url), closed when the
// test ends.
func newTestBroker(t testing.TB, url string, c broker.Config) *natsBroker {
	t.Helper()
	b := newBroker(nil)
	c.URL = url
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := b.Init(ctx, c); err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// testCtx returns a context that ends after wait or with the test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// publish publishes a message with id and body to topic, and fails the test if that fails.
func publish(t testing.TB, b *natsBroker, topic, id, body string, h map[string]string) *broker.Message {
	t.Helper()
	m := &broker.Message{ID: id, Topic: topic, Header: h, Body: []byte(body)}
	if err := b.Publish(testCtx(t), m); err != nil {
		t.Fatalf("Publish %s to %s: %v", id, topic, err)
	}
	return m
}

// subscribe starts a consumer, closed when the test ends.
func subscribe(t testing.TB, b *natsBroker, s broker.Subscription) broker.Consumer {
	t.Helper()
	if s.AckTimeout == 0 {
		s.AckTimeout = 30 * time.Second
	}
	if s.MaxInflight == 0 {
		s.MaxInflight = 16
	}
	c, err := b.Subscribe(testCtx(t), s)
	if err != nil {
		t.Fatalf("Subscribe %s to %s: %v", s.Group, s.Topic, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// next returns the consumer's next delivery, failing the test if none comes within wait.
func next(t testing.TB, c broker.Consumer) *broker.Delivery {
	t.Helper()
	d, err := c.Next(testCtx(t))
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return d
}

// none checks that c delivers nothing for a moment.
func none(t testing.TB, c broker.Consumer, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if got, err := c.Next(ctx); err == nil {
		t.Fatalf("Next delivered %s (attempt %d), want nothing", got.ID, got.Attempt)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next: %v, want the deadline", err)
	}
}

// ack acks d.
func ack(t testing.TB, c broker.Consumer, d *broker.Delivery) {
	t.Helper()
	if err := c.Ack(testCtx(t), d); err != nil {
		t.Fatalf("Ack %s: %v", d.ID, err)
	}
}

func TestPublishConsumeAck(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	h := map[string]string{
		"Content-Type": "application/json",
		"X-Multi":      "one\ntwo",
		"Nats-Rollup":  "all", // would purge the stream, were it not escaped
		"Status":       "503", // would look like a status message with an empty body
		"Micro-Nats-X": "y",
	}
	before := time.Now()
	m1 := publish(t, b, "orders.created", "id-1", `{"n":1}`, h)
	if m1.Time.Before(before) {
		t.Errorf("Time = %v, before the publish at %v", m1.Time, before)
	}
	publish(t, b, "orders.created", "id-2", "", h)
	publish(t, b, "orders.other", "id-3", "other topic", nil)

	c := subscribe(t, b, broker.Subscription{Topic: "orders.created", Group: "billing"})
	for _, want := range []struct{ id, body string }{{"id-1", `{"n":1}`}, {"id-2", ""}} {
		d := next(t, c)
		if d.ID != want.id || string(d.Body) != want.body || d.Topic != "orders.created" || d.Attempt != 1 {
			t.Fatalf("delivery = %s %q %s attempt %d, want %s %q orders.created attempt 1", d.ID, d.Body, d.Topic, d.Attempt, want.id, want.body)
		}
		if !maps.Equal(d.Header, h) {
			t.Errorf("%s: Header = %q, want %q", d.ID, d.Header, h)
		}
		if d.Time.IsZero() || d.Time.Before(before.Add(-time.Second)) {
			t.Errorf("%s: Time = %v", d.ID, d.Time)
		}
		ack(t, c, d)
		if err := c.Ack(testCtx(t), d); !errors.Is(err, broker.ErrUnknownDelivery) {
			t.Errorf("second Ack: %v, want ErrUnknownDelivery", err)
		}
	}
	none(t, c, 300*time.Millisecond)
	bl, err := c.Backlog(testCtx(t))
	if err != nil || bl != (broker.Backlog{}) {
		t.Errorf("Backlog = %+v, %v; want none", bl, err)
	}

	// The group is durable: a new consumer of it after a new Init starts where it was.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(testCtx(t)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Next after Close: %v, want ErrClosed", err)
	}
	b2 := newTestBroker(t, s.URL, broker.Config{})
	publish(t, b2, "orders.created", "id-4", "4", nil)
	c2 := subscribe(t, b2, broker.Subscription{Topic: "orders.created", Group: "billing"})
	if d := next(t, c2); d.ID != "id-4" {
		t.Errorf("after a restart of the group: %s, want id-4", d.ID)
	}
}

func TestFanOutAndNewGroups(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	// Published while no group exists: the first groups get them.
	publish(t, b, "t", "early", "", nil)
	g1 := subscribe(t, b, broker.Subscription{Topic: "t", Group: "one"})
	// A group created once the topic has a group gets what is published from then on.
	g2 := subscribe(t, b, broker.Subscription{Topic: "t", Group: "two"})
	publish(t, b, "t", "a", "", nil)
	publish(t, b, "t", "b", "", nil)
	for _, g := range []struct {
		c    broker.Consumer
		want []string
	}{{g1, []string{"early", "a", "b"}}, {g2, []string{"a", "b"}}} {
		var got []string
		for range g.want {
			d := next(t, g.c)
			got = append(got, d.ID)
			ack(t, g.c, d)
		}
		if !slices.Equal(got, g.want) {
			t.Errorf("got %q, want %q", got, g.want)
		}
		none(t, g.c, 200*time.Millisecond)
	}
	g3 := subscribe(t, b, broker.Subscription{Topic: "t", Group: "three"})
	publish(t, b, "t", "c", "", nil)
	if d := next(t, g3); d.ID != "c" {
		t.Errorf("new group got %s first, want c", d.ID)
	}
}

func TestOneGroupTwoProcesses(t *testing.T) {
	s := startNATS(t)
	b1 := newTestBroker(t, s.URL, broker.Config{})
	b2 := newTestBroker(t, s.URL, broker.Config{})
	sub := broker.Subscription{Topic: "work", Group: "workers", MaxInflight: 4}
	cs := []broker.Consumer{subscribe(t, b1, sub), subscribe(t, b2, sub)}
	const n = 200
	for i := range n {
		publish(t, b1, "work", fmt.Sprint(i), "", nil)
	}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		per  [2]int
	)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for {
				d, err := c.Next(ctx)
				if err != nil {
					return
				}
				if err := c.Ack(ctx, d); err != nil {
					t.Errorf("Ack: %v", err)
				}
				mu.Lock()
				seen[d.ID]++
				per[i]++
				if len(seen) == n {
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("consumed %d distinct messages, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("message %s delivered %d times", id, k)
		}
	}
	t.Logf("per consumer: %v", per)
}

func TestNakAndAckTimeout(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g", AckTimeout: 700 * time.Millisecond})
	publish(t, b, "t", "m", "body", nil)

	d := next(t, c)
	const delay = 400 * time.Millisecond
	naked := time.Now()
	if err := c.Nak(testCtx(t), d, delay); err != nil {
		t.Fatal(err)
	}
	if err := c.Nak(testCtx(t), d, delay); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("second Nak: %v, want ErrUnknownDelivery", err)
	}
	d2 := next(t, c)
	if d2.ID != "m" || d2.Attempt != 2 || string(d2.Body) != "body" {
		t.Fatalf("after Nak: %s attempt %d %q, want m attempt 2", d2.ID, d2.Attempt, d2.Body)
	}
	if since := time.Since(naked); since < delay-50*time.Millisecond {
		t.Errorf("redelivered %v after the Nak, before its delay of %v", since, delay)
	}

	// Not acked within AckTimeout: delivered again.
	d3 := next(t, c)
	if d3.ID != "m" || d3.Attempt != 3 || d3.Token == d2.Token {
		t.Fatalf("after the ack timeout: %s attempt %d token %s, want m attempt 3, a new token", d3.ID, d3.Attempt, d3.Token)
	}
	ack(t, c, d3)
	none(t, c, time.Second)
}

func TestExtend(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	const ackTimeout = time.Second
	c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g", AckTimeout: ackTimeout})
	publish(t, b, "t", "m", "", nil)
	d := next(t, c)
	// Extend for three ack timeouts: no redelivery meanwhile.
	done := make(chan struct{})
	go func() {
		defer close(done)
		none(t, c, 3*ackTimeout)
	}()
	tick := time.NewTicker(ackTimeout / 4)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if err := c.Extend(testCtx(t), d); err != nil {
				t.Fatal(err)
			}
			continue
		case <-done:
		}
		break
	}
	ack(t, c, d)
	if err := c.Extend(testCtx(t), d); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Extend after Ack: %v, want ErrUnknownDelivery", err)
	}
	none(t, c, 2*ackTimeout)
}

func TestCloseHandsBack(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	sub := broker.Subscription{Topic: "t", Group: "g", AckTimeout: time.Hour}
	c1 := subscribe(t, b, sub)
	publish(t, b, "t", "m", "", nil)
	d := next(t, c1)
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c1.Ack(testCtx(t), d); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Ack after Close: %v, want ErrUnknownDelivery", err)
	}
	// Delivered again at once, not after the hour.
	c2 := subscribe(t, b, sub)
	if d := next(t, c2); d.ID != "m" || d.Attempt != 2 {
		t.Errorf("after Close: %s attempt %d, want m attempt 2", d.ID, d.Attempt)
	}
}

func TestMaxInflight(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g", MaxInflight: 2})
	for i := range 4 {
		publish(t, b, "t", fmt.Sprint(i), "", nil)
	}
	d0, d1 := next(t, c), next(t, c)
	none(t, c, 300*time.Millisecond)
	ack(t, c, d0)
	if d := next(t, c); d.ID != "2" {
		t.Errorf("after an ack: %s, want 2", d.ID)
	}
	if err := c.Nak(testCtx(t), d1, 0); err != nil {
		t.Fatal(err)
	}
	if d := next(t, c); d.ID != "1" && d.ID != "3" {
		t.Errorf("after a nak: %s, want 1 or 3", d.ID)
	}
}

func TestDedupe(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	publish(t, b, "t", "same", "first", nil)
	publish(t, b, "t", "same", "second", nil)
	publish(t, b, "t", "other", "", nil)
	ms, err := b.Messages(testCtx(t), "t", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != "same" || string(ms[0].Body) != "first" || ms[1].ID != "other" {
		t.Fatalf("Messages = %v, want same (first) and other", ids(ms))
	}
}

// ids returns the IDs of ms.
func ids(ms []*broker.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestTooLarge(t *testing.T) {
	s := startNATS(t, natstest.WithMaxPayload(8<<10))
	b := newTestBroker(t, s.URL, broker.Config{MaxMessage: 4 << 10})
	ctx := testCtx(t)
	err := b.Publish(ctx, &broker.Message{ID: "big", Topic: "t", Body: make([]byte, 4<<10+1)})
	if !errors.Is(err, broker.ErrTooLarge) || !strings.Contains(err.Error(), "max_message") {
		t.Errorf("over max_message: %v, want ErrTooLarge naming max_message", err)
	}
	err = b.Publish(ctx, &broker.Message{ID: "big", Topic: "t", Header: map[string]string{"K": strings.Repeat("v", 4<<10)}})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Errorf("header over max_message: %v, want ErrTooLarge", err)
	}
	publish(t, b, "t", "fits", strings.Repeat("x", 4<<10), nil)

	// The server's max_payload is below max_message: still too large, not another error.
	b2 := newTestBroker(t, s.URL, broker.Config{MaxMessage: 64 << 10})
	err = b2.Publish(ctx, &broker.Message{ID: "big", Topic: "t", Body: make([]byte, 16<<10)})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Errorf("over max_payload: %v, want ErrTooLarge", err)
	}
}

func TestFull(t *testing.T) {
	s := startNATS(t)
	const maxBytes = 64 << 10
	b := newTestBroker(t, s.URL, broker.Config{MaxBytes: maxBytes, MaxMessage: 4 << 10})
	ctx := testCtx(t)
	var accepted []string
	var err error
	for i := 0; i < 2*maxBytes/1024; i++ {
		id := fmt.Sprint(i)
		err = b.Publish(ctx, &broker.Message{ID: id, Topic: "t", Body: make([]byte, 1024)})
		if err != nil {
			break
		}
		accepted = append(accepted, id)
	}
	if !errors.Is(err, broker.ErrFull) {
		t.Fatalf("after %d publishes: %v, want ErrFull", len(accepted), err)
	}
	// Nothing accepted was dropped to make room.
	ms, err := b.Messages(ctx, "t", len(accepted)+10)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(ms), accepted) {
		t.Errorf("the stream holds %d messages, want the %d accepted", len(ms), len(accepted))
	}
	// Consuming and deleting makes room again.
	if err := b.Delete(ctx, "t", accepted[0]); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", "after", "", nil)
}

func TestMessagesAndDelete(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	h := map[string]string{headerDeadReason: "503 from the app"}
	for _, id := range []string{"a", "b", "c"} {
		publish(t, b, "orders.dead", id, "body-"+id, h)
	}
	publish(t, b, "orders", "x", "", nil)
	ctx := testCtx(t)
	ms, err := b.Messages(ctx, "orders.dead", 10)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(ms), []string{"a", "b", "c"}) {
		t.Fatalf("Messages = %q, want a b c", ids(ms))
	}
	if m := ms[1]; m.Topic != "orders.dead" || string(m.Body) != "body-b" || !maps.Equal(m.Header, h) || m.Time.IsZero() {
		t.Errorf("message b = %+v", m)
	}
	if ms, _ := b.Messages(ctx, "orders.dead", 2); !slices.Equal(ids(ms), []string{"a", "b"}) {
		t.Errorf("Messages with limit 2 = %q, want a b", ids(ms))
	}
	if err := b.Delete(ctx, "orders.dead", "b"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "orders.dead", "never"); err != nil {
		t.Errorf("Delete of a missing message: %v", err)
	}
	if err := b.Delete(ctx, "orders", "a"); err != nil { // another topic: not there
		t.Fatal(err)
	}
	if ms, _ := b.Messages(ctx, "orders.dead", 10); !slices.Equal(ids(ms), []string{"a", "c"}) {
		t.Errorf("after Delete b: %q, want a c", ids(ms))
	}

	// With a group, only what some group has yet to ack.
	// (MaxInflight 1: the consumer pulls nothing ahead; a message it has pulled before
	// the Delete is still delivered, once.)
	c := subscribe(t, b, broker.Subscription{Topic: "orders.dead", Group: "g", MaxInflight: 1})
	ack(t, c, next(t, c))
	if ms, _ := b.Messages(ctx, "orders.dead", 10); !slices.Equal(ids(ms), []string{"c"}) {
		t.Errorf("after the group acked a: %q, want c", ids(ms))
	}
	// A message deleted while a group has yet to consume it is not delivered.
	if err := b.Delete(ctx, "orders.dead", "c"); err != nil {
		t.Fatal(err)
	}
	none(t, c, 300*time.Millisecond)
}

// headerDeadReason is runtime/broker's HeaderDeadReason, which plugins cannot import.
const headerDeadReason = "Micro-Dead-Reason"

func TestBacklog(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	var stored []time.Time
	for _, id := range []string{"a", "b", "c"} {
		publish(t, b, "t", id, "", nil)
	}
	ms, err := b.Messages(testCtx(t), "t", 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		stored = append(stored, m.Time)
	}
	c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g", MaxInflight: 1})
	check := func(n int64, oldest time.Time) {
		t.Helper()
		bl, err := c.Backlog(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if bl.Messages != n || !bl.Oldest.Equal(oldest) {
			t.Errorf("Backlog = %d, %v; want %d, %v", bl.Messages, bl.Oldest, n, oldest)
		}
	}
	check(3, stored[0])
	d := next(t, c) // in flight: still counted
	check(3, stored[0])
	ack(t, c, d)
	check(2, stored[1])
	ack(t, c, next(t, c))
	ack(t, c, next(t, c))
	check(0, time.Time{})
}

func TestBadInput(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	ctx := testCtx(t)
	for _, topic := range []string{"", "a..b", "a.>", "a.*", "a b", strings.Repeat("x", 201)} {
		if err := b.Publish(ctx, &broker.Message{ID: "i", Topic: topic}); err == nil {
			t.Errorf("Publish to %q: no error", topic)
		}
		if _, err := b.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}); err == nil {
			t.Errorf("Subscribe to %q: no error", topic)
		}
		if _, err := b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: topic}); err == nil {
			t.Errorf("Subscribe group %q: no error", topic)
		}
		if _, err := b.Messages(ctx, topic, 1); err == nil {
			t.Errorf("Messages of %q: no error", topic)
		}
	}
	for _, k := range []string{"", "a b", "a:b", "a\rb", "é"} {
		err := b.Publish(ctx, &broker.Message{ID: "i", Topic: "t", Header: map[string]string{k: "v"}})
		if err == nil {
			t.Errorf("header key %q: no error", k)
		}
	}
	if err := b.Publish(ctx, &broker.Message{ID: "i", Topic: "t", Header: map[string]string{"K": "a\rb"}}); err == nil {
		t.Error("header value with CR: no error")
	}
	if err := b.Publish(ctx, &broker.Message{Topic: "t"}); err == nil {
		t.Error("no ID: no error")
	}
	if _, err := b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: "g", AckTimeout: -1}); err == nil {
		t.Error("negative ack timeout: no error")
	}
	for _, c := range []broker.Config{{MaxAge: -1}, {MaxBytes: -1}, {MaxMessage: -1}, {MaxBytes: 10, MaxMessage: 100}} {
		c.URL = s.URL
		if err := newBroker(nil).Init(ctx, c); err == nil {
			t.Errorf("Init with %+v: no error", c)
		}
	}
	if err := newBroker(nil).Publish(ctx, &broker.Message{ID: "i", Topic: "t"}); err == nil {
		t.Error("Publish before Init: no error")
	}
}

func TestInit(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{MaxAge: time.Hour})
	ctx := testCtx(t)
	st, err := b.state()
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != time.Hour || c.MaxBytes != defaultMaxBytes || c.Storage != jetstream.FileStorage ||
		c.Discard != jetstream.DiscardNew || c.Duplicates != dupWindow || c.MaxMsgSize != defaultMaxMessage+headerSlack {
		t.Errorf("stream config = %+v", c)
	}
	// A second Init with other limits updates them.
	newTestBroker(t, s.URL, broker.Config{MaxAge: time.Minute, MaxBytes: 1 << 20})
	info, err = st.str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != time.Minute || c.MaxBytes != 1<<20 || c.Duplicates != time.Minute {
		t.Errorf("after a second Init: max_age %v max_bytes %d duplicates %v", c.MaxAge, c.MaxBytes, c.Duplicates)
	}

	// No server there.
	s2 := startNATS(t)
	s2.Stop()
	err = newBroker(nil).Init(ctx, broker.Config{URL: s2.URL})
	if err == nil || !strings.Contains(err.Error(), s2.URL) {
		t.Errorf("Init with no server: %v, want an error naming %s", err, s2.URL)
	}
}

func TestStreamTakenByOthers(t *testing.T) {
	s := startNATS(t)
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: streamName, Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
	err = newBroker(nil).Init(ctx, broker.Config{URL: s.URL})
	if err == nil || !strings.Contains(err.Error(), streamName) || !strings.Contains(err.Error(), "other.>") {
		t.Errorf("Init: %v, want an error naming the stream and its subjects", err)
	}
}

// TestPublishWhileDisconnected: with the server down, Publish fails at once as
// unavailable rather than waiting for its budget; once the server is back, it succeeds.
func TestPublishWhileDisconnected(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	changed := b.changed()
	s.Stop()
	<-changed // the client saw the drop
	ctx := testCtx(t)
	err := b.Publish(ctx, &broker.Message{ID: "i", Topic: "t"})
	if !errors.Is(err, broker.ErrUnavailable) || ctx.Err() != nil {
		t.Fatalf("Publish while down: %v (ctx %v), want ErrUnavailable before the budget ends", err, ctx.Err())
	}
	s.Restart()
	if err := publishRetrying(ctx, b, &broker.Message{ID: "i", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
}

// publishRetrying publishes m until it is accepted, while it fails as unavailable (the
// server's JetStream may still be starting after a reconnect).
func publishRetrying(ctx context.Context, b *natsBroker, m *broker.Message) error {
	for {
		err := b.Publish(ctx, m)
		if err == nil || !errors.Is(err, broker.ErrUnavailable) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestRestartLosesNothing restarts the NATS server while publishers publish and a
// consumer consumes: every message whose Publish returned nil is consumed.
func TestRestartLosesNothing(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g", AckTimeout: 2 * time.Second, MaxInflight: 32})

	var (
		mu       sync.Mutex
		accepted = map[string]bool{}
		consumed = map[string]bool{}
		failed   int
		gotAll   = make(chan struct{})
		closed   bool
	)
	// done reports (under mu) whether publishing is over and every accepted message was
	// consumed.
	var publishing = true
	checkDone := func() {
		if publishing || closed {
			return
		}
		for id := range accepted {
			if !consumed[id] {
				return
			}
		}
		closed = true
		close(gotAll)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var consumers sync.WaitGroup
	consumers.Go(func() {
		for {
			d, err := c.Next(ctx)
			if err != nil {
				return
			}
			_ = c.Ack(ctx, d) // an ack lost in the restart means a second delivery
			mu.Lock()
			consumed[d.ID] = true
			checkDone()
			mu.Unlock()
		}
	})

	stop := make(chan struct{})
	progress := make(chan struct{}, 1) // a publish ended
	var publishers sync.WaitGroup
	for p := range 4 {
		publishers.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("p%d-%d", p, i)
				pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
				err := b.Publish(pctx, &broker.Message{ID: id, Topic: "t", Body: []byte(id)})
				pcancel()
				mu.Lock()
				if err == nil {
					accepted[id] = true
				} else {
					failed++
					if !errors.Is(err, broker.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Publish %s: %v, want ErrUnavailable or the deadline", id, err)
					}
				}
				mu.Unlock()
				select {
				case progress <- struct{}{}:
				default:
				}
				if err != nil {
					time.Sleep(20 * time.Millisecond) // a publisher backing off
				}
			}
		})
	}
	// waitFor waits until cond, called under mu, holds.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-progress:
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v", what, ctx.Err())
			}
		}
	}
	// Stop the server once some messages are in, keep publishing while it is down, start
	// it again, and stop once more messages are in.
	waitFor("200 accepted", func() bool { return len(accepted) >= 200 })
	s.Stop()
	waitFor("20 refused", func() bool { return failed >= 20 })
	s.Restart()
	mu.Lock()
	atRestart := len(accepted)
	mu.Unlock()
	waitFor("200 more accepted", func() bool { return len(accepted) >= atRestart+200 })
	close(stop)
	publishers.Wait()

	mu.Lock()
	publishing = false
	checkDone()
	t.Logf("accepted %d (%d before the restart), refused %d", len(accepted), atRestart, failed)
	mu.Unlock()
	select {
	case <-gotAll:
	case <-ctx.Done():
		mu.Lock()
		var lost []string
		for id := range accepted {
			if !consumed[id] {
				lost = append(lost, id)
			}
		}
		mu.Unlock()
		t.Errorf("%d accepted messages never consumed, e.g. %q", len(lost), lost[:min(len(lost), 5)])
	}
	cancel()
	consumers.Wait()
}

// TestForeignMessages: messages that other NATS clients put in the stream. One with no
// message ID gets one from its sequence; one that micro's protocol cannot carry is
// terminated and left out rather than stopping the group.
func TestForeignMessages(t *testing.T) {
	s := startNATS(t)
	b := newTestBroker(t, s.URL, broker.Config{})
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	many := nats.Header{}
	for i := range 1100 {
		many.Set(fmt.Sprint("K", i), "v")
	}
	for _, m := range []*nats.Msg{
		{Subject: subject("t"), Header: many, Data: []byte("too many headers")},
		{Subject: subject("t"), Data: []byte("plain")},
	} {
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := b.Messages(ctx, "t", 10)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(ms), []string{"nats-seq-2"}) {
		t.Errorf("Messages = %q, want nats-seq-2", ids(ms))
	}
	c := subscribe(t, b, broker.Subscription{Topic: "t", Group: "g"})
	d := next(t, c)
	if d.ID != "nats-seq-2" || string(d.Body) != "plain" || len(d.Header) != 0 {
		t.Errorf("delivery = %s %q %q, want nats-seq-2 plain", d.ID, d.Body, d.Header)
	}
	ack(t, c, d)
	if err := b.Delete(ctx, "t", "nats-seq-1"); err != nil {
		t.Fatal(err)
	}
}
