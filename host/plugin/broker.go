package plugin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/runtime/broker"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// resubscribeRetry is how long a consumer waits between attempts to subscribe again after
// its stream failed while the plugin process still runs.
const resubscribeRetry = time.Second

// Broker is a runtime/broker.Broker served by a plugin process (abi/brokerpb).
//
// When the process exits, or stops answering, Broker restarts it in the background as
// Registry does, and calls Init again. Meanwhile Publish, Messages, Delete and Subscribe
// fail at once with errors that wrap broker.ErrUnavailable, and each open Consumer
// subscribes again on the new process by itself: Next waits across the restart. The
// deliveries a Consumer handed out before are stale then: their Ack, Nak and Extend return
// broker.ErrUnknownDelivery, and the backend delivers their messages again.
type Broker struct {
	cfg    BrokerConfig
	s      *supervisor
	epochs atomic.Uint64 // numbers the Subscribe streams of every consumer

	mu        sync.Mutex
	consumers map[*consumer]struct{}
	closed    bool
}

var _ broker.Broker = (*Broker)(nil)

// OpenBroker starts the broker plugin that cfg names and initialises it with cfg's URL,
// MaxAge, MaxBytes, MaxMessage and Auth, as OpenRegistry does for registry plugins: it builds
// the executable from source when cfg.Path is empty, checks cfg.SHA256, and fails when the
// handshake (or the protocol version) or Init fails, leaving no process running then. The
// plugin's log lines go to logger with plugin=<cfg.Name>.
func OpenBroker(ctx context.Context, cfg BrokerConfig, logger *slog.Logger) (*Broker, error) {
	switch {
	case cfg.MaxAge < 0:
		return nil, fmt.Errorf("broker plugin %q: max_age %v is negative", cfg.Name, cfg.MaxAge)
	case cfg.MaxBytes < 0:
		return nil, fmt.Errorf("broker plugin %q: max_bytes %d is negative", cfg.Name, cfg.MaxBytes)
	case cfg.MaxMessage < 0:
		return nil, fmt.Errorf("broker plugin %q: max_message %d is negative", cfg.Name, cfg.MaxMessage)
	}
	if logger != nil && validName(cfg.Name) {
		logger.With("plugin", cfg.Name).Debug("opening broker plugin", "config", cfg)
	}
	req := cfg.initRequest()
	init := func(ctx context.Context, in *instance) error {
		_, err := in.broker.Init(ctx, req)
		return err
	}
	s, err := openSupervisor(ctx, brokerKind, cfg.proc(), logger, init)
	if err != nil {
		return nil, err
	}
	return &Broker{cfg: cfg, s: s, consumers: map[*consumer]struct{}{}}, nil
}

// initRequest returns the Init request that c's settings make.
func (c BrokerConfig) initRequest() *brokerpb.InitRequest {
	a := c.Auth
	req := &brokerpb.InitRequest{
		Url: c.URL, MaxBytes: c.MaxBytes, MaxMessage: c.MaxMessage,
		CredentialsFile: a.CredentialsFile, NkeySeedFile: a.NkeySeedFile, TokenFile: a.TokenFile,
		User: a.User, PasswordFile: a.PasswordFile,
		TlsCaFile: a.TLSCAFile, TlsCertFile: a.TLSCertFile, TlsKeyFile: a.TLSKeyFile, TlsRequired: a.TLSRequired,
	}
	if c.MaxAge > 0 {
		req.MaxAge = durationpb.New(c.MaxAge)
	}
	return req
}

// Health returns nil while the plugin runs, and else why it does not.
func (b *Broker) Health() error {
	_, err := b.s.current()
	return err
}

// Close implements broker.Broker: it closes the Consumers (Next returns broker.ErrClosed)
// and stops the plugin and its supervision.
func (b *Broker) Close() error {
	b.mu.Lock()
	b.closed = true
	cs := make([]*consumer, 0, len(b.consumers))
	for c := range b.consumers {
		cs = append(cs, c)
	}
	b.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	b.s.close()
	return nil
}

// pid returns the process id of the running plugin, or 0.
func (b *Broker) pid() int { return b.s.pid() }

// errorf returns an error naming the plugin.
func (b *Broker) errorf(format string, args ...any) error {
	return fmt.Errorf("broker plugin %q: "+format, append([]any{b.cfg.Name}, args...)...)
}

// instance returns the running instance for op, or an error wrapping
// broker.ErrUnavailable (or broker.ErrClosed).
func (b *Broker) instance(op string) (*instance, error) {
	in, err := b.s.current()
	switch {
	case errors.Is(err, errClosed):
		return nil, b.errorf("%s: %w", op, broker.ErrClosed)
	case err != nil:
		return nil, &markedError{err: fmt.Errorf("%s: %w", op, err), is: broker.ErrUnavailable}
	}
	return in, nil
}

// failed turns the error of a call to op into micro's, and has the supervisor check the
// plugin when the call could not reach it or timed out.
func (b *Broker) failed(ctx context.Context, op string, err error) error {
	b.s.check(err)
	return b.errorf("%s: %w", op, callError(ctx, err))
}

// markedError is an error that also wraps the runtime/broker error that it stands for.
type markedError struct {
	err error
	is  error
}

func (e *markedError) Error() string   { return e.err.Error() }
func (e *markedError) Unwrap() []error { return []error{e.err, e.is} }

// codeErrors are the runtime/broker errors that the protocol's status codes stand for.
var codeErrors = map[codes.Code]error{
	codes.ResourceExhausted: broker.ErrFull,
	codes.OutOfRange:        broker.ErrTooLarge,
	codes.Unavailable:       broker.ErrUnavailable,
	codes.NotFound:          broker.ErrUnknownDelivery,
}

// callError makes err, returned by a call to the plugin made with ctx, readable and marks
// it with the runtime/broker error its code stands for. A call cancelled while ctx was not
// is one whose connection went away with the plugin: broker.ErrUnavailable.
func callError(ctx context.Context, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.Canceled && ctx.Err() == nil {
		return &markedError{err: rpcError(err), is: broker.ErrUnavailable}
	}
	return codeError(st)
}

// codeError is the error for st, a status that the plugin answered with.
func codeError(st *status.Status) error {
	err := rpcError(st.Err())
	if is := codeErrors[st.Code()]; is != nil {
		return &markedError{err: err, is: is}
	}
	return err
}

// Publish implements broker.Broker. A message with no ID gets a random one. A bad topic,
// or a message over brokerpb.MaxMessageSize (broker.ErrTooLarge), is refused without
// asking the plugin.
func (b *Broker) Publish(ctx context.Context, m *broker.Message) error {
	if m == nil {
		return b.errorf("publish: nil message")
	}
	if err := broker.ValidTopic(m.Topic); err != nil {
		return b.errorf("publish: %w", err)
	}
	if m.ID == "" {
		m.ID = rand.Text()
	}
	pm := &brokerpb.Message{Id: m.ID, Topic: m.Topic, Header: m.Header, Body: m.Body}
	if err := brokerpb.CheckMessage(pm); err != nil {
		if errors.Is(err, brokerpb.ErrTooLarge) {
			err = &markedError{err: err, is: broker.ErrTooLarge}
		}
		return b.errorf("publish to %q: %w", m.Topic, err)
	}
	op := fmt.Sprintf("publish %q to %q", m.ID, m.Topic)
	in, err := b.instance(op)
	if err != nil {
		return err
	}
	resp, err := in.broker.Publish(ctx, &brokerpb.PublishRequest{Message: pm})
	if err != nil {
		return b.failed(ctx, op, err)
	}
	if err := resp.GetTime().CheckValid(); err != nil {
		return b.errorf("%s: %w: the answer's time: %v", op, errMalformed, err)
	}
	m.Time = resp.GetTime().AsTime()
	return nil
}

// Messages implements broker.Broker. It returns at most brokerpb.MaxLimit messages, and
// fewer when they would not fit in one answer (see abi/brokerpb).
func (b *Broker) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	if err := broker.ValidTopic(topic); err != nil {
		return nil, b.errorf("messages: %w", err)
	}
	if limit < 1 {
		return nil, b.errorf("messages of %q: limit %d is not positive", topic, limit)
	}
	limit = min(limit, brokerpb.MaxLimit)
	op := fmt.Sprintf("messages of %q", topic)
	in, err := b.instance(op)
	if err != nil {
		return nil, err
	}
	resp, err := in.broker.Messages(ctx, &brokerpb.MessagesRequest{Topic: topic, Limit: uint32(limit)})
	if err != nil {
		return nil, b.failed(ctx, op, err)
	}
	if n := len(resp.GetMessages()); n > limit {
		return nil, b.errorf("%s: %w: %d messages, more than the limit of %d", op, errMalformed, n, limit)
	}
	out := make([]*broker.Message, 0, len(resp.GetMessages()))
	for _, pm := range resp.GetMessages() {
		m, err := messageFromProto(pm, topic)
		if err != nil {
			return nil, b.errorf("%s: %w: %v", op, errMalformed, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// Delete implements broker.Broker.
func (b *Broker) Delete(ctx context.Context, topic, id string) error {
	if err := broker.ValidTopic(topic); err != nil {
		return b.errorf("delete: %w", err)
	}
	if id == "" || len(id) > brokerpb.MaxIDLen {
		return b.errorf("delete from %q: a message id of %d bytes is not within 1 to %d", topic, len(id), brokerpb.MaxIDLen)
	}
	op := fmt.Sprintf("delete %q from %q", id, topic)
	in, err := b.instance(op)
	if err != nil {
		return err
	}
	if _, err := in.broker.Delete(ctx, &brokerpb.DeleteRequest{Topic: topic, Id: id}); err != nil {
		return b.failed(ctx, op, err)
	}
	return nil
}

// messageFromProto checks a message from the plugin, which must be of topic.
func messageFromProto(pm *brokerpb.Message, topic string) (*broker.Message, error) {
	if err := brokerpb.CheckMessage(pm); err != nil {
		return nil, err
	}
	if pm.GetTopic() != topic {
		return nil, fmt.Errorf("message %q is of topic %q, not %q", pm.GetId(), pm.GetTopic(), topic)
	}
	m := &broker.Message{ID: pm.GetId(), Topic: pm.GetTopic(), Header: pm.GetHeader(), Body: pm.GetBody()}
	if m.Header == nil {
		m.Header = map[string]string{}
	}
	if t := pm.GetTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, fmt.Errorf("message %q: time: %w", pm.GetId(), err)
		}
		m.Time = t.AsTime()
	}
	return m, nil
}

// Subscribe implements broker.Broker. It returns once the plugin's consumer exists; ctx,
// and the config's StartTimeout, bound that only. It fails with broker.ErrUnavailable
// while the plugin is down. MaxInflight may be at most brokerpb.MaxInflight, and
// AckTimeout must be positive.
func (b *Broker) Subscribe(ctx context.Context, s broker.Subscription) (broker.Consumer, error) {
	if err := broker.ValidTopic(s.Topic); err != nil {
		return nil, b.errorf("subscribe: %w", err)
	}
	if err := broker.ValidGroup(s.Group); err != nil {
		return nil, b.errorf("subscribe to %q: %w", s.Topic, err)
	}
	if s.AckTimeout <= 0 {
		return nil, b.errorf("subscribe %q to %q: ack timeout %v is not positive", s.Group, s.Topic, s.AckTimeout)
	}
	if s.MaxInflight < 0 || s.MaxInflight > brokerpb.MaxInflight {
		return nil, b.errorf("subscribe %q to %q: max inflight %d is not within 0 to %d", s.Group, s.Topic, s.MaxInflight, brokerpb.MaxInflight)
	}
	s.MaxInflight = max(s.MaxInflight, 1)
	op := fmt.Sprintf("subscribe %q to %q", s.Group, s.Topic)
	in, err := b.instance(op)
	if err != nil {
		return nil, err
	}
	c := &consumer{b: b, sub: s, changed: make(chan struct{}), done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(b.s.ctx)
	sess, err := c.subscribe(ctx, in)
	if err != nil {
		c.cancel()
		return nil, err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		c.cancel()
		return nil, b.errorf("%s: %w", op, broker.ErrClosed)
	}
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	c.cur = sess
	go c.run(in, sess)
	return c, nil
}

// consumer is a broker.Consumer over a Subscribe stream, which it opens again when the
// stream fails (the plugin restarted).
type consumer struct {
	b      *Broker
	sub    broker.Subscription
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	mu      sync.Mutex
	cur     *session      // nil while subscribing again
	changed chan struct{} // closed, and replaced, whenever cur changes
}

// errorf returns an error naming the plugin and the consumer.
func (c *consumer) errorf(format string, args ...any) error {
	return c.b.errorf("consumer %q of %q: "+format, append([]any{c.sub.Group, c.sub.Topic}, args...)...)
}

// session returns the current stream, or nil.
func (c *consumer) session() *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// setSession makes s the current stream.
func (c *consumer) setSession(s *session) {
	c.mu.Lock()
	c.cur = s
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// subscribe opens a Subscribe stream on in and waits for the plugin's consumer, within
// ctx and StartTimeout.
func (c *consumer) subscribe(ctx context.Context, in *instance) (*session, error) {
	op := fmt.Sprintf("subscribe %q to %q", c.sub.Group, c.sub.Topic)
	sctx, cancel := context.WithCancel(c.ctx)
	stream, err := in.broker.Subscribe(sctx)
	if err != nil {
		cancel()
		return nil, c.b.failed(ctx, op, err)
	}
	err = stream.Send(&brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Subscription{Subscription: &brokerpb.Subscription{
		Topic:       c.sub.Topic,
		Group:       c.sub.Group,
		AckTimeout:  durationpb.New(c.sub.AckTimeout),
		MaxInflight: uint32(c.sub.MaxInflight),
	}}})
	if err != nil {
		_, err = stream.Recv() // the stream's status says why
	}
	var f *brokerpb.ConsumerFrame
	var hung atomic.Bool
	if err == nil {
		stop := context.AfterFunc(ctx, cancel)
		timer := time.AfterFunc(c.b.s.cfg.StartTimeout, func() {
			hung.Store(true)
			cancel()
		})
		f, err = stream.Recv()
		timer.Stop()
		if !stop() {
			cancel()
			return nil, c.b.errorf("%s: %w", op, ctx.Err())
		}
	}
	if err != nil {
		cancel()
		if hung.Load() {
			err = status.Errorf(codes.DeadlineExceeded, "no answer within %v", c.b.s.cfg.StartTimeout)
		}
		return nil, c.b.failed(ctx, op, err)
	}
	if f.GetSubscribed() == nil {
		cancel()
		return nil, c.b.errorf("%s: %w: %s, want subscribed", op, errMalformed, consumerFrameKind(f.GetFrame()))
	}
	return &session{
		c:          c,
		epoch:      c.b.epochs.Add(1),
		stream:     stream,
		cancel:     cancel,
		deliveries: make(chan *broker.Delivery, c.sub.MaxInflight),
		ended:      make(chan struct{}),
		held:       map[string]bool{},
		ops:        map[uint64]chan *brokerpb.Result{},
	}, nil
}

// run reads the current stream, and subscribes again when it fails, until Close.
func (c *consumer) run(in *instance, s *session) {
	defer close(c.done)
	log := c.b.s.log.With("topic", c.sub.Topic, "group", c.sub.Group)
	for {
		err := s.read()
		c.setSession(nil)
		s.end()
		if c.ctx.Err() != nil {
			return
		}
		c.b.s.check(err)
		log.Warn("broker plugin consumer failed; subscribing again", "err", err)
		for {
			// A new process, or after resubscribeRetry the same one (its consumer may
			// have failed on its own).
			wctx, wcancel := context.WithTimeout(c.ctx, resubscribeRetry)
			next, err := c.b.s.next(wctx, in)
			wcancel()
			if c.ctx.Err() != nil {
				return
			}
			if err != nil {
				if next, err = c.b.s.current(); err != nil {
					continue
				}
			}
			in = next
			s, err = c.subscribe(c.ctx, in)
			if err != nil {
				if c.ctx.Err() != nil {
					return
				}
				log.Warn("broker plugin: subscribing again failed", "err", err)
				select {
				case <-c.ctx.Done():
					return
				case <-time.After(resubscribeRetry):
				}
				continue
			}
			c.setSession(s)
			log.Info("broker plugin consumer subscribed again")
			break
		}
	}
}

// Next implements broker.Consumer. It waits across restarts of the plugin.
func (c *consumer) Next(ctx context.Context) (*broker.Delivery, error) {
	for {
		c.mu.Lock()
		s, changed := c.cur, c.changed
		c.mu.Unlock()
		if c.ctx.Err() != nil {
			return nil, c.errorf("next: %w", broker.ErrClosed)
		}
		var deliveries <-chan *broker.Delivery
		var ended <-chan struct{}
		if s != nil {
			deliveries, ended = s.deliveries, s.ended
		}
		select {
		case d := <-deliveries:
			select {
			case <-ended:
				continue // stale: the plugin delivers its message again
			default:
				return d, nil
			}
		case <-ended:
		case <-changed:
		case <-ctx.Done():
			return nil, c.errorf("next: %w", ctx.Err())
		case <-c.ctx.Done():
			return nil, c.errorf("next: %w", broker.ErrClosed)
		}
	}
}

// Ack implements broker.Consumer.
func (c *consumer) Ack(ctx context.Context, d *broker.Delivery) error {
	return c.settle(ctx, "ack", d, func(token string) *brokerpb.SubscribeFrame {
		return &brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Ack{Ack: &brokerpb.DeliveryRef{Token: token}}}
	})
}

// Nak implements broker.Consumer. A negative delay is 0.
func (c *consumer) Nak(ctx context.Context, d *broker.Delivery, delay time.Duration) error {
	return c.settle(ctx, "nak", d, func(token string) *brokerpb.SubscribeFrame {
		return &brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Nak{Nak: &brokerpb.Nak{Token: token, Delay: durationpb.New(max(delay, 0))}}}
	})
}

// Extend implements broker.Consumer.
func (c *consumer) Extend(ctx context.Context, d *broker.Delivery) error {
	return c.settle(ctx, "extend", d, func(token string) *brokerpb.SubscribeFrame {
		return &brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Extend{Extend: &brokerpb.DeliveryRef{Token: token}}}
	})
}

// settle runs an ack, nak or extend of d on the stream that delivered it. A delivery of a
// stream that has ended, or one already acked or naked, is broker.ErrUnknownDelivery.
func (c *consumer) settle(ctx context.Context, op string, d *broker.Delivery, frame func(token string) *brokerpb.SubscribeFrame) error {
	if d == nil {
		return c.errorf("%s: nil delivery", op)
	}
	if c.ctx.Err() != nil {
		return c.errorf("%s %q: %w", op, d.ID, broker.ErrClosed)
	}
	epoch, token, ok := splitToken(d.Token)
	s := c.session()
	if !ok || s == nil || s.epoch != epoch {
		return c.errorf("%s %q: %w: delivered on an earlier stream, or not by this consumer", op, d.ID, broker.ErrUnknownDelivery)
	}
	_, err := s.do(ctx, token, op != "extend", frame(token))
	if err != nil {
		return c.errorf("%s %q: %w", op, d.ID, err)
	}
	return nil
}

// Backlog implements broker.Consumer. It fails with broker.ErrUnavailable while the
// consumer subscribes again.
func (c *consumer) Backlog(ctx context.Context) (broker.Backlog, error) {
	if c.ctx.Err() != nil {
		return broker.Backlog{}, c.errorf("backlog: %w", broker.ErrClosed)
	}
	s := c.session()
	if s == nil {
		return broker.Backlog{}, c.errorf("backlog: %w: subscribing again", broker.ErrUnavailable)
	}
	res, err := s.do(ctx, "", false, &brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Backlog{Backlog: &brokerpb.BacklogQuery{}}})
	if err != nil {
		return broker.Backlog{}, c.errorf("backlog: %w", err)
	}
	pb := res.GetBacklog()
	switch {
	case pb == nil:
		return broker.Backlog{}, c.errorf("backlog: %w: a result without a backlog", errMalformed)
	case pb.GetMessages() < 0:
		return broker.Backlog{}, c.errorf("backlog: %w: %d messages", errMalformed, pb.GetMessages())
	}
	bl := broker.Backlog{Messages: pb.GetMessages()}
	if t := pb.GetOldest(); t != nil && bl.Messages > 0 {
		if err := t.CheckValid(); err != nil {
			return broker.Backlog{}, c.errorf("backlog: %w: oldest: %v", errMalformed, err)
		}
		bl.Oldest = t.AsTime()
	}
	return bl, nil
}

// Close implements broker.Consumer: it ends the stream, and the plugin closes its
// consumer, whose unacknowledged deliveries go back to the group.
func (c *consumer) Close() error {
	c.cancel()
	<-c.done
	c.b.mu.Lock()
	delete(c.b.consumers, c)
	c.b.mu.Unlock()
	return nil
}

// joinToken makes the token micro hands out for the plugin's token of a delivery on the
// stream numbered epoch: "{epoch}.{token}".
func joinToken(epoch uint64, token string) string {
	return strconv.FormatUint(epoch, 10) + "." + token
}

// splitToken splits what joinToken made.
func splitToken(s string) (epoch uint64, token string, ok bool) {
	e, token, ok := strings.Cut(s, ".")
	if !ok || brokerpb.CheckToken(token) != nil {
		return 0, "", false
	}
	epoch, err := strconv.ParseUint(e, 10, 64)
	if err != nil || epoch == 0 {
		return 0, "", false
	}
	return epoch, token, true
}

// session is one Subscribe stream of a consumer.
type session struct {
	c          *consumer
	epoch      uint64
	stream     brokerpb.Broker_SubscribeClient
	cancel     context.CancelFunc
	deliveries chan *broker.Delivery // holds at most MaxInflight, as the plugin may send
	ended      chan struct{}         // closed by end

	sendMu sync.Mutex // serializes Send and numbers operations
	nextOp uint64     // guarded by sendMu

	mu      sync.Mutex
	held    map[string]bool // the plugin's tokens delivered, not yet acked or naked
	ops     map[uint64]chan *brokerpb.Result
	stopped bool // end has run
}

// read passes the stream's deliveries to Next and its results to the operations waiting
// for them, until the stream fails, and returns why.
func (s *session) read() error {
	for {
		f, err := s.stream.Recv()
		if err != nil {
			return rpcError(err)
		}
		switch fr := f.GetFrame().(type) {
		case *brokerpb.ConsumerFrame_Delivery:
			d, err := s.accept(fr.Delivery)
			if err != nil {
				return s.c.errorf("%w: %v", errMalformed, err)
			}
			select {
			case s.deliveries <- d:
			default: // accept keeps the deliveries within the channel's capacity
				return s.c.errorf("%w: more deliveries than max inflight", errMalformed)
			}
		case *brokerpb.ConsumerFrame_Result:
			id := fr.Result.GetOpId()
			s.mu.Lock()
			ch := s.ops[id]
			delete(s.ops, id)
			s.mu.Unlock()
			if ch == nil {
				return s.c.errorf("%w: a result for op %d, which is not waiting", errMalformed, id)
			}
			ch <- fr.Result
		default:
			return s.c.errorf("%w: %s on a running subscription", errMalformed, consumerFrameKind(fr))
		}
	}
}

// accept checks a delivery from the plugin and holds its token.
func (s *session) accept(pd *brokerpb.Delivery) (*broker.Delivery, error) {
	if pd == nil {
		return nil, errors.New("a delivery frame without a delivery")
	}
	if err := brokerpb.CheckToken(pd.GetToken()); err != nil {
		return nil, err
	}
	if pd.GetAttempt() < 1 {
		return nil, fmt.Errorf("delivery %q has attempt 0", pd.GetToken())
	}
	m, err := messageFromProto(pd.GetMessage(), s.c.sub.Topic)
	if err != nil {
		return nil, fmt.Errorf("delivery %q: %w", pd.GetToken(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[pd.GetToken()] {
		return nil, fmt.Errorf("delivery %q reuses the token of a delivery not yet acked or naked", pd.GetToken())
	}
	if len(s.held) >= s.c.sub.MaxInflight {
		return nil, fmt.Errorf("delivery %q is one more than max inflight %d", pd.GetToken(), s.c.sub.MaxInflight)
	}
	s.held[pd.GetToken()] = true
	return &broker.Delivery{Message: *m, Attempt: int(pd.GetAttempt()), Token: joinToken(s.epoch, pd.GetToken())}, nil
}

// end ends the stream, failing the operations that wait.
func (s *session) end() {
	s.cancel()
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	close(s.ended)
}

// do sends the operation frame, for the plugin's token (settle: an ack or a nak, which
// ends the delivery; "" for none), and waits for its result. An operation on a delivery
// that the stream does not hold, or on a stream that ends before the result, is
// broker.ErrUnknownDelivery (broker.ErrUnavailable for one without a token).
func (s *session) do(ctx context.Context, token string, settle bool, f *brokerpb.SubscribeFrame) (*brokerpb.Result, error) {
	gone := broker.ErrUnknownDelivery
	if token == "" {
		gone = broker.ErrUnavailable
	}
	s.sendMu.Lock()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		s.sendMu.Unlock()
		return nil, fmt.Errorf("%w: the plugin's stream has ended", gone)
	}
	if token != "" {
		if !s.held[token] {
			s.mu.Unlock()
			s.sendMu.Unlock()
			return nil, fmt.Errorf("%w: acked or naked already", broker.ErrUnknownDelivery)
		}
		if settle {
			delete(s.held, token) // before the plugin can deliver in its place
		}
	}
	s.nextOp++
	id := s.nextOp
	ch := make(chan *brokerpb.Result, 1)
	s.ops[id] = ch
	s.mu.Unlock()
	f.OpId = id
	err := s.stream.Send(f)
	s.sendMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: the plugin's stream has ended", gone)
	}
	select {
	case res := <-ch:
		if code := codes.Code(res.GetCode()); code != codes.OK {
			return nil, callError(ctx, status.Error(code, res.GetMessage()))
		}
		return res, nil
	case <-s.ended:
		return nil, fmt.Errorf("%w: the plugin's stream ended before it answered", gone)
	case <-ctx.Done():
		return nil, ctx.Err() // read still takes the result, into ch's buffer
	}
}

// consumerFrameKind names a frame's oneof field for errors.
func consumerFrameKind(f any) string {
	switch f.(type) {
	case nil:
		return "an empty frame"
	case *brokerpb.ConsumerFrame_Subscribed:
		return "subscribed"
	case *brokerpb.ConsumerFrame_Delivery:
		return "a delivery"
	case *brokerpb.ConsumerFrame_Result:
		return "a result"
	}
	return fmt.Sprintf("a %T", f)
}
