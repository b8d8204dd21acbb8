package dashboard_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/microhost/micro/e2e/browsertest"
	"github.com/microhost/micro/runtime/dashboard"
	"github.com/microhost/micro/runtime/status"
	"github.com/microhost/micro/runtime/tracing"
)

// Hostile strings, as a caller could put them in a service name, an endpoint, a node ID
// or an error. The page must show each as text and make nothing of it.
const (
	evilService  = `<img src=x onerror=alert(1)>`
	evilNode     = `"><script>alert(2)</script>`
	evilEndpoint = `</td><img src=x onerror=alert(3)>`
	evilStatus   = `<iframe src="javascript:alert(4)"></iframe>`
	evilState    = `<svg onload=alert(5)>`
	evilSource   = `javascript:alert(6)//"><b>x</b>`
	evilSpan     = `<img src=x onerror=alert(7)>span`
)

// The trace of the failed call that the test opens, and its spans.
const (
	traceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	rootSpanID  = "00f067aa0ba902b7"
	firstTryID  = "00f067aa0ba902b8"
	secondTryID = "00f067aa0ba902b9"
)

func ptr(f float64) *float64 { return &f }

// snapshot is the fake micro's snapshot, with the breaker of greeter's node g2 in state
// breaker.
func snapshot(breaker string) status.Snapshot {
	now := time.Now()
	ok := status.Stats{Requests: 1000, RPS: 12.5, Success: ptr(1), P50: ptr(2.25), P99: ptr(9.5)}
	poor := status.Stats{Requests: 300, RPS: 3, Success: ptr(0.9), P50: ptr(4), P99: ptr(250)}
	return status.Snapshot{
		Time:     now,
		Instance: "test-instance",
		Window:   10,
		Health:   "degraded",
		Errors:   []string{"registry: " + evilService},
		Services: []status.Service{
			{
				Name: "greeter", Stats: status.Stats{Requests: 1300, RPS: 15.5, Success: ptr(0.97), P50: ptr(2.5), P99: ptr(200), Retries: 0.5, Hedges: 0.25},
				InFlight: 3, Ejections: 2,
				Nodes: []status.Node{
					{ID: "g1", Address: "127.0.0.1:9001", Version: "1.0.0", Stats: ok, InFlight: 2, Score: 4.5, Breaker: "closed"},
					{ID: "g2", Address: "127.0.0.1:9002", Version: "1.0.0", Stats: poor, InFlight: 1, Score: 80, Breaker: breaker,
						EjectedEndpoints: []string{"Greeter.Hello"}, EjectedFor: 12.2},
				},
			},
			{
				Name: evilService, Stats: ok,
				Nodes: []status.Node{{ID: evilNode, Address: evilEndpoint, Stats: ok, Ejected: true, EjectedFor: 30}},
			},
		},
		Wrappers: []status.Wrapper{
			{Name: "breaker", Side: "client", Instances: 1, Calls: 1300, Rejects: 4, RPS: 15.5, MicrosPerCall: 3.2,
				States: []status.WrapperState{{Service: "greeter", Node: "g2", Value: breaker}, {Node: evilNode, Value: evilState}}},
			{Name: "ratelimit", Side: "server", Instances: 2, Calls: 50, Faults: 1, RPS: 1, MicrosPerCall: 1.5},
		},
		Plugins: []status.Plugin{
			{Role: "registry", Name: "consul", Health: "ok", LastSwap: &status.Swap{Time: now.Add(-time.Minute), From: "embedded", To: "consul"}},
			{Role: "transport", Name: "http", Health: evilStatus},
		},
		Config: status.Config{Source: evilSource, Loaded: now.Add(-time.Hour),
			LastReload: &status.Reload{Time: now.Add(-time.Minute), Result: "failed", Error: "unknown key " + evilState}},
		Failed: []status.FailedCall{
			{Trace: traceID, Time: now.Add(-2 * time.Second), Service: "greeter", Endpoint: "Greeter.Hello", Status: "502: upstream failed", Millis: 31.5},
			{Trace: "0af7651916cd43dd8448eb211c80319c", Time: now.Add(-3 * time.Second), Service: evilService, Endpoint: evilEndpoint, Status: evilStatus, Millis: 2},
		},
	}
}

// trace is the kept trace of the first failed call: a client span and two attempts, the
// first of which failed.
func trace() tracing.TraceData {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	return tracing.TraceData{
		ID: traceID, Failed: true, Last: at(31.5),
		Spans: []tracing.SpanData{
			{Trace: traceID, Span: firstTryID, Parent: rootSpanID, Name: evilSpan, Kind: "client", Start: at(0.2), End: at(20),
				Failed: true, Status: "connection reset " + evilStatus, Attrs: map[string]string{"micro.node": "g2", "micro.attempt": "1"}},
			{Trace: traceID, Span: secondTryID, Parent: rootSpanID, Name: "attempt", Kind: "client", Start: at(20.5), End: at(31),
				Failed: true, Status: "502", Attrs: map[string]string{"micro.node": "g1", "micro.attempt": "2", "micro.attempt.reason": "retry"}},
			{Trace: traceID, Span: rootSpanID, Name: "call greeter", Kind: "server", Start: at(0), End: at(31.5), Failed: true,
				Status: "502: upstream failed", Attrs: map[string]string{"micro.service": "greeter", "micro.endpoint": "Greeter.Hello"}},
		},
	}
}

// fakeMicro serves the dashboard as micro's ingress would, with a snapshot that the test
// changes: /status, /ui/events (the current snapshot every 50 ms, until down is set) and
// /traces?id=.
type fakeMicro struct {
	breaker   atomic.Pointer[string]
	down      atomic.Bool // the event stream ends, and a new one ends at once
	pageLoads atomic.Int32
}

func (f *fakeMicro) current() status.Snapshot { return snapshot(*f.breaker.Load()) }

func (f *fakeMicro) handler(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	ui := dashboard.Handler()
	mux.Handle("/ui", ui)
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ui/" {
			f.pageLoads.Add(1)
		}
		ui.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(f.current())
	})
	mux.HandleFunc("GET /ui/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		if _, err := w.Write([]byte("retry: 100\n\n")); err != nil { // reconnect fast
			return
		}
		for !f.down.Load() {
			data, err := json.Marshal(f.current())
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := w.Write(append(append([]byte("data: "), data...), "\n\n"...)); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
	mux.HandleFunc("GET /traces", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("id") != traceID {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"id":"micro.ingress","code":404,"detail":"no such trace","status":"Not Found"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(trace())
	})
	return mux
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, b *browsertest.Browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// TestDashboardBrowser loads the dashboard in headless Chromium against a fake micro and
// checks what a user sees: the nodes of each service, a breaker that opens and closes
// without a reload, hostile names shown as text and nothing else, and the waterfall of a
// failed call.
func TestDashboardBrowser(t *testing.T) {
	start := time.Now()
	f := &fakeMicro{}
	closed := "closed"
	f.breaker.Store(&closed)
	srv := httptest.NewServer(f.handler(t)) // on 127.0.0.1
	t.Cleanup(srv.Close)                    // registered first: it runs after the browser closed

	b := browsertest.Start(t)
	var dialogs sync.Map
	err := chromedp.Listen(b.Context(), func(ev any) {
		if d, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			dialogs.Store(d.Message, true)
			go func() { // a dialog stalls the page until it is handled
				ctx, cancel := context.WithTimeout(b.Context(), 5*time.Second)
				defer cancel()
				_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{})
			}()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	const wait = 10 * time.Second
	b.Navigate(srv.URL + "/ui/")

	greeter := `[data-service="greeter"] `
	b.WaitText(greeter+`[data-node="g1"] [data-col="rps"]`, "12.5", wait)
	b.WaitText("#live", "live", wait)
	b.WaitText("#health", "degraded", wait)
	if got := b.Text(greeter + `[data-node="g1"] [data-col="p50"]`); got != "2.25" {
		t.Errorf("g1 p50 = %q, want 2.25", got)
	}
	if got := b.Text(greeter + `[data-node="g2"] [data-col="success"]`); got != "90.00" {
		t.Errorf("g2 success = %q, want 90.00", got)
	}
	if got := b.Text(greeter + `[data-node="g2"] [data-col="ejection"]`); got != "ejected for Greeter.Hello, 13s left" {
		t.Errorf("g2 ejection = %q", got)
	}
	if got := b.Text(greeter + `[data-col="ejections"]`); got != "2" {
		t.Errorf("greeter ejections = %q, want 2", got)
	}
	if !eval[bool](t, b, `document.querySelector('[data-service="greeter"] [data-node="g2"] [data-col="success"]').classList.contains("bad")`) {
		t.Error("g2's 90% success is not marked bad")
	}

	// The breaker opens and closes again, with no reload of the page.
	breaker := greeter + `[data-node="g2"] [data-col="breaker"]`
	b.WaitText(breaker, "closed", wait)
	for _, state := range []string{"open", "half-open", "closed"} {
		f.breaker.Store(&state)
		b.WaitText(breaker, state, wait)
	}
	open := "open"
	f.breaker.Store(&open)
	b.WaitText(breaker, "open", wait)
	if !eval[bool](t, b, `document.querySelector('[data-service="greeter"] [data-node="g2"] [data-col="breaker"]').classList.contains("bad")`) {
		t.Error("the open breaker is not marked bad")
	}
	b.WaitText("#wrappers", "greeter node g2: open", wait)

	// The hostile strings are there as text, and made no element.
	body := b.Text("body")
	for _, s := range []string{evilService, evilNode, evilEndpoint, evilStatus, evilState, evilSource} {
		if !strings.Contains(body, s) {
			t.Errorf("the page does not show %q as text", s)
		}
	}
	if n := eval[int](t, b, `document.querySelectorAll("img, iframe, svg, b, script:not([src='/ui/app.js'])").length`); n != 0 {
		t.Errorf("the page has %d elements made of data", n)
	}
	services := eval[[]string](t, b, `[...document.querySelectorAll("[data-service]")].map(e => e.getAttribute("data-service"))`)
	if !slices.Equal(services, []string{"greeter", evilService}) {
		t.Errorf("data-service = %q", services)
	}
	if got := eval[string](t, b, `document.querySelector('[data-service]:not([data-service="greeter"]) [data-node]').getAttribute("data-node")`); got != evilNode {
		t.Errorf("data-node = %q, want %q", got, evilNode)
	}

	// A failed call opens its waterfall (a click on its row, or on its button), which
	// stays open across updates.
	click := func(sel string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(b.Context(), wait)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
			t.Fatalf("click %s: %v", sel, err)
		}
	}
	click(`#failed [data-trace="` + traceID + `"]`)
	b.WaitText("#waterfall", "3 spans", wait)
	click("#waterfall-close")
	if !eval[bool](t, b, `document.getElementById("waterfall").hidden`) {
		t.Error("the waterfall did not close")
	}
	click(`[data-trace="` + traceID + `"] button`)
	b.WaitText("#waterfall", "3 spans", wait)
	root := b.Text(`[data-span="` + rootSpanID + `"]`)
	if !strings.Contains(root, "call greeter") || !strings.Contains(root, "greeter/Greeter.Hello") {
		t.Errorf("root span: %q", root)
	}
	first := b.Text(`[data-span="` + firstTryID + `"]`)
	for _, want := range []string{evilSpan, "node g2", "attempt 1", "connection reset " + evilStatus} {
		if !strings.Contains(first, want) {
			t.Errorf("first attempt %q lacks %q", first, want)
		}
	}
	if !strings.Contains(b.Text(`[data-span="`+secondTryID+`"]`), "attempt 2 (retry)") {
		t.Errorf("second attempt: %q", b.Text(`[data-span="`+secondTryID+`"]`))
	}
	order := eval[[]string](t, b, `[...document.querySelectorAll("#waterfall [data-span]")].map(e => e.getAttribute("data-span"))`)
	if !slices.Equal(order, []string{rootSpanID, firstTryID, secondTryID}) {
		t.Errorf("span order %q", order)
	}
	if !eval[bool](t, b, `(() => {
		const bar = (id) => document.querySelector('[data-span="' + id + '"] .bar').getBoundingClientRect();
		const root = bar("`+rootSpanID+`"), second = bar("`+secondTryID+`");
		const label = (id) => parseFloat(getComputedStyle(document.querySelector('[data-span="' + id + '"] .label')).paddingLeft);
		return second.left > root.left + root.width/2 && second.right <= root.right + 1 && label("`+firstTryID+`") > label("`+rootSpanID+`");
	})()`) {
		t.Error("the waterfall's bars are not placed by time and depth")
	}
	if n := eval[int](t, b, `document.querySelectorAll("#waterfall .span.failed").length`); n != 3 {
		t.Errorf("%d failed spans marked, want 3", n)
	}
	f.breaker.Store(&closed)
	b.WaitText(breaker, "closed", wait)
	b.WaitText("#waterfall", "3 spans", wait)
	if eval[bool](t, b, `document.getElementById("waterfall").hidden`) {
		t.Error("the waterfall closed on an update")
	}

	// The stream ends: the page says so, and is live again when it is back.
	f.down.Store(true)
	b.WaitText("#live", "disconnected", wait)
	f.down.Store(false)
	b.WaitText("#live", "live", wait)

	if n := f.pageLoads.Load(); n != 1 {
		t.Errorf("the page was loaded %d times, want 1", n)
	}
	dialogs.Range(func(k, _ any) bool {
		t.Errorf("the page opened a dialog: %q", k)
		return true
	})
	b.AssertClean()
	t.Logf("took %v", time.Since(start))
}
