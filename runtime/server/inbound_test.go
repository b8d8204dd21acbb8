package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/transport/httptransport"
	"github.com/microhost/micro/runtime/upstream"
)

// testApp is a real HTTP app behind the inbound server.
type testApp struct {
	*httptest.Server
	cancelled chan time.Duration // how long after its start a Wait.Cancel request was cancelled
	started   chan struct{}      // a Wait.Cancel request arrived
	firstLine chan string        // Stream.Read got its first line
	readFirst chan struct{}      // the test read Stream.Write's first part
}

func newTestApp(t *testing.T, maxBody int) *testApp {
	a := &testApp{cancelled: make(chan time.Duration, 4), started: make(chan struct{}, 4),
		firstLine: make(chan string, 4), readFirst: make(chan struct{}, 4)}
	mux := http.NewServeMux()
	mux.HandleFunc("/Echo.Headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Micro-Error", transport.ErrorRefused) // an app cannot pass for micro
		w.Header().Set("Micro-Node", "forged")
		w.Header().Set("X-App", "1")
		_ = json.NewEncoder(w).Encode(r.Header)
	})
	mux.HandleFunc("/Echo.Request/", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
		_ = json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "uri": r.RequestURI, "header": r.Header})
	})
	mux.HandleFunc("/Big.Reply", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("x", maxBody+1)))
	})
	mux.HandleFunc("/Half.Reply", func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, `{"half":`)
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // the stream is reset
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":")
		_ = brw.Flush()
		c.Close()
	})
	mux.HandleFunc("/Echo.Stream", func(w http.ResponseWriter, r *http.Request) {
		// Each line of the body comes back as it arrives; the trailer counts the bytes.
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Trailer", "X-Bytes")
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
		n := 0
		sc := bufio.NewScanner(r.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			n += len(sc.Bytes()) + 1
			_, _ = fmt.Fprintf(w, "%s\n", sc.Bytes())
			_ = http.NewResponseController(w).Flush()
		}
		w.Header().Set("X-Bytes", strconv.Itoa(n))
	})
	mux.HandleFunc("/Stream.Read", func(w http.ResponseWriter, r *http.Request) {
		// The first line is reported as soon as it arrives, before the rest is read.
		br := bufio.NewReader(r.Body)
		first, err := br.ReadString('\n')
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.firstLine <- first
		rest, _ := io.Copy(io.Discard, br)
		fmt.Fprintf(w, "%d", int64(len(first))+rest)
	})
	mux.HandleFunc("/Stream.Write", func(w http.ResponseWriter, r *http.Request) {
		// 100 KiB, then the rest once the test has read it.
		_, _ = w.Write(bytes.Repeat([]byte("a"), 100<<10))
		_ = http.NewResponseController(w).Flush()
		select {
		case <-a.readFirst:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(bytes.Repeat([]byte("b"), 100<<10))
	})
	mux.HandleFunc("/Grpc.Fail", func(w http.ResponseWriter, r *http.Request) {
		// A gRPC failure with nothing else to say: trailers-only.
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.Header().Set("Grpc-Message", "down for maintenance")
	})
	mux.HandleFunc("/Fail.Hard", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	mux.HandleFunc("/Wait.Cancel", func(w http.ResponseWriter, r *http.Request) {
		// net/http notices a client that goes away once the body has been read.
		_, _ = io.Copy(io.Discard, r.Body)
		start := time.Now()
		a.started <- struct{}{}
		<-r.Context().Done()
		a.cancelled <- time.Since(start)
	})
	mux.HandleFunc("/Trace.Seen", func(w http.ResponseWriter, r *http.Request) {
		// The trace headers the app got; a WebSocket upgrade gets them in a refusal.
		if r.Header.Get("Upgrade") != "" {
			w.WriteHeader(http.StatusForbidden)
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"traceparent": r.Header.Get("Traceparent"), "tracestate": r.Header.Get("Tracestate")})
	})
	mux.HandleFunc("/Ws.Refuse", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"why":"not you"}`, http.StatusForbidden)
	})
	a.Server = httptest.NewUnstartedServer(mux)
	a.Config.Protocols = new(http.Protocols)
	a.Config.Protocols.SetHTTP1(true)
	a.Config.Protocols.SetUnencryptedHTTP2(true)
	a.Start()
	t.Cleanup(a.Close)
	return a
}

// testApps resolves service "app" to the test app, "down" to an address that refuses
// connections, and panics on "boom".
type testApps struct{ app, down string }

func (a testApps) Resolve(service, _ string) (string, bool) {
	switch service {
	case "app":
		return a.app, true
	case "down":
		return a.down, true
	case "boom":
		panic("resolving boom")
	}
	return "", false
}

// Local reports none of the nodes as this micro's own.
func (testApps) Local(string, string) (string, bool) { return "", false }

func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// path is one of the ways other micros reach the inbound server.
type path int

const (
	messagePath path = iota // messages over the http transport
	http1Path               // HTTP/1.1, on fasthttp
	h2Path                  // HTTP/2 without TLS, on net/http
)

func (p path) String() string { return [...]string{"message", "http1", "h2"}[p] }

// inboundHarness is a real Inbound on a real HTTP transport listener (the message path), on
// a real fasthttp server (the HTTP/1.1 path) and on a real h2c server (the HTTP/2 path),
// with real metrics, in front of a real app that speaks HTTP/1.1 and h2c. send uses the
// path that p names.
type inboundHarness struct {
	in       *Inbound
	app      *testApp
	tr       transport.Transport
	addr     string // the message path
	fastAddr string // the HTTP/1.1 path
	h2Addr   string // the HTTP/2 path
	p        path
	up       *upstream.Client
	h2c      *http.Transport
	metrics  *metrics.Metrics
}

// paths runs f on each path.
func paths(t *testing.T, f func(t *testing.T, p path)) {
	for _, p := range []path{messagePath, http1Path, h2Path} {
		t.Run(p.String(), func(t *testing.T) { f(t, p) })
	}
}

// fastServer serves h on the HTTP/1.1 path as micro does, bodies past InMemoryBody
// streaming, and returns its address.
func fastServer(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &fasthttp.Server{
		Handler: h, NoDefaultContentType: true, NoDefaultServerHeader: true,
		StreamRequestBody: true, MaxRequestBodySize: InMemoryBody, Logger: quietLogger{},
	}
	go func() { _ = fs.Serve(ln) }()
	t.Cleanup(func() { _ = fs.Shutdown() })
	return ln.Addr().String()
}

// quietLogger drops what fasthttp logs.
type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

// newH2C returns an HTTP/2 client without TLS.
func newH2C(t *testing.T) *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func newInboundHarness(t *testing.T, st Settings, p path) *inboundHarness {
	t.Helper()
	return newTracedInboundHarness(t, st, p, nil)
}

// newTracedInboundHarness is newInboundHarness with an Inbound that records spans with tr.
func newTracedInboundHarness(t *testing.T, st Settings, p path, tr *tracing.Tracer) *inboundHarness {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	h := &inboundHarness{app: newTestApp(t, int(st.MaxBody)), p: p, h2c: newH2C(t)}
	h.up = upstream.New(upstream.Options{MaxBody: int(st.MaxBody)})
	t.Cleanup(h.up.Close)
	h.metrics = metrics.New(metrics.Options{KnownService: func(n string) bool { return n == "app" }})
	h.in = NewInbound(InboundConfig{
		Tracer:   tr,
		Apps:     testApps{app: h.app.URL, down: closedAddr(t)},
		Recorder: h.metrics,
		Logger:   logger,
		HTTP:     &http.Client{},
		Upstream: h.up,
		H2C:      h.h2c,
		Settings: st,
	})
	h.fastAddr = fastServer(t, h.in.ServeFast)
	h2 := httptest.NewUnstartedServer(http.HandlerFunc(h.in.ServeH2))
	h2.Config.Protocols = new(http.Protocols)
	h2.Config.Protocols.SetUnencryptedHTTP2(true)
	h2.Start()
	t.Cleanup(h2.Close)
	h.h2Addr = h2.Listener.Addr().String()
	h.tr = httptransport.New(httptransport.Options{Logger: logger})
	t.Cleanup(func() { h.tr.Close() })
	l, err := h.tr.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr()
	go func() { _ = h.in.Serve(context.Background(), l) }()
	t.Cleanup(func() { l.Close() })
	return h
}

// addrOf is the address of the path h uses.
func (h *inboundHarness) addrOf() string {
	switch h.p {
	case http1Path:
		return h.fastAddr
	case h2Path:
		return h.h2Addr
	}
	return h.addr
}

// send makes one call, through a fresh transport connection, as an HTTP/1.1 request or as an
// HTTP/2 request, and returns the answer as a message.
func (h *inboundHarness) send(t *testing.T, hdr map[string]string, body string) *transport.Message {
	t.Helper()
	switch h.p {
	case http1Path:
		return h.sendFast(t, hdr, body)
	case h2Path:
		m, err := h.sendH2(context.Background(), hdr, body)
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		return m
	}
	conn, err := h.tr.Dial(context.Background(), h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := &transport.Message{Header: map[string]string{transport.HeaderTimeout: "2s"}, Body: []byte(body)}
	for k, v := range hdr {
		m.Header[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Send(ctx, m); err != nil {
		t.Fatalf("send: %v", err)
	}
	r, err := conn.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return r
}

// sendH2 sends the call that hdr and body make as an HTTP/2 request, as another micro's
// ingress does, and reads the answer whole.
func (h *inboundHarness) sendH2(ctx context.Context, hdr map[string]string, body string) (*transport.Message, error) {
	method, target := requestLine(hdr)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+h.h2Addr+"/"+url.PathEscape(hdr[transport.HeaderService])+target, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set(transport.HeaderTimeout, "2s")
	for k, v := range hdr {
		switch k {
		case transport.HeaderService, transport.HeaderEndpoint, transport.HeaderMethod, transport.HeaderPath:
		default:
			req.Header[http.CanonicalHeaderKey(k)] = strings.Split(v, transport.ValueSep)
		}
	}
	resp, err := h.h2c.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	m := &transport.Message{Header: filterHeader(resp.Header), Body: b}
	m.Header[transport.HeaderStatus] = strconv.Itoa(resp.StatusCode)
	for k, vs := range resp.Header {
		if transport.IsMicroHeader(k) {
			m.Header[k] = strings.Join(vs, transport.ValueSep)
		}
	}
	return m, nil
}

// sendFast sends the call that hdr and body make as an HTTP/1.1 request, as another micro's
// ingress does.
func (h *inboundHarness) sendFast(t *testing.T, hdr map[string]string, body string) *transport.Message {
	t.Helper()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	method, target := requestLine(hdr)
	req.Header.SetMethod(method)
	req.SetRequestURI("/" + url.PathEscape(hdr[transport.HeaderService]) + target)
	req.Header.SetHost(h.fastAddr)
	req.Header.Set(transport.HeaderTimeout, "2s")
	for k, v := range hdr {
		switch k {
		case transport.HeaderService, transport.HeaderEndpoint, transport.HeaderMethod, transport.HeaderPath:
		default:
			setValues(&req.Header, k, v)
		}
	}
	req.SetBodyString(body)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.up.Do(ctx, h.fastAddr, req, resp); err != nil {
		t.Fatalf("send: %v", err)
	}
	m := &transport.Message{Header: map[string]string{transport.HeaderStatus: strconv.Itoa(resp.StatusCode())}, Body: bytes.Clone(resp.Body())}
	for k, v := range resp.Header.All() {
		transport.AddValue(m.Header, string(k), string(v))
	}
	return m
}

func call(service, endpoint string, more ...string) map[string]string {
	h := map[string]string{transport.HeaderService: service, transport.HeaderEndpoint: endpoint}
	for i := 0; i+1 < len(more); i += 2 {
		h[more[i]] = more[i+1]
	}
	return h
}

// TestInboundAnswers: each answer that micro gives in place of the app says why, so that the
// caller knows whether to try another node and whether to blame this one.
func TestInboundAnswers(t *testing.T) {
	paths(t, func(t *testing.T, p path) {
		h := newInboundHarness(t, Settings{MaxBody: 1 << 10}, p)
		for _, tc := range []struct {
			name   string
			hdr    map[string]string
			status int
			kind   string
		}{
			{"app answers", call("app", "Echo.Headers"), 200, ""},
			{"app fails on its own", call("app", "Fail.Hard"), 500, ""},
			{"unknown service", call("nosuch", "X.Y"), 503, transport.ErrorUnavailable},
			{"app refuses connections", call("down", "X.Y"), 503, transport.ErrorUnavailable},
			{"reply over max_body", call("app", "Big.Reply"), 502, transport.ErrorReply},
			{"app closes mid-reply", call("app", "Half.Reply"), 502, transport.ErrorApp},
			{"bad service name", call("Bad!", "X.Y"), 400, transport.ErrorCaller},
			{"bad budget", call("app", "Echo.Headers", transport.HeaderTimeout, "soon"), 400, transport.ErrorCaller},
			{"panic while serving", call("boom", "X.Y"), 500, transport.ErrorInternal},
		} {
			if p == h2Path && (tc.kind == transport.ErrorReply || tc.kind == transport.ErrorApp) {
				continue // over HTTP/2 answers stream: TestInboundH2Streams
			}
			t.Run(tc.name, func(t *testing.T) {
				r := h.send(t, tc.hdr, "{}")
				if got := r.Header[transport.HeaderStatus]; got != strconv.Itoa(tc.status) {
					t.Fatalf("status %s, want %d: %s", got, tc.status, r.Body)
				}
				if got := r.Header[transport.HeaderError]; got != tc.kind {
					t.Fatalf("%s %q, want %q", transport.HeaderError, got, tc.kind)
				}
				if tc.kind != "" {
					if e, ok := callerr.Parse(r.Body); !ok || e.Code != tc.status {
						t.Fatalf("body %q is not a JSON error with code %d", r.Body, tc.status)
					}
				}
			})
		}
		// The server goes on serving after all of that.
		if r := h.send(t, call("app", "Echo.Headers"), "{}"); r.Header[transport.HeaderStatus] != "200" {
			t.Fatalf("after the bad calls: %v", r.Header)
		}
	})
}

// TestInboundHeaders: the app sees none of the Micro-* headers a caller sent but the budget
// micro sets, and the caller sees none of those the app answered with.
func TestInboundHeaders(t *testing.T) {
	paths(t, func(t *testing.T, p path) {
		h := newInboundHarness(t, Settings{MaxBudget: time.Second}, p)
		r := h.send(t, call("app", "Echo.Headers",
			transport.HeaderTimeout, "1h",
			transport.HeaderCaller, "someone-else",
			transport.HeaderStream, "0",
			"Micro-Anything", "x",
			"X-Trace", "t1"), "{}")
		var seen http.Header
		if err := json.Unmarshal(r.Body, &seen); err != nil {
			t.Fatalf("app answered %q: %v", r.Body, err)
		}
		for k := range seen {
			if transport.IsMicroHeader(k) && k != transport.HeaderTimeout {
				t.Errorf("the app saw %s: %v", k, seen[k])
			}
		}
		if seen.Get("X-Trace") != "t1" {
			t.Errorf("the app did not see X-Trace: %v", seen)
		}
		d, err := budget.Parse(seen.Get(transport.HeaderTimeout))
		if err != nil || d > time.Second {
			t.Errorf("the app saw budget %q (%v), want at most the 1s cap for a caller's 1h", seen.Get(transport.HeaderTimeout), err)
		}
		if r.Header[transport.HeaderError] != "" || r.Header["Micro-Node"] != "" || r.Header["X-App"] != "1" {
			t.Errorf("reply headers %v: want the app's own, without its Micro-* ones", r.Header)
		}
	})
}

// TestInboundAnyRequest: the app gets the call's method, target and repeated headers, and
// the caller the app's repeated headers.
func TestInboundAnyRequest(t *testing.T) {
	paths(t, func(t *testing.T, p path) {
		h := newInboundHarness(t, Settings{}, p)
		r := h.send(t, call("app", "Echo.Request", transport.HeaderMethod, "PATCH",
			transport.HeaderPath, "/Echo.Request/42%2F7?expand=orders", "X-Multi", "one"+transport.ValueSep+"two"), "{}")
		var seen struct {
			Method, URI string
			Header      http.Header
		}
		if err := json.Unmarshal(r.Body, &seen); err != nil {
			t.Fatalf("app answered %q: %v", r.Body, err)
		}
		if seen.Method != "PATCH" || seen.URI != "/Echo.Request/42%2F7?expand=orders" || len(seen.Header["X-Multi"]) != 2 {
			t.Errorf("app got %s %s with X-Multi %q", seen.Method, seen.URI, seen.Header["X-Multi"])
		}
		if r.Header["Set-Cookie"] != "a=1"+transport.ValueSep+"b=2" {
			t.Errorf("caller got Set-Cookie %q, want both", r.Header["Set-Cookie"])
		}
	})
}

// TestInboundCallerGoneCancelsApp: a caller that disconnects cancels the app's request.
func TestInboundCallerGoneCancelsApp(t *testing.T) {
	paths(t, testCallerGone)
}

// rawPost posts to target, as it is, on the path h uses, and returns the answer's status.
func (h *inboundHarness) rawPost(t *testing.T, target string) int {
	t.Helper()
	if h.p == h2Path {
		req, err := http.NewRequest(http.MethodPost, "http://"+h.h2Addr+target, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(transport.HeaderTimeout, "1s")
		resp, err := h.h2c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	raw, err := net.Dial("tcp", h.addrOf())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = io.WriteString(raw, "POST "+target+" HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nContent-Length: 0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// closerFunc is a func as an io.Closer.
type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// hold starts a call to Wait.Cancel, which the app holds until it is cancelled, on the path
// h uses (a raw connection for the two that take the same HTTP/1.1 request), and returns,
// once the call has reached the app, what makes its caller go away.
func (h *inboundHarness) hold(t *testing.T) io.Closer {
	t.Helper()
	if h.p == h2Path {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			_, _ = h.sendH2(ctx, call("app", "Wait.Cancel", transport.HeaderTimeout, "30s"), `{"a":1}`)
		}()
		select {
		case <-h.app.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the call did not reach the app")
		}
		return closerFunc(cancel)
	}
	conn, err := net.Dial("tcp", h.addrOf())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "POST /app/Wait.Cancel HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 30s\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
	select {
	case <-h.app.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not reach the app")
	}
	return conn
}

func testCallerGone(t *testing.T, p path) {
	h := newInboundHarness(t, Settings{}, p)
	conn := h.hold(t)
	select {
	case <-h.app.started:
	default:
	}
	gone := time.Now()
	conn.Close()
	select {
	case <-h.app.cancelled:
		t.Logf("the app's request was cancelled %v after the caller left", time.Since(gone).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the app's request was not cancelled when its caller went away (its 30s budget still ran)")
	}
}

// TestInboundSheds: past max_inflight, a call is refused at once with a 503 that another node
// may take.
func TestInboundSheds(t *testing.T) {
	paths(t, testSheds)
}

func testSheds(t *testing.T, p path) {
	h := newInboundHarness(t, Settings{MaxInflight: 1}, p)
	conn := h.hold(t)
	defer conn.Close()
	r := h.send(t, call("app", "Echo.Headers"), "{}")
	if r.Header[transport.HeaderStatus] != "503" || r.Header[transport.HeaderError] != transport.ErrorRefused || r.Header["Retry-After"] == "" {
		t.Fatalf("a call past max_inflight: %v %s, want 503 refused with Retry-After", r.Header, r.Body)
	}
	conn.Close()
	<-h.app.cancelled
	eventuallyOK(t, func() error {
		if r := h.send(t, call("app", "Echo.Headers"), "{}"); r.Header[transport.HeaderStatus] != "200" {
			return fmt.Errorf("status %s", r.Header[transport.HeaderStatus])
		}
		return nil
	})
}

// TestInboundStreamRefusedByApp: an app that refuses a WebSocket for the request's own
// reasons has its answer passed back, not turned into a 502.
func TestInboundStreamRefusedByApp(t *testing.T) {
	h := newInboundHarness(t, Settings{}, messagePath)
	conn, err := h.tr.Dial(context.Background(), h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := &transport.Message{Header: call("app", "Ws.Refuse", transport.HeaderTimeout, "2s", transport.HeaderStream, "1")}
	if err := conn.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	r, err := conn.Recv(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Header[transport.HeaderStatus] != "403" || r.Header[transport.HeaderError] != "" {
		t.Fatalf("refused stream: %v %q, want the app's own 403", r.Header, r.Body)
	}
}

// TestInboundJunkLabels: junk service names all share one metric label, and none of them
// can break the metrics (a label that is not UTF-8 used to panic).
func TestInboundJunkLabels(t *testing.T) {
	paths(t, func(t *testing.T, p path) {
		h := newInboundHarness(t, Settings{}, p)
		for i := range 50 {
			h.send(t, call(fmt.Sprintf("junk-%d", i), "X.Y"), "")
		}
		if code := h.rawPost(t, "/%FF/x"); code != 400 {
			t.Fatalf("POST /%%FF/x: %d, want 400", code)
		}
		if n := testutil.CollectAndCount(h.metrics.Registry(), "micro_inbound_calls_total"); n > 2 {
			t.Fatalf("%d series of micro_inbound_calls_total after junk calls, want at most 2 (other/400, other/503)", n)
		}
	})
}

// eventuallyOK calls f until it returns nil, and fails the test with its error after 10 s.
func eventuallyOK(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// memConn is a server transport.Conn in memory, for the fuzz target: Recv returns req once,
// Send records the reply.
type memConn struct {
	mu    sync.Mutex
	req   *transport.Message
	recvd bool
	reply *transport.Message
}

func (c *memConn) Recv(context.Context) (*transport.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recvd {
		return nil, io.EOF
	}
	c.recvd = true
	return c.req, nil
}

func (c *memConn) Send(_ context.Context, m *transport.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reply = m
	return nil
}

func (c *memConn) Close() error { return nil }

// FuzzInbound sends arbitrary calls through the real Inbound, with the real metrics, to a
// real app: micro never crashes, always answers, marks its own answers, and the metrics
// stay well formed and bounded.
func FuzzInbound(f *testing.F) {
	f.Add("app", "Echo.Headers", "250ms", "Micro-Caller", "x", "{}")
	f.Add("\xff", "x", "1s", "", "", "")
	f.Add("app", "Big.Reply", "1h", "Micro-Stream", "0", "")
	f.Add("down", "X.Y", "-1s", "X-\x00", "\n", "")
	f.Add("boom", "X.Y", "1s", "", "", "")
	app := newTestApp(&testing.T{}, 64)
	defer app.Close()
	m := metrics.New(metrics.Options{KnownService: func(n string) bool { return n == "app" }})
	in := NewInbound(InboundConfig{
		Apps: testApps{app: app.URL, down: "http://127.0.0.1:1"}, Recorder: m,
		Logger: slog.New(slog.DiscardHandler), HTTP: &http.Client{}, Upstream: upstream.New(upstream.Options{MaxBody: 64}),
		Settings: Settings{MaxBody: 64},
	})
	f.Fuzz(func(t *testing.T, service, endpoint, timeout, hk, hv, body string) {
		h := map[string]string{transport.HeaderService: service, transport.HeaderEndpoint: endpoint, transport.HeaderTimeout: timeout}
		if hk != "" {
			h[hk] = hv
		}
		conn := &memConn{req: &transport.Message{Header: h, Body: []byte(body)}}
		in.handle(context.Background(), conn)
		if conn.reply == nil {
			t.Fatal("no reply")
		}
		status, err := strconv.Atoi(conn.reply.Header[transport.HeaderStatus])
		if err != nil || status < 100 || status > 999 {
			t.Fatalf("reply status %q", conn.reply.Header[transport.HeaderStatus])
		}
		if kind := conn.reply.Header[transport.HeaderError]; kind != "" {
			if _, ok := callerr.Parse(conn.reply.Body); !ok {
				t.Fatalf("micro's own answer (%s) is not a JSON error: %q", kind, conn.reply.Body)
			}
		}
		// The same call on the HTTP/1.1 path.
		var req fasthttp.Request
		req.Header.SetMethod("POST")
		req.Header.SetRequestURI("/" + url.PathEscape(service) + "/" + url.PathEscape(endpoint))
		req.Header.Set(transport.HeaderTimeout, timeout)
		if hk != "" {
			req.Header.Set(hk, hv)
		}
		req.SetBodyString(body)
		var c fasthttp.RequestCtx
		c.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
		in.ServeFast(&c)
		if st := c.Response.StatusCode(); st < 100 || st > 999 {
			t.Fatalf("HTTP/1.1 path: status %d", st)
		}
		if kind := c.Response.Header.Peek(transport.HeaderError); kind != nil {
			if _, ok := callerr.Parse(c.Response.Body()); !ok {
				t.Fatalf("HTTP/1.1 path: micro's own answer (%s) is not a JSON error: %q", kind, c.Response.Body())
			}
		}
		if _, err := m.Registry().Gather(); err != nil {
			t.Fatalf("metrics broken: %v", err)
		}
		if n := testutil.CollectAndCount(m.Registry(), "micro_inbound_calls_total"); n > 40 {
			t.Fatalf("%d inbound series: labels are not bounded", n)
		}
	})
}

// TestStreamIdle: a stream that carries nothing either way for StreamIdle is closed.
func TestStreamIdle(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		a, b := memStreamPair()
		defer a.Close()
		go func() { // the far end echoes and never ends on its own
			for {
				m, err := b.Recv(context.Background())
				if err != nil {
					return
				}
				_ = b.Send(context.Background(), m)
			}
		}()
		pump(context.Background(), slog.New(slog.DiscardHandler), ws, a, 100*time.Millisecond, false)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(ctx); err != nil || string(b) != "hi" {
		t.Fatalf("echo: %q %v", b, err)
	}
	_, _, err = ws.Read(ctx)
	if st := websocket.CloseStatus(err); st != websocket.StatusGoingAway {
		t.Fatalf("an idle stream ended with %v (%v), want 1001 going away", st, err)
	}
	if !strings.Contains(err.Error(), "server.stream_idle_timeout") {
		t.Errorf("close reason %q does not name the setting", err)
	}
}

// memStream is one end of an in-memory stream Conn pair.
type memStream struct {
	in, out chan *transport.Message
	done    chan struct{}
	once    *sync.Once
}

func memStreamPair() (*memStream, *memStream) {
	ab, ba := make(chan *transport.Message, 8), make(chan *transport.Message, 8)
	done, once := make(chan struct{}), &sync.Once{}
	return &memStream{in: ba, out: ab, done: done, once: once}, &memStream{in: ab, out: ba, done: done, once: once}
}

func (s *memStream) Send(ctx context.Context, m *transport.Message) error {
	select {
	case s.out <- m:
		return nil
	case <-s.done:
		return transport.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *memStream) Recv(ctx context.Context) (*transport.Message, error) {
	select {
	case m := <-s.in:
		return m, nil
	case <-s.done:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *memStream) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}
