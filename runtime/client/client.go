// Package client makes resilient calls to services by name: it selects a node, sends the
// call over a pooled transport connection, and retries on another node within the call's
// deadline budget and the process's retry budget.
package client

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/selector"
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

// Observer is told about retries; *metrics.Metrics is one.
type Observer interface {
	Retry(service string)
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
	// RetryRatio and RetryMinPerSecond form the retry budget.
	RetryRatio        float64
	RetryMinPerSecond float64
}

// Request is a call to an endpoint of a service.
type Request struct {
	Service  string
	Endpoint string
	// Header is sent as it is; the client sets the Micro-* routing and budget headers.
	Header map[string]string
	Body   []byte
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
	now    func() time.Time
}

// New returns a Client that selects nodes with sel and reaches them through pool.
func New(sel Selector, pool Pool, obs Observer, opts Options, logger *slog.Logger) *Client {
	c := &Client{sel: sel, pool: pool, obs: obs, logger: logger, retry: newRetryBudget(time.Now), now: time.Now}
	c.SetOptions(opts)
	return c
}

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

// Call sends req to a node of req.Service and returns the first answer that is not worth
// retrying. Failures are *callerr.Error values: 404 unknown service, 503 no node,
// 502 upstream failed after retries, 504 budget spent. A rejection by a client wrapper is
// returned as a Response carrying the rejection's status and JSON error.
func (c *Client) Call(ctx context.Context, req *Request) (*Response, error) {
	o := c.opts.Load()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	c.retry.deposit()
	chain := c.chain.Acquire()
	defer chain.Release()

	var (
		triedBuf [8]string
		tried    = triedBuf[:0]
		refused  []string // nodes a wrapper refused for this call
		lastErr  *callerr.Error
	)
	for attempt := 1; ; attempt++ {
		remaining, _ := budget.Remaining(ctx, c.now())
		if remaining < time.Microsecond || ctx.Err() != nil {
			return nil, c.spent(ctx, req, attempt-1, lastErr)
		}
		pick, err := c.sel.Select(ctx, req.Service, req.Endpoint, tried)
		if err != nil {
			switch {
			case errors.Is(err, registry.ErrNotFound):
				c.logger.Debug("service not found", "service", req.Service, "err", err)
				return nil, callerr.New(ID, http.StatusNotFound, "service %q is not registered", req.Service)
			case lastErr != nil:
				return nil, lastErr
			default:
				return nil, callerr.New(ID, http.StatusServiceUnavailable, "no healthy node of %q: %v", req.Service, err)
			}
		}
		node := pick.Node()
		tried = append(tried, node.ID)

		call := wrapper.Call{
			Service: req.Service, Endpoint: req.Endpoint, Node: node.ID,
			Caller: req.Header[transport.HeaderCaller], Header: req.Header,
		}
		call.Deadline, _ = ctx.Deadline()
		var ran wrapper.Ran
		v := chain.OnRequest(ctx, &call, &ran)
		switch v.Action {
		case wrapper.RejectNode:
			pick.Skip()
			if slices.Contains(refused, node.ID) {
				// Every node left was refused: the selector came back to one.
				return rejection(http.StatusServiceUnavailable, "no node of %q accepted by the client wrappers: %s", req.Service, v.Message), nil
			}
			refused = append(refused, node.ID)
			attempt-- // a refused node costs no attempt: nothing was sent
			continue
		case wrapper.Reject:
			pick.Skip()
			chain.OnResponse(ctx, &call, &wrapper.Result{Status: v.Status, Err: v.Message}, &ran)
			return rejected(v.Status, v), nil
		}

		start := c.now()
		resp, err := c.attempt(ctx, req, node, remaining, v.Header)
		latency := c.now().Sub(start)
		failed, retryable := classify(resp, err)
		pick.Done(latency, failed)
		if chain != nil {
			r := wrapper.Result{Latency: latency}
			if resp != nil {
				r.Status = resp.Status
			} else {
				r.Err = err.Error()
			}
			chain.OnResponse(ctx, &call, &r, &ran)
		}
		if !retryable {
			if err != nil {
				return nil, c.failure(ctx, req, node, err)
			}
			resp.Node, resp.Attempts = node.ID, attempt
			return resp, nil
		}
		lastErr = c.failure(ctx, req, node, err)
		if resp != nil {
			lastErr = answered(req, node, resp)
		}
		if lastErr.Code == http.StatusGatewayTimeout {
			return nil, lastErr
		}
		if attempt >= o.Attempts {
			return nil, callerr.New(ID, http.StatusBadGateway, "%s (after %d attempts)", lastErr.Detail, attempt)
		}
		if !c.retry.withdraw() {
			return nil, callerr.New(ID, http.StatusBadGateway, "%s (retry budget exhausted)", lastErr.Detail)
		}
		if !c.backoff(ctx, o, attempt) {
			return nil, c.spent(ctx, req, attempt, lastErr)
		}
		if c.obs != nil {
			c.obs.Retry(req.Service)
		}
	}
}

// Stream opens a stream to a node of req.Service: the same selection, wrappers, retries and
// budget as Call, for the opening only. On success it returns the open stream Conn, which
// the caller closes, and the node's ID; when the opening fails it returns the answer that
// ended it (a rejection, or the node's error) or a *callerr.Error.
func (c *Client) Stream(ctx context.Context, req *Request) (transport.Conn, string, *Response, error) {
	o := c.opts.Load()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	chain := c.chain.Acquire()
	defer chain.Release()

	var (
		tried   []string
		lastErr *callerr.Error
	)
	for attempt := 1; attempt <= o.Attempts; attempt++ {
		remaining, _ := budget.Remaining(ctx, c.now())
		if remaining < time.Microsecond || ctx.Err() != nil {
			return nil, "", nil, c.spent(ctx, req, attempt-1, lastErr)
		}
		pick, err := c.sel.Select(ctx, req.Service, req.Endpoint, tried)
		if err != nil {
			if errors.Is(err, registry.ErrNotFound) {
				return nil, "", nil, callerr.New(ID, http.StatusNotFound, "service %q is not registered", req.Service)
			}
			if lastErr != nil {
				return nil, "", nil, lastErr
			}
			return nil, "", nil, callerr.New(ID, http.StatusServiceUnavailable, "no healthy node of %q: %v", req.Service, err)
		}
		node := pick.Node()
		tried = append(tried, node.ID)
		call := wrapper.Call{Service: req.Service, Endpoint: req.Endpoint, Node: node.ID, Caller: req.Header[transport.HeaderCaller], Header: req.Header}
		call.Deadline, _ = ctx.Deadline()
		var ran wrapper.Ran
		v := chain.OnRequest(ctx, &call, &ran)
		if v.Action != wrapper.Continue {
			pick.Skip()
			status := v.RejectStatus()
			chain.OnResponse(ctx, &call, &wrapper.Result{Status: status, Err: v.Message}, &ran)
			return nil, "", rejected(status, v), nil
		}

		start := c.now()
		conn, resp, err := c.open(ctx, req, node, remaining, v.Header)
		latency := c.now().Sub(start)
		if conn != nil {
			pick.Done(latency, false)
			chain.OnResponse(ctx, &call, &wrapper.Result{Status: http.StatusSwitchingProtocols, Latency: latency}, &ran)
			return conn, node.ID, nil, nil
		}
		failed, retryable := classify(resp, err)
		pick.Done(latency, failed)
		r := wrapper.Result{Latency: latency}
		if err != nil {
			r.Err = err.Error()
		} else {
			r.Status = resp.Status
		}
		chain.OnResponse(ctx, &call, &r, &ran)
		if !retryable {
			if err != nil {
				return nil, "", nil, c.failure(ctx, req, node, err)
			}
			return nil, "", resp, nil
		}
		lastErr = c.failure(ctx, req, node, err)
		if resp != nil {
			lastErr = answered(req, node, resp)
		}
		if lastErr.Code == http.StatusGatewayTimeout || !c.retry.withdraw() || !c.backoff(ctx, o, attempt) {
			return nil, "", nil, lastErr
		}
		if c.obs != nil {
			c.obs.Retry(req.Service)
		}
	}
	return nil, "", nil, callerr.New(ID, http.StatusBadGateway, "%s (after %d attempts)", lastErr.Detail, o.Attempts)
}

// open dials node and asks it to open a stream. The node answers its first message with
// status 101 when the stream is open; any other answer ends the attempt with that answer.
func (c *Client) open(ctx context.Context, req *Request, node *registry.Node, remaining time.Duration, extra map[string]string) (transport.Conn, *Response, error) {
	conn, err := c.pool.Dial(ctx, node.Address)
	if err != nil {
		return nil, nil, err
	}
	h := header(req, node, remaining, extra)
	h[transport.HeaderStream] = "1"
	err = conn.Send(ctx, &transport.Message{Header: h, Body: req.Body})
	var m *transport.Message
	if err == nil {
		m, err = conn.Recv(ctx)
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	status, convErr := strconv.Atoi(m.Header[transport.HeaderStatus])
	if convErr != nil || status < 100 || status > 999 {
		conn.Close()
		return nil, nil, errors.New("node answered a stream without a valid " + transport.HeaderStatus + " header")
	}
	if status == http.StatusSwitchingProtocols {
		return conn, nil, nil
	}
	conn.Close()
	delete(m.Header, transport.HeaderStatus)
	return nil, &Response{Status: status, Header: m.Header, Body: m.Body, Node: node.ID}, nil
}

// header is the message header of an attempt on node: the request's headers, those a
// wrapper added, and micro's routing and budget headers.
func header(req *Request, node *registry.Node, remaining time.Duration, extra map[string]string) map[string]string {
	h := make(map[string]string, len(req.Header)+len(extra)+5)
	for k, v := range req.Header {
		h[k] = v
	}
	for k, v := range extra {
		h[k] = v
	}
	h[transport.HeaderService] = req.Service
	h[transport.HeaderEndpoint] = req.Endpoint
	h[transport.HeaderNode] = node.ID
	h[transport.HeaderTimeout] = budget.Format(remaining)
	return h
}

// answered is the error of an attempt whose node answered with a retryable status.
func answered(req *Request, node *registry.Node, resp *Response) *callerr.Error {
	e := callerr.New(ID, http.StatusBadGateway, "node %s of %q answered %d", node.ID, req.Service, resp.Status)
	if inner, ok := callerr.Parse(resp.Body); ok {
		e.Detail += ": " + inner.Detail
	}
	return e
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

// attempt makes one attempt on node with the remaining budget.
func (c *Client) attempt(ctx context.Context, req *Request, node *registry.Node, remaining time.Duration, extra map[string]string) (*Response, error) {
	conn, err := c.pool.Get(ctx, node.Address)
	if err != nil {
		return nil, err
	}
	h := header(req, node, remaining, extra)
	err = conn.Send(ctx, &transport.Message{Header: h, Body: req.Body})
	var m *transport.Message
	if err == nil {
		m, err = conn.Recv(ctx)
	}
	c.pool.Put(node.Address, conn, err)
	if err != nil {
		return nil, err
	}
	status, convErr := strconv.Atoi(m.Header[transport.HeaderStatus])
	if convErr != nil || status < 100 || status > 999 {
		return nil, errors.New("node answered without a valid " + transport.HeaderStatus + " header")
	}
	delete(m.Header, transport.HeaderStatus)
	return &Response{Status: status, Header: m.Header, Body: m.Body}, nil
}

// classify says whether an attempt counts as a node failure, and whether another node may
// be tried: on connect errors and 502, 503 and 504, as DESIGN.md's retry policy says.
func classify(resp *Response, err error) (failed, retryable bool) {
	if err != nil {
		return true, true
	}
	switch resp.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true, true
	}
	return resp.Status >= 500, false
}

// failure turns a transport error on node into the caller's error.
func (c *Client) failure(ctx context.Context, req *Request, node *registry.Node, err error) *callerr.Error {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return callerr.New(ID, http.StatusGatewayTimeout, "budget spent waiting for node %s of %q", node.ID, req.Service)
	}
	if e := new(callerr.Error); errors.As(err, &e) {
		return e
	}
	return callerr.New(ID, http.StatusBadGateway, "node %s of %q failed: %v", node.ID, req.Service, err)
}

// spent is the error of a call whose budget ran out before it could finish.
func (c *Client) spent(ctx context.Context, req *Request, attempts int, last *callerr.Error) *callerr.Error {
	detail := ""
	if last != nil {
		detail = "; last error: " + last.Detail
	}
	return callerr.New(ID, http.StatusGatewayTimeout, "budget for %s.%s spent after %d attempts%s", req.Service, req.Endpoint, attempts, detail)
}

// backoff sleeps before retry number n, with full jitter over an exponential ceiling. It
// returns false, without sleeping, when the sleep would outlast the budget.
func (c *Client) backoff(ctx context.Context, o *Options, n int) bool {
	ceil := o.Backoff << (n - 1)
	if ceil > o.BackoffMax || ceil <= 0 {
		ceil = o.BackoffMax
	}
	if ceil <= 0 {
		return true
	}
	d := rand.N(ceil) + 1
	if dl, ok := ctx.Deadline(); ok && c.now().Add(d).After(dl) {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
