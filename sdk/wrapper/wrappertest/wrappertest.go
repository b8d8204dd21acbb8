// Package wrappertest runs a wrapper's code natively, with no WebAssembly, so that it is
// tested with go test as any Go code is: it plays micro's part, as net/http/httptest
// plays a server's or a client's.
//
// The code under test is the [wrapper.Handler] that the wrapper registers with
// wrapper.Handle. Give its package a function that returns it, so that main registers it
// and a test runs it:
//
//	func init() { wrapper.Handle(handler()) } // in the guest: GOOS=wasip1
//
//	inst, err := wrappertest.New(handler(), `{"rate": 2}`) // in a test
//
// [New] starts an [Instance], as micro starts one for each of a wrapper's instances: it
// runs Handler.Init with the config. [Instance.Request] then runs OnRequest for a
// [Request] you build (service, endpoint, node, caller, headers, deadline) and returns
// the [Result]: whether the call continued, was rejected with a status and a message, or
// refused its node, and the headers the handler set. [Instance.Response] runs OnResponse
// with a call's [Outcome] (status, error, latency, fault), for a wrapper that keeps state
// about outcomes, such as a circuit breaker.
//
// The time the handler sees (wrapper.Now, and the budget) is the Instance's [Clock], which
// moves only when the test moves it: a rate limit refills and a breaker's cooldown passes
// at once, with no sleep. The shares of global rate limits it sees (wrapper.Lease) are the
// Instance's [Leases], which the test grants and revokes per resource, and which record
// the demand that the handler reports. The states it publishes (wrapper.SetState) go to
// the Instance's [States], where the test reads them.
//
// The handler runs through sdk/wrapper's own code, on the ABI that micro implements: it
// reads the call from a host that checks what micro checks, so a mistake that would trap
// the guest in micro (a header name starting with "Micro-", a status out of range, a
// header set during OnResponse) fails here too, as does a panic: the Result's Verdict is
// [Failed], with the reason. micro would then discard the instance and start a new one;
// an Instance keeps its state, so that a test can look at it.
//
// Calls of an Instance are serialized, as micro serializes the calls of one instance. Calls
// of all Instances in a process take turns too, since sdk/wrapper's state is that of the
// one guest a process is; tests that use wrappertest may run in parallel all the same.
package wrappertest

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/internal/nativehost"
)

// Request is a call for a wrapper to decide about: what micro tells a wrapper of it. Make
// one with [NewRequest], or as a struct literal.
type Request struct {
	// Service is the called service, e.g. "greeter".
	Service string
	// Endpoint is the called endpoint, e.g. "Greeter.Hello".
	Endpoint string
	// Node is the ID of the node the call goes to: the selected node for a client
	// wrapper, the node called for a server wrapper.
	Node string
	// Caller is who made the call, or "".
	Caller string
	// Header holds the request's headers, one value each, as micro keeps them. A handler
	// finds them by name ignoring case.
	Header map[string]string
	// Deadline is when the call's budget is spent, or the zero time for a call without a
	// deadline. The handler's Request.Budget is the time from the Clock's now to Deadline:
	// it shrinks as the clock moves, and is 0 or less once the deadline has passed.
	Deadline time.Time
}

// NewRequest returns a request for a call to a service's endpoint, with no headers and no
// deadline. Set its other fields as the test needs.
func NewRequest(service, endpoint string) *Request {
	return &Request{Service: service, Endpoint: endpoint, Header: map[string]string{}}
}

// Outcome is how a call that OnRequest let through ended: what micro tells OnResponse.
type Outcome struct {
	// Status is the HTTP status of the answer, or 0 when no answer came.
	Status int
	// Err says why no answer came (a connect error, a timeout), or is "" when one came.
	Err string
	// Latency is how long the attempt took.
	Latency time.Duration
	// Fault reports whether the outcome counts against the node: it could not be reached,
	// it timed out, or its app answered with a 5xx on its own. micro sets it; a test says
	// what micro would have said.
	Fault bool
}

// Verdict is what OnRequest decided, or that it failed.
type Verdict int

// The verdicts.
const (
	// Continued: the call goes on, with the headers the handler set (wrapper.Continue).
	Continued Verdict = iota
	// Rejected: the call ends with the Result's status and message (wrapper.Reject).
	Rejected
	// RejectedNode: the node is refused (wrapper.RejectNode). A client wrapper's makes
	// micro try another node; a server wrapper's is a rejection with status 503.
	RejectedNode
	// Failed: the guest call failed (a panic, or a call that micro traps on). micro
	// gives the call the wrapper's on_trap verdict and replaces the instance.
	Failed
)

// String returns "continued", "rejected", "rejected node" or "failed".
func (v Verdict) String() string {
	switch v {
	case Continued:
		return "continued"
	case Rejected:
		return "rejected"
	case RejectedNode:
		return "rejected node"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Result is what a wrapper's OnRequest did with a call.
type Result struct {
	// Verdict says whether the call continued, was rejected, or the handler failed.
	Verdict Verdict
	// Status is the HTTP status the caller gets for a rejection: the handler's, or 503
	// when it gave 0, and 503 for RejectedNode. It is 0 when the call continued.
	Status int
	// Message is the message the handler gave with a rejection. micro answers
	// "rejected by wrapper NAME" for an empty one.
	Message string
	// Header holds the headers the handler set on the request (Request.SetHeader), by
	// their canonical names; micro sends them on when the call continues.
	Header map[string]string
	// ReplyHeader holds the headers the handler set on the reply of a rejection
	// (wrapper.SetReplyHeader), by their canonical names.
	ReplyHeader map[string]string
	// Err is why the guest call failed, for Verdict Failed, or nil.
	Err error
}

// String describes the result in a line, such as `rejected 429 "slow down"` or
// `continued`, followed by the headers set.
func (r Result) String() string {
	var b strings.Builder
	b.WriteString(r.Verdict.String())
	switch r.Verdict {
	case Rejected:
		fmt.Fprintf(&b, " %d %q", r.Status, r.Message)
	case RejectedNode:
		fmt.Fprintf(&b, " %q", r.Message)
	case Failed:
		fmt.Fprintf(&b, ": %v", r.Err)
	}
	for _, h := range []struct {
		what string
		m    map[string]string
	}{{"header", r.Header}, {"reply header", r.ReplyHeader}} {
		for _, k := range slices.Sorted(maps.Keys(h.m)) {
			fmt.Fprintf(&b, "; %s %s: %s", h.what, k, h.m[k])
		}
	}
	return b.String()
}

// Log is a line that the wrapper wrote into micro's log (wrapper.Logf, and the stack of a
// panic).
type Log struct {
	Level   slog.Level
	Message string
}

// Clock is the time that micro gives a wrapper's calls (wrapper.Now). It moves only when
// told to. It is safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock that reads now until it is moved.
func NewClock(now time.Time) *Clock { return &Clock{now: now} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock by d, back in time when d is negative, and returns its new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// Set sets the clock to t, which may be before its time: micro's clock follows a step of
// the system's clock, so a wrapper may see time go back.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// Leases plays the quota service for a wrapper's calls of wrapper.Lease: it answers with
// the leases that a test grants, per resource, and records the demand that each call
// reports. The zero Leases holds no lease. It is safe for concurrent use.
type Leases struct {
	mu    sync.Mutex
	rates map[string]float64  // the leases held
	asks  map[string][]uint64 // per resource, the demand of each call
}

// NewLeases returns Leases that hold no lease.
func NewLeases() *Leases { return new(Leases) }

// Grant makes this micro hold a lease of rate calls per second for resource, until
// Revoke or another Grant. A rate that is not a finite number >= 0 counts as no lease,
// as micro does with its quota service's.
func (l *Leases) Grant(resource string, rate float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rates == nil {
		l.rates = map[string]float64{}
	}
	l.rates[resource] = rate
}

// Revoke makes this micro hold no lease for resource, as when none came yet or the last
// one expired while the quota service was out of reach: wrapper.Lease returns the rate 0
// and held false.
func (l *Leases) Revoke(resource string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.rates, resource)
}

// Lease records demand for resource and returns its lease, as micro's quota client does.
// A handler's wrapper.Lease comes here, after the Instance checked the resource's name
// as micro does.
func (l *Leases) Lease(resource string, demand uint64) (rate float64, held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.asks == nil {
		l.asks = map[string][]uint64{}
	}
	l.asks[resource] = append(l.asks[resource], demand)
	rate, held = l.rates[resource]
	return rate, held
}

// Asks returns the demand that each call of Lease for resource reported, oldest first:
// how often the handler asked, and the calls it counted in between.
func (l *Leases) Asks(resource string) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.asks[resource])
}

// Demand returns the sum of the demand reported for resource: the calls the handler
// counted and reported so far.
func (l *Leases) Demand(resource string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n uint64
	for _, d := range l.asks[resource] {
		n += d
	}
	return n
}

// State is a state that a wrapper published with wrapper.SetState for a scope: a service,
// an endpoint, a node or a mix of them (empty fields are not part of the scope).
type State struct {
	Service, Endpoint, Node, Value string
}

// States plays micro's store of a wrapper's states: it keeps the last value that
// wrapper.SetState published for each scope, across the Instances that share it, and, as
// micro does, at most abi.MaxStates of them, dropping states for new scopes past that.
// The zero States holds none. It is safe for concurrent use.
type States struct {
	mu      sync.Mutex
	values  map[State]string // by scope: State with no Value
	dropped uint64
}

// NewStates returns States that hold none.
func NewStates() *States { return new(States) }

// Set publishes value for the scope of service, endpoint and node, or deletes the scope's
// state when value is empty, as micro does. A handler's wrapper.SetState comes here, after
// the Instance checked its strings as micro does.
func (s *States) Set(service, endpoint, node, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	scope := State{Service: service, Endpoint: endpoint, Node: node}
	_, ok := s.values[scope]
	switch {
	case value == "":
		delete(s.values, scope)
	case !ok && len(s.values) >= abi.MaxStates:
		s.dropped++
	default:
		if s.values == nil {
			s.values = map[State]string{}
		}
		s.values[scope] = value
	}
}

// Get returns the state of the scope of service, endpoint and node, and whether it has one.
func (s *States) Get(service, endpoint, node string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[State{Service: service, Endpoint: endpoint, Node: node}]
	return v, ok
}

// All returns the states, sorted by Service, Endpoint and Node, as micro reports them.
func (s *States) All() []State {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []State
	for scope, v := range s.values {
		scope.Value = v
		all = append(all, scope)
	}
	slices.SortFunc(all, func(a, b State) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Endpoint, b.Endpoint),
			strings.Compare(a.Node, b.Node))
	})
	return all
}

// Dropped returns how many states for new scopes were dropped because the States held
// abi.MaxStates already.
func (s *States) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Start is when an Instance's clock starts: a fixed time, so that tests do not depend
// on the day they run.
func Start() time.Time { return time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC) }

// Instance is one instance of a wrapper, run natively: what micro starts from a wrapper's
// module, with the wrapper's config. It is safe for concurrent use; its calls are
// serialized.
type Instance struct {
	// Clock is the time of the instance's calls. New sets it to a clock at [Start]; set it
	// to another before the first call to share one clock between instances.
	Clock *Clock
	// Leases answers the handler's wrapper.Lease. New sets it to Leases that hold none;
	// grant leases on it, or set it to another before a call to share one quota between
	// instances. nil means that micro has no quota service: no lease for any resource.
	Leases *Leases
	// States records the states the handler publishes (wrapper.SetState). New sets it to
	// States that hold none; set it to another before a call to share one between
	// instances, as micro keeps one per wrapper. nil drops them.
	States *States

	mu      sync.Mutex
	handler *wrapper.Handler
	config  string
	phases  int32
	block   []byte
	logs    []Log

	// The guest call in progress, set by the method that makes it.
	phase    nativehost.Export
	req      *Request
	outcome  Outcome
	result   *Result
	now      time.Time
	seen     [abi.FieldError + 1]string // the fields as their versions last saw them
	versions [abi.FieldError + 1]uint64
}

// New starts an instance of the wrapper h, with its config as micro hands it over: the
// wrapper's [wrappers.NAME.config] table from micro.toml, as a JSON object ("" means none,
// which micro gives as "{}"). It runs h.Init, as micro does when it loads the wrapper;
// an error is Init's, or a mistake in h, as micro would refuse to load the wrapper with.
func New(h wrapper.Handler, config string) (*Instance, error) {
	if config == "" {
		config = "{}"
	}
	if len(config) > abi.MaxConfigLen {
		return nil, fmt.Errorf("config of %d bytes is longer than micro's limit of %d", len(config), abi.MaxConfigLen)
	}
	i := &Instance{
		Clock:   NewClock(Start()),
		Leases:  NewLeases(),
		States:  NewStates(),
		handler: &h,
		config:  config,
		phases:  abi.PhaseRequest | abi.PhaseResponse,
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.phase = nativehost.OnInit
	code, err := nativehost.Call((*host)(i), i.handler, nativehost.OnInit)
	switch {
	case err != nil:
		return nil, fmt.Errorf("init with config %s: %w", brief(config), err)
	case code != abi.InitOK:
		return nil, fmt.Errorf("init with config %s: on_init returned %d", brief(config), code)
	case i.block == nil:
		return nil, errors.New("init: the guest registered no call block")
	}
	return i, nil
}

// brief returns a config for an error message, cut when it is long.
func brief(config string) string {
	const limit = 200
	if len(config) > limit {
		return strings.ToValidUTF8(config[:limit], "") + "..."
	}
	return config
}

// Request runs the wrapper's OnRequest for r, at the Clock's time, and returns what it
// decided.
func (i *Instance) Request(r *Request) Result {
	i.mu.Lock()
	defer i.mu.Unlock()
	res := Result{}
	i.phase, i.req, i.outcome, i.result, i.now = nativehost.OnRequest, r, Outcome{}, &res, i.Clock.Now()
	defer func() { i.req, i.result = nil, nil }()
	code, err := nativehost.Call((*host)(i), i.handler, nativehost.OnRequest)
	if err == nil {
		switch code {
		case abi.ResultContinue:
			return Result{Verdict: Continued, Header: res.Header, ReplyHeader: res.ReplyHeader}
		case abi.ResultReject:
			res.Verdict = Rejected
		case abi.ResultRejectNode:
			res.Verdict, res.Status = RejectedNode, int(abi.DefaultRejectStatus)
		default:
			err = fmt.Errorf("on_request returned %d, which is no result code", code)
		}
	}
	if err != nil {
		return Result{Verdict: Failed, Err: err, Header: res.Header, ReplyHeader: res.ReplyHeader}
	}
	if res.Status == 0 {
		res.Status = int(abi.DefaultRejectStatus)
	}
	return res
}

// Response runs the wrapper's OnResponse with the outcome o of the call r, which its
// OnRequest let through, at the Clock's time: the time the outcome came, o.Latency after
// the call started. It returns the failure of the guest call, or nil. It does nothing when
// the wrapper has no OnResponse, as micro then does not call it.
func (i *Instance) Response(r *Request, o Outcome) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.phases&abi.PhaseResponse == 0 {
		return nil
	}
	i.phase, i.req, i.outcome, i.now = nativehost.OnResponse, r, o, i.Clock.Now()
	defer func() { i.req = nil }()
	_, err := nativehost.Call((*host)(i), i.handler, nativehost.OnResponse)
	return err
}

// Logs returns the lines the wrapper has logged so far, oldest first.
func (i *Instance) Logs() []Log {
	i.mu.Lock()
	defer i.mu.Unlock()
	return slices.Clone(i.logs)
}

// host is an Instance as sdk/wrapper sees it: micro's host functions. Each runs during a
// guest call that a method of the Instance makes, which holds its mu.
type host Instance

// trap returns the error with which micro traps a guest for a bad call to the host
// function fn.
func trap(fn, format string, args ...any) error {
	return fmt.Errorf("bad call to %s.%s: %s", abi.ModuleName, fn, fmt.Sprintf(format, args...))
}

// phaseName names a phase as micro's traps do.
func phaseName(e nativehost.Export) string {
	switch e {
	case nativehost.OnInit:
		return "on_init"
	case nativehost.OnRequest:
		return "on_request"
	}
	return "on_response"
}

// needPhase returns a trap for fn unless the guest call is in one of the phases.
func (i *host) needPhase(fn string, phases ...nativehost.Export) error {
	if !slices.Contains(phases, i.phase) {
		return trap(fn, "not valid in %s", phaseName(i.phase))
	}
	return nil
}

// Begin writes the call block, as micro does before on_request and on_response.
func (i *host) Begin(e nativehost.Export) {
	if e == nativehost.OnInit {
		return
	}
	b := i.block
	clear(b[:abi.CallBlockLen])
	ne := binary.NativeEndian
	ne.PutUint32(b[abi.CallBlockSize:], abi.CallBlockLen)
	ne.PutUint64(b[abi.CallBlockNow:], uint64(i.now.UnixNano()))
	ne.PutUint64(b[abi.CallBlockBudget:], uint64(i.budget()))
	if e == nativehost.OnResponse {
		ne.PutUint64(b[abi.CallBlockLatency:], uint64(i.outcome.Latency))
		ne.PutUint32(b[abi.CallBlockStatus:], uint32(int32(i.outcome.Status)))
		if i.outcome.Fault {
			ne.PutUint32(b[abi.CallBlockFault:], 1)
		}
	}
	for f := range i.versions {
		v := i.field(int32(f))
		if v != i.seen[f] || i.versions[f] == 0 {
			i.seen[f] = v
			i.versions[f]++
		}
		ne.PutUint64(b[abi.CallBlockVersions+8*f:], i.versions[f])
	}
}

// budget is the call's remaining time at i.now, as get_budget returns it.
func (i *host) budget() int64 {
	if i.req.Deadline.IsZero() {
		return abi.BudgetNone
	}
	return int64(i.req.Deadline.Sub(i.now))
}

// field returns one of the call's string fields; the error is empty in on_request.
func (i *host) field(f int32) string {
	switch f {
	case abi.FieldService:
		return i.req.Service
	case abi.FieldEndpoint:
		return i.req.Endpoint
	case abi.FieldNode:
		return i.req.Node
	case abi.FieldCaller:
		return i.req.Caller
	case abi.FieldError:
		if i.phase == nativehost.OnResponse {
			return i.outcome.Err
		}
	}
	return ""
}

// write implements the (buf_ptr, buf_cap) -> len protocol.
func write(v string, buf []byte) int32 {
	if len(v) <= len(buf) {
		copy(buf, v)
	}
	return int32(len(v))
}

// GetConfig implements get_config.
func (i *host) GetConfig(buf []byte) int32 { return write(i.config, buf) }

// GetField implements get_service, get_endpoint, get_node, get_caller and get_error.
func (i *host) GetField(f int32, buf []byte) (int32, error) {
	names := [...]string{abi.ImportGetService, abi.ImportGetEndpoint, abi.ImportGetNode, abi.ImportGetCaller, abi.ImportGetError}
	if f < 0 || int(f) >= len(names) {
		return 0, fmt.Errorf("no field %d", f)
	}
	if f == abi.FieldError {
		if err := i.needPhase(names[f], nativehost.OnResponse); err != nil {
			return 0, err
		}
	} else if err := i.needPhase(names[f], nativehost.OnRequest, nativehost.OnResponse); err != nil {
		return 0, err
	}
	return write(i.field(f), buf), nil
}

// GetHeader implements get_header: the exact name first, then any equal to it ignoring
// case.
func (i *host) GetHeader(name string, buf []byte) (int32, error) {
	const fn = abi.ImportGetHeader
	if err := i.needPhase(fn, nativehost.OnRequest, nativehost.OnResponse); err != nil {
		return 0, err
	}
	if len(name) > abi.MaxHeaderNameLen {
		return 0, trap(fn, "name of %d bytes is longer than the limit of %d", len(name), abi.MaxHeaderNameLen)
	}
	if v, ok := i.req.Header[name]; ok {
		return write(v, buf), nil
	}
	for k, v := range i.req.Header {
		if strings.EqualFold(k, name) {
			return write(v, buf), nil
		}
	}
	return abi.HeaderAbsent, nil
}

// GetLease implements get_lease: it checks the resource's name as micro does, then asks
// the Instance's Leases.
func (i *host) GetLease(resource string, demand uint64) (float64, bool, error) {
	const fn = abi.ImportGetLease
	if err := checkResource(resource); err != nil {
		return 0, false, trap(fn, "%v", err)
	}
	if i.Leases == nil {
		return 0, false, nil
	}
	rate, held := i.Leases.Lease(resource, demand)
	if !held || !(rate >= 0 && rate <= math.MaxFloat64) { // what micro gives a guest
		return 0, false, nil
	}
	return rate, true, nil
}

// checkResource returns what is wrong with a resource name that a guest gives, or nil.
func checkResource(name string) error {
	switch {
	case name == "":
		return errors.New("empty resource name")
	case len(name) > abi.MaxResourceNameLen:
		return fmt.Errorf("resource name of %d bytes is longer than the limit of %d", len(name), abi.MaxResourceNameLen)
	}
	for n, c := range []byte(name) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("resource name %q has a byte at %d that is not allowed in a name (A-Z, a-z, 0-9, '.', '_', '-')", name, n)
		}
	}
	return nil
}

// SetHeader implements set_header.
func (i *host) SetHeader(name, value string) error {
	return i.setHeader(abi.ImportSetHeader, false, name, value)
}

// SetReplyHeader implements set_reply_header.
func (i *host) SetReplyHeader(name, value string) error {
	return i.setHeader(abi.ImportSetReplyHeader, true, name, value)
}

// setHeader checks a header as micro does, and adds it to the result's headers, or its
// reply headers, by its canonical name.
func (i *host) setHeader(fn string, reply bool, name, value string) error {
	if err := i.needPhase(fn, nativehost.OnRequest); err != nil {
		return err
	}
	if err := checkHeader(name, value); err != nil {
		return trap(fn, "%v", err)
	}
	into := &i.result.Header
	if reply {
		into = &i.result.ReplyHeader
	}
	name = textproto.CanonicalMIMEHeaderKey(name)
	if *into == nil {
		*into = map[string]string{}
	}
	if _, ok := (*into)[name]; !ok && len(*into) >= abi.MaxHeaders {
		return trap(fn, "more than %d headers", abi.MaxHeaders)
	}
	(*into)[name] = value
	return nil
}

// checkHeader returns what is wrong with a header that a guest sets, or nil.
func checkHeader(name, value string) error {
	switch {
	case name == "":
		return errors.New("empty header name")
	case len(name) > abi.MaxHeaderNameLen:
		return fmt.Errorf("name of %d bytes is longer than the limit of %d", len(name), abi.MaxHeaderNameLen)
	case len(value) > abi.MaxHeaderValueLen:
		return fmt.Errorf("value of %d bytes is longer than the limit of %d", len(value), abi.MaxHeaderValueLen)
	case len(name) >= len(abi.ReservedHeaderPrefix) && strings.EqualFold(name[:len(abi.ReservedHeaderPrefix)], abi.ReservedHeaderPrefix):
		return fmt.Errorf("header %q is micro's own (names starting with %q are reserved)", name, abi.ReservedHeaderPrefix)
	}
	for _, c := range []byte(name) {
		if !isTokenByte(c) {
			return fmt.Errorf("header name %q has a character not allowed in a name", name)
		}
	}
	for n, c := range []byte(value) {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Errorf("value of header %q has a control character at byte %d", name, n)
		}
	}
	return nil
}

// isTokenByte reports whether c may appear in an HTTP header name (an RFC 9110 token).
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// SetReject implements set_reject.
func (i *host) SetReject(status int32, message string) error {
	const fn = abi.ImportSetReject
	if err := i.needPhase(fn, nativehost.OnRequest); err != nil {
		return err
	}
	if status != 0 && (status < abi.MinRejectStatus || status > abi.MaxRejectStatus) {
		return trap(fn, "status %d is not 0 or in [%d, %d]", status, abi.MinRejectStatus, abi.MaxRejectStatus)
	}
	i.result.Status, i.result.Message = int(status), cut(message, abi.MaxMessageLen)
	return nil
}

// cut cuts s to at most n bytes, as micro does, and makes it valid UTF-8.
func cut(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// SetPhases implements set_phases.
func (i *host) SetPhases(mask int32) error {
	const fn = abi.ImportSetPhases
	if err := i.needPhase(fn, nativehost.OnInit); err != nil {
		return err
	}
	if mask&^(abi.PhaseRequest|abi.PhaseResponse) != 0 {
		return trap(fn, "unknown phase bits in %#x", mask)
	}
	i.phases = mask
	return nil
}

// SetCallBlock implements set_call_block.
func (i *host) SetCallBlock(block []byte) error {
	const fn = abi.ImportSetCallBlock
	if err := i.needPhase(fn, nativehost.OnInit); err != nil {
		return err
	}
	if len(block) < abi.CallBlockLen {
		return trap(fn, "block of %d bytes is smaller than %d", len(block), abi.CallBlockLen)
	}
	i.block = block
	return nil
}

// SetState implements set_state: it checks the strings as micro does, then publishes the
// state in the Instance's States.
func (i *host) SetState(service, endpoint, node, value string) error {
	const fn = abi.ImportSetState
	for n, s := range [...]string{service, endpoint, node, value} {
		what, limit := [...]string{"service", "endpoint", "node", "value"}[n], abi.MaxStateFieldLen
		if n == 3 {
			limit = abi.MaxStateValueLen
		}
		if len(s) > limit {
			return trap(fn, "%s of %d bytes is longer than the limit of %d", what, len(s), limit)
		}
		for at, c := range []byte(s) {
			if c < ' ' || c == 0x7f {
				return trap(fn, "%s %q has a control character at byte %d", what, s, at)
			}
		}
		if !utf8.ValidString(s) {
			return trap(fn, "%s %q is not valid UTF-8", what, s)
		}
	}
	if i.States != nil {
		i.States.Set(service, endpoint, node, value)
	}
	return nil
}

// Log implements log.
func (i *host) Log(level int32, message string) {
	i.logs = append(i.logs, Log{Level: slog.Level(level), Message: cut(message, abi.MaxLogLen)})
}
