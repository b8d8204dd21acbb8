package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// memBroker is an in-memory Broker whose consumers deliver what the test puts in their
// channel, and record what micro does with it.
type memBroker struct {
	mu         sync.Mutex
	cfg        Config
	published  []*Message
	publishErr error // returned by Publish when set
	held       []*Message
	deleted    []string
	subscribed chan *memConsumer
}

func newMemBroker() *memBroker {
	return &memBroker{subscribed: make(chan *memConsumer, 10)}
}

func (b *memBroker) Init(_ context.Context, c Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.URL == "mem://down" {
		return fmt.Errorf("backend %s: %w", c.URL, ErrUnavailable)
	}
	b.cfg = c
	return nil
}

func (b *memBroker) Publish(_ context.Context, m *Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.publishErr != nil {
		return b.publishErr
	}
	m.Time = time.Unix(1700000000, 0)
	b.published = append(b.published, m)
	return nil
}

func (b *memBroker) Subscribe(_ context.Context, s Subscription) (Consumer, error) {
	if s.Group == "refused" {
		return nil, fmt.Errorf("group %s: %w", s.Group, ErrUnavailable)
	}
	c := &memConsumer{sub: s, deliveries: make(chan *Delivery, 10), nextErr: make(chan error, 1),
		ops: make(chan string, 100), closed: make(chan struct{})}
	b.subscribed <- c
	return c, nil
}

func (b *memBroker) Messages(_ context.Context, topic string, limit int) ([]*Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*Message
	for _, m := range b.held {
		if m.Topic == topic && len(out) < limit {
			out = append(out, m)
		}
	}
	return out, nil
}

func (b *memBroker) Delete(_ context.Context, topic, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deleted = append(b.deleted, topic+"/"+id)
	return nil
}

// memConsumer delivers from deliveries, and reports each operation on ops.
type memConsumer struct {
	sub        Subscription
	deliveries chan *Delivery
	nextErr    chan error
	ops        chan string // "ack TOKEN", "nak TOKEN DELAY", "extend TOKEN"
	closeOnce  sync.Once
	closed     chan struct{}
}

func (c *memConsumer) Next(ctx context.Context) (*Delivery, error) {
	select {
	case d := <-c.deliveries:
		return d, nil
	case err := <-c.nextErr:
		return nil, err
	case <-c.closed:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// opErr returns the error for an operation on d: a token "full" fails with ErrFull.
func opErr(d *Delivery) error {
	if d.Token == "full" {
		return fmt.Errorf("store: %w", ErrFull)
	}
	return nil
}

func (c *memConsumer) Ack(_ context.Context, d *Delivery) error {
	c.ops <- "ack " + d.Token
	return opErr(d)
}

func (c *memConsumer) Nak(_ context.Context, d *Delivery, delay time.Duration) error {
	c.ops <- fmt.Sprintf("nak %s %v", d.Token, delay)
	return opErr(d)
}

func (c *memConsumer) Extend(_ context.Context, d *Delivery) error {
	c.ops <- "extend " + d.Token
	return opErr(d)
}

func (c *memConsumer) Backlog(context.Context) (Backlog, error) {
	return Backlog{Messages: 3, Oldest: time.Unix(1700000000, 0)}, nil
}

func (c *memConsumer) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

// delivery returns a delivery of topic with token.
func delivery(topic, token string) *Delivery {
	return &Delivery{
		Message: Message{ID: "id-" + token, Topic: topic, Header: map[string]string{"K": "v"}, Body: []byte("body " + token), Time: time.Unix(1700000000, 0)},
		Attempt: 1,
		Token:   token,
	}
}

// client serves b over gRPC on loopback and returns a client of it.
func client(t *testing.T, b Broker) brokerpb.BrokerClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.MaxRecvMsgSize(brokerpb.MaxFrameSize), grpc.MaxSendMsgSize(brokerpb.MaxFrameSize))
	brokerpb.RegisterBrokerServer(s, NewServer(b))
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(brokerpb.MaxFrameSize), grpc.MaxCallSendMsgSize(brokerpb.MaxFrameSize)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return brokerpb.NewBrokerClient(cc)
}

func subFrame(topic, group string, inflight uint32) *brokerpb.SubscribeFrame {
	return &brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Subscription{Subscription: &brokerpb.Subscription{
		Topic: topic, Group: group, AckTimeout: durationpb.New(time.Second), MaxInflight: inflight,
	}}}
}

func ackFrame(id uint64, token string) *brokerpb.SubscribeFrame {
	return &brokerpb.SubscribeFrame{OpId: id, Frame: &brokerpb.SubscribeFrame_Ack{Ack: &brokerpb.DeliveryRef{Token: token}}}
}

// subscribe opens a Subscribe stream for topic and group, waits for subscribed, and
// returns the stream and the broker's consumer.
func subscribe(t *testing.T, ctx context.Context, cl brokerpb.BrokerClient, b *memBroker, inflight uint32) (brokerpb.Broker_SubscribeClient, *memConsumer) {
	t.Helper()
	stream, err := cl.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(subFrame("orders.created", "billing", inflight)); err != nil {
		t.Fatal(err)
	}
	f, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if f.GetSubscribed() == nil {
		t.Fatalf("first frame %v, want subscribed", f)
	}
	c := <-b.subscribed
	if c.sub != (Subscription{Topic: "orders.created", Group: "billing", AckTimeout: time.Second, MaxInflight: max(int(inflight), 1)}) {
		t.Errorf("subscription %+v", c.sub)
	}
	return stream, c
}

func TestServerPublish(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx := context.Background()
	if _, err := cl.Init(ctx, &brokerpb.InitRequest{
		Url: "mem://x", MaxAge: durationpb.New(time.Hour), MaxBytes: 10, MaxMessage: 5,
		CredentialsFile: "/c.creds", NkeySeedFile: "/seed", TokenFile: "/token", User: "u", PasswordFile: "/pw",
		TlsCaFile: "/ca.pem", TlsCertFile: "/cert.pem", TlsKeyFile: "/key.pem", TlsRequired: true,
	}); err != nil {
		t.Fatal(err)
	}
	if b.cfg != (Config{
		URL: "mem://x", MaxAge: time.Hour, MaxBytes: 10, MaxMessage: 5,
		CredentialsFile: "/c.creds", NkeySeedFile: "/seed", TokenFile: "/token", User: "u", PasswordFile: "/pw",
		TLSCAFile: "/ca.pem", TLSCertFile: "/cert.pem", TLSKeyFile: "/key.pem", TLSRequired: true,
	}) {
		t.Errorf("config %+v", b.cfg)
	}
	if _, err := cl.Init(ctx, &brokerpb.InitRequest{Url: "mem://down"}); status.Code(err) != codes.Unavailable {
		t.Errorf("Init of an unreachable backend: %v, want UNAVAILABLE", err)
	}
	resp, err := cl.Publish(ctx, &brokerpb.PublishRequest{Message: &brokerpb.Message{Id: "1", Topic: "orders.created", Body: []byte("hi")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetTime().AsTime(); !got.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("time %v", got)
	}
	if m := b.published[0]; m.ID != "1" || m.Topic != "orders.created" || string(m.Body) != "hi" || m.Header == nil {
		t.Errorf("published %+v", m)
	}

	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("x: %w", ErrFull), codes.ResourceExhausted},
		{fmt.Errorf("x: %w", ErrTooLarge), codes.OutOfRange},
		{fmt.Errorf("x: %w", ErrUnavailable), codes.Unavailable},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{errors.New("disk on fire"), codes.Unknown},
	} {
		b.mu.Lock()
		b.publishErr = tc.err
		b.mu.Unlock()
		_, err := cl.Publish(ctx, &brokerpb.PublishRequest{Message: &brokerpb.Message{Id: "2", Topic: "t"}})
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.err.Error()) {
			t.Errorf("Publish failing with %v: %v, want %v", tc.err, err, tc.code)
		}
	}
}

func TestServerRefusesBadInput(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx := context.Background()
	big := make([]byte, brokerpb.MaxMessageSize+1)
	headers := map[string]string{}
	for i := range brokerpb.MaxHeaders + 1 {
		headers[fmt.Sprint(i)] = ""
	}
	for name, tc := range map[string]struct {
		m    *brokerpb.Message
		code codes.Code
	}{
		"no message":    {nil, codes.InvalidArgument},
		"no id":         {&brokerpb.Message{Topic: "t"}, codes.InvalidArgument},
		"long id":       {&brokerpb.Message{Id: strings.Repeat("x", brokerpb.MaxIDLen+1), Topic: "t"}, codes.InvalidArgument},
		"bad topic":     {&brokerpb.Message{Id: "1", Topic: "a..b"}, codes.InvalidArgument},
		"wildcard":      {&brokerpb.Message{Id: "1", Topic: "a.*"}, codes.InvalidArgument},
		"too large":     {&brokerpb.Message{Id: "1", Topic: "t", Body: big}, codes.OutOfRange},
		"many headers":  {&brokerpb.Message{Id: "1", Topic: "t", Header: headers}, codes.OutOfRange},
		"long topic":    {&brokerpb.Message{Id: "1", Topic: strings.Repeat("t", brokerpb.MaxNameLen+1)}, codes.InvalidArgument},
		"empty segment": {&brokerpb.Message{Id: "1", Topic: ".t"}, codes.InvalidArgument},
	} {
		_, err := cl.Publish(ctx, &brokerpb.PublishRequest{Message: tc.m})
		if status.Code(err) != tc.code {
			t.Errorf("%s: Publish = %v, want %v", name, err, tc.code)
		}
	}
	if len(b.published) != 0 {
		t.Errorf("the broker got %d bad messages", len(b.published))
	}
	if _, err := cl.Init(ctx, &brokerpb.InitRequest{MaxBytes: -1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Init with negative max_bytes: %v", err)
	}
	if _, err := cl.Init(ctx, &brokerpb.InitRequest{MaxAge: durationpb.New(-time.Second)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Init with negative max_age: %v", err)
	}
	for _, req := range []*brokerpb.MessagesRequest{{Topic: "t"}, {Topic: "t", Limit: brokerpb.MaxLimit + 1}, {Topic: "", Limit: 1}} {
		if _, err := cl.Messages(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Messages(%v) = %v, want INVALID_ARGUMENT", req, err)
		}
	}
	for _, req := range []*brokerpb.DeleteRequest{{Topic: "t"}, {Topic: "t t", Id: "1"}} {
		if _, err := cl.Delete(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Delete(%v) = %v, want INVALID_ARGUMENT", req, err)
		}
	}
}

func TestServerMessagesAndDelete(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx := context.Background()
	// Three messages of half the size limit each: an answer holds the first, then stops
	// before the one that would pass the limit.
	half := make([]byte, brokerpb.MaxMessageSize/2)
	for i := range 3 {
		b.held = append(b.held, &Message{ID: fmt.Sprint(i), Topic: "t.dead", Body: half, Time: time.Unix(int64(i), 0)})
	}
	b.held = append(b.held, &Message{ID: "other", Topic: "u", Time: time.Unix(9, 0)})
	resp, err := cl.Messages(ctx, &brokerpb.MessagesRequest{Topic: "t.dead", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetMessages()); n != 1 {
		t.Fatalf("%d messages of half the limit each in an answer, want 1", n)
	}
	b.held = b.held[3:]
	for i := range 3 {
		b.held = append(b.held, &Message{ID: fmt.Sprint(i), Topic: "t.dead", Body: []byte("x"), Time: time.Unix(int64(i), 0)})
	}
	resp, err = cl.Messages(ctx, &brokerpb.MessagesRequest{Topic: "t.dead", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if ms := resp.GetMessages(); len(ms) != 2 || ms[0].GetId() != "0" || ms[1].GetTime().AsTime().Unix() != 1 {
		t.Errorf("messages %v", ms)
	}
	if _, err := cl.Delete(ctx, &brokerpb.DeleteRequest{Topic: "t.dead", Id: "1"}); err != nil {
		t.Fatal(err)
	}
	if len(b.deleted) != 1 || b.deleted[0] != "t.dead/1" {
		t.Errorf("deleted %v", b.deleted)
	}
}

// frames reads n frames from stream, and returns the deliveries' tokens and the results
// by op_id.
func frames(t *testing.T, stream brokerpb.Broker_SubscribeClient, n int) ([]string, map[uint64]*brokerpb.Result) {
	t.Helper()
	var tokens []string
	results := map[uint64]*brokerpb.Result{}
	for range n {
		f, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		switch fr := f.GetFrame().(type) {
		case *brokerpb.ConsumerFrame_Delivery:
			tokens = append(tokens, fr.Delivery.GetToken())
		case *brokerpb.ConsumerFrame_Result:
			results[fr.Result.GetOpId()] = fr.Result
		default:
			t.Fatalf("frame %v", f)
		}
	}
	return tokens, results
}

func TestServerSubscribe(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, c := subscribe(t, ctx, cl, b, 2)
	for _, tok := range []string{"a", "b", "c"} {
		c.deliveries <- delivery("orders.created", tok)
	}
	tokens, _ := frames(t, stream, 2)
	if strings.Join(tokens, ",") != "a,b" {
		t.Fatalf("tokens %v", tokens)
	}
	// A round trip: had the server no bound, it would have taken "c" by now.
	if err := stream.Send(&brokerpb.SubscribeFrame{OpId: 1, Frame: &brokerpb.SubscribeFrame_Backlog{Backlog: &brokerpb.BacklogQuery{}}}); err != nil {
		t.Fatal(err)
	}
	_, results := frames(t, stream, 1)
	if bl := results[1].GetBacklog(); results[1].GetCode() != 0 || bl.GetMessages() != 3 || bl.GetOldest().AsTime().Unix() != 1700000000 {
		t.Errorf("backlog result %v", results[1])
	}
	if len(c.deliveries) != 1 {
		t.Fatalf("the server took a delivery past max_inflight 2")
	}
	// An extend keeps the place; an ack frees it, and "c" comes.
	if err := stream.Send(&brokerpb.SubscribeFrame{OpId: 2, Frame: &brokerpb.SubscribeFrame_Extend{Extend: &brokerpb.DeliveryRef{Token: "a"}}}); err != nil {
		t.Fatal(err)
	}
	if _, results = frames(t, stream, 1); results[2].GetCode() != 0 {
		t.Fatalf("extend: %v", results[2])
	}
	if err := stream.Send(ackFrame(5, "a")); err != nil {
		t.Fatal(err)
	}
	tokens, results = frames(t, stream, 2)
	if len(tokens) != 1 || tokens[0] != "c" || results[5].GetCode() != 0 {
		t.Fatalf("tokens %v results %v", tokens, results)
	}
	// A nak with a delay; an ack of a settled token is NOT_FOUND without reaching the
	// consumer; the consumer's own error is mapped.
	c.deliveries <- delivery("orders.created", "full")
	for _, f := range []*brokerpb.SubscribeFrame{
		{OpId: 6, Frame: &brokerpb.SubscribeFrame_Nak{Nak: &brokerpb.Nak{Token: "b", Delay: durationpb.New(3 * time.Second)}}},
		ackFrame(7, "a"),
	} {
		if err := stream.Send(f); err != nil {
			t.Fatal(err)
		}
	}
	tokens, results = frames(t, stream, 3)
	if results[6].GetCode() != 0 || codes.Code(results[7].GetCode()) != codes.NotFound || len(tokens) != 1 {
		t.Fatalf("tokens %v results %v", tokens, results)
	}
	if err := stream.Send(ackFrame(8, "full")); err != nil {
		t.Fatal(err)
	}
	_, results = frames(t, stream, 1)
	if codes.Code(results[8].GetCode()) != codes.ResourceExhausted || !strings.Contains(results[8].GetMessage(), "store is full") {
		t.Errorf("ack failing with ErrFull: %v", results[8])
	}
	var ops []string
	for len(c.ops) > 0 {
		ops = append(ops, <-c.ops)
	}
	if got, want := strings.Join(ops, "|"), "extend a|ack a|nak b 3s|ack full"; got != want {
		t.Errorf("the consumer saw %s, want %s", got, want)
	}
	// micro closing its side ends the stream cleanly, and the consumer closes.
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("Recv after CloseSend = %v, want EOF", err)
	}
	<-c.closed
}

func TestServerClosesConsumerWhenMicroGoes(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	_, c := subscribe(t, ctx, cl, b, 1)
	cancel()
	select {
	case <-c.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the consumer was not closed when micro cancelled its stream")
	}
}

func TestServerConsumerFails(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, tc := range map[string]struct {
		fail func(*memConsumer)
		code codes.Code
	}{
		"closed":      {func(c *memConsumer) { c.nextErr <- fmt.Errorf("gone: %w", ErrClosed) }, codes.Aborted},
		"unavailable": {func(c *memConsumer) { c.nextErr <- ErrUnavailable }, codes.Unavailable},
		"nil":         {func(c *memConsumer) { c.deliveries <- nil }, codes.Internal},
		"other topic": {func(c *memConsumer) { c.deliveries <- delivery("orders.deleted", "x") }, codes.Internal},
		"no token":    {func(c *memConsumer) { c.deliveries <- delivery("orders.created", "") }, codes.Internal},
		"duplicate token": {func(c *memConsumer) {
			c.deliveries <- delivery("orders.created", "x")
			c.deliveries <- delivery("orders.created", "x")
		}, codes.Internal},
		"attempt 0": {func(c *memConsumer) {
			d := delivery("orders.created", "x")
			d.Attempt = 0
			c.deliveries <- d
		}, codes.Internal},
	} {
		stream, c := subscribe(t, ctx, cl, b, 4)
		tc.fail(c)
		var err error
		for err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != tc.code {
			t.Errorf("%s: stream ended with %v, want %v", name, err, tc.code)
		}
		<-c.closed
	}
	stream, err := cl.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Subscription{Subscription: &brokerpb.Subscription{
		Topic: "t", Group: "refused", AckTimeout: durationpb.New(time.Second)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("a refused subscription: %v, want UNAVAILABLE", err)
	}
}

func TestServerMalformedFrames(t *testing.T) {
	b := newMemBroker()
	cl := client(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub := func(mut func(*brokerpb.Subscription)) *brokerpb.SubscribeFrame {
		f := subFrame("orders.created", "billing", 1)
		mut(f.GetSubscription())
		return f
	}
	// Bad first frames: the stream ends at once, and no consumer is made.
	for name, f := range map[string]*brokerpb.SubscribeFrame{
		"empty":            {},
		"ack first":        ackFrame(1, "t"),
		"subscription op":  {OpId: 1, Frame: subFrame("t", "g", 1).Frame},
		"nil subscription": {Frame: &brokerpb.SubscribeFrame_Subscription{}},
		"bad topic":        sub(func(s *brokerpb.Subscription) { s.Topic = "orders.>" }),
		"bad group":        sub(func(s *brokerpb.Subscription) { s.Group = "" }),
		"no ack timeout":   sub(func(s *brokerpb.Subscription) { s.AckTimeout = nil }),
		"zero ack timeout": sub(func(s *brokerpb.Subscription) { s.AckTimeout = durationpb.New(0) }),
		"bad ack timeout":  sub(func(s *brokerpb.Subscription) { s.AckTimeout.Nanos = -5; s.AckTimeout.Seconds = 1 }),
		"huge inflight":    sub(func(s *brokerpb.Subscription) { s.MaxInflight = brokerpb.MaxInflight + 1 }),
	} {
		stream, err := cl.Subscribe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(f); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", name, err)
		}
	}
	if len(b.subscribed) != 0 {
		t.Errorf("a bad subscription made a consumer")
	}
	// Bad frames on a running subscription: the stream ends, the consumer closes.
	for name, fs := range map[string][]*brokerpb.SubscribeFrame{
		"subscription again": {{OpId: 1, Frame: subFrame("t", "g", 1).Frame}},
		"op_id 0":            {ackFrame(0, "t")},
		"op_id repeated":     {ackFrame(3, "t"), ackFrame(3, "t")},
		"op_id going back":   {ackFrame(3, "t"), ackFrame(2, "t")},
		"empty":              {{OpId: 1}},
		"empty token":        {ackFrame(1, "")},
		"long token":         {ackFrame(1, strings.Repeat("t", brokerpb.MaxTokenLen+1))},
		"nil ack":            {{OpId: 1, Frame: &brokerpb.SubscribeFrame_Ack{}}},
		"negative delay":     {{OpId: 1, Frame: &brokerpb.SubscribeFrame_Nak{Nak: &brokerpb.Nak{Token: "t", Delay: durationpb.New(-time.Second)}}}},
		"bad delay":          {{OpId: 1, Frame: &brokerpb.SubscribeFrame_Nak{Nak: &brokerpb.Nak{Token: "t", Delay: &durationpb.Duration{Seconds: 1, Nanos: -1}}}}},
	} {
		stream, c := subscribe(t, ctx, cl, b, 1)
		for _, f := range fs {
			if err := stream.Send(f); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		for err == nil {
			_, err = stream.Recv() // results of the good frames first
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", name, err)
		}
		<-c.closed
	}
}
