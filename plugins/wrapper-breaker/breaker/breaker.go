// Package breaker is the logic of micro's circuit-breaker wrapper: one breaker per node
// or per service, each closed, open or half-open, built on sony/gobreaker's two-step
// breaker.
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
// most five minutes) is dropped as neither success nor failure, so a lost probe cannot hold a breaker half-open.
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

// Defaults of the config fields.
const (
	DefaultKey                 = "node"
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
	// Key is what a breaker belongs to: "node" (the client skips a node whose breaker is
	// open) or "service" (calls to a service whose breaker is open fail fast with 503).
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
	// FailureStatuses are the statuses that count as failures. Empty means every status
	// from 500 up. A call that got no answer (status 0: a connect error, a timeout)
	// always fails.
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
	if c.Key != "node" && c.Key != "service" {
		errs = append(errs, fmt.Errorf(`key: unknown key %q (want "node" or "service")`, c.Key))
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
		if s < 100 || s > 599 {
			errs = append(errs, fmt.Errorf("failure_statuses[%d]: %d is not an HTTP status", i, s))
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
	Node() string
	// Budget is the time the call has left.
	Budget() time.Duration
}

// Outcome is what Breakers reads of a call's result; sdk/wrapper's Response satisfies it.
type Outcome interface {
	Call
	// Status is the HTTP status, or 0 when no answer came (a connect error, a timeout).
	Status() int
	// Latency is how long the call took.
	Latency() time.Duration
}

// Decision is the verdict of Breakers on one call.
type Decision struct {
	// Allowed reports whether the call may go on.
	Allowed bool
	// NodeOnly reports that the rejection is for the selected node only (key "node"): the
	// client should try another node.
	NodeOnly bool
	// Status is the status of a rejection for a whole service (503).
	Status int
	// Message explains a rejection, e.g. "breaker open for node greeter-1".
	Message string
}

// StateChange is called when a key's breaker changes state.
type StateChange func(key string, from, to gobreaker.State)

// Breakers holds one breaker per key.
type Breakers struct {
	cfg      Config
	byNode   bool
	failing  map[int]bool // nil: every status >= 500
	onChange StateChange

	entries map[string]*list.Element // of *entry
	lru     list.List                // front is most recently used
}

// entry is one key's breaker and its calls waiting for an outcome.
type entry struct {
	key     string
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
)

// New returns Breakers for a config, or an error naming the fields that are wrong.
// onChange, if not nil, is told of every state change.
func New(c Config, onChange StateChange) (*Breakers, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b := &Breakers{
		cfg:      c,
		byNode:   c.Key == "node",
		onChange: onChange,
		entries:  make(map[string]*list.Element),
	}
	if len(c.FailureStatuses) > 0 {
		b.failing = make(map[int]bool, len(c.FailureStatuses))
		for _, s := range c.FailureStatuses {
			b.failing[s] = true
		}
	}
	return b, nil
}

// Key returns the breaker key of a call: its node or its service.
func (b *Breakers) Key(c Call) string {
	if b.byNode {
		return c.Node()
	}
	return c.Service()
}

// OnRequest decides about a call at time now: it goes on unless its key's breaker is open,
// or half-open with its probes all in flight.
func (b *Breakers) OnRequest(c Call, now time.Time) Decision {
	key := b.Key(c)
	e := b.entry(key, true)
	e.expire(now)
	done, err := e.cb.Allow()
	if err != nil {
		d := Decision{NodeOnly: b.byNode}
		if !b.byNode {
			d.Status = 503
		}
		what := "service"
		if b.byNode {
			what = "node"
		}
		if errors.Is(err, gobreaker.ErrTooManyRequests) {
			d.Message = fmt.Sprintf("breaker half-open for %s %s, its probes are in flight", what, key)
		} else {
			d.Message = fmt.Sprintf("breaker open for %s %s", what, key)
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
	e := b.entry(b.Key(o), false)
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
	if b.failed(o) {
		done(errFailed)
	} else {
		done(nil)
	}
}

// State returns the state of key's breaker; a key with no breaker is closed.
func (b *Breakers) State(key string) gobreaker.State {
	if e := b.entry(key, false); e != nil {
		return e.cb.State()
	}
	return gobreaker.StateClosed
}

// Len returns how many keys have a breaker.
func (b *Breakers) Len() int { return len(b.entries) }

// Pending returns how many allowed calls of key wait for their outcome.
func (b *Breakers) Pending(key string) int {
	if e := b.entry(key, false); e != nil {
		return len(e.pending)
	}
	return 0
}

// failed reports whether an outcome counts as a failure.
func (b *Breakers) failed(o Outcome) bool {
	s := o.Status()
	switch {
	case s == 0:
		return true // no answer came: a connect error, a timeout
	case b.failing == nil:
		return s >= 500
	default:
		return b.failing[s]
	}
}

// entry returns key's entry, making it (and dropping the least recently used entry past
// MaxKeys) when there is none and create is set.
func (b *Breakers) entry(key string, create bool) *entry {
	if el, ok := b.entries[key]; ok {
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
	e := &entry{key: key, cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](b.settings(key))}
	b.entries[key] = b.lru.PushFront(e)
	return e
}

// settings returns gobreaker's settings for key's breaker.
func (b *Breakers) settings(key string) gobreaker.Settings {
	c := b.cfg
	s := gobreaker.Settings{
		Name:        key,
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
		IsExcluded: func(err error) bool { return errors.Is(err, errNoOutcome) },
	}
	// A rolling window: outcomes leave it a bucket at a time, and the breaker's
	// generation (which drops the outcomes of calls in flight) changes only with its
	// state. A single fixed window would start a new generation at each interval.
	if period := time.Duration(c.Interval) / buckets; period > 0 {
		s.BucketPeriod = period
	}
	if b.onChange != nil {
		s.OnStateChange = func(_ string, from, to gobreaker.State) { b.onChange(key, from, to) }
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
