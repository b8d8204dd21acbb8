// Package server holds micro's two servers: the ingress, where local apps call services by
// name, and the inbound server, where other micro processes reach the services fronted here.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/status"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"

	"go.opentelemetry.io/otel/attribute"
)

// IngressID names the ingress in the errors it returns.
const IngressID = "micro.ingress"

// Caller makes calls by service name; *client.Client is one.
type Caller interface {
	Call(ctx context.Context, req *client.Request) (*client.Response, error)
}

// Recorder records finished calls; *metrics.Metrics is one.
type Recorder interface {
	Call(service string, code int, d time.Duration)
	Inbound(service string, code int, d time.Duration)
}

// Status is what GET /health reports.
type Status struct {
	// Status is "ok" or "degraded".
	Status string `json:"status"`
	// Services maps each fronted service to its count of ready instances.
	Services map[string]int `json:"services"`
	// Errors lists current problems, such as a registry that cannot be reached.
	Errors []string `json:"errors,omitempty"`
	// Security says how calls between micros are protected: "mtls", or why not.
	Security string `json:"security,omitempty"`
}

// IngressConfig wires an Ingress.
type IngressConfig struct {
	Caller Caller
	// Streamer opens the streams that WebSocket requests ask for; nil refuses them.
	Streamer Streamer
	Recorder Recorder
	// Metrics serves GET /metrics.
	Metrics http.Handler
	// Services lists the registry's services for GET /services.
	Services func(ctx context.Context) ([]*registry.Service, error)
	// Health reports GET /health.
	Health func() Status
	// Logger receives what the ingress recovers from. Nil discards it.
	Logger *slog.Logger
	// Tracer records the spans of sampled calls; nil records none and passes no
	// traceparent on.
	Tracer *tracing.Tracer
	// Settings are the first settings; Set changes them.
	Settings Settings
	// BodyTimeout bounds the reading of a request body once its headers have arrived;
	// WriteTimeout bounds the writing of a response. Zero means 30s each.
	BodyTimeout, WriteTimeout time.Duration
	// Inbound serves, on the HTTP/1.1 path, the calls to nodes this micro fronts.
	Inbound *Inbound
	// Fast is what the HTTP/1.1 path needs to make calls.
	Fast FastPath
	// Publisher serves the broker paths (PublishPrefix); nil answers them 404.
	Publisher Publisher
	// Status reports what this micro is doing, for GET /status and the dashboard at /ui;
	// nil answers them 404.
	Status func() status.Snapshot
}

// Ingress is the HTTP handler apps call: POST /{service}/{endpoint}, with the budget in
// the Micro-Timeout header; GET /health, /metrics and /services; and the broker's paths
// under PublishPrefix.
//
// It owns every Micro-* header: it drops those a caller sends, but for the caller's options
// Micro-Timeout and Micro-Idempotent, and sets its own on the answer. It refuses what a
// web page of another site would send (Settings.CheckOrigin), sheds calls past
// Settings.MaxInflight with 503, and recovers from a panic in a call with a logged 500.
type Ingress struct {
	cfg      IngressConfig
	log      *slog.Logger
	settings settings
	gate     gate
	feeds    *feeds
}

// NewIngress returns the ingress handler.
func NewIngress(cfg IngressConfig) *Ingress {
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 30 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	in := &Ingress{cfg: cfg, log: cfg.Logger, feeds: newFeeds()}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	in.settings.store(cfg.Settings)
	return in
}

// Set changes the settings of later requests.
func (in *Ingress) Set(s Settings) { in.settings.store(s) }

// ServeHTTP routes a request.
func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := in.settings.load()
	if r.ProtoMajor == 2 {
		// The authority names the service unless it is a name of the ingress.
		byAuthority := !ownHost(r.Host, st.AllowedHosts)
		if byAuthority || !in.serveOwn(w, r) {
			in.callH2(w, r, st, byAuthority)
		}
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(in.cfg.WriteTimeout))
	if reason := foreign(r, st); reason != "" {
		refuse(w, rc, r, callerr.New(IngressID, http.StatusForbidden, "%s", reason))
		return
	}
	if !r.URL.IsAbs() && in.serveOwn(w, r) {
		return
	}
	in.call(w, r, rc, st)
}

// serveOwn serves the ingress's own paths, GET /health, /metrics, /services, /traces and
// /status, the dashboard (/ui), and the broker's (PublishPrefix). It reports false when r
// asks for none of them.
func (in *Ingress) serveOwn(w http.ResponseWriter, r *http.Request) bool {
	switch r.URL.Path {
	case "/health":
		in.health(w)
	case "/metrics":
		in.cfg.Metrics.ServeHTTP(w, r)
	case "/services":
		in.services(w, r)
	case TracesPath:
		code, v := in.traces(r.URL.Query())
		writeJSON(w, code, v)
	default:
		if in.serveDashboard(w, r) {
			return true
		}
		if !strings.HasPrefix(r.URL.Path, PublishPrefix) {
			return false
		}
		in.servePublish(w, r)
	}
	return true
}

func (in *Ingress) call(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, st *Settings) {
	start := time.Now()
	if r.Method == http.MethodConnect {
		in.cfg.Recorder.Call("", http.StatusMethodNotAllowed, time.Since(start))
		refuse(w, rc, r, callerr.New(IngressID, http.StatusMethodNotAllowed, "CONNECT: micro takes calls in plain HTTP, e.g. GET http://{service}/{path}"))
		return
	}
	service, endpoint, target, _, err := Route(r)
	if err != nil {
		in.cfg.Recorder.Call("", http.StatusBadRequest, time.Since(start))
		refuse(w, rc, r, callerr.New(IngressID, http.StatusBadRequest, "%v", err))
		return
	}
	code := http.StatusOK
	defer func() { in.cfg.Recorder.Call(service, code, time.Since(start)) }()
	bodyRead := false
	fail := func(e *callerr.Error) {
		code = e.Code
		if bodyRead {
			e.Write(w)
		} else {
			refuse(w, rc, r, e)
		}
	}
	defer func() {
		if p := recover(); p != nil {
			detail := recovered(in.log, p, "a call at the ingress", "method", r.Method, "path", truncate(r.URL.Path), "remote", r.RemoteAddr)
			fail(callerr.New(IngressID, http.StatusInternalServerError, "%s", detail))
		}
	}()
	if e := in.gate.enter(IngressID, st.MaxInflight); e != nil {
		fail(e)
		return
	}
	defer in.gate.leave()
	if r.Method == http.MethodGet && isWebSocket(r) {
		code = in.stream(w, r, rc, st, service, endpoint, target)
		return
	}
	if _, ok := r.Header[transport.HeaderStream]; ok {
		fail(callerr.New(IngressID, http.StatusBadRequest, "header %s on a plain call: streams are opened with a WebSocket upgrade", transport.HeaderStream))
		return
	}
	ctx, cancel, idempotent, e := callOptions(r, st)
	if e != nil {
		fail(e)
		return
	}
	defer cancel()
	_ = rc.SetReadDeadline(time.Now().Add(in.cfg.BodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, st.MaxBody))
	if err != nil {
		// The deadline stays: net/http may try to read what is left of the body before it
		// answers, and must give up as soon as it does.
		w.Header().Set("Connection", "close")
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			fail(callerr.New(IngressID, http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes (server.max_body)", mbe.Limit))
		case errors.Is(err, os.ErrDeadlineExceeded):
			fail(callerr.New(IngressID, http.StatusRequestTimeout, "request body not received within %v (server.body_timeout)", in.cfg.BodyTimeout))
		default:
			fail(callerr.New(IngressID, http.StatusBadRequest, "reading request body: %v", err))
		}
		return
	}
	// Clear the deadline: net/http goes on reading in the background to notice a caller
	// that goes away (which cancels the call), and the deadline firing there would look
	// like one.
	_ = rc.SetReadDeadline(time.Time{})
	bodyRead = true
	ctx, span := in.traceCall(ctx, r.Header, r.Header.Get(tracing.Header), r.Method, service, endpoint)
	if span.Recording() {
		defer func() { endCall(span, code) }()
	}
	resp, err := in.cfg.Caller.Call(ctx, &client.Request{
		Service:    service,
		Endpoint:   endpoint,
		Method:     r.Method,
		Target:     target,
		Header:     CopyHeader(r.Header),
		Body:       body,
		Idempotent: idempotent,
	})
	_ = rc.SetWriteDeadline(time.Now().Add(in.cfg.WriteTimeout))
	if err != nil {
		fail(callerr.As(IngressID, err))
		return
	}
	code = resp.Status
	h := w.Header()
	setHeader(h, resp.Header)
	h.Set(transport.HeaderNode, resp.Node)
	h.Set(transport.HeaderAttempts, strconv.Itoa(resp.Attempts))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// traceCall starts the span of a call at the ingress, to service's endpoint with method:
// under the caller's traceparent tp when it is valid, else as the root of a new trace. It
// removes the caller's traceparent from h, the request's header (each attempt sends its
// own), and with a traceparent that is not valid, the tracestate that came with it.
func (in *Ingress) traceCall(ctx context.Context, h httpHeader, tp, method, service, endpoint string) (context.Context, tracing.Span) {
	ctx, span, validParent := in.cfg.Tracer.Server(ctx, tp, "ingress")
	if span.Recording() {
		span.Set(attribute.String("micro.service", service), attribute.String("micro.endpoint", endpoint),
			attribute.String("http.request.method", method))
	}
	h.Del(tracing.Header)
	if !validParent {
		h.Del(tracing.HeaderState)
	}
	return ctx, span
}

// setHeader sets on h the end-to-end headers of m, a message header whose repeated values
// are joined by transport.ValueSep, leaving out micro's own.
func setHeader(h http.Header, m map[string]string) {
	for k, v := range m {
		if ck := http.CanonicalHeaderKey(k); !hopByHop(ck) && !transport.IsMicroHeader(ck) {
			h[ck] = strings.Split(v, transport.ValueSep)
		}
	}
}

// refuse answers e to a request whose body was not read. net/http would read the body
// before it answers, from a caller who may never send it, so the connection closes instead.
func refuse(w http.ResponseWriter, rc *http.ResponseController, r *http.Request, e *callerr.Error) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
		_ = rc.SetReadDeadline(time.Now())
	}
	e.Write(w)
}

// callOptions reads what a caller may ask of a call: its budget (Micro-Timeout, at most
// st.MaxBudget; or else a gRPC call's grpc-timeout, cut to st.MaxBudget), which it puts in
// the returned context, and whether it is safe to repeat (Micro-Idempotent).
func callOptions(r *http.Request, st *Settings) (context.Context, context.CancelFunc, bool, *callerr.Error) {
	idem, hasIdem := r.Header[transport.HeaderIdempotent]
	d, idempotent, e := options(strings.Join(idem, ","), hasIdem, r.Header.Get(transport.HeaderTimeout), st)
	if e != nil {
		return nil, nil, false, e
	}
	if gt, ok := parseGRPCTimeout(r.Header.Get("Grpc-Timeout")); ok && d == 0 && isGRPC(r.Header) {
		d = min(gt, st.MaxBudget)
	}
	if d == 0 {
		return r.Context(), func() {}, idempotent, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), d)
	return ctx, cancel, idempotent, nil
}

// options reads what a caller may ask of a call from its Micro-Idempotent header (idem,
// when present) and its Micro-Timeout header (timeout, "" when absent): its budget, at
// most st.MaxBudget, 0 when it asked for none; and whether it is safe to repeat.
func options(idem string, hasIdem bool, timeout string, st *Settings) (budgetLeft time.Duration, idempotent bool, e *callerr.Error) {
	if hasIdem {
		switch strings.ToLower(strings.TrimSpace(idem)) {
		case "1", "true":
			idempotent = true
		case "0", "false":
		default:
			return 0, false, callerr.New(IngressID, http.StatusBadRequest, "%s %.40q: want true or false", transport.HeaderIdempotent, idem)
		}
	}
	if timeout != "" {
		d, err := budget.Parse(timeout)
		if err != nil {
			return 0, false, callerr.New(IngressID, http.StatusBadRequest, "%v", err)
		}
		if d > st.MaxBudget {
			return 0, false, callerr.New(IngressID, http.StatusBadRequest, "%s %q exceeds the longest budget of %v (client.max_timeout)", transport.HeaderTimeout, timeout, st.MaxBudget)
		}
		budgetLeft = d
	}
	return budgetLeft, idempotent, nil
}

// foreign says why r is what a web page of another site would send, or "" when it is not:
// its Host is not one of the ingress's names (a page on a DNS name that resolves to this
// machine), or its Origin, or Sec-Fetch-Site, says another site made it.
func foreign(r *http.Request, st *Settings) string {
	return foreignRequest(r.URL.IsAbs(), r.Host, r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site"), st)
}

// foreignRequest is foreign on the parts of a request it reads: whether its target is in
// proxy form (absolute), its Host, Origin and Sec-Fetch-Site.
func foreignRequest(absolute bool, host, origin, fetchSite string, st *Settings) string {
	if !st.CheckOrigin {
		return ""
	}
	// A request in proxy form names the service it calls as its host. Browsers send that
	// form only to a proxy they are told to use, never to a page's own host.
	if !absolute && !ownHost(host, st.AllowedHosts) {
		return fmt.Sprintf("Host %.64q is not a name of this ingress: only localhost, IP addresses and server.allowed_hosts", host)
	}
	if origin != "" {
		if !sameOrigin(origin, host) && !slices.Contains(st.AllowedOrigins, origin) {
			return fmt.Sprintf("Origin %.64q is another site: a web page may call the ingress only from its own origin or server.allowed_origins", origin)
		}
		return ""
	}
	switch fetchSite {
	case "", "same-origin", "none":
		return ""
	default:
		return fmt.Sprintf("a %.20s request (Sec-Fetch-Site): a web page may call the ingress only from its own origin or server.allowed_origins", fetchSite)
	}
}

// ownHost reports whether host (host[:port]) names the ingress: an IP address, localhost
// or a name under .localhost, or one of allowed.
func ownHost(host string, allowed []string) bool {
	if host == "" {
		return true // HTTP/1.0 without Host: no browser sends that
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(name, "["), "]"))
	if net.ParseIP(name) != nil || name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return true
	}
	return slices.Contains(allowed, name)
}

// sameOrigin reports whether origin is the origin of the ingress as host names it.
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, host)
}

func (in *Ingress) health(w http.ResponseWriter) {
	st := in.cfg.Health()
	code := http.StatusOK
	if st.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
}

func (in *Ingress) services(w http.ResponseWriter, r *http.Request) {
	list, err := in.cfg.Services(r.Context())
	if err != nil {
		callerr.New(IngressID, http.StatusServiceUnavailable, "listing services: %v", err).Write(w)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Route reads where a call goes: its service, its endpoint (the first segment of the path
// after the service, "" for the root) and the target the app gets (that path, escaped, and
// the query). A call is {METHOD} /{service}/{path}?{query}, or, in proxy form, what an app
// whose HTTP_PROXY points at the ingress sends: {METHOD} http://{service}/{path}?{query}.
// proxied reports the proxy form.
func Route(r *http.Request) (service, endpoint, target string, proxied bool, err error) {
	host := ""
	if r.URL.IsAbs() {
		host = r.URL.Hostname()
	}
	return route(host, r.URL.EscapedPath(), r.URL.RawQuery)
}

// route is Route on the parts of a request's target: its host (in proxy form, else ""), its
// escaped path and its raw query.
func route(host, escapedPath, rawQuery string) (service, endpoint, target string, proxied bool, err error) {
	path := escapedPath
	if host = strings.ToLower(host); host != "" && net.ParseIP(host) == nil && host != "localhost" {
		proxied = true
		path = "/" + url.PathEscape(host) + path
	}
	service, endpoint, target, err = transport.ParseTarget(path, rawQuery)
	if err != nil {
		return "", "", "", false, err
	}
	if err := checkName("service", service); err != nil {
		return "", "", "", false, err
	}
	if err := checkEndpoint(endpoint); err != nil {
		return "", "", "", false, err
	}
	return service, endpoint, target, proxied, nil
}

// checkName reports whether s may name a service: 1 to 128 lower-case letters, digits, '-',
// '_' and '.'.
func checkName(what, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s name %q: want 1 to 128 characters", what, truncate(s))
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("%s name %q has a character that is not allowed (%q)", what, truncate(s), c)
		}
	}
	return nil
}

// maxEndpoint bounds the length of an endpoint, the first segment of a call's path.
const maxEndpoint = 256

// checkEndpoint reports whether s may be an endpoint: at most maxEndpoint bytes of valid
// UTF-8 without control characters; "" is the root path.
func checkEndpoint(s string) error {
	switch {
	case len(s) > maxEndpoint:
		return fmt.Errorf("endpoint %q...: longer than %d bytes", truncate(s), maxEndpoint)
	case !utf8.ValidString(s):
		return fmt.Errorf("endpoint %q is not valid UTF-8", truncate(s))
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("endpoint %q has a control character", truncate(s))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// CopyHeader returns the end-to-end headers of h as a message header (repeated values
// joined by transport.ValueSep), leaving out hop-by-hop headers and every Micro-* header:
// micro sets its own at each hop.
func CopyHeader(h http.Header) map[string]string { return filterHeader(h) }
