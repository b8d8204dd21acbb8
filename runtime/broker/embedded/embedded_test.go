package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/broker"
)

// syncBuffer is a bytes.Buffer for a logger that several goroutines use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openB(t testing.TB, opts Options) *Broker {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	b, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func publish(t testing.TB, b *Broker, topic, body string) *broker.Message {
	t.Helper()
	m := &broker.Message{Topic: topic, Body: []byte(body), Header: map[string]string{"K": "v"}}
	if err := b.Publish(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return m
}

func subscribe(t testing.TB, b *Broker, topic, group string, ack time.Duration, inflight int) broker.Consumer {
	t.Helper()
	c, err := b.Subscribe(context.Background(), broker.Subscription{Topic: topic, Group: group, AckTimeout: ack, MaxInflight: inflight})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func next(t testing.TB, c broker.Consumer) *broker.Delivery {
	t.Helper()
	d, err := c.Next(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func ack(t testing.TB, c broker.Consumer, d *broker.Delivery) {
	t.Helper()
	if err := c.Ack(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

// wantBacklog checks the group's backlog count.
func wantBacklog(t *testing.T, c broker.Consumer, n int64) {
	t.Helper()
	bl, err := c.Backlog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if bl.Messages != n {
		t.Fatalf("backlog = %d messages, want %d", bl.Messages, n)
	}
}

func TestPublishConsumeAck(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "orders.created", "billing", time.Minute, 1)
	m := publish(t, b, "orders.created", "hello")
	if m.ID == "" || len(m.ID) != 26 || m.Time.IsZero() {
		t.Fatalf("Publish set ID %q, Time %v", m.ID, m.Time)
	}
	d := next(t, c)
	if d.ID != m.ID || string(d.Body) != "hello" || d.Topic != "orders.created" || d.Header["K"] != "v" ||
		d.Attempt != 1 || !d.Time.Equal(m.Time) {
		t.Fatalf("delivery = %+v, want %+v attempt 1", d, m)
	}
	wantBacklog(t, c, 1)
	ack(t, c, d)
	wantBacklog(t, c, 0)
	if err := c.Ack(context.Background(), d); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("second Ack = %v, want ErrUnknownDelivery", err)
	}
	// The message file is gone with its last entry.
	if ids, _ := os.ReadDir(filepath.Join(b.Dir(), "topics", "orders.created", "ids")); len(ids) != 0 {
		t.Errorf("ids left after the ack: %v", ids)
	}
	ms, err := b.Messages(context.Background(), "orders.created", 10)
	if err != nil || len(ms) != 0 {
		t.Errorf("Messages after the ack = %v, %v", ms, err)
	}
}

func TestFanOutAndDurableGroups(t *testing.T) {
	b := openB(t, Options{})
	c1 := subscribe(t, b, "t", "g1", time.Minute, 1)
	c2 := subscribe(t, b, "t", "g2", time.Minute, 1)
	c2.Close() // g2 is durable: it keeps receiving while none of its consumers runs
	m := publish(t, b, "t", "x")
	d := next(t, c1)
	ack(t, c1, d)
	c2 = subscribe(t, b, "t", "g2", time.Minute, 1)
	d = next(t, c2)
	if d.ID != m.ID || d.Attempt != 1 {
		t.Fatalf("g2 got %+v", d)
	}
	ack(t, c2, d)
	// A group made later does not get what was published before it.
	publish(t, b, "t", "y")
	c3 := subscribe(t, b, "t", "g3", time.Minute, 1)
	wantBacklog(t, c3, 0)
}

// consumeAll consumes from cs until n distinct messages have been acknowledged, and fails on
// a duplicate.
func consumeAll(t *testing.T, n int, cs ...broker.Consumer) {
	t.Helper()
	ctx := ctxT(t)
	var mu sync.Mutex
	seen := make(map[string]int)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := c.Next(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				if _, dup := seen[d.ID]; dup {
					t.Errorf("message %s delivered twice", d.ID)
				}
				seen[d.ID] = i
				done := len(seen) == n
				mu.Unlock()
				if err := c.Ack(ctx, d); err != nil {
					t.Error(err)
				}
				if done {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("got %d messages, want %d", len(seen), n)
	}
}

func TestOneGroupTwoBrokers(t *testing.T) {
	dir := t.TempDir()
	b1, b2 := openB(t, Options{Dir: dir}), openB(t, Options{Dir: dir})
	c1 := subscribe(t, b1, "t", "g", time.Minute, 4)
	c2 := subscribe(t, b2, "t", "g", time.Minute, 4)
	other := subscribe(t, b2, "t", "h", time.Minute, 1)
	const n = 200
	for i := range n {
		publish(t, []*Broker{b1, b2}[i%2], "t", fmt.Sprint(i))
	}
	consumeAll(t, n, c1, c2)
	wantBacklog(t, c1, 0)
	wantBacklog(t, other, n)
	consumeAll(t, n, other)
}

func TestNakDelay(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "t", "g", time.Minute, 1)
	m := publish(t, b, "t", "x")
	d := next(t, c)
	start := time.Now()
	const delay = 300 * time.Millisecond
	if err := c.Nak(context.Background(), d, delay); err != nil {
		t.Fatal(err)
	}
	d = next(t, c)
	if since := time.Since(start); since < delay {
		t.Errorf("redelivered after %v, before the delay of %v", since, delay)
	}
	if d.ID != m.ID || d.Attempt != 2 {
		t.Fatalf("redelivery = %+v, want attempt 2 of %s", d, m.ID)
	}
	if err := c.Nak(context.Background(), d, 0); err != nil {
		t.Fatal(err)
	}
	if d = next(t, c); d.Attempt != 3 {
		t.Fatalf("attempt = %d, want 3", d.Attempt)
	}
	ack(t, c, d)
}

func TestAckTimeoutRedelivery(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "t", "g", 200*time.Millisecond, 1)
	m := publish(t, b, "t", "x")
	d1 := next(t, c)
	d2 := next(t, c) // waits for the lapse: MaxInflight is 1, and the one held lapses
	if d2.ID != m.ID || d2.Attempt != 2 {
		t.Fatalf("redelivery = %+v, want attempt 2", d2)
	}
	for name, err := range map[string]error{
		"ack":    c.Ack(context.Background(), d1),
		"nak":    c.Nak(context.Background(), d1, 0),
		"extend": c.Extend(context.Background(), d1),
	} {
		if !errors.Is(err, broker.ErrUnknownDelivery) {
			t.Errorf("%s of a lapsed delivery = %v, want ErrUnknownDelivery", name, err)
		}
	}
	ack(t, c, d2)
}

func TestExtend(t *testing.T) {
	b := openB(t, Options{})
	const timeout = 300 * time.Millisecond
	c := subscribe(t, b, "t", "g", timeout, 1)
	publish(t, b, "t", "x")
	d := next(t, c)
	// Extended past several timeouts, it stays this consumer's.
	end := time.Now().Add(3 * timeout)
	for time.Now().Before(end) {
		if err := c.Extend(context.Background(), d); err != nil {
			t.Fatal(err)
		}
		time.Sleep(timeout / 4)
	}
	wantBacklog(t, c, 1)
	ack(t, c, d)
	wantBacklog(t, c, 0)
}

func TestCloseReturnsHeld(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "t", "g", time.Hour, 2)
	publish(t, b, "t", "x")
	d := next(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
	c = subscribe(t, b, "t", "g", time.Hour, 1)
	if d2 := next(t, c); d2.ID != d.ID || d2.Attempt != 2 {
		t.Fatalf("after Close: %+v, want attempt 2 of %s", d2, d.ID)
	}
	b.Close()
	if err := b.Publish(context.Background(), &broker.Message{Topic: "t"}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close = %v", err)
	}
}

func TestMaxInflight(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "t", "g", time.Hour, 2)
	for range 3 {
		publish(t, b, "t", "x")
	}
	d1, d2 := next(t, c), next(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if d, err := c.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next while holding MaxInflight = %v, %v; want it to wait", d, err)
	}
	ack(t, c, d1)
	ack(t, c, next(t, c))
	ack(t, c, d2)
}

func TestOldestFirst(t *testing.T) {
	b := openB(t, Options{})
	var ids []string
	for i := range 20 {
		ids = append(ids, publish(t, b, "t", fmt.Sprint(i)).ID)
	}
	c := subscribe(t, b, "t", "g", time.Hour, 1) // takes over what the topic held
	for i, id := range ids {
		d := next(t, c)
		if d.ID != id {
			t.Fatalf("delivery %d is %s, want %s", i, d.ID, id)
		}
		ack(t, c, d)
	}
}

func TestMessagesDeleteHeld(t *testing.T) {
	b := openB(t, Options{})
	ctx := context.Background()
	m1 := publish(t, b, "orders.dead", "1")
	m2 := publish(t, b, "orders.dead", "2")
	m3 := publish(t, b, "orders.dead", "3")
	ms, err := b.Messages(ctx, "orders.dead", 2)
	if err != nil || len(ms) != 2 || ms[0].ID != m1.ID || ms[1].ID != m2.ID || string(ms[1].Body) != "2" {
		t.Fatalf("Messages = %+v, %v; want the two oldest", ms, err)
	}
	if err := b.Delete(ctx, "orders.dead", m2.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "orders.dead", "missing"); err != nil {
		t.Errorf("Delete of a missing message = %v", err)
	}
	if err := b.Delete(ctx, "never.published", "x"); err != nil {
		t.Errorf("Delete from a missing topic = %v", err)
	}
	ms, _ = b.Messages(ctx, "orders.dead", 10)
	if len(ms) != 2 || ms[0].ID != m1.ID || ms[1].ID != m3.ID {
		t.Fatalf("Messages after Delete = %+v", ms)
	}
	// Two groups: Messages lists each message once, Delete removes it from both.
	g1 := subscribe(t, b, "orders.dead", "g1", time.Hour, 1)
	g2 := subscribe(t, b, "orders.dead", "g2", time.Hour, 1)
	m4 := publish(t, b, "orders.dead", "4")
	if ms, _ = b.Messages(ctx, "orders.dead", 10); len(ms) != 3 {
		t.Fatalf("Messages with two groups = %d messages, want 3", len(ms))
	}
	wantBacklog(t, g1, 3)
	wantBacklog(t, g2, 1)
	d := next(t, g1) // in flight: Delete removes it too
	if d.ID != m1.ID {
		t.Fatalf("g1 got %s first, want %s", d.ID, m1.ID)
	}
	for _, m := range []*broker.Message{m1, m3, m4} {
		if err := b.Delete(ctx, "orders.dead", m.ID); err != nil {
			t.Fatal(err)
		}
	}
	wantBacklog(t, g1, 0)
	wantBacklog(t, g2, 0)
	if err := g1.Ack(ctx, d); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Ack of a deleted message = %v, want ErrUnknownDelivery", err)
	}
	if ms, _ = b.Messages(ctx, "orders.dead", 10); len(ms) != 0 {
		t.Errorf("Messages after deleting all = %+v", ms)
	}
}

func TestDedupe(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	for range 3 {
		m := &broker.Message{ID: "same", Topic: "t", Body: []byte("x")}
		if err := b.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	wantBacklog(t, c, 1)
	// Another topic has its own IDs.
	if err := b.Publish(context.Background(), &broker.Message{ID: "same", Topic: "u"}); err != nil {
		t.Fatal(err)
	}
	if ms, _ := b.Messages(context.Background(), "u", 10); len(ms) != 1 {
		t.Errorf("topic u holds %d messages, want 1", len(ms))
	}
}

func TestBacklog(t *testing.T) {
	b := openB(t, Options{})
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	bl, err := c.Backlog(context.Background())
	if err != nil || bl.Messages != 0 || !bl.Oldest.IsZero() {
		t.Fatalf("empty Backlog = %+v, %v", bl, err)
	}
	m1 := publish(t, b, "t", "1")
	publish(t, b, "t", "2")
	next(t, c) // in flight counts
	bl, err = c.Backlog(context.Background())
	if err != nil || bl.Messages != 2 || !bl.Oldest.Equal(time.Unix(0, m1.Time.UnixNano())) {
		t.Fatalf("Backlog = %+v, %v; want 2 messages, oldest %v", bl, err, m1.Time)
	}
}

func TestLimits(t *testing.T) {
	ctx := context.Background()
	b := openB(t, Options{MaxMessage: 100, MaxBytes: 1000})
	err := b.Publish(ctx, &broker.Message{Topic: "t", Body: make([]byte, 90), Header: map[string]string{"key": "0123456789"}})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Errorf("Publish of 103 bytes = %v, want ErrTooLarge", err)
	}
	if err := b.Publish(ctx, &broker.Message{Topic: "t", ID: strings.Repeat("x", maxIDLen+1)}); err == nil {
		t.Error("Publish with a long ID succeeded")
	}
	for _, topic := range []string{"", "a..b", "a/b", "..", "a b"} {
		if err := b.Publish(ctx, &broker.Message{Topic: topic}); err == nil {
			t.Errorf("Publish to %q succeeded", topic)
		}
		if _, err := b.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}); err == nil {
			t.Errorf("Subscribe to %q succeeded", topic)
		}
		if _, err := b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: topic}); err == nil {
			t.Errorf("Subscribe of group %q succeeded", topic)
		}
		if _, err := b.Messages(ctx, topic, 1); err == nil {
			t.Errorf("Messages of %q succeeded", topic)
		}
	}
	// Fill the store: each message file is a little over 100 bytes.
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	var full error
	n := 0
	for ; n < 20 && full == nil; n++ {
		full = b.Publish(ctx, &broker.Message{Topic: "t", Body: make([]byte, 100)})
	}
	if !errors.Is(full, broker.ErrFull) || n < 8 {
		t.Fatalf("after %d messages Publish = %v, want ErrFull after about 9", n, full)
	}
	// Acknowledging makes room again.
	for range n - 1 {
		ack(t, c, next(t, c))
	}
	if err := b.measure(ctx); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "t", "room")
}

func TestMaxAge(t *testing.T) {
	logs := &syncBuffer{}
	const age = 50 * time.Millisecond
	b := openB(t, Options{MaxAge: age, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	publish(t, b, "t", "old")
	m := publish(t, b, "held", "old")
	for time.Since(m.Time) <= age {
		time.Sleep(age - time.Since(m.Time) + time.Millisecond)
	}
	if err := b.sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantBacklog(t, c, 0)
	if ms, _ := b.Messages(context.Background(), "held", 1); len(ms) != 0 {
		t.Errorf("held messages past MaxAge: %v", ms)
	}
	for _, want := range []string{`msg="embedded broker: removed expired messages" topic=t count=1`, "topic=held count=1"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestOpenCleansLeftovers(t *testing.T) {
	dir := t.TempDir()
	b := openB(t, Options{Dir: dir})
	publish(t, b, "t", "x")
	// A process that died mid-publish left a temporary file, and one mid-subscribe a group
	// in the making.
	dead := "0123456789abcdef"
	tmp := filepath.Join(dir, "tmp")
	if err := os.WriteFile(filepath.Join(tmp, dead+".00aa"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tmp, dead+".00bb", "ready"), 0o700); err != nil {
		t.Fatal(err)
	}
	b2 := openB(t, Options{Dir: dir})
	ents, _ := os.ReadDir(tmp)
	if len(ents) != 0 {
		t.Errorf("tmp after Open: %v", ents)
	}
	if err := b2.Health(); err != nil {
		t.Errorf("Health = %v", err)
	}
	os.RemoveAll(filepath.Join(dir, "topics"))
	os.Remove(filepath.Join(dir, "tmp"))
	if err := b2.Health(); err == nil {
		t.Error("Health with tmp removed = nil")
	}
}

func TestDefaultDirFallback(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("HOME", "")
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("TMPDIR", tmp)
	private := filepath.Join(tmp, fmt.Sprintf("micro-%d", os.Getuid()))
	if got, want := DefaultDir(), filepath.Join(private, "broker"); got != want {
		t.Fatalf("DefaultDir() = %s, want %s", got, want)
	}
	if err := os.Symlink(t.TempDir(), private); err != nil {
		t.Fatal(err)
	}
	if b, err := Open(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		if b != nil {
			b.Close()
		}
		t.Fatalf("Open with a symbolic link for %s = %v", private, err)
	}
}
