// Package client makes resilient calls to services by name: it selects a node, sends the
// call over a pooled transport connection, and retries on another node within the call's
// deadline budget and the process's retry budget.
package client

import (
	"context"
	"errors"
	"fmt"
	jitter "github.com/microhost/micro/runtime/backoff"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"
)

// ID names the client in the errors it returns.
const ID = "micro.client"

// Selector picks nodes; *selector.Selector is one.
type Selector interface {
	Select(ctx context.Context, service, endpoint string, tried []string) (selector.Pick, error)
}

// Pool lends transport connections per node address; *pool.Pool is one.
type Pool interface {
	// Get returns a connection to addr, idle or new.
	Get(ctx context.Context, addr string) (transport.Conn, error)
	// Put gives c back after a call that ended with err; a conn that failed is closed.
	Put(addr string, c transport.Conn, err error)
	// Dial returns a new connection that is not pooled, for a stream.
	Dial(ctx context.Context, addr string) (transport.Conn, error)
}

// Observer is told about retries and hedges; *metrics.Metrics is one.
type Observer interface {
	// Retry records an attempt after a failed one.
	Retry(service string)
	// Attempt records an attempt on node: why it was made ("first", "retry" or "hedge"),
	// how it went ("ok", "failed": it counts against the node, or "abandoned": a hedge
	// answered first), how long it took, and the ID of its trace when the call is sampled.
	Attempt(service, endpoint, node, reason, outcome string, d time.Duration, traceID string)
}

// Options are the client's tunables. They can be replaced while calls run.
type Options struct {
	// Timeout is the budget of a call whose context has no deadline.
	Timeout time.Duration
	// Attempts is the most attempts per call, the first included.
	Attempts int
	// Backoff is the base of the jittered exponential backoff between attempts.
	Backoff time.Duration
	// BackoffMax caps one backoff.
	BackoffMax time.Duration
	// AttemptTimeout bounds one attempt of a call that is safe to repeat, when another
	// attempt may follow; 0 leaves it to Adaptive, and without that gives each attempt the
	// whole remaining budget.
	AttemptTimeout time.Duration
	// Adaptive derives the attempt timeout of such calls from the latencies seen per
	// service and endpoint, when neither AttemptTimeout nor the service's Route sets one.
	Adaptive Adaptive
	// Hedge sends a second attempt of a call that is safe to repeat to another node when
	// the first has not answered within a high quantile of the endpoint's latencies.
	Hedge Hedge
	// MinSamples is how many answers an endpoint must have had before its latencies
	// set attempt timeouts and hedge delays.
	MinSamples int
	// Routes holds settings per called service.
	Routes map[string]Route
	// RetryRatio and RetryMinPerSecond form the retry budget.
	RetryRatio        float64
	RetryMinPerSecond float64
}

// Adaptive is how attempt timeouts follow latencies: Factor times the Quantile of an
// endpoint's latencies, at least Min. A zero Quantile turns it off.
type Adaptive struct {
	Quantile float64
	Factor   float64
	Min      time.Duration
}

// Hedge is when a call that is safe to repeat sends a second attempt: once the first has
// taken the Quantile of its endpoint's latencies, at least Min. A zero Quantile turns
// hedging off.
type Hedge struct {
	Quantile float64
	Min      time.Duration
}

// Route holds the settings of the calls to one service.
type Route struct {
	// AttemptTimeout, when positive, is the attempt timeout of the service's calls that
	// are safe to repeat, in place of Options.AttemptTimeout and Adaptive.
	AttemptTimeout time.Duration
	// NoHedge turns hedging off for the service's calls.
	NoHedge bool
}

// Request is a call to an endpoint of a service.
type Request struct {
	Service string
	// Endpoint is the first segment of the call's path; "" for the root path.
	Endpoint string
	// Method is the call's HTTP method; "" means POST.
	Method string
	// Target is the path and query the app gets, escaped, e.g. "/users/42?expand=orders";
	// "" means "/" and the endpoint.
	Target string
	// Header is sent as it is; the client sets the Micro-* routing and budget headers.
	Header map[string]string
	Body   []byte
	// Idempotent declares the call safe to repeat, as if its endpoint were declared
	// idempotent.
	Idempotent bool
}

// repeatable reports whether req is safe to run again on another node after it may have
// reached node's app: the caller says so, its method is safe (GET, HEAD, OPTIONS, TRACE:
// HTTP's own promise that they change nothing), or node declares its endpoint idempotent.
func (req *Request) repeatable(node *registry.Node) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Idempotent || slices.Contains(node.Idempotent, req.Endpoint)
}

// Response is the answer of the node that served the call.
type Response struct {
	// Status is the HTTP status code the node answered with.
	Status int
	Header map[string]string
	Body   []byte
	// Node is the ID of the node that answered.
	Node string
	// Attempts counts the attempts made, the answering one included.
	Attempts int
}

// Client makes calls. It is safe for concurrent use.
type Client struct {
	sel    Selector
	pool   Pool
	obs    Observer
	logger *slog.Logger
	opts   atomic.Pointer[Options]
	chain  wrapper.Current
	retry  *retryBudget
	lat    latencies
	tracer *tracing.Tracer
	now    func() time.Time
}

// New returns a Client that selects nodes with sel and reaches them through pool.
func New(sel Selector, pool Pool, obs Observer, opts Options, logger *slog.Logger) *Client {
	c := &Client{sel: sel, pool: pool, obs: obs, logger: logger, retry: newRetryBudget(time.Now), now: time.Now}
	c.SetOptions(opts)
	return c
}

// SetTracer makes t record a span of each attempt of the calls it samples, and pass each
// attempt's traceparent on. Call it before the first call.
func (c *Client) SetTracer(t *tracing.Tracer) { c.tracer = t }

// SetChain makes chain the client wrappers of later calls and returns the chain it
// replaces, which the caller retires.
func (c *Client) SetChain(chain *wrapper.Chain) *wrapper.Chain { return c.chain.Store(chain) }

// SetOptions replaces the client's options; calls in flight keep the ones they started with.
func (c *Client) SetOptions(o Options) {
	if o.Attempts < 1 {
		o.Attempts = 1
	}
	c.opts.Store(&o)
	c.retry.configure(o.RetryRatio, o.RetryMinPerSecond)
}

// Exchange makes the attempts of one call: Attempt sends the call to a node and reads its
// answer, which the Exchange keeps (its headers and body are the engine's business) for the
// caller to pass on once the call ends. Engines differ: messages over a transport (Call,
// Stream), or HTTP straight to a node or to an app.
type Exchange interface {
	// Attempt sends the call to node with budget left and the headers client wrappers set
	// (extra), and returns the node's answer. sent reports whether the request went out,
	// so that the node may have acted on it; an error before that (no connection, a
	// failed send) means it cannot have. An Attempt replaces the answer of the one before.
	Attempt(ctx context.Context, node *registry.Node, budget time.Duration, extra map[string]string) (a Answer, sent bool, err error)
}

// Replayer is an Exchange that may be unable to send its request again: one whose body
// streams, and keeps only so much of what went out. Do retries a call through it only
// while Replayable reports true.
type Replayer interface {
	Replayable() bool
}

// Answer is what a node answered an attempt.
type Answer struct {
	// Status is the HTTP status.
	Status int
	// Error is the answer's transport.HeaderError: why micro at the node answered in place
	// of its app, or "" for the app's own answer.
	Error string
	// RetryAfter is the answer's Retry-After header, or "".
	RetryAfter string
	// Body is the answer's body, when Error is set: micro's JSON error, which explains a
	// failure. It may be nil otherwise.
	Body []byte
}

// Outcome is how a call that Do did not fail ended.
type Outcome struct {
	// Node is the ID of the node whose answer the Exchange holds.
	Node string
	// Attempts counts the attempts made, the answering one included.
	Attempts int
	// Rejection, when set, is the answer of a client wrapper that refused the call: the
	// Exchange holds no answer.
	Rejection *Response
}

// Call sends req to a node of req.Service over the transports, as messages, and returns the
// first answer that is not worth retrying, with the failures and rejections of Do.
func (c *Client) Call(ctx context.Context, req *Request) (*Response, error) {
	ex := &messageExchange{c: c, req: req}
	out, err := c.Do(ctx, req, ex)
	switch {
	case err != nil:
		return nil, err
	case out.Rejection != nil:
		return out.Rejection, nil
	}
	ex.resp.Node, ex.resp.Attempts = out.Node, out.Attempts
	return ex.resp, nil
}

// Do makes the call req through ex: it selects a node, runs the client wrappers, makes an
// attempt, and tries another node while the answer is worth retrying, within the call's
// budget and the client's retry budget. Failures are *callerr.Error values: 400 a request
// that cannot be sent, 404 unknown service, 503 no node, 502 upstream failed, 504 budget
// spent. A rejection by a client wrapper is Outcome.Rejection: a Response carrying the
// rejection's status and JSON error.
//
// A call runs at most once on an app unless it is safe to repeat: another node is tried
// when the attempt provably never reached an app (no connection, a request not sent, or
// micro at the node refused it before its app), and otherwise only when req is repeatable
// on that node (its method is safe, the caller marked it, or the node declares its endpoint
// idempotent).
func (c *Client) Do(ctx context.Context, req *Request, ex Exchange) (Outcome, error) {
	o := c.opts.Load()
	ctx, cancel, countTimeouts := c.budget(ctx, o)
	defer cancel()
	c.retry.deposit()
	chain := c.chain.Acquire()
	defer chain.Release()
	var (
		triedBuf [8]string
		tried    = triedBuf[:0]
		refused  []string // nodes a wrapper refused for this call
		last     *attemptResult
		reached  bool // some attempt may have reached an app
	)
	for attempt := 1; ; attempt++ {
		remaining, _ := budget.Remaining(ctx, c.now())
		if remaining < time.Microsecond || ctx.Err() != nil {
			return Outcome{}, c.spent(ctx, req, attempt-1, last)
		}
		pick, err := c.sel.Select(ctx, req.Service, req.Endpoint, tried)
		if err != nil {
			switch {
			case errors.Is(err, registry.ErrNotFound):
				c.logger.Debug("service not found", "service", req.Service, "err", err)
				return Outcome{}, callerr.New(ID, http.StatusNotFound, "service %q is not registered", req.Service)
			case last != nil:
				return Outcome{}, last.err
			default:
				return Outcome{}, callerr.New(ID, http.StatusServiceUnavailable, "no healthy node of %q: %v", req.Service, err)
			}
		}
		node := pick.Node()
		tried = append(tried, node.ID)
		call := wrapper.Call{Service: req.Service, Endpoint: req.Endpoint, Node: node.ID, Header: req.Header}
		call.Deadline, _ = ctx.Deadline()
		var ran wrapper.Ran
		v := chain.OnRequest(ctx, &call, &ran)
		switch v.Action {
		case wrapper.RejectNode:
			pick.Skip()
			if slices.Contains(refused, node.ID) {
				// Every node left was refused: the selector came back to one.
				return Outcome{Rejection: rejection(http.StatusServiceUnavailable, "no node of %q accepted by the client wrappers: %s", req.Service, v.Message)}, nil
			}
			refused = append(refused, node.ID)
			attempt-- // a refused node costs no attempt: nothing was sent
			continue
		case wrapper.Reject:
			pick.Skip()
			chain.OnResponse(ctx, &call, &wrapper.Result{Status: v.Status, Err: v.Message}, &ran)
			return Outcome{Rejection: rejected(v.Status, v)}, nil
		}
		repeatable := req.repeatable(node)
		fk, _ := ex.(Forker)
		limit, delay := c.plan(o, req, repeatable, attempt, remaining, fk != nil)
		t := try{pick: pick, node: node, call: call, ran: ran, extra: v.Header, limit: limit, ex: ex, num: attempt, why: "first"}
		if attempt > 1 {
			t.why = "retry"
		}
		final := &t
		if delay > 0 {
			var hedge *try
			final, hedge = c.race(ctx, o, req, fk, chain, tried, &t, delay, remaining, countTimeouts)
			if hedge != nil {
				attempt++
				tried = append(tried, hedge.node.ID)
			}
		} else {
			t.actx = ctx
			if limit > 0 {
				t.actx, t.cancel = context.WithTimeout(ctx, limit)
			}
			c.exec(ctx, &t, remaining, countTimeouts)
			c.settle(ctx, chain, req, &t, repeatable && (o.Adaptive.Quantile > 0 || o.Hedge.Quantile > 0))
		}
		node = final.node
		ans, err, r := final.ans, final.err, final.r
		if r.retry == never || (r.retry == ifRepeatable && !repeatable) {
			if err == nil && (r.retry == never || ans.Error == "") {
				return Outcome{Node: node.ID, Attempts: attempt}, nil
			}
			e := c.failure(ctx, req, node, final.limit, ans, err)
			if r.retry == ifRepeatable && e.Code != http.StatusGatewayTimeout {
				e.Detail += notRetried(req)
			}
			return Outcome{}, e
		}
		r.err = c.failure(ctx, req, node, final.limit, ans, err)
		reached = reached || r.retry != always
		failed := r // a copy, so that r itself stays on the stack
		last = &failed
		if r.err.Code == http.StatusGatewayTimeout && c.expired(ctx) {
			return Outcome{}, r.err
		}
		if attempt >= o.Attempts {
			return Outcome{}, gaveUp(req, last, reached, fmt.Sprintf("after %d attempts", attempt))
		}
		if rp, ok := ex.(Replayer); ok && !rp.Replayable() {
			return Outcome{}, gaveUp(req, last, reached, "not retried: more of the request body went out than the retry buffer keeps (client.retry_buffer)")
		}
		if !c.retry.withdraw() {
			return Outcome{}, gaveUp(req, last, reached, "retry budget exhausted")
		}
		if !c.backoff(ctx, o, attempt) {
			return Outcome{}, c.spent(ctx, req, attempt, last)
		}
		if c.obs != nil {
			c.obs.Retry(req.Service)
		}
	}
}

// budget gives ctx the client's default budget when it has no deadline. It reports whether
// a timeout counts against the node: a caller that asked for less than the default budget
// chose to give up early, and that is no fault of the node's.
func (c *Client) budget(ctx context.Context, o *Options) (context.Context, context.CancelFunc, bool) {
	if dl, ok := ctx.Deadline(); ok {
		return ctx, func() {}, dl.Sub(c.now()) >= o.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	return ctx, cancel, true
}

// gaveUp is the error of a call that stops retrying: 503 when the last node refused it for
// want of capacity (with its Retry-After), 502 otherwise; marked Unreached when no attempt
// may have reached an app.
func gaveUp(req *Request, last *attemptResult, reached bool, why string) *callerr.Error {
	code := http.StatusBadGateway
	if last.refused {
		code = http.StatusServiceUnavailable
	}
	e := callerr.New(ID, code, "%s (%s)", last.err.Detail, why)
	e.RetryAfter = last.retryAfter
	e.Unreached = !reached
	return e
}

// notRetried explains why a failed call that may have reached an app was not retried.
func notRetried(req *Request) string {
	return fmt.Sprintf("; not retried on another node, since the call may have reached the app and %s.%s is not declared idempotent", req.Service, req.Endpoint)
}

// Stream opens a stream to a node of req.Service: the same selection, wrappers, retries and
// budget as Call, for the opening only. On success it returns the open stream Conn, which
// the caller closes, and the node's ID; when the opening fails it returns the answer that
// ended it (a rejection, or the node's error) or a *callerr.Error.
func (c *Client) Stream(ctx context.Context, req *Request) (transport.Conn, string, *Response, error) {
	ex := &streamExchange{messageExchange{c: c, req: req}, nil}
	out, err := c.Do(ctx, req, ex)
	switch {
	case err != nil:
		return nil, "", nil, err
	case out.Rejection != nil:
		return nil, "", out.Rejection, nil
	case ex.conn != nil:
		return ex.conn, out.Node, nil, nil
	}
	ex.resp.Node, ex.resp.Attempts = out.Node, out.Attempts
	return nil, "", ex.resp, nil
}

// messageExchange makes a call's attempts as messages over the transports: one request
// message on a pooled connection, one response message back.
type messageExchange struct {
	c    *Client
	req  *Request
	resp *Response // the last answer
}

// Attempt implements Exchange.
func (ex *messageExchange) Attempt(ctx context.Context, node *registry.Node, remaining time.Duration, extra map[string]string) (Answer, bool, error) {
	m, status, sent, err := RoundTrip(ctx, ex.c.pool, node.Address, &transport.Message{Header: MessageHeader(ctx, ex.req, node, remaining, extra), Body: ex.req.Body})
	if err != nil {
		return Answer{}, sent, err
	}
	return ex.answer(m, status)
}

// RoundTrip sends request m to addr on a connection of pool and returns the answer, without
// its transport.HeaderStatus, and that status. When it fails, sent reports whether the
// request went out, so that the node may have acted on it.
func RoundTrip(ctx context.Context, pool Pool, addr string, m *transport.Message) (answer *transport.Message, status int, sent bool, err error) {
	conn, err := pool.Get(ctx, addr)
	if err != nil {
		return nil, 0, false, err
	}
	if err := conn.Send(ctx, m); err != nil {
		pool.Put(addr, conn, err)
		return nil, 0, false, err
	}
	answer, err = conn.Recv(ctx)
	pool.Put(addr, conn, err)
	if err != nil {
		return nil, 0, true, err
	}
	if status, err = answerStatus(answer); err != nil {
		return nil, 0, true, err
	}
	return answer, status, true, nil
}

// answerStatus reads, and removes, the transport.HeaderStatus of an answer message.
func answerStatus(m *transport.Message) (int, error) {
	status, err := strconv.Atoi(m.Header[transport.HeaderStatus])
	if err != nil || status < 100 || status > 999 {
		return 0, errors.New("node answered without a valid " + transport.HeaderStatus + " header")
	}
	delete(m.Header, transport.HeaderStatus)
	return status, nil
}

// Fork implements Forker.
func (ex *messageExchange) Fork() Exchange { return &messageExchange{c: ex.c, req: ex.req} }

// Adopt implements Forker.
func (ex *messageExchange) Adopt(fork Exchange) { ex.resp = fork.(*messageExchange).resp }

// answer keeps answer message m, of status, as ex.resp.
func (ex *messageExchange) answer(m *transport.Message, status int) (Answer, bool, error) {
	ex.resp = &Response{Status: status, Header: m.Header, Body: m.Body}
	return Answer{Status: status, Error: m.Header[transport.HeaderError], RetryAfter: m.Header["Retry-After"], Body: m.Body}, true, nil
}

// streamExchange opens a stream: the node answers the first message with status 101 when
// the stream is open, and any other answer ends the attempt with that answer.
type streamExchange struct {
	messageExchange
	conn transport.Conn // the open stream
}

// Fork implements Forker: a stream is never hedged, since its first attempt to open
// becomes the stream.
func (ex *streamExchange) Fork() Exchange { return nil }

// Attempt implements Exchange.
func (ex *streamExchange) Attempt(ctx context.Context, node *registry.Node, remaining time.Duration, extra map[string]string) (Answer, bool, error) {
	conn, err := ex.c.pool.Dial(ctx, node.Address)
	if err != nil {
		return Answer{}, false, err
	}
	h := MessageHeader(ctx, ex.req, node, remaining, extra)
	h[transport.HeaderStream] = "1"
	if err := conn.Send(ctx, &transport.Message{Header: h, Body: ex.req.Body}); err != nil {
		conn.Close()
		return Answer{}, false, err
	}
	m, err := conn.Recv(ctx)
	if err != nil {
		conn.Close()
		return Answer{}, true, err
	}
	if m.Header[transport.HeaderStatus] == strconv.Itoa(http.StatusSwitchingProtocols) {
		ex.conn = conn
		return Answer{Status: http.StatusSwitchingProtocols}, true, nil
	}
	conn.Close()
	status, err := answerStatus(m)
	if err != nil {
		return Answer{}, true, err
	}
	return ex.answer(m, status)
}

// MessageHeader is the message header of an attempt, made in ctx, of req on node: the
// request's headers, those client wrappers added (extra), micro's routing and budget
// headers, and the attempt's traceparent when ctx has one.
func MessageHeader(ctx context.Context, req *Request, node *registry.Node, remaining time.Duration, extra map[string]string) map[string]string {
	h := make(map[string]string, len(req.Header)+len(extra)+8)
	for k, v := range req.Header {
		h[k] = v
	}
	for k, v := range extra {
		h[k] = v
	}
	h[transport.HeaderService] = req.Service
	h[transport.HeaderEndpoint] = req.Endpoint
	if req.Method != "" {
		h[transport.HeaderMethod] = req.Method
	}
	if req.Target != "" {
		h[transport.HeaderPath] = req.Target
	}
	h[transport.HeaderNode] = node.ID
	h[transport.HeaderTimeout] = budget.Format(remaining)
	if tp := tracing.HeaderOf(ctx); tp != "" {
		h[tracing.Header] = tp
	}
	return h
}

// rejected is the answer to a call that a wrapper's verdict v rejected with status.
func rejected(status int, v wrapper.Verdict) *Response {
	resp := rejection(status, "%s", v.Message)
	for k, val := range v.ReplyHeader {
		resp.Header[k] = val
	}
	return resp
}

// rejection is the answer to a call that a wrapper rejected.
func rejection(status int, format string, args ...any) *Response {
	e := callerr.New(ID, status, format, args...)
	return &Response{Status: status, Header: map[string]string{"Content-Type": "application/json"}, Body: e.JSON()}
}

// retryRule says when another node may take a call whose attempt failed.
type retryRule uint8

const (
	// never: no other node would do better, or the budget is spent.
	never retryRule = iota
	// always: the attempt provably never reached an app.
	always
	// ifRepeatable: the attempt may have reached an app, so only a call that is safe to
	// repeat may run again elsewhere.
	ifRepeatable
)

// attemptResult is what one attempt's outcome means for the node and for the call.
type attemptResult struct {
	// health is what the attempt counts for in the node's health: only the node's own
	// faults count, never a caller's.
	health selector.Outcome
	retry  retryRule
	// refused is set when micro at the node refused the call for want of capacity, and
	// retryAfter is its Retry-After.
	refused    bool
	retryAfter string
	// err is the caller's error, should the call end here.
	err *callerr.Error
}

// judge reads the outcome of an attempt: its answer ans, or its error err (sent reporting
// whether the request went out). actx is the attempt's context, limited set when it had a
// deadline of its own; countTimeouts is set when a timeout of the call's budget counts
// against the node.
func (c *Client) judge(ctx, actx context.Context, limited bool, ans Answer, sent bool, err error, countTimeouts bool) attemptResult {
	slow := selector.Success
	if countTimeouts || limited {
		slow = selector.EndpointFailure
	}
	if err != nil {
		var me *transport.MessageError
		switch {
		case errors.As(err, &me):
			return attemptResult{health: selector.Success, retry: never}
		case errors.Is(ctx.Err(), context.Canceled):
			return attemptResult{health: selector.Success, retry: never} // the caller went away
		case c.expired(ctx):
			return attemptResult{health: slow, retry: never}
		case c.expired(actx):
			return attemptResult{health: selector.EndpointFailure, retry: ifRepeatable}
		case !sent || transport.IsConnectError(err):
			return attemptResult{health: selector.NodeFailure, retry: always}
		}
		return attemptResult{health: selector.NodeFailure, retry: ifRepeatable}
	}
	switch ans.Error {
	case "": // the app's own answer
		switch ans.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return attemptResult{health: selector.EndpointFailure, retry: ifRepeatable}
		}
		if ans.Status >= 500 {
			return attemptResult{health: selector.EndpointFailure, retry: never}
		}
		return attemptResult{health: selector.Success, retry: never}
	case transport.ErrorRefused:
		return attemptResult{health: selector.Success, retry: always, refused: true, retryAfter: ans.RetryAfter}
	case transport.ErrorUnavailable:
		return attemptResult{health: selector.NodeFailure, retry: always}
	case transport.ErrorApp:
		return attemptResult{health: selector.EndpointFailure, retry: ifRepeatable}
	case transport.ErrorTimeout:
		return attemptResult{health: slow, retry: ifRepeatable}
	case transport.ErrorReply:
		return attemptResult{health: selector.Success, retry: ifRepeatable}
	}
	return attemptResult{health: selector.Success, retry: never}
}

// failure is the caller's error for an attempt on node that failed with err, or that the
// node's micro answered with resp in place of its app.
func (c *Client) failure(ctx context.Context, req *Request, node *registry.Node, limit time.Duration, ans Answer, err error) *callerr.Error {
	if err == nil {
		code := http.StatusBadGateway
		if ans.Status >= 500 && ans.Status <= 599 {
			code = ans.Status
		}
		e := callerr.New(ID, code, "node %s of %q answered %d", node.ID, req.Service, ans.Status)
		if inner, ok := callerr.Parse(ans.Body); ok {
			e.Detail += ": " + inner.Detail
		}
		return e
	}
	var me *transport.MessageError
	switch {
	case errors.As(err, &me):
		if e := new(callerr.Error); errors.As(me.Err, &e) {
			return e
		}
		return callerr.New(ID, http.StatusBadRequest, "the request to %s.%s cannot be sent: %v", req.Service, req.Endpoint, me.Err)
	case errors.Is(ctx.Err(), context.Canceled):
		return callerr.New(ID, callerr.StatusClientClosed, "the caller went away during the call to %s.%s", req.Service, req.Endpoint)
	case c.expired(ctx):
		return callerr.New(ID, http.StatusGatewayTimeout, "budget spent waiting for node %s of %q", node.ID, req.Service)
	case errors.Is(err, context.DeadlineExceeded):
		return callerr.New(ID, http.StatusGatewayTimeout, "node %s of %q gave no answer within the attempt timeout of %s", node.ID, req.Service, limit)
	}
	if e := new(callerr.Error); errors.As(err, &e) {
		return e
	}
	return callerr.New(ID, http.StatusBadGateway, "node %s of %q failed: %v", node.ID, req.Service, err)
}

// expired reports whether ctx has ended or its deadline has passed. A transport's I/O
// deadline fires at the context's deadline, and may do so a moment before ctx.Err says so.
func (c *Client) expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !c.now().Before(dl)
}

// spent is the error of a call whose budget ran out before it could finish.
func (c *Client) spent(ctx context.Context, req *Request, attempts int, last *attemptResult) *callerr.Error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return callerr.New(ID, callerr.StatusClientClosed, "the caller went away during the call to %s.%s", req.Service, req.Endpoint)
	}
	detail := ""
	if last != nil {
		detail = "; last error: " + last.err.Detail
	}
	return callerr.New(ID, http.StatusGatewayTimeout, "budget for %s.%s spent after %d attempts%s", req.Service, req.Endpoint, attempts, detail)
}

// backoff sleeps before retry number n, with full jitter over an exponential ceiling. It
// returns false, without sleeping, when the sleep would outlast the budget.
func (c *Client) backoff(ctx context.Context, o *Options, n int) bool {
	d := jitter.Full(jitter.Exp(o.Backoff, o.BackoffMax, n-1))
	if d <= 0 {
		return true
	}
	if dl, ok := ctx.Deadline(); ok && c.now().Add(d).After(dl) {
		return false
	}
	return jitter.Sleep(ctx, d)
}
