package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/microhost/micro/plugins/internal/natsauth"
	"log/slog"
	"math"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/sdk/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Connection settings. The client reconnects forever. It keeps no reconnect buffer, so
// that while it is away a Publish, an Ack or a pull fails at once (ErrUnavailable)
// rather than waiting, unsent, for its budget to end.
const (
	connName      = "micro broker-nats"
	reconnectWait = 150 * time.Millisecond
	// connectTimeout bounds each attempt to connect; Init also gives up when its ctx ends.
	connectTimeout = 2 * time.Second
)

// Stream limits when Config leaves them 0.
const (
	defaultMaxAge     = 7 * 24 * time.Hour
	defaultMaxBytes   = 1 << 30
	defaultMaxMessage = 1 << 20
	// dupWindow is how long JetStream remembers a message ID to drop a second publish of it.
	dupWindow = 2 * time.Minute
	// headerSlack is added to the largest message (Config.MaxMessage, which counts header
	// keys and values) to make the stream's max_msg_size, which counts the encoded NATS
	// header too (framing, the message ID).
	headerSlack = 16 << 10
)

// JetStream API error codes (nats-server's jetstream_errors_generated.go) that nats.go
// names no constant for.
const (
	errCodeAccountResources jetstream.ErrorCode = 10002 // resource limits exceeded for account
	errCodeInsufficient     jetstream.ErrorCode = 10023 // insufficient resources
	errCodeStorage          jetstream.ErrorCode = 10047 // insufficient storage resources available
	errCodeStoreFailed      jetstream.ErrorCode = 10077 // the store refused the message: {err}
)

// natsBroker is a broker.Broker on a NATS JetStream stream: every topic is a subject of
// the stream MICRO, every group a durable pull consumer of it (see the package comment).
type natsBroker struct {
	log *slog.Logger

	mu  sync.RWMutex
	st  *state // nil before Init
	sig chan struct{}
}

// state is what Init sets up.
type state struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	str jetstream.Stream
	cfg settings
}

// settings are Config's limits with the defaults filled in.
type settings struct {
	maxAge     time.Duration
	maxBytes   int64
	maxMessage int64
}

var _ broker.Broker = (*natsBroker)(nil)

// newBroker returns a broker that logs to log. It connects on Init.
func newBroker(log *slog.Logger) *natsBroker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &natsBroker{log: log, sig: make(chan struct{})}
}

// settingsOf fills in c's defaults and checks its limits.
func settingsOf(c broker.Config) (settings, error) {
	s := settings{maxAge: c.MaxAge, maxBytes: c.MaxBytes, maxMessage: c.MaxMessage}
	switch {
	case s.maxAge < 0:
		return s, fmt.Errorf("broker-nats: max_age %v is negative", s.maxAge)
	case s.maxBytes < 0:
		return s, fmt.Errorf("broker-nats: max_bytes %d is negative", s.maxBytes)
	case s.maxMessage < 0:
		return s, fmt.Errorf("broker-nats: max_message %d is negative", s.maxMessage)
	}
	if s.maxAge == 0 {
		s.maxAge = defaultMaxAge
	}
	if s.maxBytes == 0 {
		s.maxBytes = defaultMaxBytes
	}
	if s.maxMessage == 0 {
		s.maxMessage = defaultMaxMessage
	}
	if s.maxMessage > math.MaxInt32-headerSlack {
		return s, fmt.Errorf("broker-nats: max_message %d is larger than JetStream allows (%d)", s.maxMessage, math.MaxInt32-headerSlack)
	}
	if s.maxMessage > s.maxBytes {
		return s, fmt.Errorf("broker-nats: max_message %d is larger than max_bytes %d", s.maxMessage, s.maxBytes)
	}
	return s, nil
}

// Init connects to c.URL (nats.DefaultURL when empty) with c's credentials and TLS
// settings (see natsauth.Of), and creates the stream MICRO, or sets its limits to c's when
// it exists. It fails if a file the settings name is missing or malformed, if the first
// connection fails (saying so when the server refused the credentials or TLS failed), if
// JetStream does not answer, or if MICRO exists with other subjects; after that the
// connection comes back by itself whenever it drops. A second Init replaces the
// connection; consumers move to the new one.
func (b *natsBroker) Init(ctx context.Context, c broker.Config) error {
	cfg, err := settingsOf(c)
	if err != nil {
		return err
	}
	sec, err := natsauth.Of(natsauth.Settings{
		URL: c.URL, CredentialsFile: c.CredentialsFile, NkeySeedFile: c.NkeySeedFile, TokenFile: c.TokenFile,
		User: c.User, PasswordFile: c.PasswordFile, TLSCAFile: c.TLSCAFile, TLSCertFile: c.TLSCertFile, TLSKeyFile: c.TLSKeyFile,
		TLSRequired: c.TLSRequired,
	})
	if err != nil {
		return fmt.Errorf("broker-nats: %w", err)
	}
	u := c.URL
	if u == "" {
		u = nats.DefaultURL
	}
	shown := redactURLs(u)
	log := b.log.With("url", shown)
	nc, err := connect(ctx, u, log, b.signal, sec.Opts)
	if err != nil {
		return fmt.Errorf("broker-nats: connect to NATS at %s: %w", shown, sec.Explain(err))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("broker-nats: JetStream at %s: %w", shown, err)
	}
	str, err := ensureStream(ctx, js, cfg, log)
	if err != nil {
		nc.Close()
		return fmt.Errorf("broker-nats: stream %s at %s: %w", streamName, shown, err)
	}
	if p := nc.MaxPayload(); cfg.maxMessage > p {
		log.Warn("broker-nats: max_message is larger than the NATS server's max_payload; larger messages are refused as too large",
			"max_message", cfg.maxMessage, "max_payload", p)
	}
	_, notTLS := nc.TLSConnectionState()
	log.Info("broker-nats: connected to NATS", "server", nc.ConnectedUrlRedacted(), "stream", streamName,
		"credentials", sec.Auth, "tls", notTLS == nil)

	b.mu.Lock()
	old := b.st
	b.st = &state{nc: nc, js: js, str: str, cfg: cfg}
	b.mu.Unlock()
	if old != nil {
		old.nc.Close()
	}
	b.signal()
	return nil
}

// connect dials NATS at u within ctx, with a connection that reconnects forever and calls
// changed whenever it drops or comes back, and with extra, the credential and TLS options.
func connect(ctx context.Context, u string, log *slog.Logger, changed func(), extra []nats.Option) (*nats.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name(connName),
		nats.Timeout(connectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("broker-nats: disconnected from NATS; reconnecting", "err", err)
			changed()
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("broker-nats: reconnected to NATS", "server", nc.ConnectedUrlRedacted())
			changed()
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			log.Info("broker-nats: NATS connection closed")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("broker-nats: NATS error", "subject", subject, "err", err)
		}),
	}
	opts = append(opts, extra...)
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(u, opts...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		return r.nc, r.err
	case <-ctx.Done():
		go func() { // close the connection if it comes after all
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// ensureStream creates the stream, or brings an existing one's limits to cfg's.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg settings, log *slog.Logger) (jetstream.Stream, error) {
	want := jetstream.StreamConfig{
		Name:              streamName,
		Description:       "micro's published messages (plugins/broker-nats)",
		Subjects:          []string{streamSubjects},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          1,
		Discard:           jetstream.DiscardNew,
		MaxConsumers:      -1,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: -1,
	}
	setLimits(&want, cfg)
	str, err := js.Stream(ctx, streamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		str, err = js.CreateStream(ctx, want)
		if err == nil {
			log.Info("broker-nats: created stream", "stream", streamName, "subjects", streamSubjects)
			return str, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("create: %w", unavailable(err))
		}
		// Another plugin process created it meanwhile.
		str, err = js.Stream(ctx, streamName)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	have := str.CachedInfo().Config
	if !slices.Equal(have.Subjects, want.Subjects) {
		return nil, fmt.Errorf("it exists with subjects %q; micro needs a stream named %s with the subjects %q alone",
			have.Subjects, streamName, streamSubjects)
	}
	if have.Storage != jetstream.FileStorage {
		log.Warn("broker-nats: the stream is not on file storage; its messages do not survive a NATS restart",
			"stream", streamName, "storage", have.Storage.String())
	}
	upd := have
	setLimits(&upd, cfg)
	if upd.MaxAge == have.MaxAge && upd.MaxBytes == have.MaxBytes && upd.MaxMsgSize == have.MaxMsgSize &&
		upd.Duplicates == have.Duplicates && upd.Discard == have.Discard {
		return str, nil
	}
	str, err = js.UpdateStream(ctx, upd)
	if err != nil {
		return nil, fmt.Errorf("update its limits: %w", unavailable(err))
	}
	log.Info("broker-nats: updated the stream's limits", "stream", streamName, "max_age", upd.MaxAge,
		"max_bytes", upd.MaxBytes, "max_msg_size", upd.MaxMsgSize)
	return str, nil
}

// setLimits sets c's limits from cfg. The largest message is max_message plus
// headerSlack, but never more than the whole stream.
func setLimits(c *jetstream.StreamConfig, cfg settings) {
	c.MaxAge = cfg.maxAge
	c.MaxBytes = cfg.maxBytes
	c.MaxMsgSize = int32(min(cfg.maxMessage+headerSlack, cfg.maxBytes))
	c.Duplicates = min(dupWindow, cfg.maxAge)
	c.Discard = jetstream.DiscardNew
}

// signal wakes whoever waits on changed: the connection dropped, came back, or was
// replaced.
func (b *natsBroker) signal() {
	b.mu.Lock()
	close(b.sig)
	b.sig = make(chan struct{})
	b.mu.Unlock()
}

// changed returns a channel that is closed at the connection's next change.
func (b *natsBroker) changed() <-chan struct{} {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.sig
}

// errConnectionChanged is the cause of a context that untilChanged ended.
var errConnectionChanged = fmt.Errorf("the NATS connection dropped or was replaced before JetStream answered: %w", broker.ErrUnavailable)

// untilChanged returns a context that ends with ctx, or with the cause
// errConnectionChanged when changed (from natsBroker.changed, taken before the request
// is sent) is closed.
//
// A request (a JetStream publish, an ack that waits for its confirmation) in flight when
// the connection drops never gets its reply: the server answers a connection that is
// gone, and nats.go does not fail the request when the connection comes back, so it would
// wait out its whole budget. Made with this context, it fails at once instead.
func untilChanged(ctx context.Context, changed <-chan struct{}) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-changed:
			cancel(errConnectionChanged)
		case <-cctx.Done():
		}
	}()
	return cctx, func() { cancel(context.Canceled) }
}

// requestError returns err, from a request made with ctx from untilChanged, wrapped with
// errConnectionChanged when the connection changed while the request waited for its
// reply, and as unavailable wraps it otherwise.
func requestError(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errConnectionChanged) {
		return fmt.Errorf("%w: %w", errConnectionChanged, err)
	}
	return unavailable(err)
}

// state returns what Init set up, or an error before Init.
func (b *natsBroker) state() (*state, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.st == nil {
		return nil, errors.New("broker-nats: not initialised (Init was not called or failed)")
	}
	return b.st, nil
}

// Close closes the NATS connection; consumers stop working. The plugin process does not
// need it (it exits); tests do.
func (b *natsBroker) Close() error {
	b.mu.Lock()
	st := b.st
	b.st = nil
	b.mu.Unlock()
	if st != nil {
		st.nc.Close()
	}
	return nil
}

// Publish stores m in the stream under subject "micro.msg.<topic>", with m.ID as its
// Nats-Msg-Id, and returns once JetStream has stored it. A second publish of an ID within
// two minutes stores nothing and succeeds.
func (b *natsBroker) Publish(ctx context.Context, m *broker.Message) error {
	st, err := b.state()
	if err != nil {
		return err
	}
	if err := checkName("topic", m.Topic); err != nil {
		return fmt.Errorf("broker-nats: publish: %w", err)
	}
	if m.ID == "" {
		return fmt.Errorf("broker-nats: publish to %s: the message has no ID", m.Topic)
	}
	if n := messageSize(m); n > st.cfg.maxMessage {
		return fmt.Errorf("broker-nats: publish to %s: message of %d bytes is larger than max_message %d: %w",
			m.Topic, n, st.cfg.maxMessage, broker.ErrTooLarge)
	}
	h, err := toNATSHeader(m.Header)
	if err != nil {
		return fmt.Errorf("broker-nats: publish to %s: %w", m.Topic, err)
	}
	changed := b.changed()
	if !st.nc.IsConnected() {
		return fmt.Errorf("broker-nats: publish to %s: NATS connection is %s: %w", m.Topic, st.nc.Status(), broker.ErrUnavailable)
	}
	pctx, cancel := untilChanged(ctx, changed)
	defer cancel()
	msg := &nats.Msg{Subject: subject(m.Topic), Header: h, Data: m.Body}
	if _, err := st.js.PublishMsg(pctx, msg, jetstream.WithMsgID(m.ID)); err != nil {
		return fmt.Errorf("broker-nats: publish to %s: %w", m.Topic, publishError(pctx, st.nc, err))
	}
	m.Time = time.Now()
	return nil
}

// messageSize is what m counts for against max_message: its body, and every header key
// and value.
func messageSize(m *broker.Message) int64 {
	n := len(m.Body)
	for k, v := range m.Header {
		n += len(k) + len(v)
	}
	return int64(n)
}

// publishError returns err, from a JetStream publish made with ctx (see untilChanged),
// wrapped with the broker error that it means.
func publishError(ctx context.Context, nc *nats.Conn, err error) error {
	var api *jetstream.APIError
	if errors.As(err, &api) {
		desc := strings.ToLower(api.Description)
		switch {
		case api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum,
			api.ErrorCode == errCodeStoreFailed && strings.Contains(desc, "too large"):
			return fmt.Errorf("%w: %w", broker.ErrTooLarge, err)
		case api.ErrorCode == errCodeStoreFailed && strings.Contains(desc, "exceeded"),
			api.ErrorCode == errCodeAccountResources, api.ErrorCode == errCodeInsufficient,
			api.ErrorCode == errCodeStorage:
			return fmt.Errorf("%w: %w", broker.ErrFull, err)
		}
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("%w: %w (the NATS server's max_payload is %d)", broker.ErrTooLarge, err, nc.MaxPayload())
	}
	if ctx.Err() != nil && !nc.IsConnected() {
		return fmt.Errorf("%w: %w (NATS connection is %s)", broker.ErrUnavailable, err, nc.Status())
	}
	return requestError(ctx, err)
}

// unavailable returns err wrapped with broker.ErrUnavailable when it says that NATS or
// JetStream cannot be reached, and err itself otherwise.
func unavailable(err error) error {
	for _, e := range []error{
		nats.ErrConnectionClosed, nats.ErrConnectionReconnecting, nats.ErrReconnectBufExceeded,
		nats.ErrDisconnected, nats.ErrNoResponders, nats.ErrTimeout, jetstream.ErrNoStreamResponse,
		jetstream.ErrJetStreamNotEnabled, jetstream.ErrJetStreamNotEnabledForAccount,
	} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", broker.ErrUnavailable, err)
		}
	}
	return err
}

// Subscribe starts a consumer of s.Group on s.Topic: a durable pull consumer of the
// stream (see consumerName), created if it is new. A new group gets what the stream holds
// on the topic when no other group consumes the topic, and else only what is published
// from now on. An AckTimeout of 0 means 30 s; a MaxInflight of 0 means 1.
func (b *natsBroker) Subscribe(ctx context.Context, s broker.Subscription) (broker.Consumer, error) {
	st, err := b.state()
	if err != nil {
		return nil, err
	}
	if err := checkName("topic", s.Topic); err != nil {
		return nil, fmt.Errorf("broker-nats: subscribe: %w", err)
	}
	if err := checkName("group", s.Group); err != nil {
		return nil, fmt.Errorf("broker-nats: subscribe to %s: %w", s.Topic, err)
	}
	switch {
	case s.AckTimeout < 0:
		return nil, fmt.Errorf("broker-nats: subscribe %s to %s: ack timeout %v is negative", s.Group, s.Topic, s.AckTimeout)
	case s.AckTimeout == 0:
		s.AckTimeout = defaultAckTimeout
	}
	if s.MaxInflight < 0 {
		return nil, fmt.Errorf("broker-nats: subscribe %s to %s: max inflight %d is negative", s.Group, s.Topic, s.MaxInflight)
	}
	s.MaxInflight = max(s.MaxInflight, 1)
	ctx, cancel := untilChanged(ctx, b.changed())
	defer cancel()
	jc, err := ensureConsumer(ctx, st, s)
	if err != nil {
		return nil, fmt.Errorf("broker-nats: subscribe %s to %s: %w", s.Group, s.Topic, err)
	}
	return newConsumer(b, s, jc), nil
}

// Consumer settings.
const (
	defaultAckTimeout = 30 * time.Second
	// minAckPending is the least max_ack_pending of a consumer (JetStream's default);
	// ackPendingPerInflight times the Subscription's MaxInflight is more for large ones,
	// room for that many consumers of a group to hold all they may.
	minAckPending         = 1000
	ackPendingPerInflight = 16
)

// ensureConsumer returns the durable consumer of s, creating it when it is new and
// bringing its ack wait and max ack pending to s's when it is not.
func ensureConsumer(ctx context.Context, st *state, s broker.Subscription) (jetstream.Consumer, error) {
	name := consumerName(s.Topic, s.Group)
	filter := subject(s.Topic)
	maxAck := max(minAckPending, s.MaxInflight*ackPendingPerInflight)
	for range 2 {
		jc, err := st.js.Consumer(ctx, streamName, name)
		if err == nil {
			have := jc.CachedInfo().Config
			if have.FilterSubject != filter || have.AckPolicy != jetstream.AckExplicitPolicy {
				return nil, fmt.Errorf("consumer %s exists, with filter %q and ack policy %s; micro needs filter %q with explicit acks",
					name, have.FilterSubject, have.AckPolicy, filter)
			}
			if have.AckWait == s.AckTimeout && have.MaxAckPending >= maxAck {
				return jc, nil
			}
			upd := have
			upd.AckWait = s.AckTimeout
			upd.MaxAckPending = max(have.MaxAckPending, maxAck)
			jc, err = st.js.UpdateConsumer(ctx, streamName, upd)
			if err != nil {
				return nil, fmt.Errorf("update consumer %s: %w", name, requestError(ctx, err))
			}
			return jc, nil
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("consumer %s: %w", name, requestError(ctx, err))
		}
		others, err := groups(ctx, st.str, filter)
		if err != nil {
			return nil, err
		}
		policy := jetstream.DeliverAllPolicy
		if len(others) > 0 {
			policy = jetstream.DeliverNewPolicy
		}
		jc, err = st.js.CreateConsumer(ctx, streamName, jetstream.ConsumerConfig{
			Durable:       name,
			Description:   fmt.Sprintf("micro group %s on topic %s", s.Group, s.Topic),
			DeliverPolicy: policy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       s.AckTimeout,
			MaxDeliver:    -1,
			FilterSubject: filter,
			ReplayPolicy:  jetstream.ReplayInstantPolicy,
			MaxAckPending: maxAck,
			Metadata:      map[string]string{"micro_topic": s.Topic, "micro_group": s.Group},
		})
		if err == nil {
			return jc, nil
		}
		if !errors.Is(err, jetstream.ErrConsumerExists) {
			return nil, fmt.Errorf("create consumer %s: %w", name, requestError(ctx, err))
		}
		// Another consumer of the group created it meanwhile: take it as it is.
	}
	return nil, fmt.Errorf("consumer %s: created and changed by another process at once; try again", name)
}

// groups returns the consumers of the stream that consume subject.
func groups(ctx context.Context, str jetstream.Stream, subject string) ([]*jetstream.ConsumerInfo, error) {
	l := str.ListConsumers(ctx)
	var out []*jetstream.ConsumerInfo
	for ci := range l.Info() {
		if ci.Config.FilterSubject == subject || slices.Contains(ci.Config.FilterSubjects, subject) {
			out = append(out, ci)
		}
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("list the consumers of %s: %w", subject, requestError(ctx, err))
	}
	return out, nil
}

// Messages returns up to limit messages held on topic after the lowest ack floor of its
// groups (all it holds on topic when no group consumes it), oldest first. It stops once
// they add up to more than a response of the plugin protocol carries, and leaves out
// messages that micro cannot carry (published by others, see checkMessage).
func (b *natsBroker) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	st, err := b.state()
	if err != nil {
		return nil, err
	}
	if err := checkName("topic", topic); err != nil {
		return nil, fmt.Errorf("broker-nats: messages: %w", err)
	}
	ctx, cancel := untilChanged(ctx, b.changed())
	defer cancel()
	var out []*broker.Message
	size := int64(0)
	err = scan(ctx, st.str, topic, func(raw *jetstream.RawStreamMsg) bool {
		if len(out) >= limit || size > brokerpb.MaxMessageSize {
			return false
		}
		m := rawMessage(topic, raw)
		if err := checkMessage(m); err != nil {
			b.log.Warn("broker-nats: messages: left out a message that micro cannot carry",
				"topic", topic, "sequence", raw.Sequence, "err", err)
			return true
		}
		out = append(out, m)
		size += messageSize(m)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("broker-nats: messages of %s: %w", topic, err)
	}
	return out, nil
}

// Delete removes every message on topic whose ID is id, from after the lowest ack floor
// of its groups on (a message below it is consumed by every group already).
func (b *natsBroker) Delete(ctx context.Context, topic, id string) error {
	st, err := b.state()
	if err != nil {
		return err
	}
	if err := checkName("topic", topic); err != nil {
		return fmt.Errorf("broker-nats: delete: %w", err)
	}
	ctx, cancel := untilChanged(ctx, b.changed())
	defer cancel()
	var seqs []uint64
	err = scan(ctx, st.str, topic, func(raw *jetstream.RawStreamMsg) bool {
		if messageID(raw.Header, raw.Sequence) == id {
			seqs = append(seqs, raw.Sequence)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("broker-nats: delete %s from %s: %w", id, topic, err)
	}
	for _, seq := range seqs {
		err := st.str.DeleteMsg(ctx, seq)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("broker-nats: delete %s (sequence %d) from %s: %w", id, seq, topic, requestError(ctx, err))
		}
	}
	return nil
}

// scan calls f with each message the stream holds on topic after the lowest ack floor
// of the topic's groups, oldest first, until f returns false.
func scan(ctx context.Context, str jetstream.Stream, topic string, f func(*jetstream.RawStreamMsg) bool) error {
	filter := subject(topic)
	gs, err := groups(ctx, str, filter)
	if err != nil {
		return err
	}
	var floor uint64
	for i, g := range gs {
		if i == 0 || g.AckFloor.Stream < floor {
			floor = g.AckFloor.Stream
		}
	}
	for seq := floor + 1; ; {
		raw, err := str.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get the message after sequence %d: %w", seq, requestError(ctx, err))
		}
		if !f(raw) {
			return nil
		}
		seq = raw.Sequence + 1
	}
}

// rawMessage returns the Message stored as raw on topic.
func rawMessage(topic string, raw *jetstream.RawStreamMsg) *broker.Message {
	return &broker.Message{
		ID:     messageID(raw.Header, raw.Sequence),
		Topic:  topic,
		Header: fromNATSHeader(raw.Header),
		Body:   raw.Data,
		Time:   raw.Time,
	}
}

// checkMessage returns an error if m breaks the plugin protocol's limits on a message
// (abi/brokerpb): an ID too long, too many headers, too large. micro's own messages never
// do; a message published to the stream by another client may.
func checkMessage(m *broker.Message) error {
	switch {
	case len(m.ID) > brokerpb.MaxIDLen:
		return fmt.Errorf("message ID of %d bytes is longer than %d", len(m.ID), brokerpb.MaxIDLen)
	case len(m.Header) > brokerpb.MaxHeaders:
		return fmt.Errorf("message %s has %d headers, more than %d", m.ID, len(m.Header), brokerpb.MaxHeaders)
	case messageSize(m) > brokerpb.MaxMessageSize:
		return fmt.Errorf("message %s of %d bytes is larger than %d", m.ID, messageSize(m), brokerpb.MaxMessageSize)
	}
	return nil
}

// messageID returns a stored message's ID: its Nats-Msg-Id, or, for a message published
// without one (not through micro), "nats-seq-" and its stream sequence.
func messageID(h nats.Header, seq uint64) string {
	if id := h.Get(jetstream.MsgIDHeader); id != "" {
		return id
	}
	return fmt.Sprintf("nats-seq-%d", seq)
}

// redactURLs returns the comma-separated NATS URLs in s with their passwords hidden.
func redactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				p = u.Redacted()
			} else {
				u.User = url.User("xxxxx") // a bare user name may be a token
				p = u.String()
			}
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
