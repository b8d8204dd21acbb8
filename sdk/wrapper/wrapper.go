// Package wrapper is the Go library for writing micro wrappers: middleware that micro runs
// as WebAssembly, around every call to or from a service.
//
// A wrapper is a package main that registers a [Handler] from an init func:
//
//	package main
//
//	import "github.com/microhost/micro/sdk/wrapper"
//
//	func init() {
//		wrapper.Handle(wrapper.Handler{
//			OnRequest: func(r wrapper.Request) wrapper.Result {
//				if _, ok := r.Header("Authorization"); !ok {
//					return wrapper.Reject(401, "no credentials")
//				}
//				return wrapper.Continue()
//			},
//		})
//	}
//
//	func main() {}
//
// and is built with the standard Go toolchain as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o mywrapper.wasm .
//
// (`micro wrapper build DIR` runs that command.) main is never run: micro runs the package's
// init funcs once per instance, then calls Handler.Init with the wrapper's config, then
// OnRequest and OnResponse for each call. Calls to one instance never overlap, so a
// Handler may keep state in plain variables without locks.
//
// Every guest call costs, so this package keeps them few: micro hands each OnRequest and
// OnResponse the time ([Now]), the budget and the outcome in the guest's memory, and a
// field read once (Service, Endpoint, ...) is read again from the host only when it
// changed. A wrapper that needs the time should use [Now] rather than time.Now, which
// costs two WASI host calls (about 200 ns) in a guest. Allocations cost too: a Go guest's
// garbage collector runs inside the call that triggers it.
//
// A wrapper that enforces this micro's share of a limit shared with other micros (a global
// rate limit) reads the share with [Lease], now and then rather than per call. A wrapper
// that keeps a state worth showing, such as a breaker's for each node, publishes it with
// [SetState] when it changes.
//
// The wire contract under this package is in abi/wrapper and abi/README.md.
package wrapper

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"structs"
	"time"

	abi "github.com/microhost/micro/abi/wrapper"
)

// Request is the call a wrapper is deciding about. It is valid only during the callback
// that received it.
type Request interface {
	// Service is the called service's name.
	Service() string
	// Endpoint is the called endpoint, e.g. "Greeter.Hello".
	Endpoint() string
	// Node is the ID of the node the call goes to: the selected node for client wrappers,
	// this micro's node for server wrappers.
	Node() string
	// Caller names who made the call, or is "" when unknown.
	Caller() string
	// Header returns a request header; names match case-insensitively.
	Header(name string) (string, bool)
	// Budget is the call's remaining time when micro called the wrapper, at [Now]. It is
	// very large when the call has no deadline.
	Budget() time.Duration
	// SetHeader adds a header to the request, sent on when the call continues. It is valid
	// during OnRequest only. Names starting with "Micro-" belong to micro and may not be
	// set.
	SetHeader(name, value string)
}

// Response is a call's outcome, seen by OnResponse for calls that OnRequest let through.
type Response interface {
	Request
	// Status is the HTTP status of the answer, or 0 when no answer came.
	Status() int
	// Err says why no answer came (a connect error, a timeout), or is "" when one came.
	Err() string
	// Latency is how long the attempt took.
	Latency() time.Duration
	// Fault reports whether the outcome counts against the node: it could not be reached,
	// it timed out, or its app answered with a 5xx on its own. A caller's mistake (a 4xx),
	// a call that micro refused or a wrapper rejected, and a timeout that the caller chose
	// are not faults, whatever their status. A breaker should count only faults.
	Fault() bool
}

// Result is OnRequest's decision. Make one with [Continue], [Reject] or [RejectNode].
type Result struct {
	action  int32
	status  int32
	message string
}

// Continue lets the call go on, with the headers set by Request.SetHeader.
func Continue() Result { return Result{action: abi.ResultContinue} }

// Reject ends the call: the caller gets an error with this HTTP status (400 to 599; 0 means
// 503) and message.
func Reject(status int, message string) Result {
	return Result{action: abi.ResultReject, status: int32(status), message: message}
}

// RejectNode refuses only the node the call was going to: on the client side micro tries
// another node, without counting the refusal against the node's health. A server wrapper's
// RejectNode is a Reject with status 503.
func RejectNode(message string) Result {
	return Result{action: abi.ResultRejectNode, message: message}
}

// SetReplyHeader adds a header to the reply that a rejection produces, e.g. Retry-After. It
// is valid during OnRequest only, and has no effect when the call continues.
func SetReplyHeader(name, value string) { hostSetReplyHeader(name, value) }

// Lease returns this micro's share of the global rate limit on resource, in calls per
// second, and whether micro holds a lease for it. Several micros may share a limit on a
// named resource: a quota service splits its capacity among them by their demand, and
// each micro holds its share as a lease that it renews in the background. A wrapper
// enforces the share itself, with a token bucket say, and tells micro its demand: the
// calls it saw for resource since it last asked, those it allowed and those it rejected
// alike. When held is false (no lease yet, or it expired while the quota service was out
// of reach, or this micro has no quota service), rate is 0 and the wrapper applies a
// safe share of its own, such as a configured fallback rate.
//
// Lease never waits for the quota service, but it is a host call: ask now and then, not
// per call. A wrapper counts its calls and asks again once some call time has passed, by
// [Now]:
//
//	demand++
//	if now := wrapper.Now(); now.Sub(asked) >= 100*time.Millisecond {
//		rate, held := wrapper.Lease("api", demand)
//		demand, asked = 0, now
//		... // apply rate, or the safe share when !held
//	}
//
// resource is 1 to 128 bytes of A-Z, a-z, 0-9, '.', '_' and '-'; any other name fails the
// guest call, as micro traps a guest for a bad host call. Lease may be called in Init,
// OnRequest and OnResponse. Under package wrappertest, the Instance's Leases answer.
func Lease(resource string, demand uint64) (rate float64, held bool) {
	return hostGetLease(resource, demand)
}

// SetState publishes a state of the wrapper's for a scope, such as a circuit breaker's
// "open" for a node, for micro's dashboard and metrics. The scope is a service, an
// endpoint, a node or a mix of them: an empty field is not part of it. value replaces the
// scope's state, and an empty value deletes it.
//
// micro keeps the states per wrapper, across its instances; it never hands them back to
// the wrapper. When an instance fails and micro replaces it, the states it published are
// deleted, as they described what the failed instance held. It keeps at most
// abi.MaxStates states per wrapper: past that, a state for a new scope is dropped (micro
// logs it), while existing ones may still change or be deleted.
//
// Each of service, endpoint and node is at most abi.MaxStateFieldLen bytes, value at most
// abi.MaxStateValueLen, all valid UTF-8 without control characters; anything else fails
// the guest call, as micro traps a guest for a bad host call. SetState is a host call:
// publish a state when it changes, not per call. It may be called in Init, OnRequest and
// OnResponse. Under package wrappertest, the Instance's States record it.
func SetState(service, endpoint, node, value string) {
	hostSetState(service, endpoint, node, value)
}

// Handler is a wrapper's code.
type Handler struct {
	// Init, if set, is called once per instance before any call, with the wrapper's config
	// table from micro.toml encoded as a JSON object ("{}" when there is none). An error
	// stops micro from loading the wrapper and is shown to the user; [DecodeConfig] gives
	// errors that name the bad field.
	Init func(config []byte) error
	// OnRequest decides about each call. It is required.
	OnRequest func(Request) Result
	// OnResponse, if set, sees the outcome of each call that OnRequest let through. micro
	// does not call into the guest after a request when it is nil.
	OnResponse func(Response)
}

// The registered handler. A guest is single-threaded and its exports never overlap, so
// these need no lock.
var (
	handler   *Handler
	handleErr error
)

// callBlock is the call block of abi.ImportSetCallBlock, which micro fills before each
// OnRequest and OnResponse. Its layout is abi's CallBlock offsets (a test checks it).
type callBlock struct {
	_        structs.HostLayout
	size     uint32
	_        uint32
	now      int64
	budget   int64
	latency  int64
	status   int32
	fault    int32
	versions [abi.FieldError + 1]uint64
}

// block is this instance's call block. Go's garbage collector never moves it.
var block callBlock

// Now returns the time of the call in progress: micro reads its clock once before it calls
// OnRequest or OnResponse, and hands that time to the wrapper at no cost, where time.Now
// costs two WASI host calls. The time is the same throughout the callback; use time.Now to
// measure the wrapper's own work. In Init, before any call, Now is time.Now.
func Now() time.Time {
	if block.size == 0 { // micro fills the block only for calls
		return time.Now()
	}
	return time.Unix(0, block.now)
}

// Handle registers h as the wrapper's code. Call it once, from an init func of package main.
// Mistakes (a second call, a nil OnRequest) make micro refuse to load the wrapper, with a
// message that says so.
func Handle(h Handler) {
	handleErr = h.check()
	if handler != nil {
		handleErr = errors.New("wrapper.Handle called more than once")
	}
	handler = &h
}

// check returns what makes h unusable, or nil.
func (h *Handler) check() error {
	if h.OnRequest == nil {
		return errors.New("wrapper.Handle: Handler.OnRequest is nil")
	}
	return nil
}

// Logf writes a message into micro's log at level, attributed to this wrapper.
func Logf(level slog.Level, format string, args ...any) {
	hostLog(int32(level), fmt.Sprintf(format, args...))
}

// DecodeConfig decodes a wrapper's JSON config into v, which should be a pointer to a struct
// with json tags. Fields that the config does not name keep their values, so set defaults
// in v first. A field that v lacks is an error that names it, as is trailing data. An empty
// config leaves v as it is.
func DecodeConfig(config []byte, v any) error {
	if len(bytes.TrimSpace(config)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if _, err := dec.Token(); err == nil || dec.More() {
		return errors.New("config: unexpected data after the JSON object")
	}
	return nil
}

// onInit runs the on_init export.
func onInit() int32 {
	defer func() {
		if r := recover(); r != nil {
			panicked("Init", r)
		}
	}()
	if handleErr != nil {
		hostFail(handleErr.Error())
		return 1
	}
	if handler == nil {
		hostFail("no wrapper.Handler: call wrapper.Handle from an init func of package main")
		return 1
	}
	if handler.OnResponse == nil {
		hostSetPhases(abi.PhaseRequest)
	}
	hostSetCallBlock(&block)
	if handler.Init != nil {
		if err := handler.Init(readConfig()); err != nil {
			hostFail(err.Error())
			return 1
		}
	}
	return abi.InitOK
}

// onRequest runs the on_request export.
func onRequest() int32 {
	defer func() {
		if r := recover(); r != nil {
			panicked("OnRequest", r)
		}
	}()
	if handler == nil || handler.OnRequest == nil {
		hostFail("on_request before a successful on_init")
		return abi.ResultContinue
	}
	r := handler.OnRequest(request{})
	if r.action != abi.ResultContinue && (r.status != 0 || r.message != "") {
		hostSetReject(r.status, r.message)
	}
	return r.action
}

// onResponse runs the on_response export.
func onResponse() {
	defer func() {
		if r := recover(); r != nil {
			panicked("OnResponse", r)
		}
	}()
	if handler == nil || handler.OnResponse == nil {
		return
	}
	handler.OnResponse(request{})
}

// panicked turns a panic in the wrapper's code, what, into a failure of the guest call,
// with the panic's message; micro then handles it as a trap. It logs the stack first.
func panicked(what string, r any) {
	msg := fmt.Sprintf("panic in %s: %v", what, r)
	hostLog(abi.LogError, msg+"\n"+string(debug.Stack()))
	hostFail(msg)
}

// The fields of a call that the host writes into a guest buffer, numbered as abi's
// Field constants.
type field int

const (
	fieldService  field = abi.FieldService
	fieldEndpoint field = abi.FieldEndpoint
	fieldNode     field = abi.FieldNode
	fieldCaller   field = abi.FieldCaller
	fieldError    field = abi.FieldError
)

// request implements Request and Response over the call block and the host functions.
type request struct{}

func (request) Service() string  { return cachedField(fieldService) }
func (request) Endpoint() string { return cachedField(fieldEndpoint) }
func (request) Node() string     { return cachedField(fieldNode) }
func (request) Caller() string   { return cachedField(fieldCaller) }

func (request) Header(name string) (string, bool) {
	for {
		n := hostGetHeader(name, scratch)
		if n < 0 {
			return "", false
		}
		if int(n) <= len(scratch) {
			return internHeader(name, scratch[:n]), true
		}
		scratch = make([]byte, n)
	}
}

func (request) Budget() time.Duration        { return time.Duration(block.budget) }
func (request) SetHeader(name, value string) { hostSetHeader(name, value) }
func (request) Status() int                  { return int(block.status) }
func (request) Err() string                  { return cachedField(fieldError) }
func (request) Latency() time.Duration       { return time.Duration(block.latency) }
func (request) Fault() bool                  { return block.fault != 0 }

// scratch is the buffer the host writes values into; it grows to the largest value read.
var scratch = make([]byte, 256)

// The fields read so far: fieldValue[f] was read when the call block's version of f was
// fieldVersion[f]. micro changes the version whenever the value changes, and never uses 0.
var (
	fieldValue   [fieldError + 1]string
	fieldVersion [fieldError + 1]uint64
)

// cachedField returns one of the call's string fields, from the host only when it changed
// since it was last read. It is small enough to be inlined.
func cachedField(f field) string {
	if block.versions[f] == fieldVersion[f] {
		return fieldValue[f]
	}
	return readField(f)
}

// readField reads one of the call's string fields from the host, and caches it.
func readField(f field) string {
	for {
		n := hostGetField(f, scratch)
		if n <= 0 {
			fieldValue[f] = ""
			break
		}
		if int(n) <= len(scratch) {
			fieldValue[f] = string(scratch[:n])
			break
		}
		scratch = make([]byte, n)
	}
	fieldVersion[f] = block.versions[f]
	return fieldValue[f]
}

// lastHeaders holds the last header values read, for internHeader; next is the entry to
// replace.
var (
	lastHeaders [4]struct{ name, value string }
	nextHeader  int
)

// internHeader returns value as a string, reusing the string of an equal value read
// before for the same name.
func internHeader(name string, value []byte) string {
	for i := range lastHeaders {
		if e := &lastHeaders[i]; e.name == name && e.value == string(value) {
			return e.value
		}
	}
	e := &lastHeaders[nextHeader]
	nextHeader = (nextHeader + 1) % len(lastHeaders)
	e.name, e.value = name, string(value)
	return e.value
}

// readConfig reads the wrapper's config into a new slice.
func readConfig() []byte {
	buf := scratch
	for {
		n := hostGetConfig(buf)
		if n <= 0 {
			return nil
		}
		if int(n) <= len(buf) {
			return bytes.Clone(buf[:n])
		}
		buf = make([]byte, n)
	}
}

// The host's functions, as the guest sees them, are defined in host_wasip1.go over the
// Wasm imports, and in host_other.go over a host that plays micro (package wrappertest):
//
//	hostGetConfig(buf []byte) int32
//	hostGetField(f field, buf []byte) int32
//	hostGetHeader(name string, buf []byte) int32
//	hostGetLease(name string, demand uint64) (rate float64, held bool)
//	hostSetHeader(name, value string)
//	hostSetReplyHeader(name, value string)
//	hostSetReject(status int32, message string)
//	hostSetPhases(mask int32)
//	hostSetCallBlock(b *callBlock)
//	hostSetState(service, endpoint, node, value string)
//	hostLog(level int32, message string)
//	hostFail(message string) // does not return
//
// They are plain functions rather than an interface, since every call costs in a guest.
