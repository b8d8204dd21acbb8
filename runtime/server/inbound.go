package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/upstream"
	"github.com/microhost/micro/runtime/wrapper"

	"go.opentelemetry.io/otel/attribute"
)

// traceCall starts the span of a call to service's endpoint that came from another micro
// with message header h: under its traceparent when that is valid, else as the root of a
// new trace, whose tracestate it then removes from h.
func (in *Inbound) traceCall(ctx context.Context, h map[string]string, service, endpoint string) (context.Context, tracing.Span) {
	_, tp := tracing.Lookup(h, tracing.Header)
	ctx, span, validParent := in.cfg.Tracer.Server(ctx, tp, "inbound")
	if span.Recording() {
		span.Set(attribute.String("micro.service", service), attribute.String("micro.endpoint", endpoint))
	}
	if !validParent {
		tracing.Del(h, tracing.HeaderState)
	}
	return ctx, span
}

// InboundID names the inbound server in the errors it returns.
const InboundID = "micro.inbound"

// Apps finds the app instance that serves a call to a fronted service.
type Apps interface {
	// Resolve returns the base URL of the app instance for nodeID of service, or of any
	// ready instance of service when nodeID is not one of them. It reports false when the
	// service has no ready instance here.
	Resolve(service, nodeID string) (baseURL string, ok bool)
	// Local returns the base URL of the app instance for nodeID of service, when nodeID is
	// one of this micro's nodes: a call picked to it skips the hop to the inbound server.
	Local(service, nodeID string) (baseURL string, ok bool)
}

// InboundConfig wires an Inbound server.
type InboundConfig struct {
	// Tracer records the spans of sampled calls; nil records none.
	Tracer   *tracing.Tracer
	Apps     Apps
	Recorder Recorder
	Logger   *slog.Logger
	// HTTP is the client that reaches the apps from the message path and opens streams.
	HTTP *http.Client
	// Upstream is the client that reaches the apps from the HTTP/1.1 path.
	Upstream *upstream.Client
	// H2C reaches apps over HTTP/2 without TLS, for the calls that come over HTTP/2 (and
	// other micro processes too, unless the ingress's FastPath.H2Peers is set).
	H2C http.RoundTripper
	// Settings are the first settings; Set changes them. MaxBody bounds the app's
	// responses; the transport bounds requests.
	Settings Settings
	// Self is this micro's own identity: the caller of the calls that the ingress serves
	// straight from a local app to another. Nil is the zero Peer.
	Self func() Peer
}

// Inbound serves calls that other micro processes send to the services fronted here: it
// checks the call and its budget and forwards it to its app as POST {app}/{endpoint}.
//
// Every answer that micro gives in place of the app carries a transport.HeaderError that
// tells the caller whether the app may have seen the call and whether the node is at fault,
// and no input, however malformed, stops the server: a panic while serving a call is
// logged and answered 500.
type Inbound struct {
	cfg      InboundConfig
	settings settings
	gate     gate
	chain    wrapper.Current
	apps     appTargets
	wg       sync.WaitGroup
}

// NewInbound returns an inbound server; Serve runs it on a listener.
func NewInbound(cfg InboundConfig) *Inbound {
	in := &Inbound{cfg: cfg}
	in.settings.store(cfg.Settings)
	return in
}

// SetChain makes chain the server wrappers of later calls and returns the chain it
// replaces, which the caller retires.
func (in *Inbound) SetChain(chain *wrapper.Chain) *wrapper.Chain { return in.chain.Store(chain) }

// self is this micro's own identity.
func (in *Inbound) self() Peer {
	if in.cfg.Self == nil {
		return Peer{}
	}
	return in.cfg.Self()
}

// Set changes the settings of later calls.
func (in *Inbound) Set(s Settings) { in.settings.store(s) }

// Serve accepts calls from l until it is closed. Calls already accepted go on; Wait waits
// for them.
func (in *Inbound) Serve(ctx context.Context, l transport.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, transport.ErrClosed) {
				return nil
			}
			return fmt.Errorf("inbound accept on %s: %w", l.Addr(), err)
		}
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			defer conn.Close()
			in.handle(ctx, conn)
		}()
	}
}

// Wait blocks until every accepted call has been answered, or ctx ends.
func (in *Inbound) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { in.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("inbound drain: %w", ctx.Err())
	}
}

// handle serves one accepted conn. A server Conn that reports its caller's lifetime
// (interface{ Context() context.Context }) cancels the call, and the app's request, when
// the caller goes away.
func (in *Inbound) handle(ctx context.Context, conn transport.Conn) {
	start := time.Now()
	var req *transport.Message
	replied := false
	defer func() {
		if p := recover(); p != nil {
			attrs := []any{}
			if req != nil {
				attrs = append(attrs, "service", req.Header[transport.HeaderService], "endpoint", req.Header[transport.HeaderEndpoint])
			}
			detail := recovered(in.cfg.Logger, p, "an inbound call", attrs...)
			if !replied {
				in.reply(ctx, conn, callerr.New(InboundID, http.StatusInternalServerError, "%s", detail), transport.ErrorInternal)
			}
		}
	}()
	st := in.settings.load()
	if e := in.gate.enter(InboundID, st.MaxInflight); e != nil {
		replied = true
		in.reply(ctx, conn, e, transport.ErrorRefused)
		in.cfg.Recorder.Inbound("", e.Code, time.Since(start))
		return
	}
	defer in.gate.leave()
	req, err := conn.Recv(ctx)
	if err != nil {
		status := http.StatusBadRequest
		if se, ok := err.(interface{ StatusCode() int }); ok {
			status = se.StatusCode()
		}
		replied = true
		in.reply(ctx, conn, callerr.New(InboundID, status, "%v", err), transport.ErrorCaller)
		in.cfg.Recorder.Inbound("", status, time.Since(start))
		return
	}
	if req.Header[transport.HeaderStream] == "1" {
		in.stream(ctx, conn, req, start)
		return
	}
	callCtx := ctx
	if cc, ok := conn.(interface{ Context() context.Context }); ok {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(cc.Context(), cancel)
		defer stop()
	}
	service := req.Header[transport.HeaderService]
	code, resp := in.forward(callCtx, req, st, start, peerOfConn(conn))
	in.cfg.Recorder.Inbound(service, code, time.Since(start))
	replied = true
	if err := conn.Send(ctx, resp); err != nil {
		in.cfg.Logger.Debug("inbound reply not delivered", "service", service, "err", err)
	}
}

// checkCall validates the routing headers of a call (or a stream's opening) and returns its
// budget, cut to the settings' MaxBudget.
func checkCall(req *transport.Message, st *Settings) (time.Duration, *callerr.Error) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	if err := checkName("service", service); err != nil {
		return 0, callerr.New(InboundID, http.StatusBadRequest, "%v", err)
	}
	if err := checkEndpoint(endpoint); err != nil {
		return 0, callerr.New(InboundID, http.StatusBadRequest, "%v", err)
	}
	tv, ok := req.Header[transport.HeaderTimeout]
	if !ok {
		return 0, callerr.New(InboundID, http.StatusBadRequest, "missing %s header", transport.HeaderTimeout)
	}
	d, err := budget.Parse(tv)
	if err != nil {
		return 0, callerr.New(InboundID, http.StatusBadRequest, "%v", err)
	}
	return min(d, st.MaxBudget), nil
}

// forward passes req, from caller, to its app and returns the app's answer as a response
// message.
func (in *Inbound) forward(ctx context.Context, req *transport.Message, st *Settings, start time.Time, caller Peer) (int, *transport.Message) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	fail := func(e *callerr.Error, kind string) (int, *transport.Message) { return e.Code, errorMessage(e, kind) }

	d, e := checkCall(req, st)
	if e == nil {
		e = admit(st, service, caller)
	}
	if e != nil {
		return fail(e, transport.ErrorCaller)
	}
	// The budget counts from when the call arrived here.
	deadline := start.Add(d)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ctx, span := in.traceCall(ctx, req.Header, service, endpoint)
	var code int
	if span.Recording() {
		defer func() { endCall(span, code) }()
	}
	if time.Until(deadline) < time.Millisecond {
		return fail(callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s for %s.%s is spent", budget.Format(d), service, endpoint), transport.ErrorRefused)
	}
	chain := in.chain.Acquire()
	defer chain.Release()
	call := wrapper.Call{
		Service: service, Endpoint: endpoint, Node: req.Header[transport.HeaderNode],
		Caller: caller.Name(), Header: req.Header, Body: req.Body, BodyHeld: true, Deadline: deadline,
	}
	var m *transport.Message
	var kind string
	var rejected *wrapper.Verdict
	code, kind, _, rejected = in.wrapApp(ctx, chain, &call, start, func(v *wrapper.Verdict) (int, string, string) {
		var code int
		var failure string
		out := req
		if v.SetBody {
			out = &transport.Message{Header: req.Header, Body: v.Body}
		}
		code, m, failure = in.toApp(ctx, out, v.Header, st, deadline, caller)
		return code, m.Header[transport.HeaderError], failure
	})
	if rejected != nil {
		m = errorMessage(callerr.New(InboundID, code, "%s", rejected.Message), kind)
		for k, val := range rejected.ReplyHeader {
			m.Header[k] = val
		}
	}
	return code, m
}

// wrapApp runs the server wrappers of chain around send, which forwards call to its app with
// the headers the wrappers set and returns the answer's status, its transport.Error kind
// ("" for the app's own answer) and, when no answer came from the app, why. A wrapper that
// rejects the call is returned as rejected, with the status and kind to answer; send is not
// called then.
func (in *Inbound) wrapApp(ctx context.Context, chain *wrapper.Chain, call *wrapper.Call, start time.Time,
	send func(v *wrapper.Verdict) (code int, kind, failure string)) (code int, kind, failure string, rejected *wrapper.Verdict) {
	var ran wrapper.Ran
	v := chain.OnRequest(ctx, call, &ran)
	if v.Action != wrapper.Continue {
		status := v.RejectStatus()
		chain.OnResponse(ctx, call, &wrapper.Result{Status: status, Err: v.Message}, &ran)
		kind := transport.ErrorCaller
		if status >= 500 {
			kind = transport.ErrorRefused // micro at this node refused; another node may take it
		}
		return status, kind, v.Message, &v
	}
	code, kind, failure = send(&v)
	if chain != nil {
		r := wrapper.Result{Status: code, Latency: time.Since(start)}
		switch {
		case kind == "":
			r.Fault = code >= 500
		case failure != "":
			r.Status, r.Err = 0, failure // no answer from the app
			r.Fault = kind == transport.ErrorUnavailable || kind == transport.ErrorApp || kind == transport.ErrorTimeout
		}
		chain.OnResponse(ctx, call, &r, &ran)
	}
	return code, kind, failure, nil
}

// toApp forwards req, with the headers extra that server wrappers set, to an instance of
// its service's app and returns the app's answer. failure describes why no answer came.
func (in *Inbound) toApp(ctx context.Context, req *transport.Message, extra map[string]string, st *Settings, deadline time.Time, caller Peer) (code int, reply *transport.Message, failure string) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	fail := func(e *callerr.Error, kind string) (int, *transport.Message, string) {
		return e.Code, errorMessage(e, kind), e.Detail
	}
	base, ok := in.cfg.Apps.Resolve(service, req.Header[transport.HeaderNode])
	if !ok {
		return fail(callerr.New(InboundID, http.StatusServiceUnavailable, "service %q has no ready instance here", service), transport.ErrorUnavailable)
	}

	method, target := requestLine(req.Header)
	var reqBody io.Reader = http.NoBody
	if len(req.Body) > 0 {
		reqBody = bytes.NewReader(req.Body)
	}
	actx, span := in.cfg.Tracer.Client(ctx, "app")
	hr, err := http.NewRequestWithContext(actx, method, base+target, reqBody)
	if err != nil {
		return fail(callerr.New(InboundID, http.StatusBadRequest, "building request to %s: %v", base, err), transport.ErrorCaller)
	}
	hr.Header = appHeader(req.Header, extra, deadline, caller)
	setTraceparent(actx, hr.Header)
	hresp, err := in.cfg.HTTP.Do(hr)
	if span.Recording() {
		status := 0
		if err == nil {
			status = hresp.StatusCode
		}
		endCall(span, status)
	}
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			return fail(callerr.New(InboundID, callerr.StatusClientClosed, "the caller went away during the call to %s.%s", service, endpoint), transport.ErrorCaller)
		case ctx.Err() != nil:
			return fail(callerr.New(InboundID, http.StatusGatewayTimeout, "budget spent waiting for %s.%s", service, endpoint), transport.ErrorTimeout)
		case transport.IsConnectError(err):
			return fail(callerr.New(InboundID, http.StatusServiceUnavailable, "app of %q at %s: %v", service, base, err), transport.ErrorUnavailable)
		}
		return fail(callerr.New(InboundID, http.StatusBadGateway, "app of %q at %s: %v", service, base, err), transport.ErrorApp)
	}
	defer hresp.Body.Close()
	limit := st.MaxBody
	body, err := io.ReadAll(io.LimitReader(hresp.Body, limit+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return fail(callerr.New(InboundID, http.StatusGatewayTimeout, "budget spent reading the reply of %s.%s", service, endpoint), transport.ErrorTimeout)
	case err != nil:
		return fail(callerr.New(InboundID, http.StatusBadGateway, "reading the reply of %q at %s: %v", service, base, err), transport.ErrorApp)
	case int64(len(body)) > limit:
		return fail(callerr.New(InboundID, http.StatusBadGateway, "the reply of %s.%s exceeds the limit of %d bytes (server.max_body)", service, endpoint, limit), transport.ErrorReply)
	}
	h := filterHeader(hresp.Header)
	h[transport.HeaderStatus] = strconv.Itoa(hresp.StatusCode)
	return hresp.StatusCode, &transport.Message{Header: h, Body: body}, ""
}

// requestLine returns the method and target of a call message: HeaderMethod (default POST)
// and HeaderPath (default "/" and the escaped endpoint).
func requestLine(h map[string]string) (method, target string) {
	method, target = http.MethodPost, h[transport.HeaderPath]
	if m := h[transport.HeaderMethod]; m != "" {
		method = m
	}
	if target == "" {
		target = "/" + url.PathEscape(h[transport.HeaderEndpoint])
	}
	return method, target
}

// appHeader is the header of a call's request to its app: the caller's end-to-end headers
// and those the server wrappers set, without any Micro-* header the caller sent but a
// delivery's (broker.IsDeliveryHeader), and micro's own: the budget, and the caller that
// its connection proved (Micro-Caller), when one did.
func appHeader(h, extra map[string]string, deadline time.Time, caller Peer) http.Header {
	out := make(http.Header, len(h)+len(extra)+1)
	for _, m := range []map[string]string{h, extra} {
		for k, v := range m {
			if ck := http.CanonicalHeaderKey(k); (!transport.IsMicroHeader(ck) || broker.IsDeliveryHeader(ck)) && !hopByHop(ck) {
				out[ck] = strings.Split(v, transport.ValueSep)
			}
		}
	}
	out.Set(transport.HeaderTimeout, budget.Format(time.Until(deadline)))
	if name := caller.Name(); name != "" {
		out.Set(transport.HeaderCaller, name)
	}
	return out
}

func (in *Inbound) reply(ctx context.Context, conn transport.Conn, e *callerr.Error, kind string) {
	if err := conn.Send(ctx, errorMessage(e, kind)); err != nil {
		in.cfg.Logger.Debug("inbound error reply not delivered", "err", err)
	}
}

// errorMessage is the response message of e, which micro gives in place of the app, marked
// with kind, one of the transport.Error values.
func errorMessage(e *callerr.Error, kind string) *transport.Message {
	h := map[string]string{
		transport.HeaderStatus: strconv.Itoa(e.Code),
		transport.HeaderError:  kind,
		"Content-Type":         "application/json",
	}
	if e.RetryAfter != "" {
		h["Retry-After"] = e.RetryAfter
	}
	return &transport.Message{Header: h, Body: e.JSON()}
}
