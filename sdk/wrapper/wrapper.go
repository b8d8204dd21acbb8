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
// The wire contract under this package is in abi/wrapper and abi/README.md.
package wrapper

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
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
	// Budget is the call's remaining time. It is very large when the call has no deadline.
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
	call      request // the call in progress, reused
)

// Handle registers h as the wrapper's code. Call it once, from an init func of package main.
// Mistakes (a second call, a nil OnRequest) make micro refuse to load the wrapper, with a
// message that says so.
func Handle(h Handler) {
	switch {
	case handler != nil:
		handleErr = errors.New("wrapper.Handle called more than once")
	case h.OnRequest == nil:
		handleErr = errors.New("wrapper.Handle: Handler.OnRequest is nil")
	}
	handler = &h
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
	defer recoverAsFailure("Init")
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
	defer recoverAsFailure("OnRequest")
	if handler == nil || handler.OnRequest == nil {
		hostFail("on_request before a successful on_init")
		return abi.ResultContinue
	}
	call = request{}
	r := handler.OnRequest(&call)
	if r.action != abi.ResultContinue && (r.status != 0 || r.message != "") {
		hostSetReject(r.status, r.message)
	}
	return r.action
}

// onResponse runs the on_response export.
func onResponse() {
	defer recoverAsFailure("OnResponse")
	if handler == nil || handler.OnResponse == nil {
		return
	}
	call = request{}
	handler.OnResponse(&call)
}

// recoverAsFailure turns a panic in the wrapper's code into a failure of the guest call,
// with the panic's message; micro then handles it as a trap. It logs the stack first.
func recoverAsFailure(what string) {
	r := recover()
	if r == nil {
		return
	}
	msg := fmt.Sprintf("panic in %s: %v", what, r)
	hostLog(abi.LogError, msg+"\n"+string(debug.Stack()))
	hostFail(msg)
}

// The fields of a call that the host writes into a guest buffer.
type field int

const (
	fieldService field = iota
	fieldEndpoint
	fieldNode
	fieldCaller
	fieldError
)

// request implements Request and Response over the host functions. It caches the fields it
// has read, since they do not change during a call.
type request struct {
	have                            uint8 // bit i set: the field i is cached
	service, endpoint, node, caller string
}

func (r *request) field(f field, cached *string) string {
	if r.have&(1<<f) == 0 {
		*cached = readField(f)
		r.have |= 1 << f
	}
	return *cached
}

func (r *request) Service() string  { return r.field(fieldService, &r.service) }
func (r *request) Endpoint() string { return r.field(fieldEndpoint, &r.endpoint) }
func (r *request) Node() string     { return r.field(fieldNode, &r.node) }
func (r *request) Caller() string   { return r.field(fieldCaller, &r.caller) }

func (r *request) Header(name string) (string, bool) {
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

func (r *request) Budget() time.Duration        { return time.Duration(hostGetBudget()) }
func (r *request) SetHeader(name, value string) { hostSetHeader(name, value) }
func (r *request) Status() int                  { return int(hostGetStatus()) }
func (r *request) Err() string                  { return readField(fieldError) }
func (r *request) Latency() time.Duration       { return time.Duration(hostGetLatency()) }
func (r *request) Fault() bool                  { return hostGetFault() != 0 }

// scratch is the buffer the host writes values into; it grows to the largest value read.
var scratch = make([]byte, 256)

// readField reads one of the call's string fields.
func readField(f field) string {
	for {
		n := hostGetField(f, scratch)
		if n <= 0 {
			return ""
		}
		if int(n) <= len(scratch) {
			// Most calls repeat the last call's values: reuse its string rather than
			// allocate an equal one.
			if b := scratch[:n]; string(b) != lastField[f] {
				lastField[f] = string(b)
			}
			return lastField[f]
		}
		scratch = make([]byte, n)
	}
}

// lastField holds the last value read of each field.
var lastField [fieldError + 1]string

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
// Wasm imports, and in host_other.go over a fake for tests:
//
//	hostGetConfig(buf []byte) int32
//	hostGetField(f field, buf []byte) int32
//	hostGetHeader(name string, buf []byte) int32
//	hostGetBudget() int64
//	hostSetHeader(name, value string)
//	hostSetReplyHeader(name, value string)
//	hostSetReject(status int32, message string)
//	hostGetStatus() int32
//	hostGetLatency() int64
//	hostGetFault() int32
//	hostSetPhases(mask int32)
//	hostLog(level int32, message string)
//	hostFail(message string) // does not return
//
// They are plain functions rather than an interface, since every call costs in a guest.
