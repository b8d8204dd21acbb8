package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/registry"
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
	return &client.Response{Status: 201, Header: map[string]string{"Content-Type": "application/json", "Connection": "close"}, Body: req.Body, Node: "n1", Attempts: 1}, nil
}

type nopRecorder struct{}

func (nopRecorder) Call(string, int, time.Duration)    {}
func (nopRecorder) Inbound(string, int, time.Duration) {}

func newTestIngress(c Caller) *Ingress {
	return NewIngress(IngressConfig{
		Caller:   c,
		Recorder: nopRecorder{},
		Metrics:  http.NotFoundHandler(),
		Services: func(context.Context) ([]*registry.Service, error) {
			return []*registry.Service{{Name: "greeter", Nodes: []*registry.Node{{ID: "n1"}}}}, nil
		},
		Health:  func() Status { return Status{Status: "ok", Services: map[string]int{"greeter": 2}} },
		MaxBody: 16,
	})
}

func serve(h http.Handler, method, path, body string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "http://micro"+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestIngressCall(t *testing.T) {
	c := &echoCaller{}
	w := serve(newTestIngress(c), "POST", "/greeter/Greeter.Hello", `{"a":1}`, map[string]string{"Micro-Timeout": "250ms", "X-Trace": "t1"})
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
}

func TestIngressBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, method, path, body, timeout string
		code                              int
		detail                            string
	}{
		{"unknown service", "POST", "/nosuch/X.Y", "", "", 404, `"nosuch"`},
		{"one segment", "POST", "/greeter", "", "", 400, "want /{service}/{endpoint}"},
		{"three segments", "POST", "/greeter/a/b", "", "", 400, "want /{service}/{endpoint}"},
		{"empty endpoint", "POST", "/greeter/", "", "", 400, "endpoint name"},
		{"bad char", "POST", "/gre%20eter/X", "", "", 400, "not allowed"},
		{"upper-case service", "POST", "/Greeter/X", "", "", 400, "not allowed"},
		{"GET", "GET", "/greeter/Greeter.Hello", "", "", 405, "method GET"},
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
			w := serve(newTestIngress(c), tc.method, tc.path, tc.body, hdr)
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			e, ok := callerr.Parse(w.Body.Bytes())
			if !ok || e.Code != tc.code || e.Status != http.StatusText(tc.code) || !strings.Contains(e.Detail, tc.detail) {
				t.Fatalf("error body %s, want code %d with detail containing %q", w.Body, tc.code, tc.detail)
			}
		})
	}
}

func TestIngressHealthAndServices(t *testing.T) {
	in := newTestIngress(&echoCaller{})
	w := serve(in, "GET", "/health", "", nil)
	var st Status
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || w.Code != 200 || st.Services["greeter"] != 2 {
		t.Fatalf("health: %d %s", w.Code, w.Body)
	}
	w = serve(in, "GET", "/services", "", nil)
	var list []*registry.Service
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list) != 1 || list[0].Name != "greeter" {
		t.Fatalf("services: %d %s", w.Code, w.Body)
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/greeter/Greeter.Hello", "/", "//", "/a/b/c", "/a%2Fb/c", "greeter/x", "/\x00/\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		svc, ep, err := ParsePath(p)
		if err != nil {
			return
		}
		if "/"+svc+"/"+ep != p {
			t.Fatalf("ParsePath(%q) = %q, %q, which do not rebuild the path", p, svc, ep)
		}
	})
}

// FuzzIngress sends arbitrary paths, methods, budgets and bodies through the ingress: every
// answer must be a success from the caller or a JSON error with a 4xx status.
func FuzzIngress(f *testing.F) {
	f.Add("POST", "/greeter/Greeter.Hello", "250ms", `{"name":"Ada"}`)
	f.Add("GET", "/x", "", "")
	f.Add("POST", "/a/b", "1h1s", "")
	f.Add("POST", "/a/b", "9999999999999999999h", "")
	f.Add("PUT", "/../..", "-0", "\x00")
	f.Fuzz(func(t *testing.T, method, path, timeout, body string) {
		req, err := http.NewRequest(method, "http://micro/", strings.NewReader(body))
		if err != nil {
			return
		}
		req.URL.Path = path
		if timeout != "" {
			req.Header["Micro-Timeout"] = []string{timeout}
		}
		w := httptest.NewRecorder()
		in := newTestIngress(&echoCaller{})
		if path == "/health" || path == "/services" || path == "/metrics" {
			return
		}
		in.ServeHTTP(w, req)
		if w.Code == 201 {
			return
		}
		if w.Code < 400 || w.Code > 499 {
			t.Fatalf("%s %q timeout %q: status %d", method, path, timeout, w.Code)
		}
		if _, ok := callerr.Parse(w.Body.Bytes()); !ok {
			t.Fatalf("%s %q: body is not a JSON error: %q", method, path, w.Body)
		}
	})
}
