package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/runtime/broker"
)

var (
	brokerBinOnce sync.Once
	brokerBinPath string
	brokerBinErr  error
)

// brokerBin builds the test broker plugin (testdata/membroker) once, beside the plugins
// that TestMain builds, so that TestMain removes it too.
func brokerBin(t testing.TB) string {
	t.Helper()
	brokerBinOnce.Do(func() {
		brokerBinPath = filepath.Join(filepath.Dir(memBin), "membroker")
		if out, err := exec.Command("go", "build", "-o", brokerBinPath, "./testdata/membroker").CombinedOutput(); err != nil {
			brokerBinErr = fmt.Errorf("build testdata/membroker: %v\n%s", err, out)
		}
	})
	if brokerBinErr != nil {
		t.Fatal(brokerBinErr)
	}
	return brokerBinPath
}

// openBroker opens the test broker plugin with cfg (Name and Path default to the test
// plugin) and closes it when the test ends.
func openBroker(t testing.TB, cfg BrokerConfig) (*Broker, *logBuffer) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "mem"
	}
	if cfg.Path == "" {
		cfg.Path = brokerBin(t)
	}
	log, buf := newLogger()
	b, err := OpenBroker(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("OpenBroker: %v\nlog:\n%s", err, buf)
	}
	t.Cleanup(func() { b.Close() })
	return b, buf
}

// openBrokerErr opens the test broker plugin expecting an error, and returns it.
func openBrokerErr(t *testing.T, cfg BrokerConfig) error {
	t.Helper()
	cfg.Name = "mem"
	if cfg.Path == "" {
		cfg.Path = brokerBin(t)
	}
	b, err := OpenBroker(context.Background(), cfg, nil)
	if err == nil {
		b.Close()
		t.Fatal("OpenBroker succeeded; want an error")
	}
	return err
}

func sub(group string, inflight int) broker.Subscription {
	return broker.Subscription{Topic: "orders.created", Group: group, AckTimeout: time.Minute, MaxInflight: inflight}
}

func subscribeTo(t *testing.T, b *Broker, s broker.Subscription) broker.Consumer {
	t.Helper()
	c, err := b.Subscribe(context.Background(), s)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func publish(t *testing.T, b *Broker, id string) *broker.Message {
	t.Helper()
	m := &broker.Message{ID: id, Topic: "orders.created", Header: map[string]string{"Ct": "json"}, Body: []byte("body " + id)}
	if err := b.Publish(context.Background(), m); err != nil {
		t.Fatalf("Publish %s: %v", id, err)
	}
	return m
}

// nextOf waits for c's next delivery, within 30s.
func nextOf(t *testing.T, c broker.Consumer) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := c.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return d
}

func TestBrokerPublishSubscribe(t *testing.T) {
	b, _ := openBroker(t, BrokerConfig{})
	ctx := context.Background()
	billing := subscribeTo(t, b, sub("billing", 2))
	shipping := subscribeTo(t, b, sub("shipping", 1))
	before := time.Now()
	m1 := publish(t, b, "m1")
	if m1.Time.Before(before.Add(-time.Second)) || m1.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("Publish set the time %v", m1.Time)
	}
	noID := &broker.Message{Topic: "orders.created"}
	if err := b.Publish(ctx, noID); err != nil || noID.ID == "" {
		t.Fatalf("Publish without an id: %v, id %q", err, noID.ID)
	}

	// Every group gets every message.
	for _, c := range []broker.Consumer{billing, shipping} {
		d := nextOf(t, c)
		if d.ID != "m1" || d.Topic != "orders.created" || d.Header["Ct"] != "json" || string(d.Body) != "body m1" || d.Attempt != 1 || !d.Time.Equal(m1.Time) {
			t.Errorf("delivery %+v", d)
		}
		if err := c.Ack(ctx, d); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		if err := c.Ack(ctx, d); !errors.Is(err, broker.ErrUnknownDelivery) {
			t.Errorf("second Ack: %v, want ErrUnknownDelivery", err)
		}
	}
	d := nextOf(t, billing)
	if d.ID != noID.ID {
		t.Fatalf("delivery %q, want %q", d.ID, noID.ID)
	}
	if err := billing.Extend(ctx, d); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	bl, err := billing.Backlog(ctx)
	if err != nil || bl.Messages != 1 || !bl.Oldest.Equal(noID.Time) {
		t.Errorf("Backlog = %+v, %v; want 1 message of %v", bl, err, noID.Time)
	}
	// A nak delivers the message again, its attempt raised.
	if err := billing.Nak(ctx, d, 0); err != nil {
		t.Fatalf("Nak: %v", err)
	}
	if err := billing.Extend(ctx, d); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Extend after Nak: %v, want ErrUnknownDelivery", err)
	}
	again := nextOf(t, billing)
	if again.ID != noID.ID || again.Attempt != 2 || again.Token == d.Token {
		t.Errorf("redelivery %+v after %+v", again, d)
	}
	if err := billing.Ack(ctx, again); err != nil {
		t.Fatal(err)
	}

	// Close hands back what a consumer holds: the next consumer of the group gets it.
	publish(t, b, "m2")
	held := nextOf(t, billing)
	if err := billing.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := billing.Next(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Next after Close: %v, want ErrClosed", err)
	}
	billing2 := subscribeTo(t, b, sub("billing", 1))
	if d := nextOf(t, billing2); d.ID != held.ID || d.Attempt != 2 {
		t.Errorf("after Close, delivery %+v, want %s again", d, held.ID)
	}
	if err := billing2.Ack(ctx, held); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Ack of another consumer's delivery: %v, want ErrUnknownDelivery", err)
	}
	for _, token := range []string{"", "x", "0.1", "x.1", "99.", "99"} {
		if err := billing2.Ack(ctx, &broker.Delivery{Token: token}); !errors.Is(err, broker.ErrUnknownDelivery) {
			t.Errorf("Ack of token %q: %v, want ErrUnknownDelivery", token, err)
		}
	}

	// Messages and Delete: what the topic holds for some group (shipping has yet to
	// consume noID and m2), oldest first.
	ms, err := b.Messages(ctx, "orders.created", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != noID.ID || ms[1].ID != "m2" || string(ms[1].Body) != "body m2" {
		t.Fatalf("Messages = %v, want %s and m2", ms, noID.ID)
	}
	if ms, err := b.Messages(ctx, "orders.created", 1); err != nil || len(ms) != 1 {
		t.Errorf("Messages with limit 1 = %v, %v", ms, err)
	}
	for _, id := range []string{noID.ID, "m2", "m2"} { // the second m2 is not there
		if err := b.Delete(ctx, "orders.created", id); err != nil {
			t.Fatalf("Delete %s: %v", id, err)
		}
	}
	if ms, err := b.Messages(ctx, "orders.created", 10); err != nil || len(ms) != 0 {
		t.Errorf("Messages after Delete = %v, %v", ms, err)
	}
}

func TestBrokerMaxInflight(t *testing.T) {
	b, _ := openBroker(t, BrokerConfig{})
	ctx := context.Background()
	c := subscribeTo(t, b, sub("billing", 2))
	for i := range 3 {
		publish(t, b, fmt.Sprint(i))
	}
	d0, d1 := nextOf(t, c), nextOf(t, c)
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if d, err := c.Next(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next while holding max inflight: %+v, %v; want it to wait", d, err)
	}
	if err := c.Ack(ctx, d0); err != nil {
		t.Fatal(err)
	}
	if d := nextOf(t, c); d.ID != "2" {
		t.Errorf("delivery %q, want 2", d.ID)
	}
	if err := c.Ack(ctx, d1); err != nil {
		t.Fatal(err)
	}
}

func TestBrokerErrorsMapped(t *testing.T) {
	ctx := context.Background()
	b, _ := openBroker(t, BrokerConfig{MaxBytes: 100, MaxMessage: 60})
	m := &broker.Message{ID: "a", Topic: "t", Body: make([]byte, 61)}
	if err := b.Publish(ctx, m); !errors.Is(err, broker.ErrTooLarge) {
		t.Errorf("Publish over max_message: %v, want ErrTooLarge", err)
	}
	for i := range 2 {
		m := &broker.Message{ID: fmt.Sprint(i), Topic: "t", Body: make([]byte, 50)}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	err := b.Publish(ctx, &broker.Message{ID: "full", Topic: "t", Body: make([]byte, 1)})
	if !errors.Is(err, broker.ErrFull) || !strings.Contains(err.Error(), "broker store is full") {
		t.Errorf("Publish to a full store: %v, want ErrFull", err)
	}
	t.Logf("full: %v", err)
	// Over the protocol's limit, micro refuses without asking the plugin.
	err = b.Publish(ctx, &broker.Message{ID: "big", Topic: "t", Body: make([]byte, brokerpb.MaxMessageSize+1)})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Errorf("Publish over MaxMessageSize: %v, want ErrTooLarge", err)
	}
	for _, bad := range []*broker.Message{nil, {ID: "x", Topic: "a b"}, {ID: "x", Topic: ""}, {ID: strings.Repeat("x", brokerpb.MaxIDLen+1), Topic: "t"}} {
		if err := b.Publish(ctx, bad); err == nil || errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("Publish(%+v) = %v, want a refusal", bad, err)
		}
	}
	for _, s := range []broker.Subscription{
		{Topic: "t.*", Group: "g", AckTimeout: time.Second},
		{Topic: "t", Group: "g g", AckTimeout: time.Second},
		{Topic: "t", Group: "g"},
		{Topic: "t", Group: "g", AckTimeout: time.Second, MaxInflight: brokerpb.MaxInflight + 1},
		{Topic: "t", Group: "g", AckTimeout: time.Second, MaxInflight: -1},
	} {
		if c, err := b.Subscribe(ctx, s); err == nil {
			c.Close()
			t.Errorf("Subscribe(%+v) succeeded", s)
		}
	}
	if _, err := b.Messages(ctx, "t", 0); err == nil {
		t.Error("Messages with limit 0 succeeded")
	}
	if err := b.Delete(ctx, "t", ""); err == nil {
		t.Error("Delete without an id succeeded")
	}

	down, _ := openBroker(t, BrokerConfig{env: []string{"MEMBROKER_UNAVAILABLE=1"}})
	if err := down.Publish(ctx, &broker.Message{ID: "a", Topic: "t"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Publish to an unreachable backend: %v, want ErrUnavailable", err)
	}
	err = openBrokerErr(t, BrokerConfig{URL: "nats://10.0.0.1:1", env: []string{"MEMBROKER_INIT_FAIL=1"}})
	if !strings.Contains(err.Error(), `broker plugin "mem": init: `) || !strings.Contains(err.Error(), "10.0.0.1:1") {
		t.Errorf("Init failing: %v", err)
	}
	if err := openBrokerErr(t, BrokerConfig{MaxBytes: -1}); !strings.Contains(err.Error(), "max_bytes -1 is negative") {
		t.Errorf("negative max_bytes: %v", err)
	}
}

func TestBrokerPluginKilled(t *testing.T) {
	downFile := filepath.Join(t.TempDir(), "down")
	b, buf := openBroker(t, BrokerConfig{
		env:        []string{"MEMBROKER_EXIT_IF_FILE=" + downFile},
		restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond,
	})
	ctx := context.Background()
	c := subscribeTo(t, b, sub("billing", 2))
	publish(t, b, "before")
	stale := nextOf(t, c)
	epoch := c.(*consumer).session().epoch

	// A Next waits across the crash.
	got := make(chan *broker.Delivery, 1)
	errc := make(chan error, 1)
	go func() {
		nctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		d, err := c.Next(nctx)
		if err != nil {
			errc <- err
			return
		}
		got <- d
	}()

	if err := os.WriteFile(downFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pid := b.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin to be reported down", func() bool { return b.Health() != nil })
	if err := b.Publish(ctx, &broker.Message{ID: "down", Topic: "orders.created"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Publish while down: %v, want ErrUnavailable", err)
	}
	if _, err := b.Subscribe(ctx, sub("other", 1)); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Subscribe while down: %v, want ErrUnavailable", err)
	}
	if _, err := c.Backlog(ctx); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Backlog while down: %v, want ErrUnavailable", err)
	}
	// The delivery held before the crash is stale.
	if err := c.Ack(ctx, stale); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Ack of a delivery from before the crash: %v, want ErrUnknownDelivery", err)
	}
	waitFor(t, "a failed restart", func() bool {
		err := b.Health()
		return err != nil && strings.Contains(err.Error(), "exiting at once, since")
	})

	if err := os.Remove(downFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin to come back", func() bool { return b.Health() == nil })
	waitFor(t, "the consumer to subscribe again", func() bool {
		s := c.(*consumer).session()
		return s != nil && s.epoch != epoch
	})
	if !processGone(pid) {
		t.Errorf("the killed plugin %d is still there", pid)
	}
	after := publish(t, b, "after")
	select {
	case d := <-got:
		if d.ID != after.ID {
			t.Errorf("the waiting Next got %q, want %q", d.ID, after.ID)
		}
		if err := c.Ack(ctx, d); err != nil {
			t.Errorf("Ack after the restart: %v", err)
		}
	case err := <-errc:
		t.Fatalf("the waiting Next failed: %v", err)
	}
	if err := c.Ack(ctx, stale); !errors.Is(err, broker.ErrUnknownDelivery) {
		t.Errorf("Ack of a delivery from before the crash, after the restart: %v, want ErrUnknownDelivery", err)
	}
	for _, msg := range []string{"broker plugin failed; restarting it", "broker plugin consumer failed; subscribing again", "broker plugin consumer subscribed again"} {
		if !strings.Contains(buf.String(), msg) {
			t.Errorf("no %q in the log", msg)
		}
	}
}

func TestBrokerClose(t *testing.T) {
	b, _ := openBroker(t, BrokerConfig{})
	ctx := context.Background()
	c := subscribeTo(t, b, sub("billing", 1))
	publish(t, b, "m")
	d := nextOf(t, c)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Next(ctx)
		errc <- err
	}()
	pid := b.pid()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, broker.ErrClosed) {
		t.Errorf("a waiting Next at Close: %v, want ErrClosed", err)
	}
	if err := c.Ack(ctx, d); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Ack after Close: %v, want ErrClosed", err)
	}
	if err := b.Publish(ctx, &broker.Message{ID: "x", Topic: "t"}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(ctx, sub("g", 1)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
	waitFor(t, "the plugin to exit", func() bool { return processGone(pid) })
}

func TestBrokerMalformedPlugin(t *testing.T) {
	ctx := context.Background()
	b, _ := openBroker(t, BrokerConfig{env: []string{"MEMBROKER_RAW=early"}})
	if _, err := b.Subscribe(ctx, sub("g", 1)); !errors.Is(err, errMalformed) || !strings.Contains(err.Error(), "a delivery, want subscribed") {
		t.Errorf("a delivery before subscribed: %v", err)
	}
	for mode, want := range map[string]string{
		"overflow":  "one more than max inflight 2",
		"duplicate": "reuses the token",
		"badtopic":  "orders.created.other",
	} {
		b, buf := openBroker(t, BrokerConfig{env: []string{"MEMBROKER_RAW=" + mode}})
		c := subscribeTo(t, b, sub("g", 2))
		waitFor(t, mode+" to be refused", func() bool { return strings.Contains(buf.String(), want) })
		if !strings.Contains(buf.String(), errMalformed.Error()) {
			t.Errorf("%s: no %q in the log", mode, errMalformed)
		}
		if mode == "badtopic" {
			nctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			if d, err := c.Next(nctx); err == nil {
				t.Errorf("badtopic: Next returned %+v", d)
			}
			cancel()
		}
	}
}

func TestBrokerProtocolMismatch(t *testing.T) {
	err := openBrokerErr(t, BrokerConfig{env: []string{"MEMBROKER_PROTOCOL=2"}})
	if want := `broker plugin "mem" speaks protocol 2, micro speaks 1`; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "sdk/broker") {
		t.Errorf("err = %v\nwant it to say %s", err, want)
	}
}

func TestBrokerSHA256Pin(t *testing.T) {
	bin, err := os.ReadFile(brokerBin(t))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bin)
	actual := hex.EncodeToString(sum[:])
	wrong := strings.Repeat("cd", 32)
	err = openBrokerErr(t, BrokerConfig{SHA256: wrong})
	for _, want := range []string{"sha256 " + actual, "sha256 " + wrong + " is pinned", "refusing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to say %s", err, want)
		}
	}
	b, _ := openBroker(t, BrokerConfig{SHA256: actual})
	publish(t, b, "pinned")
}

func TestBrokerConfigRedacted(t *testing.T) {
	cfg := BrokerConfig{Name: "nats", URL: "nats://user:s3cret@127.0.0.1:4222"}
	log, buf := newLogger()
	log.Info("config", "config", cfg)
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), cfg.String(), buf.String()} {
		if strings.Contains(s, "s3cret") || !strings.Contains(s, "nats") {
			t.Errorf("printed %s", s)
		}
	}
}

func FuzzSplitToken(f *testing.F) {
	for _, s := range []string{"1.a", "18446744073709551615.tok.en", "0.a", "1.", ".a", "", "x.y", "01.a", "-1.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		epoch, token, ok := splitToken(s)
		if !ok {
			return
		}
		if epoch == 0 || brokerpb.CheckToken(token) != nil {
			t.Fatalf("splitToken(%q) = %d, %q", s, epoch, token)
		}
		if e, tok, ok := splitToken(joinToken(epoch, token)); !ok || e != epoch || tok != token {
			t.Fatalf("splitToken(joinToken(%d, %q)) = %d, %q, %v", epoch, token, e, tok, ok)
		}
	})
}

// FuzzValidName checks that the protocol's name rule, which plugins apply, agrees with
// runtime/broker's, which micro applies: a name micro accepts is never refused by a
// plugin, and the other way round.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"orders.created", "a", "a..b", ".a", "a.", "a b", "a.*", "a.>", "Ü", strings.Repeat("a", 201), "a-b_c.D9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if a, b := brokerpb.ValidName(s) == nil, broker.ValidTopic(s) == nil; a != b {
			t.Fatalf("%q: brokerpb.ValidName ok %v, broker.ValidTopic ok %v", s, a, b)
		}
	})
}
