package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// NewServer returns the gRPC side of b: a brokerpb.BrokerServer that calls b. Serve uses
// it; it is exported for plugins that test their Broker over gRPC in process.
//
// It checks every request and frame from micro before b sees it: a malformed one, or a
// frame out of order, is refused (and ends its Subscribe stream) with INVALID_ARGUMENT, a
// message over brokerpb.MaxMessageSize with OUT_OF_RANGE. b's errors become gRPC codes:
// ErrFull RESOURCE_EXHAUSTED, ErrTooLarge OUT_OF_RANGE, ErrUnavailable UNAVAILABLE,
// ErrUnknownDelivery NOT_FOUND, ErrClosed (from a Consumer's Next) ABORTED, a context's
// error CANCELED or DEADLINE_EXCEEDED; an error that carries a gRPC status keeps it, and
// any other is UNKNOWN with the error's text. When a Subscribe stream ends, for whatever
// reason, the server closes its Consumer.
func NewServer(b Broker) brokerpb.BrokerServer {
	return &server{b: b}
}

type server struct {
	brokerpb.UnimplementedBrokerServer
	b Broker
}

func (s *server) Init(ctx context.Context, req *brokerpb.InitRequest) (*brokerpb.InitResponse, error) {
	c := Config{
		URL: req.GetUrl(), MaxBytes: req.GetMaxBytes(), MaxMessage: req.GetMaxMessage(),
		CredentialsFile: req.GetCredentialsFile(), NkeySeedFile: req.GetNkeySeedFile(),
		TokenFile: req.GetTokenFile(), User: req.GetUser(), PasswordFile: req.GetPasswordFile(),
		TLSCAFile: req.GetTlsCaFile(), TLSCertFile: req.GetTlsCertFile(), TLSKeyFile: req.GetTlsKeyFile(),
		TLSRequired: req.GetTlsRequired(),
	}
	if d := req.GetMaxAge(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "init: max_age: %v", err)
		}
		c.MaxAge = d.AsDuration()
	}
	switch {
	case c.MaxAge < 0:
		return nil, status.Errorf(codes.InvalidArgument, "init: max_age %v is negative", c.MaxAge)
	case c.MaxBytes < 0:
		return nil, status.Errorf(codes.InvalidArgument, "init: max_bytes %d is negative", c.MaxBytes)
	case c.MaxMessage < 0:
		return nil, status.Errorf(codes.InvalidArgument, "init: max_message %d is negative", c.MaxMessage)
	}
	if err := s.b.Init(ctx, c); err != nil {
		return nil, toStatus(fmt.Errorf("init: %w", err), codes.Unknown)
	}
	return &brokerpb.InitResponse{}, nil
}

func (s *server) Publish(ctx context.Context, req *brokerpb.PublishRequest) (*brokerpb.PublishResponse, error) {
	pm := req.GetMessage()
	if err := brokerpb.CheckMessage(pm); err != nil {
		return nil, checkStatus(fmt.Errorf("publish: %w", err))
	}
	m := &Message{ID: pm.GetId(), Topic: pm.GetTopic(), Header: pm.GetHeader(), Body: pm.GetBody()}
	if m.Header == nil {
		m.Header = map[string]string{}
	}
	if err := s.b.Publish(ctx, m); err != nil {
		return nil, toStatus(fmt.Errorf("publish %q to %q: %w", m.ID, m.Topic, err), codes.Unknown)
	}
	if m.Time.IsZero() {
		m.Time = time.Now() // the Broker did not say when; it has it now
	}
	return &brokerpb.PublishResponse{Time: timestamppb.New(m.Time)}, nil
}

func (s *server) Messages(ctx context.Context, req *brokerpb.MessagesRequest) (*brokerpb.MessagesResponse, error) {
	topic, limit := req.GetTopic(), req.GetLimit()
	if err := brokerpb.ValidName(topic); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "messages: topic: %v", err)
	}
	if limit < 1 || limit > brokerpb.MaxLimit {
		return nil, status.Errorf(codes.InvalidArgument, "messages of %q: limit %d is not within 1 to %d", topic, limit, brokerpb.MaxLimit)
	}
	ms, err := s.b.Messages(ctx, topic, int(limit))
	if err != nil {
		return nil, toStatus(fmt.Errorf("messages of %q: %w", topic, err), codes.Unknown)
	}
	resp := &brokerpb.MessagesResponse{}
	size := 0
	for _, m := range ms {
		if m == nil {
			continue
		}
		if len(resp.Messages) == int(limit) {
			break
		}
		pm := messageToProto(m)
		if err := brokerpb.CheckMessage(pm); err != nil {
			return nil, status.Errorf(codes.Internal, "messages of %q: the broker returned a bad message: %v", topic, err)
		}
		n := proto.Size(pm)
		if len(resp.Messages) > 0 && size+n > brokerpb.MaxMessageSize {
			break
		}
		size += n
		resp.Messages = append(resp.Messages, pm)
	}
	return resp, nil
}

func (s *server) Delete(ctx context.Context, req *brokerpb.DeleteRequest) (*brokerpb.DeleteResponse, error) {
	topic, id := req.GetTopic(), req.GetId()
	if err := brokerpb.ValidName(topic); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "delete: topic: %v", err)
	}
	if id == "" || len(id) > brokerpb.MaxIDLen {
		return nil, status.Errorf(codes.InvalidArgument, "delete from %q: message id of %d bytes is not within 1 to %d", topic, len(id), brokerpb.MaxIDLen)
	}
	if err := s.b.Delete(ctx, topic, id); err != nil {
		return nil, toStatus(fmt.Errorf("delete %q from %q: %w", id, topic, err), codes.Unknown)
	}
	return &brokerpb.DeleteResponse{}, nil
}

// Subscribe runs one Consumer for the stream; see abi/brokerpb's protocol.
func (s *server) Subscribe(stream brokerpb.Broker_SubscribeServer) error {
	f, err := stream.Recv()
	if err != nil {
		return err
	}
	sub, err := subscriptionFromFrame(f)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	c, err := s.b.Subscribe(ctx, sub)
	if err != nil {
		return toStatus(fmt.Errorf("subscribe %q to %q: %w", sub.Group, sub.Topic, err), codes.Unknown)
	}
	if c == nil {
		return status.Errorf(codes.Internal, "subscribe %q to %q: the broker returned no consumer", sub.Group, sub.Topic)
	}
	defer c.Close() // what it holds unacknowledged goes back to the group
	cs := &consumerStream{
		stream: stream,
		sub:    sub,
		c:      c,
		ctx:    ctx,
		slots:  make(chan struct{}, sub.MaxInflight),
		ops:    make(chan struct{}, brokerpb.MaxOps),
		held:   map[string]*Delivery{},
	}
	if err := cs.send(&brokerpb.ConsumerFrame{Frame: &brokerpb.ConsumerFrame_Subscribed{Subscribed: &brokerpb.Subscribed{}}}); err != nil {
		return err
	}
	errc := make(chan error, 2)
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		errc <- cs.deliver()
	}()
	// The reader may still be in Recv when Subscribe returns; gRPC ends that Recv then.
	go func() { errc <- cs.read() }()
	err = <-errc
	cancel()
	<-delivered
	cs.stopOps()
	return err
}

// subscriptionFromFrame checks the first frame of a Subscribe stream.
func subscriptionFromFrame(f *brokerpb.SubscribeFrame) (Subscription, error) {
	p, ok := f.GetFrame().(*brokerpb.SubscribeFrame_Subscription)
	if !ok || p.Subscription == nil {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe: the first frame is %s, want the subscription", frameKind(f.GetFrame()))
	}
	if f.GetOpId() != 0 {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe: the subscription has op_id %d, want 0", f.GetOpId())
	}
	ps := p.Subscription
	if err := brokerpb.ValidName(ps.GetTopic()); err != nil {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe: topic: %v", err)
	}
	if err := brokerpb.ValidName(ps.GetGroup()); err != nil {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe to %q: group: %v", ps.GetTopic(), err)
	}
	at := ps.GetAckTimeout()
	if at == nil {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe %q to %q: no ack_timeout", ps.GetGroup(), ps.GetTopic())
	}
	if err := at.CheckValid(); err != nil {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe %q to %q: ack_timeout: %v", ps.GetGroup(), ps.GetTopic(), err)
	}
	if at.AsDuration() <= 0 {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe %q to %q: ack_timeout %v is not positive", ps.GetGroup(), ps.GetTopic(), at.AsDuration())
	}
	n := ps.GetMaxInflight()
	if n > brokerpb.MaxInflight {
		return Subscription{}, status.Errorf(codes.InvalidArgument, "subscribe %q to %q: max_inflight %d is more than %d", ps.GetGroup(), ps.GetTopic(), n, brokerpb.MaxInflight)
	}
	return Subscription{Topic: ps.GetTopic(), Group: ps.GetGroup(), AckTimeout: at.AsDuration(), MaxInflight: max(int(n), 1)}, nil
}

// consumerStream is one Subscribe stream and its Consumer.
type consumerStream struct {
	stream brokerpb.Broker_SubscribeServer
	sub    Subscription
	c      Consumer
	ctx    context.Context // ends with the stream

	sendMu sync.Mutex
	// slots holds one token per delivery sent and not yet settled by an ack or a nak.
	slots chan struct{}
	// ops holds one token per operation running.
	ops chan struct{}

	mu      sync.Mutex
	held    map[string]*Delivery // by token: sent, not yet settled
	opsWG   sync.WaitGroup
	stopped bool // no operation starts any more
}

func (cs *consumerStream) send(f *brokerpb.ConsumerFrame) error {
	cs.sendMu.Lock()
	defer cs.sendMu.Unlock()
	return cs.stream.Send(f)
}

// deliver sends the Consumer's deliveries, at most sub.MaxInflight unsettled, until the
// stream ends or the Consumer fails.
func (cs *consumerStream) deliver() error {
	for {
		select {
		case cs.slots <- struct{}{}:
		case <-cs.ctx.Done():
			return nil
		}
		d, err := cs.c.Next(cs.ctx)
		if err != nil {
			if cs.ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrClosed) {
				return status.Errorf(codes.Aborted, "consumer %q of %q ended: %v", cs.sub.Group, cs.sub.Topic, err)
			}
			return toStatus(fmt.Errorf("consumer %q of %q: next: %w", cs.sub.Group, cs.sub.Topic, err), codes.Unknown)
		}
		pd, err := cs.check(d)
		if err != nil {
			return status.Errorf(codes.Internal, "consumer %q of %q: the broker delivered a bad delivery: %v", cs.sub.Group, cs.sub.Topic, err)
		}
		if err := cs.send(&brokerpb.ConsumerFrame{Frame: &brokerpb.ConsumerFrame_Delivery{Delivery: pd}}); err != nil {
			return err
		}
	}
}

// check checks a delivery from the Consumer, holds it under its token, and converts it.
func (cs *consumerStream) check(d *Delivery) (*brokerpb.Delivery, error) {
	if d == nil {
		return nil, errors.New("nil delivery")
	}
	if err := brokerpb.CheckToken(d.Token); err != nil {
		return nil, err
	}
	if d.Attempt < 1 {
		return nil, fmt.Errorf("delivery %q has attempt %d, want 1 or more", d.ID, d.Attempt)
	}
	if d.Topic != cs.sub.Topic {
		return nil, fmt.Errorf("delivery %q is of topic %q", d.ID, d.Topic)
	}
	pm := messageToProto(&d.Message)
	if err := brokerpb.CheckMessage(pm); err != nil {
		return nil, err
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if _, dup := cs.held[d.Token]; dup {
		return nil, fmt.Errorf("delivery %q has the token %q of a delivery not yet settled", d.ID, d.Token)
	}
	cs.held[d.Token] = d
	return &brokerpb.Delivery{Message: pm, Attempt: uint32(min(d.Attempt, math.MaxUint32)), Token: d.Token}, nil
}

// read reads micro's operations and starts each, until micro ends the stream (nil, once
// every operation read is answered) or sends a malformed frame.
func (cs *consumerStream) read() error {
	var last uint64
	for {
		f, err := cs.stream.Recv()
		if errors.Is(err, io.EOF) {
			cs.opsWG.Wait()
			return nil
		}
		if err != nil {
			return err
		}
		if f.GetOpId() <= last {
			return status.Errorf(codes.InvalidArgument, "consumer %q of %q: %s with op_id %d after op_id %d", cs.sub.Group, cs.sub.Topic, frameKind(f.GetFrame()), f.GetOpId(), last)
		}
		last = f.GetOpId()
		op, err := cs.parse(f)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "consumer %q of %q: op %d: %v", cs.sub.Group, cs.sub.Topic, f.GetOpId(), err)
		}
		select {
		case cs.ops <- struct{}{}:
		case <-cs.ctx.Done():
			return nil
		}
		if !cs.startOp() {
			return nil
		}
		go func() {
			defer cs.opsWG.Done()
			defer func() { <-cs.ops }()
			res := op()
			res.OpId = f.GetOpId()
			// A failed send ends the stream; its Recv says why.
			_ = cs.send(&brokerpb.ConsumerFrame{Frame: &brokerpb.ConsumerFrame_Result{Result: res}})
		}()
	}
}

// startOp counts an operation in, unless the stream has stopped.
func (cs *consumerStream) startOp() bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.stopped {
		return false
	}
	cs.opsWG.Add(1)
	return true
}

// stopOps lets no operation start, and waits for those running.
func (cs *consumerStream) stopOps() {
	cs.mu.Lock()
	cs.stopped = true
	cs.mu.Unlock()
	cs.opsWG.Wait()
}

// parse checks an operation frame and returns the operation.
func (cs *consumerStream) parse(f *brokerpb.SubscribeFrame) (func() *brokerpb.Result, error) {
	switch p := f.GetFrame().(type) {
	case *brokerpb.SubscribeFrame_Ack:
		token := p.Ack.GetToken()
		if err := brokerpb.CheckToken(token); err != nil {
			return nil, fmt.Errorf("ack: %w", err)
		}
		return func() *brokerpb.Result {
			d := cs.settle(token)
			if d == nil {
				return result(unknown(token))
			}
			return result(cs.c.Ack(cs.ctx, d))
		}, nil
	case *brokerpb.SubscribeFrame_Nak:
		token := p.Nak.GetToken()
		if err := brokerpb.CheckToken(token); err != nil {
			return nil, fmt.Errorf("nak: %w", err)
		}
		var delay time.Duration
		if pd := p.Nak.GetDelay(); pd != nil {
			if err := pd.CheckValid(); err != nil {
				return nil, fmt.Errorf("nak: delay: %w", err)
			}
			if delay = pd.AsDuration(); delay < 0 {
				return nil, fmt.Errorf("nak: delay %v is negative", delay)
			}
		}
		return func() *brokerpb.Result {
			d := cs.settle(token)
			if d == nil {
				return result(unknown(token))
			}
			return result(cs.c.Nak(cs.ctx, d, delay))
		}, nil
	case *brokerpb.SubscribeFrame_Extend:
		token := p.Extend.GetToken()
		if err := brokerpb.CheckToken(token); err != nil {
			return nil, fmt.Errorf("extend: %w", err)
		}
		return func() *brokerpb.Result {
			cs.mu.Lock()
			d := cs.held[token]
			cs.mu.Unlock()
			if d == nil {
				return result(unknown(token))
			}
			return result(cs.c.Extend(cs.ctx, d))
		}, nil
	case *brokerpb.SubscribeFrame_Backlog:
		return func() *brokerpb.Result {
			b, err := cs.c.Backlog(cs.ctx)
			if err != nil {
				return result(err)
			}
			if b.Messages < 0 {
				return result(status.Errorf(codes.Internal, "the broker reports a backlog of %d messages", b.Messages))
			}
			pb := &brokerpb.Backlog{Messages: b.Messages}
			if b.Messages > 0 && !b.Oldest.IsZero() {
				pb.Oldest = timestamppb.New(b.Oldest)
			}
			return &brokerpb.Result{Backlog: pb}
		}, nil
	}
	return nil, fmt.Errorf("%s, want an ack, a nak, an extend or a backlog", frameKind(f.GetFrame()))
}

// settle takes the held delivery with token, freeing its place, or returns nil.
func (cs *consumerStream) settle(token string) *Delivery {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	d := cs.held[token]
	if d != nil {
		delete(cs.held, token)
		<-cs.slots
	}
	return d
}

// unknown is the error for an operation on a token the stream does not hold.
func unknown(token string) error {
	return fmt.Errorf("delivery %q: %w", token, ErrUnknownDelivery)
}

// result is an operation's result for err (nil for success).
func result(err error) *brokerpb.Result {
	if err == nil {
		return &brokerpb.Result{}
	}
	st := status.Convert(toStatus(err, codes.Unknown))
	return &brokerpb.Result{Code: uint32(st.Code()), Message: st.Message()}
}

// messageToProto converts m; a zero Time is left out.
func messageToProto(m *Message) *brokerpb.Message {
	pm := &brokerpb.Message{Id: m.ID, Topic: m.Topic, Header: m.Header, Body: m.Body}
	if !m.Time.IsZero() {
		pm.Time = timestamppb.New(m.Time)
	}
	return pm
}

// frameKind names a frame's oneof field for errors.
func frameKind(f any) string {
	switch f.(type) {
	case nil:
		return "an empty frame"
	case *brokerpb.SubscribeFrame_Subscription:
		return "a subscription"
	case *brokerpb.SubscribeFrame_Ack:
		return "an ack"
	case *brokerpb.SubscribeFrame_Nak:
		return "a nak"
	case *brokerpb.SubscribeFrame_Extend:
		return "an extend"
	case *brokerpb.SubscribeFrame_Backlog:
		return "a backlog query"
	}
	return fmt.Sprintf("a %T", f)
}

// checkStatus is the status for a message that brokerpb.CheckMessage refused.
func checkStatus(err error) error {
	if errors.Is(err, brokerpb.ErrTooLarge) {
		return status.Error(codes.OutOfRange, err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

// toStatus turns a Broker's error into the gRPC status that micro reads; def is the code
// of an error that carries none.
func toStatus(err error, def codes.Code) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := def
	switch {
	case errors.Is(err, ErrFull):
		code = codes.ResourceExhausted
	case errors.Is(err, ErrTooLarge):
		code = codes.OutOfRange
	case errors.Is(err, ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, ErrUnknownDelivery):
		code = codes.NotFound
	case errors.Is(err, ErrClosed):
		code = codes.Aborted
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = status.FromContextError(err).Code()
	}
	return status.Error(code, err.Error())
}
