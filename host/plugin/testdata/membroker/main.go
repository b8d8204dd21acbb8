// Command membroker is a broker plugin for host/plugin's tests: an in-memory broker (lost
// when the process exits) served with sdk/broker. Init's MaxBytes and MaxMessage bound
// its store and its messages. Environment variables make it misbehave:
//
//	MEMBROKER_PROTOCOL=N      speak broker protocol N instead of micro's
//	MEMBROKER_UNAVAILABLE=1   fail Publish as if the backend were unreachable
//	MEMBROKER_INIT_FAIL=1     fail Init
//	MEMBROKER_EXIT_IF_FILE=F  exit with status 3 at once, before the handshake, while the
//	                          file F exists
//	MEMBROKER_RAW=MODE        serve a raw protocol server whose Subscribe answers
//	                          subscribed and then MODE: "overflow" (one delivery more than
//	                          max_inflight), "duplicate" (two deliveries with one token),
//	                          "badtopic" (a delivery of another topic); or, for "early", a
//	                          delivery instead of subscribed
//
// MEMBROKER_PIDFILE=F makes it write its process id to F first.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/sdk/broker"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func main() {
	if f := os.Getenv("MEMBROKER_PIDFILE"); f != "" {
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "membroker:", err)
			os.Exit(1)
		}
	}
	if f := os.Getenv("MEMBROKER_EXIT_IF_FILE"); f != "" {
		if _, err := os.Stat(f); err == nil {
			fmt.Fprintln(os.Stderr, "membroker: exiting at once, since", f, "exists")
			os.Exit(3)
		}
	}
	m := &mem{
		unavailable: os.Getenv("MEMBROKER_UNAVAILABLE") != "",
		initFail:    os.Getenv("MEMBROKER_INIT_FAIL") != "",
		topics:      map[string]*topic{},
		wake:        make(chan struct{}),
	}
	if s := os.Getenv("MEMBROKER_PROTOCOL"); s != "" {
		v, _ := strconv.ParseUint(s, 10, 32)
		serveRaw(uint(v), broker.NewServer(m))
		return
	}
	if mode := os.Getenv("MEMBROKER_RAW"); mode != "" {
		serveRaw(abi.BrokerProtocolVersion, &raw{mode: mode})
		return
	}
	broker.Serve(m)
}

// serveRaw serves srv with protocol version v, bypassing sdk/broker.Serve.
func serveRaw(v uint, srv brokerpb.BrokerServer) {
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  v,
			MagicCookieKey:   abi.MagicCookieKey,
			MagicCookieValue: abi.MagicCookieValue,
		},
		Plugins:    goplugin.PluginSet{abi.BrokerPlugin: &grpcPlugin{srv: srv}},
		GRPCServer: goplugin.DefaultGRPCServer,
	})
}

type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	srv brokerpb.BrokerServer
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	brokerpb.RegisterBrokerServer(s, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("not a client")
}

// raw is a protocol server that breaks the protocol on Subscribe.
type raw struct {
	brokerpb.UnimplementedBrokerServer
	mode string
}

func (r *raw) Init(context.Context, *brokerpb.InitRequest) (*brokerpb.InitResponse, error) {
	return &brokerpb.InitResponse{}, nil
}

func (r *raw) Subscribe(stream brokerpb.Broker_SubscribeServer) error {
	f, err := stream.Recv()
	if err != nil {
		return err
	}
	sub := f.GetSubscription()
	subscribed := &brokerpb.ConsumerFrame{Frame: &brokerpb.ConsumerFrame_Subscribed{Subscribed: &brokerpb.Subscribed{}}}
	delivery := func(topic, token string) *brokerpb.ConsumerFrame {
		return &brokerpb.ConsumerFrame{Frame: &brokerpb.ConsumerFrame_Delivery{Delivery: &brokerpb.Delivery{
			Message: &brokerpb.Message{Id: "m-" + token, Topic: topic, Time: timestamppb.Now()},
			Attempt: 1,
			Token:   token,
		}}}
	}
	var frames []*brokerpb.ConsumerFrame
	switch r.mode {
	case "overflow":
		frames = append(frames, subscribed)
		for i := range max(sub.GetMaxInflight(), 1) + 1 {
			frames = append(frames, delivery(sub.GetTopic(), strconv.Itoa(int(i))))
		}
	case "duplicate":
		frames = []*brokerpb.ConsumerFrame{subscribed, delivery(sub.GetTopic(), "t"), delivery(sub.GetTopic(), "t")}
	case "badtopic":
		frames = []*brokerpb.ConsumerFrame{subscribed, delivery(sub.GetTopic()+".other", "t")}
	case "early":
		frames = []*brokerpb.ConsumerFrame{delivery(sub.GetTopic(), "t")}
	}
	for _, f := range frames {
		if err := stream.Send(f); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// mem is an in-memory broker.
type mem struct {
	unavailable, initFail bool

	mu     sync.Mutex
	cfg    broker.Config
	topics map[string]*topic
	bytes  int64         // stored: the size of every copy of every message held
	seq    uint64        // numbers tokens
	wake   chan struct{} // closed, and replaced, at every change
}

// topic is what a topic holds.
type topic struct {
	pending []*broker.Message // published while no group had subscribed
	groups  map[string]*group
}

// group is one queue group's messages.
type group struct {
	queue  []*entry          // to deliver, oldest first
	flight map[string]*entry // delivered, by token
}

// entry is one message for one group.
type entry struct {
	m        *broker.Message
	attempts int
	after    time.Time // not delivered before
	deadline time.Time // while in flight: delivered again after
	owner    *consumer // while in flight
}

// notifyLocked wakes every waiting Next.
func (b *mem) notifyLocked() {
	close(b.wake)
	b.wake = make(chan struct{})
}

func size(m *broker.Message) int64 {
	n := len(m.Body)
	for k, v := range m.Header {
		n += len(k) + len(v)
	}
	return int64(n)
}

func (b *mem) Init(_ context.Context, c broker.Config) error {
	if b.initFail {
		return fmt.Errorf("backend at %q: %w", c.URL, broker.ErrUnavailable)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cfg = c
	return nil
}

func (b *mem) Publish(_ context.Context, m *broker.Message) error {
	if b.unavailable {
		return fmt.Errorf("publish to %q: %w", m.Topic, broker.ErrUnavailable)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	n := size(m)
	if b.cfg.MaxMessage > 0 && n > b.cfg.MaxMessage {
		return fmt.Errorf("message of %d bytes, more than %d: %w", n, b.cfg.MaxMessage, broker.ErrTooLarge)
	}
	t := b.topics[m.Topic]
	if t == nil {
		t = &topic{groups: map[string]*group{}}
		b.topics[m.Topic] = t
	}
	copies := int64(max(len(t.groups), 1))
	if b.cfg.MaxBytes > 0 && b.bytes+n*copies > b.cfg.MaxBytes {
		return fmt.Errorf("%d bytes stored, %d more would pass %d: %w", b.bytes, n*copies, b.cfg.MaxBytes, broker.ErrFull)
	}
	m.Time = time.Now()
	b.bytes += n * copies
	if len(t.groups) == 0 {
		t.pending = append(t.pending, m)
	}
	for _, g := range t.groups {
		g.queue = append(g.queue, &entry{m: m})
	}
	b.notifyLocked()
	return nil
}

func (b *mem) Subscribe(_ context.Context, s broker.Subscription) (broker.Consumer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[s.Topic]
	if t == nil {
		t = &topic{groups: map[string]*group{}}
		b.topics[s.Topic] = t
	}
	g := t.groups[s.Group]
	if g == nil {
		g = &group{flight: map[string]*entry{}}
		if len(t.groups) == 0 {
			for _, m := range t.pending {
				g.queue = append(g.queue, &entry{m: m})
			}
			t.pending = nil
		}
		t.groups[s.Group] = g
	}
	return &consumer{b: b, g: g, sub: s, done: make(chan struct{})}, nil
}

func (b *mem) Messages(_ context.Context, name string, limit int) ([]*broker.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil {
		return nil, nil
	}
	seen := map[string]bool{}
	var out []*broker.Message
	add := func(m *broker.Message) {
		if !seen[m.ID] {
			seen[m.ID] = true
			out = append(out, m)
		}
	}
	for _, m := range t.pending {
		add(m)
	}
	for _, g := range t.groups {
		for _, e := range g.queue {
			add(e.m)
		}
		for _, e := range g.flight {
			add(e.m)
		}
	}
	slices.SortStableFunc(out, func(a, b *broker.Message) int { return a.Time.Compare(b.Time) })
	return out[:min(limit, len(out))], nil
}

func (b *mem) Delete(_ context.Context, name, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil {
		return nil
	}
	t.pending = slices.DeleteFunc(t.pending, func(m *broker.Message) bool {
		if m.ID == id {
			b.bytes -= size(m)
		}
		return m.ID == id
	})
	for _, g := range t.groups {
		g.queue = slices.DeleteFunc(g.queue, func(e *entry) bool {
			if e.m.ID == id {
				b.bytes -= size(e.m)
			}
			return e.m.ID == id
		})
		for token, e := range g.flight {
			if e.m.ID == id {
				b.bytes -= size(e.m)
				e.owner.held--
				delete(g.flight, token)
			}
		}
	}
	b.notifyLocked()
	return nil
}

// consumer is one consumer of a group.
type consumer struct {
	b      *mem
	g      *group
	sub    broker.Subscription
	held   int // deliveries in flight to it; guarded by b.mu
	closed bool
	done   chan struct{}
}

// expireLocked puts the group's lapsed deliveries back in its queue, and returns the
// earliest time something changes: a deadline or a delayed entry.
func (c *consumer) expireLocked(now time.Time) time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for token, e := range c.g.flight {
		if !now.Before(e.deadline) {
			delete(c.g.flight, token)
			e.owner.held--
			e.owner = nil
			c.g.queue = append([]*entry{e}, c.g.queue...)
			continue
		}
		earlier(e.deadline)
	}
	for _, e := range c.g.queue {
		if e.after.After(now) {
			earlier(e.after)
		}
	}
	return next
}

func (c *consumer) Next(ctx context.Context) (*broker.Delivery, error) {
	for {
		c.b.mu.Lock()
		if c.closed {
			c.b.mu.Unlock()
			return nil, broker.ErrClosed
		}
		now := time.Now()
		next := c.expireLocked(now)
		if c.held < max(c.sub.MaxInflight, 1) {
			for i, e := range c.g.queue {
				if e.after.After(now) {
					continue
				}
				c.g.queue = slices.Delete(c.g.queue, i, i+1)
				e.attempts++
				e.deadline = now.Add(c.sub.AckTimeout)
				e.owner = c
				c.held++
				c.b.seq++
				token := strconv.FormatUint(c.b.seq, 10)
				c.g.flight[token] = e
				c.b.mu.Unlock()
				return &broker.Delivery{Message: *e.m, Attempt: e.attempts, Token: token}, nil
			}
		}
		wake := c.b.wake
		c.b.mu.Unlock()
		var timer <-chan time.Time
		stop := func() bool { return false }
		if !next.IsZero() {
			t := time.NewTimer(time.Until(next))
			timer, stop = t.C, t.Stop
		}
		select {
		case <-wake:
		case <-timer:
		case <-c.done:
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		}
		stop()
	}
}

// takeLocked removes the delivery d from flight when it is c's, and returns its entry.
func (c *consumer) takeLocked(d *broker.Delivery) (*entry, error) {
	e := c.g.flight[d.Token]
	if e == nil || e.owner != c {
		return nil, fmt.Errorf("delivery %q of %q: %w", d.Token, d.ID, broker.ErrUnknownDelivery)
	}
	delete(c.g.flight, d.Token)
	c.held--
	e.owner = nil
	return e, nil
}

func (c *consumer) Ack(_ context.Context, d *broker.Delivery) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	e, err := c.takeLocked(d)
	if err != nil {
		return err
	}
	c.b.bytes -= size(e.m)
	c.b.notifyLocked()
	return nil
}

func (c *consumer) Nak(_ context.Context, d *broker.Delivery, delay time.Duration) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	e, err := c.takeLocked(d)
	if err != nil {
		return err
	}
	e.after = time.Now().Add(delay)
	c.g.queue = append([]*entry{e}, c.g.queue...)
	c.b.notifyLocked()
	return nil
}

func (c *consumer) Extend(_ context.Context, d *broker.Delivery) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	e := c.g.flight[d.Token]
	if e == nil || e.owner != c {
		return fmt.Errorf("delivery %q of %q: %w", d.Token, d.ID, broker.ErrUnknownDelivery)
	}
	e.deadline = time.Now().Add(c.sub.AckTimeout)
	return nil
}

func (c *consumer) Backlog(context.Context) (broker.Backlog, error) {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	var bl broker.Backlog
	for _, e := range c.g.queue {
		bl.Messages++
		if bl.Oldest.IsZero() || e.m.Time.Before(bl.Oldest) {
			bl.Oldest = e.m.Time
		}
	}
	for _, e := range c.g.flight {
		bl.Messages++
		if bl.Oldest.IsZero() || e.m.Time.Before(bl.Oldest) {
			bl.Oldest = e.m.Time
		}
	}
	return bl, nil
}

func (c *consumer) Close() error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.done)
	for token, e := range c.g.flight {
		if e.owner == c {
			delete(c.g.flight, token)
			e.owner = nil
			c.g.queue = append([]*entry{e}, c.g.queue...)
		}
	}
	c.held = 0
	c.b.notifyLocked()
	return nil
}
