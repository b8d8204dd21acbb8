package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
)

// traceCaller answers as echoCaller does, and keeps the trace context its call was made in.
type traceCaller struct {
	echoCaller
	ctx tracing.SpanContext
}

func (c *traceCaller) Call(ctx context.Context, req *client.Request) (*client.Response, error) {
	c.ctx, _ = tracing.Parse(tracing.HeaderOf(ctx))
	return c.echoCaller.Call(ctx, req)
}

// Do answers as Call does, into the exchange of the HTTP/1.1 path.
func (c *traceCaller) Do(ctx context.Context, req *client.Request, ex client.Exchange) (client.Outcome, error) {
	return doByCall(ctx, c, req, ex)
}

// traceStreamer refuses every stream with 404, and keeps the trace context and the
// request of the last one.
type traceStreamer struct {
	ctx tracing.SpanContext
	got *client.Request
}

func (s *traceStreamer) Stream(ctx context.Context, req *client.Request) (transport.Conn, string, *client.Response, error) {
	s.ctx, _ = tracing.Parse(tracing.HeaderOf(ctx))
	s.got = req
	return nil, "", &client.Response{Status: http.StatusNotFound, Body: []byte("no such stream")}, nil
}

// tracedIngress is a test ingress that samples every call.
func tracedIngress(t *testing.T, c Caller) *Ingress {
	t.Helper()
	tr, err := tracing.New(tracing.Options{Service: "micro-test", SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	in := newTestIngress(c)
	in.cfg.Tracer = tr
	return in
}

// A valid traceparent of a caller's, and its parts.
const (
	parentTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentSpan  = "00f067aa0ba902b7"
	validParent = "00-" + parentTrace + "-" + parentSpan + "-01"
)

// TestIngressTraceparent: on every path of the ingress (HTTP/1.1 on fasthttp, and on
// net/http, which serves the connections that open with an Upgrade header: streams, and
// the plain calls that follow or that came with another Upgrade), a call continues a valid traceparent and replaces a malformed one, whose
// tracestate is dropped with it; the caller's traceparent itself never goes on, and the
// ingress span is kept under the trace.
func TestIngressTraceparent(t *testing.T) {
	for name, tp := range map[string]string{"valid": validParent, "malformed": "00-zz-not-a-trace",
		"zero span": "00-" + parentTrace + "-0000000000000000-01", "bad bytes": strings.Repeat("\xff", 55)} {
		t.Run(name, func(t *testing.T) {
			hdr := map[string]string{tracing.Header: tp, tracing.HeaderState: "vendor=1"}
			bothHandlers(t, func(t *testing.T, h handlerOf) {
				c := &traceCaller{}
				in := tracedIngress(t, c)
				if w := serve(h(in), "POST", "/greeter/hello", "{}", hdr); w.Code != 201 {
					t.Fatalf("call: %d %s", w.Code, w.Body)
				}
				checkTrace(t, in, c.ctx, c.got.Header, tp)
			})
			t.Run("net-http/stream", func(t *testing.T) {
				s := &traceStreamer{}
				in := tracedIngress(t, &echoCaller{})
				in.cfg.Streamer = s
				w := serve(in, "GET", "/greeter/Stream", "", map[string]string{tracing.Header: tp, tracing.HeaderState: "vendor=1",
					"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
				if w.Code != 404 || s.got == nil {
					t.Fatalf("stream: %d %s, want the streamer's 404", w.Code, w.Body)
				}
				checkTrace(t, in, s.ctx, s.got.Header, tp)
			})
		})
	}
}

// checkTrace checks a call that came with traceparent tp and tracestate "vendor=1": it
// was made in trace context sc, with header h, and in kept its ingress span.
func checkTrace(t *testing.T, in *Ingress, sc tracing.SpanContext, h map[string]string, tp string) {
	t.Helper()
	if !sc.Valid() {
		t.Fatalf("the call was made with no trace context")
	}
	if k, v := tracing.Lookup(h, tracing.Header); k != "" {
		t.Errorf("the caller's traceparent went on: %s: %q", k, v)
	}
	_, state := tracing.Lookup(h, tracing.HeaderState)
	kept, ok := in.cfg.Tracer.Store().Trace(sc.Trace.String())
	if !ok || len(kept.Spans) == 0 || kept.Spans[len(kept.Spans)-1].Name != "ingress" {
		t.Fatalf("trace %s: %+v, %v; want its ingress span kept", sc.Trace, kept, ok)
	}
	ingress := kept.Spans[len(kept.Spans)-1]
	if tp == validParent {
		if sc.Trace.String() != parentTrace || ingress.Parent != parentSpan || state != "vendor=1" {
			t.Errorf("with a valid traceparent: trace %s, ingress span's parent %q, tracestate %q; want %s, %s, vendor=1",
				sc.Trace, ingress.Parent, state, parentTrace, parentSpan)
		}
		return
	}
	if sc.Trace.String() == parentTrace || ingress.Parent != "" || state != "" {
		t.Errorf("with traceparent %q: trace %s, ingress span's parent %q, tracestate %q; want a new trace, a root, none",
			tp, sc.Trace, ingress.Parent, state)
	}
}

// TestTracesPath: GET /traces lists the traces kept and returns one by its ID; junk
// queries get clear errors, in JSON that shows nothing of them as markup; another site
// may not read it; and a micro that keeps no traces answers 404.
func TestTracesPath(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		c := &traceCaller{echoCaller: echoCaller{err: callerr.New("greeter", http.StatusBadGateway, "every node is down")}}
		in := tracedIngress(t, c)
		serve(h(in), "POST", "/greeter/hello", "{}", nil)
		id := c.ctx.Trace.String()

		for _, path := range []string{"/traces", "/traces?failed=1", "/traces?limit=1"} {
			w := serve(h(in), "GET", path, "", nil)
			var list []tracing.TraceData
			if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || w.Code != 200 || len(list) != 1 || list[0].ID != id || !list[0].Failed {
				t.Errorf("GET %s: %d %s; want the failed trace %s", path, w.Code, w.Body, id)
			}
		}
		w := serve(h(in), "GET", "/traces?id="+id, "", nil)
		var one tracing.TraceData
		if err := json.Unmarshal(w.Body.Bytes(), &one); err != nil || w.Code != 200 || one.ID != id || len(one.Spans) == 0 {
			t.Errorf("GET /traces?id=%s: %d %s", id, w.Code, w.Body)
		}

		for _, c := range []struct {
			query string
			code  int
			says  string
		}{
			{"limit=zz", 400, "limit"}, {"limit=0", 400, "limit"}, {"limit=100000", 400, "limit"}, {"limit=-1", 400, "limit"},
			{"id=%00%ff%3Cscript%3Ealert(1)%3C/script%3E", 404, "no trace"}, {"id=" + strings.Repeat("a", 4096), 404, "no trace"},
		} {
			w := serve(h(in), "GET", "/traces?"+c.query, "", nil)
			if w.Code != c.code || !strings.Contains(w.Body.String(), c.says) || strings.Contains(w.Body.String(), "<script") {
				t.Errorf("GET /traces?%.60s: %d %.200s, want %d saying %q", c.query, w.Code, w.Body, c.code, c.says)
			}
		}
		if w := serve(h(in), "GET", "/traces", "", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}); w.Code != 403 {
			t.Errorf("cross-site GET /traces: %d", w.Code)
		}
		if w := serve(h(newTestIngress(&echoCaller{})), "GET", "/traces", "", nil); w.Code != 404 {
			t.Errorf("GET /traces from a micro with no tracer: %d %s", w.Code, w.Body)
		}
	})
}

// TestInboundTraceparent: on every path into the inbound server, and for a stream, the
// app gets a traceparent of micro's under the caller's when that is valid, and of a new
// trace when it is not, whose tracestate (in any case) it then does not get.
func TestInboundTraceparent(t *testing.T) {
	tr, err := tracing.New(tracing.Options{Service: "micro-test", SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, r *transport.Message, tp string, wantStatus int) {
		t.Helper()
		var seen struct{ Traceparent, Tracestate string }
		if err := json.Unmarshal(r.Body, &seen); err != nil || r.Header[transport.HeaderStatus] != strconv.Itoa(wantStatus) {
			t.Fatalf("app answered %v %q (%v)", r.Header, r.Body, err)
		}
		sc, ok := tracing.Parse(seen.Traceparent)
		if !ok {
			t.Fatalf("the app got traceparent %q, want a valid one", seen.Traceparent)
		}
		if tp == validParent {
			if sc.Trace.String() != parentTrace || sc.Span.String() == parentSpan || seen.Tracestate != "vendor=1" {
				t.Errorf("with a valid traceparent the app got %q and tracestate %q; want trace %s, a span of micro's, vendor=1",
					seen.Traceparent, seen.Tracestate, parentTrace)
			}
			return
		}
		if sc.Trace.String() == parentTrace || seen.Tracestate != "" {
			t.Errorf("with traceparent %q the app got %q and tracestate %q; want a new trace and none", tp, seen.Traceparent, seen.Tracestate)
		}
	}
	for name, tp := range map[string]string{"valid": validParent, "malformed": "00-zz-not-a-trace", "bad bytes": "\xff\xfe" + validParent[2:]} {
		t.Run(name, func(t *testing.T) {
			paths(t, func(t *testing.T, p path) {
				h := newTracedInboundHarness(t, Settings{}, p, tr)
				check(t, h.send(t, call("app", "Trace.Seen", tracing.Header, tp, "Tracestate", "vendor=1"), "{}"), tp, 200)
				if p != messagePath {
					return
				}
				// A stream: the app gets its traceparent with the upgrade.
				r := h.send(t, call("app", "Trace.Seen", tracing.Header, tp, "Tracestate", "vendor=1", transport.HeaderStream, "1"), "")
				check(t, r, tp, 403)
			})
		})
	}
}
