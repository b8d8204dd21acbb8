// Package breaker is the logic of micro's circuit-breaker wrapper: one breaker per node and
// endpoint, per node or per service, each closed, open or half-open, as sony/gobreaker's
// two-step breaker is, and on the call's time.
//
// A breaker trips when, over a rolling interval, the failure ratio reaches failure_ratio
// after at least min_requests outcomes, or when consecutive_failures calls in a row fail.
// It then rejects calls for cooldown, after which it is half-open and lets half_open_max
// probe calls through: that many successes close it, one failure opens it again.
//
// The wrapper's code is [Breakers.Handler]: the wrapper's main package registers it with
// wrapper.Handle, and the tests run it natively with sdk/wrapper/wrappertest. Breakers
// take sdk/wrapper's Request and Response as they are rather than interfaces of their
// own, because converting a Request to another interface type costs a runtime itab lookup
// per call in a guest (Go caches type assertions only on native architectures), over
// 50 ns, and a generic method call through a dictionary costs about 15 ns more than an
// interface call. Breakers is not safe for concurrent use: the wrapper
// host serializes calls into one guest instance.
//
// # The clock, and gobreaker
//
// Every method takes the time of the call, which the wrapper has from micro at no cost
// (wrapper.Now), and reads no clock itself. sony/gobreaker cannot be given a clock: its
// breaker calls time.Now when it allows a call, when it takes an outcome and when it is
// asked its state, and its two-step Allow makes a closure per call. In a Go guest, a
// time.Now is two WASI host calls (about 200 ns) and an allocation costs its share of the
// guest's garbage collections; with them a call through the breaker cost 5.3 µs. So this
// package runs gobreaker's state machine itself, on the call's time, with gobreaker's
// State and Counts and its semantics: generations that drop the outcomes of calls allowed
// before a change of state, a closed state that counts outcomes over a rolling window of
// buckets (by the bucket of the call's start; a run of failures counts the failures of
// the run still in the window), excluded outcomes that count as neither
// success nor failure (and free a half-open probe's place), half_open_max probes, and a
// trip rule that reads Counts.
//
// # What fails
//
// Only the node's faults fail, as micro reports them (wrapper.Response.Fault): the node could not
// be reached, it timed out, or its app answered with a 5xx on its own. failure_statuses,
// when set, narrows the faults that fail to those with a listed status (each a 5xx) and
// those that got no answer (status 0); it never makes an outcome fail that is not a
// fault. An outcome that is not a fault never fails, whatever its status: it succeeds
// when the node answered (a caller's 4xx, say, or a 5xx that failure_statuses leaves
// out), and counts as neither success nor failure when no answer came (a timeout that
// the caller chose, a call that a later wrapper rejected), since it tells nothing of the
// node.
//
// # Keys
//
// With key "node_endpoint" (the default) each node has a breaker per endpoint, and an open
// one refuses that node for that endpoint only: the client tries another node, and the
// node goes on serving its other endpoints. With "node", one breaker covers all of a
// node's endpoints. With "service", an open breaker fails every call to the service with
// 503.
//
// # Reporting
//
// Breakers.OnChange is told of every change of state (LogChange logs it), and
// Breakers.OnState publishes the states (wrapper.SetState, for micro's dashboard and
// metrics), for the key's fields: node and endpoint, node, or service. A breaker reports
// once it first opens, and then each change, so that a recovery shows as "closed"; once
// it has been closed again for a whole interval (seen at its next call), or when it is
// dropped past max_keys, its state is deleted, so that the states micro keeps (at most
// 1,024 per wrapper) are those of breakers that are, or just were, in trouble.
//
// # Matching a response to its request
//
// A breaker hands out a ticket per allowed call, as gobreaker's two-step breaker hands out
// a done callback, to go with the call's outcome; the ticket belongs to the breaker's
// generation (a closed period, a half-open period) and to a bucket of the closed state's
// window, and an outcome reported for an older generation, or for a bucket that has left
// the window, is ignored. The
// wrapper ABI gives no call ID that would tie on_response to its on_request, so Breakers
// keeps, per key, the allowed calls still waiting for their outcome with the time each was
// allowed, and gives an outcome to the pending call whose start is nearest to the outcome's
// own start (its arrival time less its latency). Calls in flight together in one generation
// are interchangeable, and calls of different generations are told apart by their start
// times, so a slow response from before the breaker tripped is not taken for a half-open
// probe's. A pending call that gets no outcome within its budget (plus a second, and at
// most five minutes) is dropped as neither success nor failure, so a lost probe cannot
// hold a breaker half-open.
package breaker

import (
	"bytes"
	"container/list"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"
	"unsafe"

	"github.com/sony/gobreaker/v2"

	"github.com/microhost/micro/sdk/wrapper"
)

// The values of Config.Key.
const (
	KeyNodeEndpoint = "node_endpoint"
	KeyNode         = "node"
	KeyService      = "service"
)

// Defaults of the config fields.
const (
	DefaultKey                 = KeyNodeEndpoint
	DefaultFailureRatio        = 0.5
	DefaultMinRequests         = 10
	DefaultInterval            = 10 * time.Second
	DefaultConsecutiveFailures = 5
	DefaultCooldown            = 5 * time.Second
	DefaultHalfOpenMax         = 1
	DefaultMaxKeys             = 10000
)

const (
	// pendingGrace is added to a call's budget before its outcome is given up on.
	pendingGrace = time.Second
	// maxPendingWait bounds the wait for an outcome of a call with a long or no budget.
	maxPendingWait = 5 * time.Minute
	// maxPending bounds the calls per key that wait for an outcome; past it the older half
	// is dropped.
	maxPending = 10000
	// buckets is how many buckets the rolling interval has.
	buckets = 10
)

// Duration is a time.Duration that reads from JSON as a string such as "10s" or "250ms".
type Duration time.Duration

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5s\", got %s", bytes.TrimSpace(b))
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"5s\" or \"250ms\")", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// Config is the wrapper's table in micro.toml, as the guest receives it (JSON). Decode it
// over DefaultConfig so that fields left out keep their defaults.
type Config struct {
	// Key is what a breaker belongs to: KeyNodeEndpoint, a node and an endpoint (the
	// client skips a node for an endpoint whose breaker is open); KeyNode, a node (the
	// client skips a node whose breaker is open); or KeyService, a service (calls to a
	// service whose breaker is open fail fast with 503).
	Key string `json:"key"`
	// FailureRatio trips the breaker when at least this share of the outcomes over
	// Interval failed, once there are MinRequests of them. 0 turns this off.
	FailureRatio float64 `json:"failure_ratio"`
	// MinRequests is how many outcomes Interval must hold before FailureRatio counts.
	MinRequests int `json:"min_requests"`
	// Interval is the rolling window of the counts.
	Interval Duration `json:"interval"`
	// ConsecutiveFailures trips the breaker after this many failures in a row. 0 turns
	// this off.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// Cooldown is how long the breaker stays open before it is half-open.
	Cooldown Duration `json:"cooldown"`
	// HalfOpenMax is how many probe calls a half-open breaker lets through; that many
	// successes close it.
	HalfOpenMax int `json:"half_open_max"`
	// FailureStatuses narrows the faults that count as failures to those with one of
	// these statuses, each from 500 to 599, and those that got no answer (status 0: the
	// node could not be reached, or timed out). Empty means every fault. An outcome that
	// is not the node's fault never fails.
	FailureStatuses []int `json:"failure_statuses"`
	// MaxKeys bounds how many breakers are kept; past it the least recently used one is
	// dropped.
	MaxKeys int `json:"max_keys"`
}

// DefaultConfig returns the config with every field at its default.
func DefaultConfig() Config {
	return Config{
		Key:                 DefaultKey,
		FailureRatio:        DefaultFailureRatio,
		MinRequests:         DefaultMinRequests,
		Interval:            Duration(DefaultInterval),
		ConsecutiveFailures: DefaultConsecutiveFailures,
		Cooldown:            Duration(DefaultCooldown),
		HalfOpenMax:         DefaultHalfOpenMax,
		MaxKeys:             DefaultMaxKeys,
	}
}

// Validate returns an error naming each field that is wrong.
func (c Config) Validate() error {
	var errs []error
	switch c.Key {
	case KeyNodeEndpoint, KeyNode, KeyService:
	default:
		errs = append(errs, fmt.Errorf("key: unknown key %q (want %q, %q or %q)", c.Key, KeyNodeEndpoint, KeyNode, KeyService))
	}
	if math.IsNaN(c.FailureRatio) || c.FailureRatio < 0 || c.FailureRatio > 1 {
		errs = append(errs, fmt.Errorf("failure_ratio: %v is not a ratio (want 0 < ratio <= 1, or 0 to turn it off)", c.FailureRatio))
	}
	if c.MinRequests < 1 {
		errs = append(errs, fmt.Errorf("min_requests: %d is less than 1", c.MinRequests))
	}
	if c.Interval <= 0 {
		errs = append(errs, fmt.Errorf("interval: %v is not positive", time.Duration(c.Interval)))
	}
	if c.ConsecutiveFailures < 0 {
		errs = append(errs, fmt.Errorf("consecutive_failures: %d is negative (want >= 1, or 0 to turn it off)", c.ConsecutiveFailures))
	}
	if c.FailureRatio == 0 && c.ConsecutiveFailures == 0 {
		errs = append(errs, errors.New("failure_ratio and consecutive_failures: both are 0, so the breaker could never trip"))
	}
	if c.Cooldown <= 0 {
		errs = append(errs, fmt.Errorf("cooldown: %v is not positive", time.Duration(c.Cooldown)))
	}
	if c.HalfOpenMax < 1 || c.HalfOpenMax > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("half_open_max: %d is out of range (want >= 1)", c.HalfOpenMax))
	}
	for i, s := range c.FailureStatuses {
		if s < 500 || s > 599 {
			errs = append(errs, fmt.Errorf("failure_statuses[%d]: %d is not a 5xx status (only the node's faults fail, and a fault's status is 500 to 599, or 0 without an answer)", i, s))
		}
	}
	if c.MaxKeys < 1 {
		errs = append(errs, fmt.Errorf("max_keys: %d is less than 1", c.MaxKeys))
	}
	return errors.Join(errs...)
}

// StateReport publishes a breaker's state for its scope: the fields of the calls that make
// its key (node and endpoint with key "node_endpoint", node with "node", service with
// "service"; the others empty) and the state, "closed", "half-open" or "open"
// (gobreaker.State's String), or "" when the breaker is dropped. wrapper.SetState is one,
// which publishes the states on micro's dashboard and metrics.
type StateReport func(service, endpoint, node, state string)

// StateChange is called when a breaker changes state. name says what the breaker is for,
// e.g. "node greeter-1, endpoint Greeter.Hello" or "service greeter".
type StateChange func(name string, from, to gobreaker.State)

// Breakers holds one breaker per key. The zero Breakers have no config: [New] makes
// configured ones, and [Breakers.Configure] configures them.
type Breakers struct {
	// OnChange, if not nil when the Breakers are configured, is told of every state
	// change.
	OnChange StateChange
	// OnState, if not nil when the Breakers are configured, is given a breaker's state
	// whenever it changes, and "" when a breaker that gave one is dropped (max_keys) or
	// has been closed again for a whole interval. A breaker that has been closed since it
	// was made gives none: only a breaker that opened reports, and then each of its
	// states, its return to closed included.
	OnState StateReport

	rules

	entries map[key]*list.Element // of *entry
	lru     list.List             // front is most recently used
	// last is the entry of the last call, found without a map lookup when the next call
	// has the same key, as most do. It is at the front of lru.
	last *entry
}

// rules is what every breaker of a Breakers follows.
type rules struct {
	cfg      Config
	kind     keyKind
	failing  map[int]bool // nil: every fault
	onChange StateChange
	onState  StateReport
	period   int64 // of a bucket of the rolling window, in nanoseconds
}

// keyKind is Config.Key as a number, quicker to switch on.
type keyKind int

const (
	kindNodeEndpoint keyKind = iota
	kindNode
	kindService
)

// kindOf returns the keyKind of a valid Config.Key.
func kindOf(k string) keyKind {
	switch k {
	case KeyService:
		return kindService
	case KeyNode:
		return kindNode
	}
	return kindNodeEndpoint
}

// key identifies a breaker. Only the fields of the config's Key are set.
type key struct{ node, endpoint, service string }

// entry is one key's breaker and its calls waiting for an outcome.
type entry struct {
	key     key
	circuit circuit
	pending []pending // in the order allowed
	// nextExpiry is the earliest expiry in pending, or 0 when there is none.
	nextExpiry int64
	// reported records that the breaker's state was given to onState.
	reported bool
}

// pending is an allowed call waiting for its outcome. Times are in nanoseconds since the
// Unix epoch.
type pending struct {
	start   int64
	expires int64
	ticket  ticket
}

// outcome is what a call's outcome counts as.
type outcome int

const (
	success outcome = iota
	failure
	// excluded is an outcome that counts as neither success nor failure: no answer
	// through no fault of the node's, or no outcome at all.
	excluded
)

// New returns Breakers for a config, or an error naming the fields that are wrong.
// onChange, if not nil, is told of every state change.
func New(c Config, onChange StateChange) (*Breakers, error) {
	b := &Breakers{OnChange: onChange}
	if err := b.Configure(c); err != nil {
		return nil, err
	}
	return b, nil
}

// Configure makes b follow c, with no breakers, or returns an error naming each field of
// c that is wrong and leaves b as it was.
func (b *Breakers) Configure(c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	*b = Breakers{
		OnChange: b.OnChange,
		rules: rules{
			cfg:      c,
			kind:     kindOf(c.Key),
			onChange: b.OnChange,
			onState:  b.OnState,
			// A rolling window of buckets: outcomes leave it a bucket at a time, and a
			// breaker's generation changes only with its state.
			period: max(int64(c.Interval)/buckets, 1),
		},
		entries: make(map[key]*list.Element),
	}
	if len(c.FailureStatuses) > 0 {
		b.failing = make(map[int]bool, len(c.FailureStatuses))
		for _, s := range c.FailureStatuses {
			b.failing[s] = true
		}
	}
	return nil
}

// Handler returns the breaker wrapper's code, over b: Init decodes the wrapper's config
// over DefaultConfig (JSON, with unknown fields refused) and configures b with it, and
// OnRequest and OnResponse run b at the time micro gives each call (wrapper.Now).
func (b *Breakers) Handler() wrapper.Handler {
	return wrapper.Handler{
		Init: func(config []byte) error {
			c := DefaultConfig()
			if err := wrapper.DecodeConfig(config, &c); err != nil {
				return err
			}
			if err := b.Configure(c); err != nil {
				return fmt.Errorf("breaker config: %w", err)
			}
			return nil
		},
		OnRequest:  func(r wrapper.Request) wrapper.Result { return b.OnRequest(r, wrapper.Now()) },
		OnResponse: func(o wrapper.Response) { b.OnResponse(o, wrapper.Now()) },
	}
}

// LogChange is a StateChange that writes the change into micro's log (wrapper.Logf): at
// warn level when a breaker opens, at info level otherwise.
func LogChange(name string, from, to gobreaker.State) {
	level := slog.LevelInfo
	if to == gobreaker.StateOpen {
		level = slog.LevelWarn
	}
	wrapper.Logf(level, "breaker for %s: %v -> %v", name, from, to)
}

// keyOf returns the fields of a call that make its breaker's key: those of the config's
// Key, the others empty.
func (r *rules) keyOf(service, endpoint, node string) (string, string, string) {
	switch r.kind {
	case kindService:
		return "", "", service
	case kindNode:
		return node, "", ""
	}
	return node, endpoint, ""
}

// find returns the entry of the breaker with the key of these fields, making it when there
// is none and create is set. It compares them with the last entry's key first, as most
// calls have the last call's key; that comparison is inlined where find is called.
func (b *Breakers) find(node, endpoint, service string, create bool) *entry {
	if l := b.last; l != nil && l.key.is(node, endpoint, service) {
		return l
	}
	return b.lookup(key{node: node, endpoint: endpoint, service: service}, create)
}

// is reports whether k has these fields.
func (k *key) is(node, endpoint, service string) bool {
	return same(k.node, node) && same(k.endpoint, endpoint) && same(k.service, service)
}

// name says what the breaker of k is for, in messages and logs.
func (r *rules) name(k key) string {
	switch r.kind {
	case kindService:
		return "service " + k.service
	case kindNode:
		return "node " + k.node
	}
	return "node " + k.node + ", endpoint " + k.endpoint
}

// OnRequest decides about a call at time now: it goes on unless its key's breaker is open,
// or half-open with its probes all in flight. Then it is refused: its node only (the client
// tries another) with key "node_endpoint" or "node", with a 503 with key "service".
func (b *Breakers) OnRequest(c wrapper.Request, now time.Time) wrapper.Result {
	t := now.UnixNano()
	// keyOf and the check of the last entry, inlined: in a guest each call costs.
	var node, endpoint, service string
	switch b.kind {
	case kindService:
		service = c.Service()
	case kindNode:
		node = c.Node()
	default:
		node, endpoint = c.Node(), c.Endpoint()
	}
	e := b.last
	if e == nil || !e.key.is(node, endpoint, service) {
		e = b.find(node, endpoint, service, true)
	}
	if e.overdue(t) {
		e.expire(&b.rules, t)
	}
	tk, state := e.circuit.allow(&b.rules, e, t)
	if tk.gen == 0 {
		return b.rejection(e.key, state)
	}
	wait := min(max(c.Budget(), 0), maxPendingWait)
	p := pending{start: t, expires: t + int64(wait+pendingGrace), ticket: tk}
	if len(e.pending) >= maxPending {
		// Outcomes are being lost: give up on the older half at once, so that a steady
		// loss costs one copy per maxPending/2 calls, not one per call.
		for _, p := range e.pending[:maxPending/2] {
			e.circuit.record(&b.rules, e, p.ticket, excluded, t)
		}
		e.pending = slices.Delete(e.pending, 0, maxPending/2)
	}
	e.pending = append(e.pending, p)
	if e.nextExpiry == 0 || p.expires < e.nextExpiry {
		e.nextExpiry = p.expires
	}
	return wrapper.Continue()
}

// rejection is the result for a call refused by the breaker of k, open or half-open.
func (b *Breakers) rejection(k key, state gobreaker.State) wrapper.Result {
	msg := "breaker open for " + b.name(k)
	if state == gobreaker.StateHalfOpen {
		msg = fmt.Sprintf("breaker half-open for %s; its probes are in flight", b.name(k))
	}
	if b.kind == kindService {
		return wrapper.Reject(503, msg)
	}
	return wrapper.RejectNode(msg)
}

// OnResponse records the outcome of a call that OnRequest allowed, at time now.
func (b *Breakers) OnResponse(o wrapper.Response, now time.Time) {
	// keyOf and the check of the last entry, inlined: in a guest each call costs.
	var node, endpoint, service string
	switch b.kind {
	case kindService:
		service = o.Service()
	case kindNode:
		node = o.Node()
	default:
		node, endpoint = o.Node(), o.Endpoint()
	}
	e := b.last
	if e == nil || !e.key.is(node, endpoint, service) {
		if e = b.find(node, endpoint, service, false); e == nil {
			return // dropped since, or never allowed here
		}
	}
	t := now.UnixNano()
	if e.overdue(t) {
		e.expire(&b.rules, t)
	}
	if len(e.pending) == 0 {
		return
	}
	i := nearest(e.pending, t-int64(o.Latency()))
	tk := e.pending[i].ticket
	if i < len(e.pending)-1 {
		copy(e.pending[i:], e.pending[i+1:])
	}
	e.pending = e.pending[:len(e.pending)-1]
	// What the outcome counts as (see the package doc): a failure when it is the node's
	// fault (narrowed by failure_statuses), nothing when no answer came otherwise.
	verdict := success
	s, fault := o.Status(), o.Fault()
	switch {
	case fault && (b.failing == nil || s == 0 || b.failing[s]):
		verdict = failure
	case !fault && (s == 0 || o.Err() != ""):
		verdict = excluded
	}
	e.circuit.record(&b.rules, e, tk, verdict, t)
}

// State returns the state at time now of the breaker of a call to a service's endpoint
// on node; a call with no breaker yet is closed.
func (b *Breakers) State(service, endpoint, node string, now time.Time) gobreaker.State {
	if e := b.findExisting(b.keyOf(service, endpoint, node)); e != nil {
		e.circuit.advance(&b.rules, e, now.UnixNano())
		return e.circuit.state
	}
	return gobreaker.StateClosed
}

// Counts returns the counts at time now of the breaker of a call to a service's endpoint
// on node: those of the rolling window when it is closed, of the generation otherwise.
func (b *Breakers) Counts(service, endpoint, node string, now time.Time) gobreaker.Counts {
	if e := b.findExisting(b.keyOf(service, endpoint, node)); e != nil {
		e.circuit.advance(&b.rules, e, now.UnixNano())
		return e.circuit.counts
	}
	return gobreaker.Counts{}
}

// Len returns how many keys have a breaker.
func (b *Breakers) Len() int { return len(b.entries) }

// Pending returns how many allowed calls to a service's endpoint on node, with that
// call's breaker, wait for their outcome.
func (b *Breakers) Pending(service, endpoint, node string) int {
	if e := b.findExisting(b.keyOf(service, endpoint, node)); e != nil {
		return len(e.pending)
	}
	return 0
}

// findExisting returns the entry of the breaker with the key of these fields, or nil.
func (b *Breakers) findExisting(node, endpoint, service string) *entry {
	return b.find(node, endpoint, service, false)
}

// lookup returns k's entry, making it (and dropping the least recently used entry past
// MaxKeys) when there is none and create is set.
func (b *Breakers) lookup(k key, create bool) *entry {
	if el, ok := b.entries[k]; ok {
		b.lru.MoveToFront(el)
		b.last = el.Value.(*entry)
		return b.last
	}
	if !create {
		return nil
	}
	for len(b.entries) >= b.cfg.MaxKeys {
		oldest := b.lru.Back()
		old := oldest.Value.(*entry)
		delete(b.entries, old.key)
		b.lru.Remove(oldest)
		if old.reported && b.onState != nil {
			b.onState(old.key.service, old.key.endpoint, old.key.node, "")
		}
	}
	b.last = &entry{key: k}
	b.entries[k] = b.lru.PushFront(b.last)
	return b.last
}

// same reports whether a and b are equal. It answers without comparing bytes when they
// share their bytes, as a key's strings do when they come from the same call fields
// (sdk/wrapper returns the same string while a field does not change): in a wasm guest a
// comparison costs two runtime calls.
func same(a, b string) bool {
	return len(a) == len(b) && (unsafe.StringData(a) == unsafe.StringData(b) || a == b)
}

// overdue reports whether a pending call's outcome is overdue at now.
func (e *entry) overdue(now int64) bool { return e.nextExpiry != 0 && now >= e.nextExpiry }

// expire drops the pending calls whose outcome is overdue at now, as neither success nor
// failure.
func (e *entry) expire(r *rules, now int64) {
	var next int64
	e.pending = slices.DeleteFunc(e.pending, func(p pending) bool {
		if now >= p.expires {
			e.circuit.record(r, e, p.ticket, excluded, now)
			return true
		}
		if next == 0 || p.expires < next {
			next = p.expires
		}
		return false
	})
	e.nextExpiry = next
}

// nearest returns the index of the pending call whose start is nearest to start. ps is
// not empty, and sorted by start up to clock steps back.
func nearest(ps []pending, start int64) int {
	lo, hi := 0, len(ps) // the first index whose start is not before start
	for lo < hi {
		if m := int(uint(lo+hi) >> 1); ps[m].start < start {
			lo = m + 1
		} else {
			hi = m
		}
	}
	switch {
	case lo == len(ps):
		return lo - 1
	case lo == 0:
		return 0
	case start-ps[lo-1].start <= ps[lo].start-start:
		return lo - 1
	}
	return lo
}

// circuit is one breaker: gobreaker's state machine, on times in nanoseconds since the
// Unix epoch that its caller gives it.
type circuit struct {
	state gobreaker.State
	// gen numbers the generations from 1: a change of state starts a new one, and the
	// outcome of a call allowed in an older one is ignored.
	gen    uint64
	start  int64 // when the generation started
	expiry int64 // when an open breaker becomes half-open
	// counts are those of the rolling window when closed, of the generation otherwise.
	counts gobreaker.Counts
	// age is the number of the current bucket, counted from start, and next is when the
	// next bucket starts. buckets[a%buckets] counts the calls allowed in bucket a, while a
	// is in the window; its ConsecutiveSuccesses and ConsecutiveFailures are those of the
	// current runs.
	age     int64
	next    int64
	buckets [buckets]gobreaker.Counts
}

// ticket is what a call allowed by a circuit takes to its outcome; gen is 0 for a call
// that was not allowed.
type ticket struct {
	gen uint64
	age int64
}

// allow lets a call through at now and returns its ticket, or the zero ticket when the
// circuit refuses it; it returns the state either way.
func (c *circuit) allow(r *rules, e *entry, now int64) (ticket, gobreaker.State) {
	c.advance(r, e, now)
	switch c.state {
	case gobreaker.StateOpen:
		return ticket{}, c.state
	case gobreaker.StateHalfOpen:
		if c.counts.Requests-min(c.counts.TotalExclusions, c.counts.Requests) >= uint32(r.cfg.HalfOpenMax) {
			return ticket{}, c.state
		}
	}
	c.counts.Requests++
	c.buckets[c.age%buckets].Requests++
	return ticket{gen: c.gen, age: c.age}, c.state
}

// record counts the outcome of a call with ticket tk at now.
func (c *circuit) record(r *rules, e *entry, tk ticket, o outcome, now int64) {
	c.advance(r, e, now)
	if tk.gen != c.gen || tk.age > c.age || c.age-tk.age >= buckets {
		return // from an older generation, or out of the window
	}
	bucket := &c.buckets[tk.age%buckets]
	switch o {
	case excluded:
		c.counts.TotalExclusions++
		bucket.TotalExclusions++
	case success:
		c.counts.TotalSuccesses++
		bucket.TotalSuccesses++
		c.counts.ConsecutiveSuccesses++
		bucket.ConsecutiveSuccesses++
		if c.counts.ConsecutiveFailures > 0 {
			c.counts.ConsecutiveFailures = 0
			for i := range c.buckets {
				c.buckets[i].ConsecutiveFailures = 0
			}
		}
		if c.state == gobreaker.StateHalfOpen && c.counts.ConsecutiveSuccesses >= uint32(r.cfg.HalfOpenMax) {
			c.setState(r, e, gobreaker.StateClosed, now)
		}
	case failure:
		c.counts.TotalFailures++
		bucket.TotalFailures++
		c.counts.ConsecutiveFailures++
		bucket.ConsecutiveFailures++
		if c.counts.ConsecutiveSuccesses > 0 {
			c.counts.ConsecutiveSuccesses = 0
			for i := range c.buckets {
				c.buckets[i].ConsecutiveSuccesses = 0
			}
		}
		if c.state == gobreaker.StateHalfOpen || readyToTrip(&r.cfg, c.counts) {
			c.setState(r, e, gobreaker.StateOpen, now)
		}
	}
}

// readyToTrip is the trip rule of a closed breaker: consecutive_failures failures in a
// row, or a failure_ratio of failures among at least min_requests outcomes.
func readyToTrip(cfg *Config, n gobreaker.Counts) bool {
	if cfg.ConsecutiveFailures > 0 && n.ConsecutiveFailures >= uint32(cfg.ConsecutiveFailures) {
		return true
	}
	outcomes := n.TotalSuccesses + n.TotalFailures
	return cfg.FailureRatio > 0 && outcomes >= uint32(cfg.MinRequests) &&
		float64(n.TotalFailures) >= cfg.FailureRatio*float64(outcomes)
}

// advance brings the circuit to now: an open one becomes half-open after the cooldown, a
// closed one rolls its window, dropping the buckets that left it. It is small enough to
// be inlined where, as on most calls, there is nothing to do.
func (c *circuit) advance(r *rules, e *entry, now int64) {
	if c.state != gobreaker.StateClosed || now >= c.next {
		c.roll(r, e, now)
	}
}

// roll is advance's work.
func (c *circuit) roll(r *rules, e *entry, now int64) {
	if c.gen == 0 { // a new circuit: closed, from now
		c.newGeneration(r, now)
	}
	switch c.state {
	case gobreaker.StateOpen:
		if now >= c.expiry {
			c.setState(r, e, gobreaker.StateHalfOpen, now)
		}
	case gobreaker.StateClosed:
		if now < c.next { // also when the clock went back
			return
		}
		age := (now - c.start) / r.period
		c.next = c.start + (age+1)*r.period
		if age-c.age >= buckets {
			c.counts, c.buckets = gobreaker.Counts{}, [buckets]gobreaker.Counts{}
		} else {
			for a := c.age + 1; a <= age; a++ {
				c.drop(&c.buckets[a%buckets])
			}
		}
		c.age = age
		if e.reported && age >= buckets && r.onState != nil {
			// Closed for a whole interval since it recovered: nothing is left to show,
			// and micro keeps a bounded number of states.
			r.onState(e.key.service, e.key.endpoint, e.key.node, "")
			e.reported = false
		}
	}
}

// drop takes a bucket that leaves the window out of the counts, and clears it.
func (c *circuit) drop(bucket *gobreaker.Counts) {
	c.counts.Requests -= bucket.Requests
	c.counts.TotalSuccesses -= bucket.TotalSuccesses
	c.counts.TotalFailures -= bucket.TotalFailures
	c.counts.TotalExclusions -= bucket.TotalExclusions
	c.counts.ConsecutiveSuccesses -= bucket.ConsecutiveSuccesses
	c.counts.ConsecutiveFailures -= bucket.ConsecutiveFailures
	*bucket = gobreaker.Counts{}
}

// setState moves the circuit to state at now, in a new generation, and tells onChange.
func (c *circuit) setState(r *rules, e *entry, state gobreaker.State, now int64) {
	from := c.state
	c.state = state
	c.newGeneration(r, now)
	if r.onChange != nil {
		r.onChange(r.name(e.key), from, state)
	}
	if r.onState != nil {
		r.onState(e.key.service, e.key.endpoint, e.key.node, state.String())
		e.reported = true
	}
}

// newGeneration starts a generation at now, with no counts.
func (c *circuit) newGeneration(r *rules, now int64) {
	c.gen++
	c.start, c.age, c.next = now, 0, now+r.period
	c.counts, c.buckets = gobreaker.Counts{}, [buckets]gobreaker.Counts{}
	c.expiry = 0
	if c.state == gobreaker.StateOpen {
		c.expiry = now + int64(r.cfg.Cooldown)
	}
}
