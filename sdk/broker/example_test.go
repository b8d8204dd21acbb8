package broker_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/sdk/broker"
)

// log is a broker plugin's backend kept in memory: the messages of each topic, in order,
// and one queue of deliveries per group. A real plugin keeps them in its backend (NATS
// JetStream, Kafka, ...), durably.
type log struct {
	mu     sync.Mutex
	topics map[string][]*broker.Message
	groups map[string]chan *broker.Delivery // by topic and group
}

func (l *log) Init(ctx context.Context, c broker.Config) error { return nil }

func (l *log) Publish(ctx context.Context, m *broker.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	m.Time = time.Now()
	l.topics[m.Topic] = append(l.topics[m.Topic], m)
	for key, q := range l.groups {
		if len(key) > len(m.Topic) && key[:len(m.Topic)+1] == m.Topic+"/" {
			q <- &broker.Delivery{Message: *m, Attempt: 1, Token: m.ID}
		}
	}
	return nil
}

func (l *log) Subscribe(ctx context.Context, s broker.Subscription) (broker.Consumer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := s.Topic + "/" + s.Group
	if l.groups[key] == nil {
		l.groups[key] = make(chan *broker.Delivery, 1024)
	}
	return &consumer{q: l.groups[key], done: make(chan struct{})}, nil
}

func (l *log) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := l.topics[topic]
	return ms[:min(limit, len(ms))], nil
}

func (l *log) Delete(ctx context.Context, topic, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := l.topics[topic]
	for i, m := range ms {
		if m.ID == id {
			l.topics[topic] = append(ms[:i:i], ms[i+1:]...)
			break
		}
	}
	return nil
}

// consumer takes a group's deliveries; this backend forgets a message once it is handed
// out, where a real one keeps it until Ack and delivers it again after Nak.
type consumer struct {
	q    chan *broker.Delivery
	once sync.Once
	done chan struct{}
}

func (c *consumer) Next(ctx context.Context) (*broker.Delivery, error) {
	select {
	case d := <-c.q:
		return d, nil
	case <-c.done:
		return nil, broker.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *consumer) Ack(ctx context.Context, d *broker.Delivery) error { return nil }

func (c *consumer) Nak(ctx context.Context, d *broker.Delivery, delay time.Duration) error {
	d.Attempt++
	time.AfterFunc(delay, func() { c.q <- d })
	return nil
}

func (c *consumer) Extend(ctx context.Context, d *broker.Delivery) error { return nil }

func (c *consumer) Backlog(ctx context.Context) (broker.Backlog, error) {
	return broker.Backlog{Messages: int64(len(c.q))}, nil
}

func (c *consumer) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// A broker plugin implements broker.Broker and serves it from main with
// broker.Serve(&log{...}). Here the server half that Serve runs is called directly, as
// micro calls it over go-plugin's gRPC channel: a publish, then what the topic holds.
func Example() {
	srv := broker.NewServer(&log{topics: map[string][]*broker.Message{}, groups: map[string]chan *broker.Delivery{}})
	ctx := context.Background()
	msg := &brokerpb.Message{Id: "m1", Topic: "orders.created", Body: []byte(`{"order":42}`)}
	if _, err := srv.Publish(ctx, &brokerpb.PublishRequest{Message: msg}); err != nil {
		fmt.Println(err)
		return
	}
	resp, err := srv.Messages(ctx, &brokerpb.MessagesRequest{Topic: "orders.created", Limit: 10})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, m := range resp.GetMessages() {
		fmt.Println(m.GetId(), string(m.GetBody()))
	}
	// Output: m1 {"order":42}
}
