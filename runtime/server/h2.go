package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"

	"go.opentelemetry.io/otel/attribute"
)

// This file is the HTTP/2 path: calls that come to the ingress or the inbound server over
// HTTP/2 without TLS (h2c), which is how gRPC apps, and other HTTP/2 apps, speak. Bodies
// stream both ways, trailers pass, and every hop (ingress, inbound, app) is HTTP/2 on
// long-lived multiplexed connections.
//
// A call over HTTP/2 names its service in one of two ways: as its authority, when that is
// not a name of the ingress itself (a gRPC client dials the ingress with the service as its
// authority), and otherwise as the first segment of its path, as on HTTP/1.1. The budget
// (Micro-Timeout, or a gRPC call's grpc-timeout) bounds the wait for the answer's headers,
// and the caller's own deadline, when it set one, the whole exchange: a stream outlives the
// default budget when its caller did not ask for less.

// maxErrorBody bounds the body of micro's own answer read from another micro.
const maxErrorBody = 64 << 10

// relayBufs holds the buffers that relay copies bodies with.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// callH2 serves a call that came to the ingress over HTTP/2. byAuthority is set when the
// request's authority names the service. There is no browser check: browsers speak HTTP/2
// only over TLS, which the ingress does not.
func (in *Ingress) callH2(w http.ResponseWriter, r *http.Request, st *Settings, byAuthority bool) {
	start := time.Now()
	grpc := isGRPC(r.Header)
	host := ""
	if byAuthority {
		host = hostname(r.Host)
	}
	service, endpoint, target, _, err := route(host, r.URL.EscapedPath(), r.URL.RawQuery)
	if err != nil {
		if grpc && !byAuthority {
			err = fmt.Errorf("%w (a gRPC call names its service as its authority, e.g. grpc.WithAuthority(%q))", err, "greeter")
		}
		in.cfg.Recorder.Call("", http.StatusBadRequest, time.Since(start))
		writeH2Error(w, callerr.New(IngressID, http.StatusBadRequest, "%v", err), grpc)
		return
	}
	if grpc {
		endpoint = grpcEndpoint(target, endpoint)
	}
	code := http.StatusOK
	defer func() { in.cfg.Recorder.Call(service, code, time.Since(start)) }()
	fail := func(e *callerr.Error) {
		code = e.Code
		writeH2Error(w, e, grpc)
	}
	defer func() {
		if p := recover(); p != nil {
			detail := recovered(in.log, p, "an HTTP/2 call at the ingress", "method", r.Method, "path", truncate(r.URL.Path), "remote", r.RemoteAddr)
			fail(callerr.New(IngressID, http.StatusInternalServerError, "%s", detail))
		}
	}()
	if r.Method == http.MethodConnect {
		fail(callerr.New(IngressID, http.StatusMethodNotAllowed, "CONNECT: micro takes calls in plain HTTP, e.g. GET http://{service}/{path}"))
		return
	}
	if e := in.gate.enter(IngressID, st.MaxInflight); e != nil {
		fail(e)
		return
	}
	defer in.gate.leave()
	if _, ok := r.Header[transport.HeaderStream]; ok {
		fail(callerr.New(IngressID, http.StatusBadRequest, "header %s on an HTTP/2 call: its body and answer stream already", transport.HeaderStream))
		return
	}
	ctx, cancel, idempotent, e := callOptions(r, st)
	if e != nil {
		fail(e)
		return
	}
	defer cancel()
	ctx, span := in.traceCall(ctx, r.Header, r.Header.Get(tracing.Header), r.Method, service, endpoint)
	if span.Recording() {
		defer func() { endCall(span, code) }()
	}

	req := &client.Request{
		Service: service, Endpoint: endpoint, Method: r.Method, Target: target,
		Header: filterHeader(r.Header), Idempotent: idempotent,
	}
	ex := &h2Exchange{in: in, r: r, ctx: ctx, req: req, grpc: grpc}
	if r.Body != nil && r.Body != http.NoBody {
		ex.body = newReplayBody(r.Body, st.RetryBuffer)
	}
	defer ex.discard()
	out, err := in.cfg.Fast.Doer.Do(ctx, req, ex)
	switch {
	case err != nil:
		fail(callerr.As(IngressID, err))
		return
	case out.Rejection != nil:
		code = out.Rejection.Status
		if grpc {
			writeGRPCError(w, rejectionError(out.Rejection))
			return
		}
		setHeader(w.Header(), out.Rejection.Header)
		w.WriteHeader(code)
		_, _ = w.Write(out.Rejection.Body)
		return
	}
	resp := ex.resp
	code = resp.StatusCode
	if grpc && resp.Header.Get(transport.HeaderError) != "" {
		// micro at the node answered in place of the app: say it the gRPC way.
		body, _ := io.ReadAll(resp.Body)
		e, ok := callerr.Parse(body)
		if !ok {
			e = callerr.New(IngressID, resp.StatusCode, "node %s answered %d", out.Node, resp.StatusCode)
		}
		writeGRPCError(w, e)
		return
	}
	h := w.Header()
	copyAnswerHeader(h, resp.Header, true)
	h.Set(transport.HeaderNode, out.Node)
	h.Set(transport.HeaderAttempts, strconv.Itoa(out.Attempts))
	w.WriteHeader(resp.StatusCode)
	relay(w, resp, grpc, true)
}

// hostname is host without its port.
func hostname(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// rejectionError is the error of a client wrapper's rejection.
func rejectionError(resp *client.Response) *callerr.Error {
	if e, ok := callerr.Parse(resp.Body); ok {
		return e
	}
	return callerr.New(client.ID, resp.Status, "rejected by a client wrapper")
}

// writeH2Error answers e, the gRPC way to a gRPC caller.
func writeH2Error(w http.ResponseWriter, e *callerr.Error, grpc bool) {
	if grpc {
		writeGRPCError(w, e)
		return
	}
	e.Write(w)
}

// copyAnswerHeader sets on h the end-to-end headers of an answer, leaving out micro's own
// when dropMicro is set.
func copyAnswerHeader(h, from http.Header, dropMicro bool) {
	for k, v := range from {
		if !hopByHop(k) && (!dropMicro || !transport.IsMicroHeader(k)) {
			h[k] = v
		}
	}
}

// relay copies the body of resp to w as it comes, then its trailers, and closes it. The
// headers go out at once, so that a peer that waits for them before it sends more (a
// stream) gets them, but for an answer that has no body: HTTP/2 sends that (a gRPC
// trailers-only answer) as one frame of headers that ends the stream. When
// the body breaks off (the app or a node went away), a gRPC caller gets UNAVAILABLE in the
// trailers, and any other caller a reset stream, so that no one takes a broken answer for a
// whole one. dropMicro leaves micro's own trailers out.
func relay(w http.ResponseWriter, resp *http.Response, grpc, dropMicro bool) {
	defer resp.Body.Close()
	rc := http.NewResponseController(w)
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp
	if resp.ContentLength != 0 && rc.Flush() != nil {
		return
	}
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the caller went away; closing the body cancels the rest
			}
			if rc.Flush() != nil {
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if grpc {
				w.Header().Set(http.TrailerPrefix+"Grpc-Status", strconv.Itoa(grpcUnavailable))
				w.Header().Set(http.TrailerPrefix+"Grpc-Message", grpcMessage("micro: the answer broke off: "+err.Error()))
				return
			}
			panic(http.ErrAbortHandler)
		}
	}
	for k, vs := range resp.Trailer {
		if dropMicro && transport.IsMicroHeader(k) {
			continue
		}
		for _, v := range vs {
			w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

// h2Exchange makes the attempts of a call that came to the ingress over HTTP/2: each
// attempt streams the caller's body to the node (from the start again, out of the retry
// buffer, on a later attempt), and keeps the node's answer, whose body streams to the
// caller once the call ends.
type h2Exchange struct {
	in   *Ingress
	r    *http.Request
	ctx  context.Context // the caller's, with the caller's own deadline
	req  *client.Request
	body *replayBody // nil without a body
	grpc bool

	resp   *http.Response // the last answer
	cancel context.CancelFunc
}

// Replayable implements client.Replayer.
func (ex *h2Exchange) Replayable() bool { return ex.body == nil || ex.body.replayable() }

// discard drops the last answer.
func (ex *h2Exchange) discard() {
	if ex.resp != nil {
		ex.resp.Body.Close()
		ex.resp = nil
	}
	if ex.cancel != nil {
		ex.cancel()
		ex.cancel = nil
	}
}

// Attempt implements client.Exchange.
func (ex *h2Exchange) Attempt(ctx context.Context, node *registry.Node, left time.Duration, extra map[string]string) (client.Answer, bool, error) {
	ex.discard()
	ib := ex.in.cfg.Inbound
	hc := &h2Call{
		service: ex.req.Service, endpoint: ex.req.Endpoint, node: node.ID,
		method: ex.r.Method, target: ex.req.Target, header: ex.r.Header,
		contentLength: ex.r.ContentLength, body: ex.body, grpc: ex.grpc,
		deadline: time.Now().Add(left), extra: extra, hdr: ex.req.Header,
	}
	if base, ok := ib.cfg.Apps.Local(ex.req.Service, node.ID); ok {
		hc.base, hc.caller = base, ib.self()
		if e := admit(ib.settings.load(), ex.req.Service, hc.caller); e != nil {
			ex.resp = errorResponse(e, transport.ErrorCaller)
			return h2Answer(ex.resp, ex.grpc), false, nil
		}
		ex.resp, ex.cancel = ib.h2App(ctx, ex.ctx, hc)
		return h2Answer(ex.resp, ex.grpc), true, nil
	}
	if !ex.in.cfg.Fast.HTTPNode(node.Address) {
		return client.Answer{}, false, &transport.MessageError{Err: fmt.Errorf("an HTTP/2 call needs the http transport, and node %s is reached through a transport plugin", node.ID)}
	}
	h := outHeader(ex.r.Header, extra)
	h.Set(transport.HeaderNode, node.ID)
	h.Set(transport.HeaderTimeout, budget.Format(left))
	setTraceparent(ctx, h)
	hc.header = h
	rt, scheme := ex.in.cfg.Fast.H2Peers, ex.in.cfg.Fast.PeerScheme
	if rt == nil {
		rt, scheme = ib.cfg.H2C, "http"
	}
	resp, cancel, sent, err := roundTrip(ctx, ex.ctx, rt, scheme+"://"+node.Address+"/"+url.PathEscape(ex.req.Service), hc)
	if err != nil {
		return client.Answer{}, sent, err
	}
	ex.resp, ex.cancel = resp, cancel
	return h2Answer(resp, ex.grpc), true, nil
}

// h2Call is a call sent on over HTTP/2, to an app or to another micro.
type h2Call struct {
	service, endpoint, node string
	base                    string // the app's base URL, to an app
	method, target          string
	header                  http.Header // sent as it is to another micro; filtered to an app
	contentLength           int64
	body                    *replayBody // nil without a body
	grpc                    bool
	deadline                time.Time         // of the budget for the answer's headers
	extra                   map[string]string // headers the client wrappers set
	// hdr is header as a message header, for server wrappers, when the caller made it.
	hdr map[string]string
	// caller is who made the call, as its connection proved it.
	caller Peer
}

// roundTrip sends hc to base (scheme and host, and a path prefix) over HTTP/2 and returns
// the answer, whose body the caller reads and closes, and the cancel func of its exchange.
// actx bounds the wait for the answer's headers, sctx the whole exchange. sent reports
// whether the request may have reached the peer: a failed dial means it cannot have, and
// the error is then a *transport.ConnectError.
func roundTrip(actx, sctx context.Context, rt http.RoundTripper, base string, hc *h2Call) (resp *http.Response, cancel context.CancelFunc, sent bool, err error) {
	rctx, cancel := context.WithCancel(sctx)
	out, err := http.NewRequestWithContext(rctx, hc.method, base+hc.target, nil)
	if err != nil {
		cancel()
		return nil, nil, false, &transport.MessageError{Err: err}
	}
	out.Header = hc.header
	if hc.body != nil {
		out.Body = hc.body.attempt()
		out.GetBody = func() (io.ReadCloser, error) {
			if !hc.body.replayable() {
				return nil, errors.New("the request body went out past the retry buffer")
			}
			return hc.body.attempt(), nil
		}
		if hc.contentLength > 0 {
			out.ContentLength = hc.contentLength
		}
	}
	stop := context.AfterFunc(actx, cancel)
	resp, err = rt.RoundTrip(out)
	if !stop() && err == nil {
		resp.Body.Close()
		err = fmt.Errorf("no answer in time: %w", context.Cause(actx))
	}
	if err != nil {
		cancel()
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return nil, nil, false, &transport.ConnectError{Addr: out.URL.Host, Err: err}
		}
		return nil, nil, true, err
	}
	return resp, cancel, true, nil
}

// outHeader is the header of a request sent on: the caller's end-to-end headers (a gRPC
// call's "te: trailers" included) and those wrappers set, without any Micro-* header.
func outHeader(in http.Header, extra ...map[string]string) http.Header {
	out := make(http.Header, len(in)+4)
	for k, v := range in {
		if !hopByHop(k) && !transport.IsMicroHeader(k) {
			out[k] = v
		}
	}
	if in.Get("Te") == "trailers" {
		out.Set("Te", "trailers")
	}
	for _, m := range extra {
		for k, v := range m {
			if ck := http.CanonicalHeaderKey(k); !hopByHop(ck) && !transport.IsMicroHeader(ck) {
				out[ck] = strings.Split(v, transport.ValueSep)
			}
		}
	}
	return out
}

// h2Answer is what the client reads of an answer over HTTP/2. Micro's own answer has a
// small JSON body, which it reads (and puts back for whoever relays the answer).
func h2Answer(resp *http.Response, grpc bool) client.Answer {
	a := client.Answer{
		Status:     resp.StatusCode,
		Error:      resp.Header.Get(transport.HeaderError),
		RetryAfter: resp.Header.Get("Retry-After"),
	}
	if a.Error != "" {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		a.Body = body
		return a
	}
	if grpc {
		a.Status = grpcJudged(a.Status, resp.Header)
	}
	return a
}

// errorResponse is micro's own answer e, marked with kind, as an HTTP response.
func errorResponse(e *callerr.Error, kind string) *http.Response {
	h := http.Header{"Content-Type": {"application/json"}, transport.HeaderError: {kind}}
	if e.RetryAfter != "" {
		h.Set("Retry-After", e.RetryAfter)
	}
	body := append(e.JSON(), '\n')
	return &http.Response{StatusCode: e.Code, Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
}

// ServeH2 serves a call that another micro sent over HTTP/2 to the inbound server.
func (in *Inbound) ServeH2(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := in.settings.load()
	service := ""
	grpc := isGRPC(r.Header)
	answer := func(resp *http.Response) {
		copyAnswerHeader(w.Header(), resp.Header, false)
		w.WriteHeader(resp.StatusCode)
		relay(w, resp, grpc, false)
	}
	fail := func(e *callerr.Error, kind string) {
		in.cfg.Recorder.Inbound(service, e.Code, time.Since(start))
		answer(errorResponse(e, kind))
	}
	defer func() {
		if p := recover(); p != nil {
			detail := recovered(in.cfg.Logger, p, "an HTTP/2 inbound call", "service", service)
			fail(callerr.New(InboundID, http.StatusInternalServerError, "%s", detail), transport.ErrorInternal)
		}
	}()
	if e := in.gate.enter(InboundID, st.MaxInflight); e != nil {
		fail(e, transport.ErrorRefused)
		return
	}
	defer in.gate.leave()
	tv, present := r.Header[transport.HeaderTimeout]
	call, e, kind := in.readCall(st, r.URL.EscapedPath(), r.URL.RawQuery, strings.Join(tv, ","), present, r.Header.Get(transport.HeaderNode), grpc)
	service = call.service
	caller := PeerFrom(r.Context())
	if e == nil {
		e, kind = admit(st, call.service, caller), transport.ErrorCaller
	}
	if e != nil {
		fail(e, kind)
		return
	}
	hc := &h2Call{
		service: call.service, endpoint: call.endpoint, node: call.node, base: call.base,
		method: r.Method, target: call.target, header: r.Header, contentLength: r.ContentLength,
		grpc: grpc, deadline: start.Add(call.budget), caller: caller,
	}
	if r.Body != nil && r.Body != http.NoBody {
		hc.body = newReplayBody(r.Body, 0) // one attempt: nothing to keep
	}
	actx, cancel := context.WithDeadline(r.Context(), hc.deadline)
	defer cancel()
	actx, span, validParent := in.cfg.Tracer.Server(actx, r.Header.Get(tracing.Header), "inbound")
	if !validParent {
		r.Header.Del(tracing.HeaderState)
	}
	resp, rcancel := in.h2App(actx, r.Context(), hc)
	if span.Recording() {
		span.Set(attribute.String("micro.service", call.service), attribute.String("micro.endpoint", call.endpoint))
		endCall(span, resp.StatusCode)
	}
	defer rcancel()
	answer(resp)
}

// h2App forwards hc over HTTP/2 to its app, through the server wrappers, and returns the
// answer: the app's, whose body streams, or micro's own (marked with transport.HeaderError).
// actx bounds the wait for the app's headers, sctx the whole exchange; cancel ends it.
func (in *Inbound) h2App(actx, sctx context.Context, hc *h2Call) (resp *http.Response, cancel context.CancelFunc) {
	start := time.Now()
	cancel = func() {}
	defer func() {
		code := http.StatusInternalServerError // a panic, which the caller recovers
		if resp != nil {
			code = resp.StatusCode
		}
		in.cfg.Recorder.Inbound(hc.service, code, time.Since(start))
	}()
	if left := time.Until(hc.deadline); left < time.Millisecond {
		e := callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s for %s.%s is spent", budget.Format(left), hc.service, hc.endpoint)
		return errorResponse(e, transport.ErrorRefused), cancel
	}
	chain := in.chain.Acquire()
	defer chain.Release()
	call := wrapper.Call{Service: hc.service, Endpoint: hc.endpoint, Node: hc.node, Caller: hc.caller.Name(), Deadline: hc.deadline}
	if chain != nil {
		if hc.hdr == nil {
			hc.hdr = filterHeader(hc.header)
		}
		call.Header = hc.hdr
	}
	code, kind, _, rejected := in.wrapApp(actx, chain, &call, start, func(v *wrapper.Verdict) (int, string, string) {
		more := v.Header // a body that streams cannot be replaced: BodyHeld is unset
		fail := func(e *callerr.Error, kind string) (int, string, string) {
			resp = errorResponse(e, kind)
			return e.Code, kind, e.Detail
		}
		app, err := in.apps.of(hc.base)
		if err != nil {
			return fail(callerr.New(InboundID, http.StatusServiceUnavailable, "service %q: %v", hc.service, err), transport.ErrorUnavailable)
		}
		out := *hc
		out.header = outHeader(hc.header, hc.extra, more)
		out.header.Set(transport.HeaderTimeout, budget.Format(time.Until(hc.deadline)))
		if name := hc.caller.Name(); name != "" {
			out.header.Set(transport.HeaderCaller, name)
		}
		if dl, ok := sctx.Deadline(); ok && hc.grpc {
			out.header.Set("Grpc-Timeout", formatGRPCTimeout(time.Until(dl)))
		}
		tctx, span := in.cfg.Tracer.Client(actx, "app")
		setTraceparent(tctx, out.header)
		r, c, _, err := roundTrip(tctx, sctx, in.cfg.H2C, "http://"+app.addr+app.prefix, &out)
		if span.Recording() {
			status := 0
			if err == nil {
				status = r.StatusCode
			}
			endCall(span, status)
		}
		if err != nil {
			e, kind := appFailure(actx, err, hc.service, hc.endpoint, hc.base)
			return fail(e, kind)
		}
		for k := range r.Header {
			if transport.IsMicroHeader(k) {
				delete(r.Header, k)
			}
		}
		resp, cancel = r, c
		return r.StatusCode, "", ""
	})
	if rejected != nil {
		e := callerr.New(InboundID, code, "%s", rejected.Message)
		resp = errorResponse(e, kind)
		for k, v := range rejected.ReplyHeader {
			resp.Header.Set(k, v)
		}
	}
	return resp, cancel
}
