// Package breaker is the logic of micro's circuit-breaker wrapper: one breaker per node and
// endpoint, per node or per service, each closed, open or half-open, built on
// sony/gobreaker's two-step breaker.
//
// A breaker trips when, over a rolling interval, the failure ratio reaches failure_ratio
// after at least min_requests outcomes, or when consecutive_failures calls in a row fail.
// It then rejects calls for cooldown, after which it is half-open and lets half_open_max
// probe calls through: that many successes close it, one failure opens it again.
//
// It is plain Go with no dependency on the WebAssembly SDK, so it is tested on the host;
// the wrapper's main package glues it to sdk/wrapper. Breakers is not safe for concurrent
// use: the wrapper host serializes calls into one guest instance.
//
// # What fails
//
// Only the node's faults fail, as micro reports them (Outcome.Fault): the node could not
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
// # Matching a response to its request
//
// A two-step breaker hands out a done callback per allowed call, to be called with the
// call's outcome; the callback belongs to the breaker's generation (a closed period, a
// half-open period), and an outcome reported for an older generation is ignored. The
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
	"math"
	"slices"
	"sort"
	"time"

	"github.com/sony/gobreaker/v2"
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

// Call is what Breakers reads of a call before it goes on; sdk/wrapper's Request
// satisfies it.
type Call interface {
	Service() string
	Endpoint() string
	Node() string
	// Budget is the time the call has left.
	Budget() time.Duration
}

// Outcome is what Breakers reads of a call's result; sdk/wrapper's Response satisfies it.
type Outcome interface {
	Call
	// Status is the HTTP status, or 0 when no answer came (a connect error, a timeout).
	Status() int
	// Err says why no answer came (a connect error, a timeout, a rejection by a later
	// wrapper), or is "" when one came.
	Err() string
	// Latency is how long the call took.
	Latency() time.Duration
	// Fault reports whether the outcome counts against the node.
	Fault() bool
}

// Decision is the verdict of Breakers on one call.
type Decision struct {
	// Allowed reports whether the call may go on.
	Allowed bool
	// NodeOnly reports that the rejection is for the selected node only (key
	// "node_endpoint" or "node"): the client should try another node.
	NodeOnly bool
	// Status is the status of a rejection for a whole service (503).
	Status int
	// Message explains a rejection, e.g. "breaker open for node greeter-1, endpoint
	// Greeter.Hello".
	Message string
}

// StateChange is called when a breaker changes state. name says what the breaker is for,
// e.g. "node greeter-1, endpoint Greeter.Hello" or "service greeter".
type StateChange func(name string, from, to gobreaker.State)

// Breakers holds one breaker per key.
type Breakers struct {
	cfg      Config
	failing  map[int]bool // nil: every fault
	onChange StateChange

	entries map[key]*list.Element // of *entry
	lru     list.List             // front is most recently used
}

// key identifies a breaker. Only the fields of the config's Key are set.
type key struct{ node, endpoint, service string }

// entry is one key's breaker and its calls waiting for an outcome.
type entry struct {
	key     key
	cb      *gobreaker.TwoStepCircuitBreaker[struct{}]
	pending []pending // in the order allowed
	// nextExpiry is the earliest expiry in pending, or zero when there is none.
	nextExpiry time.Time
}

// pending is an allowed call waiting for its outcome.
type pending struct {
	start   time.Time
	expires time.Time
	done    func(error)
}

var (
	// errFailed is the outcome of a failed call.
	errFailed = errors.New("call failed")
	// errNoOutcome is the outcome of a call whose outcome never came: excluded from the
	// counts.
	errNoOutcome = errors.New("no outcome")
	// errNoAnswer is the outcome of a call that got no answer through no fault of the
	// node's: excluded from the counts.
	errNoAnswer = errors.New("no answer, not the node's fault")
)

// New returns Breakers for a config, or an error naming the fields that are wrong.
// onChange, if not nil, is told of every state change.
func New(c Config, onChange StateChange) (*Breakers, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b := &Breakers{
		cfg:      c,
		onChange: onChange,
		entries:  make(map[key]*list.Element),
	}
	if len(c.FailureStatuses) > 0 {
		b.failing = make(map[int]bool, len(c.FailureStatuses))
		for _, s := range c.FailureStatuses {
			b.failing[s] = true
		}
	}
	return b, nil
}

// key returns the key of a call's breaker.
func (b *Breakers) key(c Call) key {
	switch b.cfg.Key {
	case KeyService:
		return key{service: c.Service()}
	case KeyNode:
		return key{node: c.Node()}
	}
	return key{node: c.Node(), endpoint: c.Endpoint()}
}

// name says what the breaker of k is for, in messages and logs.
func (b *Breakers) name(k key) string {
	switch b.cfg.Key {
	case KeyService:
		return "service " + k.service
	case KeyNode:
		return "node " + k.node
	}
	return "node " + k.node + ", endpoint " + k.endpoint
}

// OnRequest decides about a call at time now: it goes on unless its key's breaker is open,
// or half-open with its probes all in flight.
func (b *Breakers) OnRequest(c Call, now time.Time) Decision {
	k := b.key(c)
	e := b.entry(k, true)
	e.expire(now)
	done, err := e.cb.Allow()
	if err != nil {
		d := Decision{NodeOnly: b.cfg.Key != KeyService}
		if !d.NodeOnly {
			d.Status = 503
		}
		if errors.Is(err, gobreaker.ErrTooManyRequests) {
			d.Message = fmt.Sprintf("breaker half-open for %s; its probes are in flight", b.name(k))
		} else {
			d.Message = "breaker open for " + b.name(k)
		}
		return d
	}
	wait := min(max(c.Budget(), 0), maxPendingWait)
	p := pending{start: now, expires: now.Add(wait + pendingGrace), done: done}
	if len(e.pending) >= maxPending {
		// Outcomes are being lost: give up on the older half at once, so that a steady
		// loss costs one copy per maxPending/2 calls, not one per call.
		for _, p := range e.pending[:maxPending/2] {
			p.done(errNoOutcome)
		}
		e.pending = slices.Delete(e.pending, 0, maxPending/2)
	}
	e.pending = append(e.pending, p)
	if e.nextExpiry.IsZero() || p.expires.Before(e.nextExpiry) {
		e.nextExpiry = p.expires
	}
	return Decision{Allowed: true}
}

// OnResponse records the outcome of a call that OnRequest allowed, at time now.
func (b *Breakers) OnResponse(o Outcome, now time.Time) {
	e := b.entry(b.key(o), false)
	if e == nil {
		return // dropped since, or never allowed here
	}
	e.expire(now)
	if len(e.pending) == 0 {
		return
	}
	i := nearest(e.pending, now.Add(-o.Latency()))
	done := e.pending[i].done
	e.pending = slices.Delete(e.pending, i, i+1)
	done(b.judge(o))
}

// State returns the state of the breaker of a call; a call with no breaker yet is closed.
func (b *Breakers) State(c Call) gobreaker.State {
	if e := b.entry(b.key(c), false); e != nil {
		return e.cb.State()
	}
	return gobreaker.StateClosed
}

// Len returns how many keys have a breaker.
func (b *Breakers) Len() int { return len(b.entries) }

// Pending returns how many allowed calls with the breaker of c wait for their outcome.
func (b *Breakers) Pending(c Call) int {
	if e := b.entry(b.key(c), false); e != nil {
		return len(e.pending)
	}
	return 0
}

// judge returns what an outcome counts as (see the package doc): errFailed for a failure,
// nil for a success, errNoAnswer for neither.
func (b *Breakers) judge(o Outcome) error {
	s := o.Status()
	switch {
	case o.Fault():
		if b.failing == nil || s == 0 || b.failing[s] {
			return errFailed
		}
		return nil
	case s == 0 || o.Err() != "":
		return errNoAnswer
	}
	return nil
}

// entry returns k's entry, making it (and dropping the least recently used entry past
// MaxKeys) when there is none and create is set.
func (b *Breakers) entry(k key, create bool) *entry {
	if el, ok := b.entries[k]; ok {
		b.lru.MoveToFront(el)
		return el.Value.(*entry)
	}
	if !create {
		return nil
	}
	for len(b.entries) >= b.cfg.MaxKeys {
		oldest := b.lru.Back()
		delete(b.entries, oldest.Value.(*entry).key)
		b.lru.Remove(oldest)
	}
	e := &entry{key: k, cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](b.settings(b.name(k)))}
	b.entries[k] = b.lru.PushFront(e)
	return e
}

// settings returns gobreaker's settings for the breaker called name.
func (b *Breakers) settings(name string) gobreaker.Settings {
	c := b.cfg
	s := gobreaker.Settings{
		Name:        name,
		MaxRequests: uint32(c.HalfOpenMax),
		Interval:    time.Duration(c.Interval),
		Timeout:     time.Duration(c.Cooldown),
		ReadyToTrip: func(n gobreaker.Counts) bool {
			if c.ConsecutiveFailures > 0 && n.ConsecutiveFailures >= uint32(c.ConsecutiveFailures) {
				return true
			}
			outcomes := n.TotalSuccesses + n.TotalFailures
			return c.FailureRatio > 0 && outcomes >= uint32(c.MinRequests) &&
				float64(n.TotalFailures) >= c.FailureRatio*float64(outcomes)
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errNoOutcome) || errors.Is(err, errNoAnswer) },
	}
	// A rolling window: outcomes leave it a bucket at a time, and the breaker's
	// generation (which drops the outcomes of calls in flight) changes only with its
	// state. A single fixed window would start a new generation at each interval.
	if period := time.Duration(c.Interval) / buckets; period > 0 {
		s.BucketPeriod = period
	}
	if b.onChange != nil {
		s.OnStateChange = func(_ string, from, to gobreaker.State) { b.onChange(name, from, to) }
	}
	return s
}

// expire drops the pending calls whose outcome is overdue, as neither success nor failure.
func (e *entry) expire(now time.Time) {
	if e.nextExpiry.IsZero() || now.Before(e.nextExpiry) {
		return
	}
	var next time.Time
	e.pending = slices.DeleteFunc(e.pending, func(p pending) bool {
		if !now.Before(p.expires) {
			p.done(errNoOutcome)
			return true
		}
		if next.IsZero() || p.expires.Before(next) {
			next = p.expires
		}
		return false
	})
	e.nextExpiry = next
}

// nearest returns the index of the pending call whose start is nearest to start. ps is
// sorted by start, up to clock steps back.
func nearest(ps []pending, start time.Time) int {
	i := sort.Search(len(ps), func(i int) bool { return !ps[i].start.Before(start) })
	switch {
	case i == len(ps):
		return i - 1
	case i == 0:
		return 0
	case start.Sub(ps[i-1].start) <= ps[i].start.Sub(start):
		return i - 1
	default:
		return i
	}
}
