// Package wrapper defines micro's middleware: a Wrapper sees each call before it goes on
// (and may let it pass, set headers, or reject it) and sees its outcome afterwards. Client
// wrappers run on every attempt of an outgoing call, after a node is selected; server
// wrappers run on inbound calls, before they are forwarded to the app.
//
// The runtime knows wrappers only through this interface; host/wasm implements it with
// WebAssembly guests.
package wrapper

import (
	"context"
	"time"
)

// Call is what a wrapper sees of one call.
type Call struct {
	Service  string
	Endpoint string
	// Node is the selected node's ID on the client side, and the node ID the call was sent
	// to on the server side.
	Node string
	// Caller names the service that made the call when micro knows it, and is ""
	// otherwise. micro never takes it from a header that a caller or a peer could set.
	Caller string
	// Header holds the request's headers. Wrappers do not modify it; they return headers
	// to set in a Verdict.
	Header map[string]string
	// Body is the request's body when BodyHeld: when micro holds it whole (a server
	// wrapper's call whose body is up to server.InMemoryBody, on HTTP/1.1 or over a
	// transport). Wrappers do not modify it; they return a new one in a Verdict.
	Body     []byte
	BodyHeld bool
	// Deadline is when the call's budget ends.
	Deadline time.Time
}

// Action is what a wrapper decides about a call.
type Action int

// The actions.
const (
	// Continue lets the call go on, with Verdict.Header added to the request.
	Continue Action = iota
	// Reject ends the call with Verdict.Status and Verdict.Message.
	Reject
	// RejectNode refuses only the selected node: the client tries another node without
	// counting the refusal against the node's health. On the server side it is a Reject
	// with status 503.
	RejectNode
)

// Verdict is a wrapper's decision.
type Verdict struct {
	Action Action
	// Status is the HTTP status of a rejection, e.g. 429.
	Status int
	// Message explains a rejection; it becomes the error's detail.
	Message string
	// Header is added to the request when the call continues.
	Header map[string]string
	// SetBody replaces the request's body with Body when the call continues; only for a
	// Call whose BodyHeld is set.
	SetBody bool
	Body    []byte
	// ReplyHeader is added to the rejection's reply, e.g. Retry-After.
	ReplyHeader map[string]string
}

// RejectStatus is the HTTP status a refused call answers with: Status for Reject, and 503
// for RejectNode where there is no other node to try (server side, streams).
func (v Verdict) RejectStatus() int {
	if v.Action == RejectNode {
		return 503
	}
	return v.Status
}

// Result is the outcome of a call, as OnResponse sees it.
type Result struct {
	// Status is the HTTP status the caller gets, or 0 when no answer came.
	Status int
	// Err describes a failure to get an answer (connect error, timeout), or "".
	Err string
	// Latency is how long the attempt took.
	Latency time.Duration
	// Fault reports that the outcome counts against the node: it could not be reached, it
	// timed out, or its app failed on its own (a 5xx). A caller's mistake, a request micro
	// refused, or a rejection by a wrapper is never a fault. Breakers count only faults.
	Fault bool
}

// Wrapper is one middleware. Its methods are safe for concurrent use. A wrapper that fails
// internally (a guest trap, a timeout) turns that into a Verdict itself, failing open or
// closed as configured, so callers only ever see Verdicts.
type Wrapper interface {
	// Name is the wrapper's name in micro.toml.
	Name() string
	// OnRequest decides about a call.
	OnRequest(ctx context.Context, c *Call) Verdict
	// OnResponse sees the outcome of a call that OnRequest let through.
	OnResponse(ctx context.Context, c *Call, r *Result)
	// Close releases the wrapper. Calls in flight on it finish first.
	Close(ctx context.Context) error
}

// Leases hands wrappers this micro's shares of global rate limits: capacities that a
// quota service splits among the micros that use them (runtime/quota). A wrapper enforces
// its share locally; it asks for the share now and then, not per call.
type Leases interface {
	// Lease records demand, the calls a wrapper saw for resource since it last asked
	// (allowed and rejected alike), and returns the rate, in calls per second, that this
	// micro may allow for resource now. held is false when this micro holds no lease for
	// resource (none yet, or the last one expired while the quota service was out of
	// reach); the wrapper then applies its own safe share. Lease never blocks: leases are
	// fetched and renewed in the background, and a resource named for the first time is
	// asked for at once. It is safe for concurrent use.
	Lease(resource string, demand uint64) (rate float64, held bool)
}

// Reporter is a Wrapper that reports how it is doing. The dashboard and the metrics read
// it now and then; Report must be cheap and safe for concurrent use with calls.
type Reporter interface {
	Report() Report
}

// Report is a wrapper's counters since it was loaded, and the states it reported.
type Report struct {
	// Instances is how many of the wrapper's instances are working: its configured
	// number, less those being replaced or that could not be started.
	Instances int
	// Calls counts the OnRequest verdicts its guests gave (continue or reject), traps
	// included. A call that got the on_trap verdict without reaching a guest (no working
	// instance) is not one.
	Calls uint64
	// Rejects counts the calls it rejected (Reject or RejectNode).
	Rejects uint64
	// Faults counts the guest calls that trapped, failed or ran out of time, in either
	// phase.
	Faults uint64
	// Time is the total time spent in the guest, in both phases. It may be an estimate
	// from a sample of the calls, whose error shrinks as calls add up.
	Time time.Duration
	// States are the states the wrapper reported, sorted by Service, Endpoint and Node.
	States []State
	// DroppedStates counts the states the wrapper reported for new scopes while it had
	// as many as it may keep: they are not in States.
	DroppedStates uint64
}

// State is a state a wrapper reported for a scope: a service, an endpoint, a node or a
// mix of them (empty fields are not part of its key), e.g. a circuit breaker's "open"
// for a node.
type State struct {
	Service, Endpoint, Node, Value string
}
