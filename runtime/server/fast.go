package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/upstream"
	"github.com/microhost/micro/runtime/wrapper"
)

// This file is the HTTP/1.1 fast path, on fasthttp: the ingress and the inbound server
// serve plain HTTP/1.1 requests here (see Split), and the requests they forward go out on
// upstream's connections: from the ingress straight to the app when the node picked is one
// this micro fronts, to the node's inbound server over HTTP otherwise, and as messages over
// a transport plugin when the node is reached through one. The net/http handlers serve what
// fasthttp does not: upgrades (streams) and HTTP/2.

// Doer makes calls through an Exchange; *client.Client is one.
type Doer interface {
	Do(ctx context.Context, req *client.Request, ex client.Exchange) (client.Outcome, error)
}

// FastPath is what the HTTP/1.1 path needs beyond the ingress's and inbound's configs.
type FastPath struct {
	// Doer makes the ingress's calls.
	Doer Doer
	// Upstream carries requests to apps and to other micro processes.
	Upstream *upstream.Client
	// Pool lends transport connections for nodes reached through a transport plugin.
	Pool client.Pool
	// HTTPNode reports whether a node's address is reached over HTTP, rather than through
	// a transport plugin.
	HTTPNode func(addr string) bool
	// Peers carries requests to other micro processes over HTTP/1.1, with TLS when
	// security is on; nil means Upstream.
	Peers *upstream.Client
	// H2Peers carries requests to other micro processes over HTTP/2 (TLS when security is
	// on, else h2c), with PeerScheme ("https" or "http"); nil means the inbound's H2C.
	H2Peers    http.RoundTripper
	PeerScheme string
}

// peers is the client that reaches other micro processes over HTTP/1.1.
func (fp *FastPath) peers() *upstream.Client {
	if fp.Peers != nil {
		return fp.Peers
	}
	return fp.Upstream
}

// ServeFast serves a request on the ingress's HTTP/1.1 path.
func (in *Ingress) ServeFast(c *fasthttp.RequestCtx) {
	st := in.settings.load()
	uri := c.Request.Header.RequestURI()
	absolute := bytes.HasPrefix(uri, []byte("http://"))
	if reason := foreignRequest(absolute, string(c.Request.Header.Host()), string(c.Request.Header.Peek("Origin")),
		string(c.Request.Header.Peek("Sec-Fetch-Site")), st); reason != "" {
		fastError(c, callerr.New(IngressID, http.StatusForbidden, "%s", reason), "")
		return
	}
	if !absolute {
		path, query := uri, []byte(nil)
		if i := bytes.IndexByte(uri, '?'); i >= 0 {
			path, query = uri[:i], uri[i+1:]
		}
		// string(path) in a switch or comparison allocates nothing: calls pass for free.
		switch {
		case c.IsGet() && string(path) == "/health":
			in.fastHealth(c)
			return
		case c.IsGet() && string(path) == "/services":
			in.fastServices(c)
			return
		case c.IsGet() && string(path) == TracesPath:
			q, _ := url.ParseQuery(string(query))
			code, v := in.traces(q)
			fastJSON(c, code, v)
			return
		case string(uri) == "/metrics":
			in.fastMetrics(c)
			return
		case bytes.HasPrefix(uri, []byte(PublishPrefix)):
			in.fastPublish(c, st, uri)
			return
		case in.fastDashboard(c, path):
			return
		}
	}
	in.fastCall(c, st, uri, absolute)
}

func (in *Ingress) fastCall(c *fasthttp.RequestCtx, st *Settings, uri []byte, absolute bool) {
	start := time.Now()
	if c.IsConnect() {
		in.cfg.Recorder.Call("", http.StatusMethodNotAllowed, time.Since(start))
		fastError(c, callerr.New(IngressID, http.StatusMethodNotAllowed, "CONNECT: micro takes calls in plain HTTP, e.g. GET http://{service}/{path}"), "")
		return
	}
	host, path, query := splitURI(uri, absolute)
	service, endpoint, target, _, err := route(host, path, query)
	if err != nil {
		in.cfg.Recorder.Call("", http.StatusBadRequest, time.Since(start))
		fastError(c, callerr.New(IngressID, http.StatusBadRequest, "%v", err), "")
		return
	}
	code := http.StatusOK
	defer func() { in.cfg.Recorder.Call(service, code, time.Since(start)) }()
	fail := func(e *callerr.Error) {
		code = e.Code
		fastError(c, e, "")
	}
	defer func() {
		if p := recover(); p != nil {
			detail := recovered(in.log, p, "a call at the ingress", "method", string(c.Method()), "service", service, "target", truncate(target), "remote", c.RemoteAddr().String())
			fail(callerr.New(IngressID, http.StatusInternalServerError, "%s", detail))
		}
	}()
	if e := in.gate.enter(IngressID, st.MaxInflight); e != nil {
		fail(e)
		return
	}
	defer in.gate.leave()
	h := &c.Request.Header
	if h.Peek(transport.HeaderStream) != nil {
		fail(callerr.New(IngressID, http.StatusBadRequest, "header %s on a plain call: streams are opened with a WebSocket upgrade", transport.HeaderStream))
		return
	}
	if h.Peek("Upgrade") != nil {
		fail(callerr.New(IngressID, http.StatusBadRequest, "an upgrade (a stream) must be the first request of its connection"))
		return
	}
	body, stream, e := fastBody(c, st.MaxBody, IngressID)
	if e != nil {
		fail(e)
		return
	}
	idem := h.Peek(transport.HeaderIdempotent)
	d, idempotent, e := options(string(idem), idem != nil, string(h.Peek(transport.HeaderTimeout)), st)
	if e != nil {
		fail(e)
		return
	}
	var ctx context.Context
	var cancel context.CancelFunc
	if d > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), d)
	} else {
		ctx, cancel = context.WithCancel(context.Background())
	}
	defer cancel()
	defer watchCaller(c.Conn(), cancel).stop()
	method := string(c.Method())
	ctx, span := in.traceCall(ctx, h, string(h.Peek(tracing.Header)), method, service, endpoint)
	if span.Recording() {
		defer func() { endCall(span, code) }()
	}

	callerClose := h.ConnectionClose()
	dropHeaders(h, nil)
	req := &client.Request{
		Service: service, Endpoint: endpoint, Method: method, Target: target,
		Header: messageHeader(h), Body: body, Idempotent: idempotent,
	}
	ex := &fastExchange{in: in, c: c, req: req}
	if stream != nil {
		ex.body, ex.length = newReplayBody(stream, st.RetryBuffer), stream.length
	}
	out, err := in.cfg.Fast.Doer.Do(ctx, req, ex)
	if callerClose || stream.unread() {
		c.SetConnectionClose()
	}
	switch {
	case err != nil:
		fail(callerr.As(IngressID, err))
		return
	case out.Rejection != nil:
		code = out.Rejection.Status
		c.Response.Reset()
		c.Response.SetStatusCode(code)
		for k, v := range out.Rejection.Header {
			if !transport.IsMicroHeader(k) {
				c.Response.Header.Set(k, v)
			}
		}
		c.Response.SetBody(out.Rejection.Body)
		return
	}
	code = c.Response.StatusCode()
	rh := &c.Response.Header
	dropResponseHeaders(rh)
	rh.Set(transport.HeaderNode, out.Node)
	rh.Set(transport.HeaderAttempts, strconv.Itoa(out.Attempts))
}

// splitURI splits a raw request target into its host (in proxy form, "" otherwise), its
// escaped path and its raw query.
func splitURI(uri []byte, absolute bool) (host, path, query string) {
	s := string(uri)
	if absolute {
		s = s[len("http://"):]
		i := strings.IndexAny(s, "/?")
		if i < 0 {
			i = len(s)
		}
		host, s = s[:i], s[i:]
		if h, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
			host = h
		}
		if s == "" || s[0] == '?' {
			s = "/" + s
		}
	}
	path, query, _ = strings.Cut(s, "?")
	return host, path, query
}

// dropHeaders removes from a request the headers that belong to one connection, and every
// Micro-* header but those keep reports (nil keeps none): micro sets its own. A caller's
// Connection: close is kept apart by the caller. Host and Content-Length stay: fasthttp
// writes them anew at every hop, from the host set for the hop and from the body.
func dropHeaders(h *fasthttp.RequestHeader, keep func(string) bool) {
	var drop [][]byte
	for k := range h.All() {
		if string(k) == "Host" || string(k) == "Content-Length" {
			continue
		}
		if (transport.IsMicroHeader(string(k)) && (keep == nil || !keep(string(k)))) || hopByHop(string(k)) {
			drop = append(drop, bytes.Clone(k))
		}
	}
	for _, k := range drop {
		h.DelBytes(k)
	}
	h.ResetConnectionClose()
}

// dropResponseHeaders removes from an answer the headers of one connection and micro's
// own, which the answer's hop set.
func dropResponseHeaders(h *fasthttp.ResponseHeader) {
	var drop [][]byte
	for k := range h.All() {
		if transport.IsMicroHeader(string(k)) || (hopByHop(string(k)) && string(k) != "Content-Length") {
			drop = append(drop, bytes.Clone(k))
		}
	}
	for _, k := range drop {
		h.DelBytes(k)
	}
	h.ResetConnectionClose()
}

// messageHeader is a request's headers as a message header: one entry per name, the values
// of a repeated one joined by transport.ValueSep.
func messageHeader(h *fasthttp.RequestHeader) map[string]string {
	m := make(map[string]string, h.Len())
	for k, v := range h.All() {
		if hopByHop(string(k)) || transport.IsMicroHeader(string(k)) {
			continue
		}
		transport.AddValue(m, string(k), string(v))
	}
	return m
}

// fastError answers e, as micro's own answer marked kind when kind is set.
func fastError(c *fasthttp.RequestCtx, e *callerr.Error, kind string) {
	writeError(&c.Response, e, kind)
}

// writeError makes resp the JSON error e, marked with transport.HeaderError kind when
// kind is set.
func writeError(resp *fasthttp.Response, e *callerr.Error, kind string) {
	resp.Reset()
	resp.SetStatusCode(e.Code)
	resp.Header.SetContentType("application/json")
	resp.Header.Set("X-Content-Type-Options", "nosniff")
	if e.RetryAfter != "" {
		resp.Header.Set("Retry-After", e.RetryAfter)
	}
	if kind != "" {
		resp.Header.Set(transport.HeaderError, kind)
	}
	resp.SetBody(append(e.JSON(), '\n'))
}

func (in *Ingress) fastHealth(c *fasthttp.RequestCtx) {
	st := in.cfg.Health()
	code := http.StatusOK
	if st.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	fastJSON(c, code, st)
}

func (in *Ingress) fastServices(c *fasthttp.RequestCtx) {
	list, err := in.cfg.Services(c)
	if err != nil {
		fastError(c, callerr.New(IngressID, http.StatusServiceUnavailable, "listing services: %v", err), "")
		return
	}
	fastJSON(c, http.StatusOK, list)
}

// fastMetrics serves /metrics through the net/http handler, which writes to a buffer.
func (in *Ingress) fastMetrics(c *fasthttp.RequestCtx) {
	r, err := http.NewRequestWithContext(c, http.MethodGet, "/metrics", nil)
	if err != nil {
		fastError(c, callerr.New(IngressID, http.StatusInternalServerError, "%v", err), "")
		return
	}
	if ae := c.Request.Header.Peek("Accept"); ae != nil {
		r.Header.Set("Accept", string(ae))
	}
	w := &bufferWriter{header: make(http.Header), code: http.StatusOK}
	in.cfg.Metrics.ServeHTTP(w, r)
	c.SetStatusCode(w.code)
	for k, vs := range w.header {
		for _, v := range vs {
			c.Response.Header.Add(k, v)
		}
	}
	c.SetBody(w.body.Bytes())
}

// bufferWriter is an http.ResponseWriter that keeps what is written.
type bufferWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *bufferWriter) Header() http.Header         { return w.header }
func (w *bufferWriter) WriteHeader(code int)        { w.code = code }
func (w *bufferWriter) Write(p []byte) (int, error) { return w.body.Write(p) }

func fastJSON(c *fasthttp.RequestCtx, code int, v any) {
	var b bytes.Buffer
	w := &bufferWriter{header: make(http.Header), code: code}
	writeJSON(w, code, v)
	b.Write(w.body.Bytes())
	c.SetStatusCode(code)
	c.Response.Header.SetContentType("application/json")
	c.SetBody(b.Bytes())
}

// InMemoryBody is the longest request body that the HTTP/1.1 path reads whole before it
// serves the request. A longer one, or one of unknown length, streams to the node; a call
// keeps what went out of it up to client.retry_buffer, to send it again on a retry.
const InMemoryBody = 64 << 10

// fastBody is the body of a request on the HTTP/1.1 path: held whole when it is short, or
// else the stream it comes on, which fails with fasthttp.ErrBodyTooLarge past limit bytes. A
// body longer than limit by its Content-Length is refused at once, naming the limit.
func fastBody(c *fasthttp.RequestCtx, limit int64, id string) (body []byte, stream *limitedBody, e *callerr.Error) {
	cl := c.Request.Header.ContentLength()
	switch {
	case int64(cl) > limit:
		c.SetConnectionClose() // its body stays unread
		return nil, nil, tooLarge(id, limit)
	case !c.Request.IsBodyStream() || cl >= 0 && cl <= InMemoryBody:
		if body = c.Request.Body(); int64(len(body)) > limit {
			return nil, nil, tooLarge(id, limit)
		}
		return body, nil, nil
	}
	return nil, &limitedBody{r: c.RequestBodyStream(), left: limit, length: max(cl, -1)}, nil
}

// tooLarge is the error of a request body over max bytes.
func tooLarge(id string, max int64) *callerr.Error {
	return callerr.New(id, http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes (server.max_body)", max)
}

// limitedBody is a request body that streams: past its limit, a read fails with
// fasthttp.ErrBodyTooLarge.
type limitedBody struct {
	r      io.Reader
	left   int64
	length int  // the Content-Length, -1 when unknown (chunked)
	ended  bool // read to its end
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if b.left -= int64(n); b.left < 0 {
		return n, fasthttp.ErrBodyTooLarge
	}
	b.ended = err == io.EOF
	return n, err
}

// unread reports whether a body that streams was not read to its end (it was refused, or
// cut at its limit): its connection must close after the answer, since what is left of the
// body, of a length fasthttp may not know, would be read as the next request.
func (b *limitedBody) unread() bool { return b != nil && !b.ended }

// fastExchange makes the attempts of a call that came to the ingress's HTTP/1.1 path. The
// caller's request goes out as it is, but for its target and micro's headers; the answer is
// read straight into the caller's response.
type fastExchange struct {
	in  *Ingress
	c   *fasthttp.RequestCtx
	req *client.Request
	// body is the request's body when it streams (req.Body is nil then), and length its
	// Content-Length, -1 when unknown.
	body   *replayBody
	length int
}

// Replayable implements client.Replayer.
func (ex *fastExchange) Replayable() bool { return ex.body == nil || ex.body.replayable() }

// Fork implements client.Forker: a hedge gets a request of its own, made from the call's
// (ex.req, which no attempt changes, while the first attempt rewrites the caller's request
// in place), and a response of its own. A call whose body streams is not hedged: its body
// can go out only once at a time.
func (ex *fastExchange) Fork() client.Exchange {
	if ex.body != nil {
		return nil
	}
	f := &fastExchange{in: ex.in, c: new(fasthttp.RequestCtx), req: ex.req, length: ex.length}
	out := &f.c.Request
	out.Header.SetMethod(ex.req.Method)
	for k, v := range ex.req.Header {
		setValues(&out.Header, k, v)
	}
	out.SetBody(ex.req.Body)
	return f
}

// Adopt implements client.Forker.
func (ex *fastExchange) Adopt(fork client.Exchange) {
	fork.(*fastExchange).c.Response.CopyTo(&ex.c.Response)
}

// Attempt implements client.Exchange.
func (ex *fastExchange) Attempt(ctx context.Context, node *registry.Node, left time.Duration, extra map[string]string) (client.Answer, bool, error) {
	fp := ex.in.cfg.Fast
	if ex.body != nil {
		ex.c.Request.SetBodyStream(ex.body.attempt(), ex.length)
	}
	if base, ok := ex.in.cfg.Inbound.cfg.Apps.Local(ex.req.Service, node.ID); ok {
		ib := ex.in.cfg.Inbound
		self := ib.self()
		if e := admit(ib.settings.load(), ex.req.Service, self); e != nil {
			writeError(&ex.c.Response, e, transport.ErrorCaller)
			return answerOf(&ex.c.Response), false, nil
		}
		return ib.serveFast(ctx, ex.c, ex.req.Service, ex.req.Endpoint, ex.req.Target, node.ID, base, left, extra, ex.req.Header, self, ex.body == nil)
	}
	if !fp.HTTPNode(node.Address) {
		return ex.viaMessage(ctx, node, left, extra)
	}
	out := &ex.c.Request
	out.SetRequestURI("/" + url.PathEscape(ex.req.Service) + ex.req.Target)
	out.Header.SetHost(node.Address)
	for k, v := range extra {
		setValues(&out.Header, k, v)
	}
	out.Header.Set(transport.HeaderNode, node.ID)
	out.Header.Set(transport.HeaderTimeout, budget.Format(left))
	setTraceparent(ctx, &out.Header)
	sent, err := fp.peers().Do(ctx, node.Address, out, &ex.c.Response)
	if err != nil {
		if !sent && errors.Is(err, fasthttp.ErrBodyTooLarge) {
			return client.Answer{}, false, &transport.MessageError{Err: tooLarge(IngressID, ex.in.settings.load().MaxBody)}
		}
		return client.Answer{}, sent, err
	}
	return answerOf(&ex.c.Response), true, nil
}

// viaMessage makes an attempt on a node reached through a transport plugin: the call goes
// as a message, and the answer comes back into the caller's response.
func (ex *fastExchange) viaMessage(ctx context.Context, node *registry.Node, left time.Duration, extra map[string]string) (client.Answer, bool, error) {
	body := ex.req.Body
	if ex.body != nil {
		// A message holds its body whole: the body must fit server.max_body.
		var err error
		if body, err = io.ReadAll(ex.c.Request.BodyStream()); err != nil {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				err = tooLarge(IngressID, ex.in.settings.load().MaxBody)
			}
			return client.Answer{}, false, &transport.MessageError{Err: err}
		}
	}
	m, status, sent, err := client.RoundTrip(ctx, ex.in.cfg.Fast.Pool, node.Address,
		&transport.Message{Header: client.MessageHeader(ctx, ex.req, node, left, extra), Body: body})
	if err != nil {
		return client.Answer{}, sent, err
	}
	resp := &ex.c.Response
	resp.Reset()
	resp.SetStatusCode(status)
	for k, v := range m.Header {
		setValues(&resp.Header, k, v)
	}
	resp.SetBody(m.Body)
	return answerOf(resp), true, nil
}

// setTraceparent sets the traceparent header h of a request made in ctx, or removes one
// when ctx has no trace (no Tracer).
func setTraceparent(ctx context.Context, h httpHeader) {
	if tp := tracing.HeaderOf(ctx); tp != "" {
		h.Set(tracing.Header, tp)
	} else {
		h.Del(tracing.Header)
	}
}

// endCall ends the span of a call that ended with HTTP status code (0: no answer): a 5xx
// or no answer is a failure.
func endCall(span tracing.Span, code int) {
	span.Set(attribute.Int("http.response.status_code", code))
	if code >= 500 || code == 0 {
		span.Fail(http.StatusText(code))
	}
	span.End()
}

// httpHeader is a request or response header of either HTTP path: fasthttp's or an
// http.Header.
type httpHeader interface {
	Set(key, value string)
	Add(key, value string)
	Del(key string)
}

// setValues sets header k to the values that v, a message header value, joins.
func setValues(h httpHeader, k, v string) {
	first, rest, more := strings.Cut(v, transport.ValueSep)
	h.Set(k, first)
	for more {
		first, rest, more = strings.Cut(rest, transport.ValueSep)
		h.Add(k, first)
	}
}

// answerOf is what the client reads of an answer.
func answerOf(resp *fasthttp.Response) client.Answer {
	a := client.Answer{
		Status:     resp.StatusCode(),
		Error:      string(resp.Header.Peek(transport.HeaderError)),
		RetryAfter: string(resp.Header.Peek("Retry-After")),
	}
	if a.Error != "" {
		a.Body = resp.Body()
	}
	return a
}

// ServeFast serves a call that another micro sent over HTTP/1.1 to the inbound server.
func (in *Inbound) ServeFast(c *fasthttp.RequestCtx) {
	start := time.Now()
	st := in.settings.load()
	service := ""
	code := 0
	recorded := false // serveFast records what it serves
	defer func() {
		if p := recover(); p != nil {
			detail := recovered(in.cfg.Logger, p, "an inbound call", "service", service)
			writeError(&c.Response, callerr.New(InboundID, http.StatusInternalServerError, "%s", detail), transport.ErrorInternal)
			code, recorded = http.StatusInternalServerError, false
		}
		if !recorded {
			in.cfg.Recorder.Inbound(service, code, time.Since(start))
		}
	}()
	fail := func(e *callerr.Error, kind string) {
		code = e.Code
		writeError(&c.Response, e, kind)
	}
	if e := in.gate.enter(InboundID, st.MaxInflight); e != nil {
		fail(e, transport.ErrorRefused)
		return
	}
	defer in.gate.leave()
	h := &c.Request.Header
	path, query, _ := strings.Cut(string(h.RequestURI()), "?")
	tv := h.Peek(transport.HeaderTimeout)
	call, e, kind := in.readCall(st, path, query, string(tv), tv != nil, string(h.Peek(transport.HeaderNode)), false)
	service = call.service
	caller := PeerOf(c.Conn())
	if e == nil {
		e, kind = admit(st, call.service, caller), transport.ErrorCaller
	}
	if e != nil {
		fail(e, kind)
		return
	}
	_, stream, e := fastBody(c, st.MaxBody, InboundID)
	if e != nil {
		fail(e, transport.ErrorCaller)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), call.budget)
	defer cancel()
	defer watchCaller(c.Conn(), cancel).stop()
	ctx, span, validParent := in.cfg.Tracer.Server(ctx, string(h.Peek(tracing.Header)), "inbound")
	if span.Recording() {
		span.Set(attribute.String("micro.service", call.service), attribute.String("micro.endpoint", call.endpoint))
		defer func() { endCall(span, c.Response.StatusCode()) }()
	}
	if !validParent {
		h.Del(tracing.HeaderState)
	}
	dropHeaders(h, broker.IsDeliveryHeader)
	if stream != nil {
		c.Request.SetBodyStream(stream, stream.length) // after dropHeaders, which drops Content-Length
	}
	recorded = true
	in.serveFast(ctx, c, call.service, call.endpoint, call.target, call.node, call.base, call.budget, nil, nil, caller, stream == nil)
	if stream.unread() {
		c.SetConnectionClose()
	}
}

// inboundCall is a call that another micro sent to the inbound server, as readCall reads it.
type inboundCall struct {
	service, endpoint, target, node string
	base                            string // of the app instance that serves it
	budget                          time.Duration
}

// readCall reads a call that another micro sent, from its target (escaped path and raw
// query) and its Micro-Timeout (timeout, when present) and Micro-Node headers; grpc is set
// for a gRPC call, whose endpoint is its method. When the call cannot go on, it returns
// micro's answer and its transport.Error kind; call.service is set as soon as it is known,
// for the metrics.
func (in *Inbound) readCall(st *Settings, path, query, timeout string, present bool, node string, grpc bool) (call inboundCall, e *callerr.Error, kind string) {
	s, endpoint, target, err := transport.ParseTarget(path, query)
	if err == nil {
		err = checkName("service", s)
	}
	if err == nil {
		err = checkEndpoint(endpoint)
	}
	if err != nil {
		return call, callerr.New(InboundID, http.StatusBadRequest, "%v", err), transport.ErrorCaller
	}
	call = inboundCall{service: s, endpoint: endpoint, target: target, node: node}
	if grpc {
		call.endpoint = grpcEndpoint(target, endpoint)
	}
	if !present {
		return call, callerr.New(InboundID, http.StatusBadRequest, "missing %s header", transport.HeaderTimeout), transport.ErrorCaller
	}
	d, err := budget.Parse(timeout)
	if err != nil {
		return call, callerr.New(InboundID, http.StatusBadRequest, "%v", err), transport.ErrorCaller
	}
	call.budget = min(d, st.MaxBudget)
	base, ok := in.cfg.Apps.Resolve(s, node)
	if !ok {
		return call, callerr.New(InboundID, http.StatusServiceUnavailable, "service %q has no ready instance here", s), transport.ErrorUnavailable
	}
	call.base = base
	return call, nil, ""
}

// serveFast forwards the call in c's request to the app at base, through the server
// wrappers, and leaves the answer in c's response: the app's, or micro's own (marked with
// transport.HeaderError). It serves the inbound server's calls, and the ingress's calls to
// nodes this micro fronts. extra are headers the client wrappers set; hdr is the request's
// header as a message header, when the caller has made it; caller is who made the call;
// held reports that the request's body is in memory whole, so that server wrappers may read
// and replace it.
func (in *Inbound) serveFast(ctx context.Context, c *fasthttp.RequestCtx, service, endpoint, target, node, base string, left time.Duration, extra, hdr map[string]string, caller Peer, held bool) (client.Answer, bool, error) {
	start := time.Now()
	deadline := start.Add(left)
	resp := &c.Response
	defer func() { in.cfg.Recorder.Inbound(service, resp.StatusCode(), time.Since(start)) }()
	if left < time.Millisecond {
		writeError(resp, callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s for %s.%s is spent", budget.Format(left), service, endpoint), transport.ErrorRefused)
		return answerOf(resp), false, nil
	}
	chain := in.chain.Acquire()
	defer chain.Release()
	call := wrapper.Call{Service: service, Endpoint: endpoint, Node: node, Caller: caller.Name(), Deadline: deadline}
	if chain != nil {
		if hdr == nil {
			hdr = messageHeader(&c.Request.Header)
		}
		call.Header = hdr
		if held {
			call.Body, call.BodyHeld = c.Request.Body(), true
		}
	}
	code, kind, _, rejected := in.wrapApp(ctx, chain, &call, start, func(v *wrapper.Verdict) (int, string, string) {
		more := v.Header
		app, err := in.apps.of(base)
		if err != nil {
			e := callerr.New(InboundID, http.StatusServiceUnavailable, "service %q: %v", service, err)
			writeError(resp, e, transport.ErrorUnavailable)
			return e.Code, transport.ErrorUnavailable, e.Detail
		}
		out := &c.Request
		if v.SetBody && held {
			out.SetBody(v.Body)
		}
		out.SetRequestURI(app.prefix + target)
		out.Header.SetHost(app.addr)
		for _, m := range []map[string]string{extra, more} {
			for k, v := range m {
				setValues(&out.Header, k, v)
			}
		}
		out.Header.Del(transport.HeaderNode)
		out.Header.Set(transport.HeaderTimeout, budget.Format(time.Until(deadline)))
		if name := caller.Name(); name != "" {
			out.Header.Set(transport.HeaderCaller, name)
		}
		actx, span := in.cfg.Tracer.Client(ctx, "app")
		setTraceparent(actx, &out.Header)
		sent, err := in.cfg.Upstream.Do(actx, app.addr, out, resp)
		if span.Recording() {
			status := resp.StatusCode()
			if err != nil {
				status = 0
			}
			endCall(span, status)
		}
		if err != nil {
			e, kind := appFailure(ctx, err, service, endpoint, base)
			if !sent && errors.Is(err, fasthttp.ErrBodyTooLarge) {
				e, kind = tooLarge(InboundID, in.settings.load().MaxBody), transport.ErrorCaller
			}
			writeError(resp, e, kind)
			return e.Code, kind, e.Detail
		}
		dropResponseHeaders(&resp.Header)
		return resp.StatusCode(), "", ""
	})
	if rejected != nil {
		writeError(resp, callerr.New(InboundID, code, "%s", rejected.Message), kind)
		for k, v := range rejected.ReplyHeader {
			resp.Header.Set(k, v)
		}
	}
	return answerOf(resp), true, nil
}

// pastDeadline reports whether ctx's deadline has passed, whether or not its timer has
// fired yet.
func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// appFailure is micro's answer, and its transport.Error kind, for an exchange with the app
// at base that failed with err. ctx is the exchange's: cancelled when the caller went away,
// past its deadline when the budget is spent.
func appFailure(ctx context.Context, err error, service, endpoint, base string) (*callerr.Error, string) {
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return callerr.New(InboundID, http.StatusBadGateway, "the reply of %s.%s exceeds the limit of server.max_body", service, endpoint), transport.ErrorReply
	case errors.Is(ctx.Err(), context.Canceled):
		return callerr.New(InboundID, callerr.StatusClientClosed, "the caller went away during the call to %s.%s", service, endpoint), transport.ErrorCaller
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || pastDeadline(ctx):
		// The app may give up at the deadline it was sent (a gRPC app resets the stream)
		// before this process's own timer for it fires: past the deadline, it is a timeout.
		return callerr.New(InboundID, http.StatusGatewayTimeout, "budget spent waiting for %s.%s", service, endpoint), transport.ErrorTimeout
	case transport.IsConnectError(err):
		return callerr.New(InboundID, http.StatusServiceUnavailable, "app of %q at %s: %v", service, base, err), transport.ErrorUnavailable
	}
	return callerr.New(InboundID, http.StatusBadGateway, "app of %q at %s: %v", service, base, err), transport.ErrorApp
}

// appTarget is where an app's base URL sends requests: its address and its path prefix.
type appTarget struct {
	addr, prefix string
}

// appTargets caches the targets of apps' base URLs.
type appTargets struct{ m sync.Map } // base URL → *appTarget

// of returns the target of base, e.g. http://127.0.0.1:9000/prefix.
func (a *appTargets) of(base string) (*appTarget, error) {
	if t, ok := a.m.Load(base); ok {
		return t.(*appTarget), nil
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, errors.New("app address " + base + " is not an http:// URL")
	}
	addr := u.Host
	if u.Port() == "" {
		addr += ":80"
	}
	t := &appTarget{addr: addr, prefix: strings.TrimSuffix(u.EscapedPath(), "/")}
	a.m.Store(base, t)
	return t, nil
}
