package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/transport"
)

// echoCaller answers every call with its request, or with err when set.
type echoCaller struct {
	err      error
	deadline time.Duration
	got      *client.Request
}

func (c *echoCaller) Call(ctx context.Context, req *client.Request) (*client.Response, error) {
	c.got = req
	if dl, ok := ctx.Deadline(); ok {
		c.deadline = time.Until(dl)
	}
	if c.err != nil {
		return nil, c.err
	}
	return &client.Response{Status: 201, Header: map[string]string{"Content-Type": "application/json", "Connection": "close",
		"Set-Cookie": "a=1" + transport.ValueSep + "b=2"}, Body: req.Body, Node: "n1", Attempts: 1}, nil
}

// Do answers as Call does, into the exchange of the HTTP/1.1 path.
func (c *echoCaller) Do(ctx context.Context, req *client.Request, ex client.Exchange) (client.Outcome, error) {
	return doByCall(ctx, c, req, ex)
}

// doByCall is a Doer's Do for a test Caller: Call's answer, written where the HTTP/1.1
// path's exchange keeps its answer.
func doByCall(ctx context.Context, c Caller, req *client.Request, ex client.Exchange) (client.Outcome, error) {
	resp, err := c.Call(ctx, req)
	if err != nil {
		return client.Outcome{}, err
	}
	if resp.Node == "" {
		return client.Outcome{Rejection: resp}, nil
	}
	r := &ex.(*fastExchange).c.Response
	r.Reset()
	r.SetStatusCode(resp.Status)
	for k, v := range resp.Header {
		setValues(&r.Header, k, v)
	}
	r.SetBody(resp.Body)
	return client.Outcome{Node: resp.Node, Attempts: resp.Attempts}, nil
}

// handlerOf is one of the ingress's two handlers: net/http's, or the HTTP/1.1 path's.
type handlerOf func(*Ingress) http.Handler

// bothHandlers runs f with each of the ingress's handlers.
func bothHandlers(t *testing.T, f func(t *testing.T, h handlerOf)) {
	t.Run("net-http", func(t *testing.T) { f(t, func(in *Ingress) http.Handler { return in }) })
	t.Run("fasthttp", func(t *testing.T) { f(t, func(in *Ingress) http.Handler { return fastAdapter{in} }) })
}

// fastAdapter serves a net/http request with the ingress's HTTP/1.1 handler.
type fastAdapter struct{ in *Ingress }

func (a fastAdapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req fasthttp.Request
	req.Header.SetMethod(r.Method)
	req.Header.SetRequestURI(r.RequestURI)
	req.Header.SetHost(r.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	body, _ := io.ReadAll(r.Body)
	req.SetBody(body)
	var c fasthttp.RequestCtx
	c.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
	a.in.ServeFast(&c)
	for k, v := range c.Response.Header.All() {
		w.Header().Add(string(k), string(v))
	}
	w.WriteHeader(c.Response.StatusCode())
	_, _ = w.Write(c.Response.Body())
}

type nopRecorder struct{}

func (nopRecorder) Call(string, int, time.Duration)    {}
func (nopRecorder) Inbound(string, int, time.Duration) {}

func newTestIngress(c Caller) *Ingress {
	d, _ := c.(Doer)
	return NewIngress(IngressConfig{
		Caller:   c,
		Fast:     FastPath{Doer: d},
		Recorder: nopRecorder{},
		Metrics:  http.NotFoundHandler(),
		Services: func(context.Context) ([]*registry.Service, error) {
			return []*registry.Service{{Name: "greeter", Nodes: []*registry.Node{{ID: "n1"}}}}, nil
		},
		Health:   func() Status { return Status{Status: "ok", Services: map[string]int{"greeter": 2}} },
		Settings: Settings{MaxBody: 16, CheckOrigin: true},
	})
}

func serve(h http.Handler, method, path, body string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Host = "127.0.0.1:8080"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestIngressCall(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		c := &echoCaller{}
		w := serve(h(newTestIngress(c)), "POST", "/greeter/Greeter.Hello", `{"a":1}`, map[string]string{"Micro-Timeout": "250ms", "X-Trace": "t1"})
		if w.Code != 201 || w.Body.String() != `{"a":1}` {
			t.Fatalf("got %d %q", w.Code, w.Body)
		}
		if w.Header().Get("Micro-Node") != "n1" || w.Header().Get("Connection") != "" {
			t.Errorf("response headers: %v", w.Header())
		}
		if c.got.Service != "greeter" || c.got.Endpoint != "Greeter.Hello" || c.got.Header["X-Trace"] != "t1" {
			t.Errorf("request: %+v", c.got)
		}
		if _, ok := c.got.Header["Micro-Timeout"]; ok {
			t.Error("Micro-Timeout passed on as a plain header; the client sets it per attempt")
		}
		if c.deadline <= 0 || c.deadline > 250*time.Millisecond {
			t.Errorf("budget in context = %v, want (0, 250ms]", c.deadline)
		}
	})
}

func TestIngressBadInput(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		for _, tc := range []struct {
			name, method, path, body, timeout string
			code                              int
			detail                            string
		}{
			{"unknown service", "POST", "/nosuch/X.Y", "", "", 404, `"nosuch"`},
			{"no service", "POST", "//x", "", "", 400, "want /{service}/{path}"},
			{"control character", "POST", "/greeter/a%0Ab", "", "", 400, "control character"},
			{"CONNECT", "CONNECT", "/greeter/x", "", "", 405, "CONNECT"},
			{"bad char", "POST", "/gre%20eter/X", "", "", 400, "not allowed"},
			{"upper-case service", "POST", "/Greeter/X", "", "", 400, "not allowed"},
			{"bad timeout", "POST", "/greeter/Greeter.Hello", "", "soon", 400, `"soon"`},
			{"negative timeout", "POST", "/greeter/Greeter.Hello", "", "-1s", 400, "positive"},
			{"oversized body", "POST", "/greeter/Greeter.Hello", strings.Repeat("x", 17), "", 413, "server.max_body"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := &echoCaller{}
				if tc.code == 404 {
					c.err = callerr.New("micro.client", 404, "service %q is not registered", "nosuch")
				}
				hdr := map[string]string{}
				if tc.timeout != "" {
					hdr["Micro-Timeout"] = tc.timeout
				}
				w := serve(h(newTestIngress(c)), tc.method, tc.path, tc.body, hdr)
				if w.Code != tc.code {
					t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
				}
				e, ok := callerr.Parse(w.Body.Bytes())
				if !ok || e.Code != tc.code || e.Status != http.StatusText(tc.code) || !strings.Contains(e.Detail, tc.detail) {
					t.Fatalf("error body %s, want code %d with detail containing %q", w.Body, tc.code, tc.detail)
				}
			})
		}
	})
}

func TestIngressHealthAndServices(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		in := newTestIngress(&echoCaller{})
		w := serve(h(in), "GET", "/health", "", nil)
		var st Status
		if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || w.Code != 200 || st.Services["greeter"] != 2 {
			t.Fatalf("health: %d %s", w.Code, w.Body)
		}
		w = serve(h(in), "GET", "/services", "", nil)
		var list []*registry.Service
		if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list) != 1 || list[0].Name != "greeter" {
			t.Fatalf("services: %d %s", w.Code, w.Body)
		}
	})
}

// TestIngressAnyRequest: any method, path, query and repeated headers reach the caller, and
// the answer's repeated headers reach the app; an app with HTTP_PROXY pointed at the
// ingress names the service as the host.
func TestIngressAnyRequest(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		c := &echoCaller{}
		in := newTestIngress(c)
		req := httptest.NewRequest("DELETE", "/greeter/users/42%2F7?expand=orders&x=1", nil)
		req.Host = "127.0.0.1:8080"
		req.Header["X-Multi"] = []string{"one", "two"}
		w := httptest.NewRecorder()
		h(in).ServeHTTP(w, req)
		if w.Code != 201 {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		g := c.got
		if g.Service != "greeter" || g.Endpoint != "users" || g.Method != "DELETE" || g.Target != "/users/42%2F7?expand=orders&x=1" {
			t.Errorf("request %+v", g)
		}
		if g.Header["X-Multi"] != "one"+transport.ValueSep+"two" {
			t.Errorf("X-Multi = %q, want both values", g.Header["X-Multi"])
		}
		if got := w.Header()["Set-Cookie"]; len(got) != 2 {
			t.Errorf("Set-Cookie = %q, want both of the answer's cookies", got)
		}

		// Proxy form: GET http://greeter/hello with Host: greeter.
		req = httptest.NewRequest("GET", "http://greeter/hello/there?q=1", nil)
		w = httptest.NewRecorder()
		h(in).ServeHTTP(w, req)
		if w.Code != 201 || c.got.Service != "greeter" || c.got.Endpoint != "hello" || c.got.Target != "/hello/there?q=1" {
			t.Fatalf("proxy form: %d %s, request %+v", w.Code, w.Body, c.got)
		}
		// ... but a page's Origin is still checked.
		req = httptest.NewRequest("POST", "http://greeter/hello", nil)
		req.Header.Set("Origin", "https://evil.example")
		w = httptest.NewRecorder()
		h(in).ServeHTTP(w, req)
		if w.Code != 403 {
			t.Fatalf("proxy form with a foreign Origin: %d, want 403", w.Code)
		}
	})
}

func FuzzRoute(f *testing.F) {
	for _, s := range []string{"/greeter/Greeter.Hello", "/", "//", "/a/b/c", "/a%2Fb/c", "greeter/x", "/\x00/\xff",
		"http://greeter/x", "http://127.0.0.1:8080/greeter/x", "http://Greeter:81/a?b"} {
		f.Add(s, "")
		f.Add(s, "a=1&b")
	}
	f.Fuzz(func(t *testing.T, target, query string) {
		u, err := url.Parse(target)
		if err != nil {
			return
		}
		u.RawQuery = query
		svc, ep, tg, proxied, err := Route(&http.Request{URL: u})
		if err != nil {
			return
		}
		if checkName("service", svc) != nil || checkEndpoint(ep) != nil || !strings.HasPrefix(tg, "/") {
			t.Fatalf("Route(%q, %q) = %q, %q, %q: not a valid route", target, query, svc, ep, tg)
		}
		// The route, written as a call to the ingress, routes the same.
		again, err := url.Parse("/" + url.PathEscape(svc) + tg)
		if err != nil {
			t.Fatalf("Route(%q, %q) = %q, %q: %v", target, query, svc, tg, err)
		}
		s2, e2, t2, p2, err := Route(&http.Request{URL: again})
		if err != nil || s2 != svc || e2 != ep || t2 != tg || p2 {
			t.Fatalf("Route(%q, %q) = %q, %q, %q (proxied %v); again %q, %q, %q, %v", target, query, svc, ep, tg, proxied, s2, e2, t2, err)
		}
	})
}

// FuzzIngress sends arbitrary paths, methods, budgets, headers and bodies through the real
// ingress with the real metrics: every answer must be a success from the caller or a JSON
// error with a 4xx status, and the metrics stay well formed and bounded.
func FuzzIngress(f *testing.F) {
	f.Add("POST", "/greeter/Greeter.Hello", "250ms", "Micro-Caller", "x", `{"name":"Ada"}`)
	f.Add("GET", "/x", "", "Origin", "https://evil.example", "")
	f.Add("POST", "/a/b", "1h1s", "Micro-Stream", "1", "")
	f.Add("POST", "/a/b", "9999999999999999999h", "Micro-Idempotent", "yes", "")
	f.Add("PUT", "/../..", "-0", "Sec-Fetch-Site", "cross-site", "\x00")
	f.Add("POST", "/\xff/x", "1s", "", "", "")
	m := metrics.New(metrics.Options{KnownService: func(n string) bool { return n == "greeter" }})
	echo := &echoCaller{}
	in := NewIngress(IngressConfig{
		Caller: echo, Recorder: m, Metrics: m.Handler(), Fast: FastPath{Doer: echo},
		Settings: Settings{MaxBody: 16, CheckOrigin: true},
	})
	f.Fuzz(func(t *testing.T, method, path, timeout, hk, hv, body string) {
		if path == "/health" || path == "/services" || path == "/metrics" {
			return
		}
		for i, h := range []http.Handler{in, fastAdapter{in}} {
			req, err := http.NewRequest(method, "http://127.0.0.1:8080/", strings.NewReader(body))
			if err != nil {
				return
			}
			req.URL.Path = path
			req.RequestURI = req.URL.RequestURI()
			if timeout != "" {
				req.Header["Micro-Timeout"] = []string{timeout}
			}
			if hk != "" {
				req.Header[hk] = []string{hv}
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			check(t, []string{"net/http", "fasthttp"}[i], method, path, timeout, w, m)
		}
	})
}

// check is FuzzIngress's verdict on one answer.
func check(t *testing.T, handler, method, path, timeout string, w *httptest.ResponseRecorder, m *metrics.Metrics) {
	t.Helper()
	if w.Code == 201 {
		return
	}
	if w.Code < 400 || w.Code > 499 {
		t.Fatalf("%s: %s %q timeout %q: status %d", handler, method, path, timeout, w.Code)
	}
	if _, ok := callerr.Parse(w.Body.Bytes()); !ok {
		t.Fatalf("%s: %s %q: body is not a JSON error: %q", handler, method, path, w.Body)
	}
	if _, err := m.Registry().Gather(); err != nil {
		t.Fatalf("metrics broken: %v", err)
	}
	if n := testutil.CollectAndCount(m.Registry(), "micro_client_calls_total"); n > 20 {
		t.Fatalf("%d client call series: labels are not bounded", n)
	}
}

// TestIngressBrowserChecks: what a web page of another site would send is refused, streams
// included, unless the deployment allows it.
func TestIngressBrowserChecks(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		for _, tc := range []struct {
			name    string
			host    string
			hdr     map[string]string
			allowed bool
			set     func(*Settings)
		}{
			{"no browser", "127.0.0.1:8080", nil, true, nil},
			{"localhost", "localhost:8080", nil, true, nil},
			{"ipv6", "[::1]:8080", nil, true, nil},
			{"same origin", "127.0.0.1:8080", map[string]string{"Origin": "http://127.0.0.1:8080"}, true, nil},
			{"foreign host (DNS rebinding)", "evil.example:8080", nil, false, nil},
			{"allowed host", "micro.internal:8080", nil, true, func(s *Settings) { s.AllowedHosts = []string{"micro.internal"} }},
			{"foreign origin", "127.0.0.1:8080", map[string]string{"Origin": "https://evil.example"}, false, nil},
			{"null origin", "127.0.0.1:8080", map[string]string{"Origin": "null"}, false, nil},
			{"cross-site fetch", "127.0.0.1:8080", map[string]string{"Sec-Fetch-Site": "cross-site"}, false, nil},
			{"allowed origin", "127.0.0.1:8080", map[string]string{"Origin": "https://app.example"}, true, func(s *Settings) { s.AllowedOrigins = []string{"https://app.example"} }},
			{"foreign websocket", "127.0.0.1:8080", map[string]string{"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade"}, false, nil},
			{"check off", "evil.example", map[string]string{"Origin": "https://evil.example"}, true, func(s *Settings) { s.CheckOrigin = false }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := &echoCaller{}
				in := newTestIngress(c)
				st := Settings{MaxBody: 16, CheckOrigin: true}
				if tc.set != nil {
					tc.set(&st)
				}
				in.Set(st)
				method := "POST"
				if tc.hdr["Upgrade"] != "" {
					method = "GET"
				}
				req := httptest.NewRequest(method, "/greeter/Greeter.Hello", strings.NewReader("{}"))
				req.Host = tc.host
				for k, v := range tc.hdr {
					req.Header.Set(k, v)
				}
				w := httptest.NewRecorder()
				h(in).ServeHTTP(w, req)
				if tc.allowed && w.Code == 403 {
					t.Fatalf("refused: %s", w.Body)
				}
				if !tc.allowed {
					if w.Code != 403 || c.got != nil {
						t.Fatalf("status %d (call made: %v), want 403 before any call: %s", w.Code, c.got != nil, w.Body)
					}
					if e, ok := callerr.Parse(w.Body.Bytes()); !ok || !strings.Contains(e.Detail, "server.allowed_") {
						t.Fatalf("403 body %s does not say which setting allows it", w.Body)
					}
				}
			})
		}
	})
}

// TestIngressMicroHeaders: a caller cannot set micro's routing or identity headers, a
// Micro-Stream on a plain call is refused, and the caller's options are read.
func TestIngressMicroHeaders(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		c := &echoCaller{}
		w := serve(h(newTestIngress(c)), "POST", "/greeter/Greeter.Hello", "{}", map[string]string{
			"Micro-Caller": "admin", "Micro-Node": "n9", "Micro-Service": "billing", "Micro-Whatever": "x",
			"Micro-Topic": "orders.created", "Micro-Message-Id": "forged", "Micro-Signature": "x",
			"Micro-Idempotent": "true", "X-Trace": "t1",
		})
		if w.Code != 201 {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		for k := range c.got.Header {
			if strings.HasPrefix(k, "Micro-") {
				t.Errorf("the caller's %s reached the client", k)
			}
		}
		if !c.got.Idempotent || c.got.Header["X-Trace"] != "t1" {
			t.Errorf("request %+v: want Idempotent set and X-Trace kept", c.got)
		}

		for _, tc := range []struct {
			hdr    map[string]string
			code   int
			detail string
		}{
			{map[string]string{"Micro-Stream": "1"}, 400, "Micro-Stream on a plain call"},
			{map[string]string{"Micro-Idempotent": "maybe"}, 400, "want true or false"},
			{map[string]string{"Micro-Timeout": "2m"}, 400, "client.max_timeout"},
		} {
			c := &echoCaller{}
			w := serve(h(newTestIngress(c)), "POST", "/greeter/Greeter.Hello", "{}", tc.hdr)
			e, ok := callerr.Parse(w.Body.Bytes())
			if w.Code != tc.code || !ok || !strings.Contains(e.Detail, tc.detail) || c.got != nil {
				t.Errorf("%v: %d %s (called: %v), want %d saying %q", tc.hdr, w.Code, w.Body, c.got != nil, tc.code, tc.detail)
			}
		}
	})
}

// blockingCaller holds every call until release is closed, and panics on service "boom".
type blockingCaller struct {
	in      chan struct{}
	release chan struct{}
}

// Do answers as Call does, into the exchange of the HTTP/1.1 path.
func (c *blockingCaller) Do(ctx context.Context, req *client.Request, ex client.Exchange) (client.Outcome, error) {
	return doByCall(ctx, c, req, ex)
}

func (c *blockingCaller) Call(ctx context.Context, req *client.Request) (*client.Response, error) {
	if req.Service == "boom" {
		panic("a bug in the call path")
	}
	c.in <- struct{}{}
	<-c.release
	return &client.Response{Status: 200, Header: map[string]string{"Micro-Error": "refused"}, Node: "n1", Attempts: 1}, nil
}

// TestIngressShedsAndRecovers: past max_inflight a call gets a fast 503 with Retry-After;
// a panic in a call is a logged 500 and the ingress goes on.
func TestIngressShedsAndRecovers(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		c := &blockingCaller{in: make(chan struct{}), release: make(chan struct{})}
		in := newTestIngress(c)
		in.Set(Settings{MaxInflight: 1, CheckOrigin: true})
		done := make(chan *httptest.ResponseRecorder)
		go func() { done <- serve(h(in), "POST", "/greeter/Greeter.Hello", "{}", nil) }()
		<-c.in
		w := serve(h(in), "POST", "/greeter/Greeter.Hello", "{}", nil)
		if w.Code != 503 || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "server.max_inflight") {
			t.Fatalf("past max_inflight: %d %v %s", w.Code, w.Header(), w.Body)
		}
		close(c.release)
		if w := <-done; w.Code != 200 || w.Header().Get("Micro-Error") != "" {
			t.Fatalf("the admitted call: %d %v; want 200 without micro's internal headers", w.Code, w.Header())
		}
		w = serve(h(in), "POST", "/boom/X.Y", "{}", nil)
		if e, ok := callerr.Parse(w.Body.Bytes()); w.Code != 500 || !ok || !strings.Contains(e.Detail, "internal error") {
			t.Fatalf("a panicking call: %d %s, want a JSON 500", w.Code, w.Body)
		}
		go func() { <-c.in }()
		if w := serve(h(in), "POST", "/greeter/Greeter.Hello", "{}", nil); w.Code != 200 {
			t.Fatalf("after the panic: %d %s", w.Code, w.Body)
		}
	})
}

// TestIngressBodyTimeout: a caller that sends headers and no body is answered 408 once the
// body timeout passes, rather than held forever.
func TestIngressBodyTimeout(t *testing.T) {
	in := NewIngress(IngressConfig{
		Caller: &echoCaller{}, Recorder: nopRecorder{}, Metrics: http.NotFoundHandler(),
		Settings: DefaultSettings(), BodyTimeout: 100 * time.Millisecond,
	})
	srv := httptest.NewServer(in)
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "POST /greeter/Greeter.Hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a request whose body never came: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
}
