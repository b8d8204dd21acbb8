package client_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/pool"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/cache"
	"github.com/microhost/micro/runtime/registry/embedded"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/transport/httptransport"
	"github.com/microhost/micro/runtime/wrapper"
)

// node is a real inbound listener that answers every call with a scripted status (and,
// when kind is set, a Micro-Error header, as micro at a node marks its own answers), after
// an optional delay, and records what it received. A node with status 0 refuses
// connections; one with status -1 reads each request and closes the connection half-way
// through its reply.
type node struct {
	id     string
	addr   string
	status int
	kind   string
	delay  time.Duration

	mu     sync.Mutex
	calls  int
	budget time.Duration
}

func (n *node) serve(t *testing.T, l transport.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			m, err := c.Recv(context.Background())
			if err != nil {
				return
			}
			status, kind, delay := n.record(m)
			if m.Header[transport.HeaderNode] != n.id {
				status = 400
			}
			time.Sleep(delay)
			h := map[string]string{transport.HeaderStatus: strconv.Itoa(status)}
			if kind != "" {
				h[transport.HeaderError] = kind
				h["Retry-After"] = "3"
			}
			_ = c.Send(context.Background(), &transport.Message{Header: h, Body: []byte(n.id)})
		}()
	}
}

// record counts a call and returns the scripted answer.
func (n *node) record(m *transport.Message) (status int, kind string, delay time.Duration) {
	b, _ := budget.Parse(m.Header[transport.HeaderTimeout])
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls++
	n.budget = b
	return n.status, n.kind, n.delay
}

// serveBroken answers each request on ln with the head of a reply and closes the
// connection mid-body.
func (n *node) serveBroken(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			n.record(&transport.Message{Header: map[string]string{transport.HeaderTimeout: req.Header.Get(transport.HeaderTimeout)}})
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":")
		}()
	}
}

func (n *node) stats() (calls int, budget time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls, n.budget
}

type harness struct {
	client *client.Client
	nodes  []*node
	ejects *ejections
}

// ejections records the selector's ejections.
type ejections struct {
	mu  sync.Mutex
	got []string // node/endpoint, endpoint empty for the whole node
}

func (e *ejections) record(_, node, endpoint string, _ time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, node+"/"+endpoint)
}

func (e *ejections) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// spec is one node of a harness.
type spec struct {
	status     int    // 0 refuses connections; -1 closes mid-reply
	kind       string // Micro-Error of its answers
	idempotent bool   // declares E.P idempotent
}

// newHarness registers one node per status under service "svc" in a real embedded
// registry, each served by a real HTTP transport listener; status 0 means a node whose
// address refuses connections.
func newHarness(t *testing.T, opts client.Options, statuses ...int) *harness {
	t.Helper()
	specs := make([]spec, len(statuses))
	for i, st := range statuses {
		specs[i] = spec{status: st}
	}
	return newHarnessOf(t, opts, specs...)
}

// newHarnessOf is newHarness with full node specs. Its selector ejects a node after two
// failures in a row.
func newHarnessOf(t *testing.T, opts client.Options, specs ...spec) *harness {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	tr := httptransport.New(httptransport.Options{Logger: logger})
	t.Cleanup(func() { tr.Close() })
	reg, err := embedded.Open(t.TempDir(), embedded.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	h := &harness{ejects: &ejections{}}
	svc := &registry.Service{Name: "svc"}
	for i, sp := range specs {
		n := &node{id: "n" + strconv.Itoa(i), status: sp.status, kind: sp.kind}
		switch sp.status {
		case 0, -1:
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			n.addr = ln.Addr().String()
			if sp.status == 0 {
				ln.Close()
			} else {
				t.Cleanup(func() { ln.Close() })
				go n.serveBroken(ln)
			}
		default:
			l, err := tr.Listen(ctx, "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			n.addr = l.Addr()
			go n.serve(t, l)
		}
		h.nodes = append(h.nodes, n)
		rn := &registry.Node{ID: n.id, Address: n.addr}
		if sp.idempotent {
			rn.Idempotent = []string{"E.P"}
		}
		svc.Nodes = append(svc.Nodes, rn)
	}
	if err := reg.Register(ctx, svc, time.Minute); err != nil {
		t.Fatal(err)
	}
	c := cache.New(reg, cache.Options{TTL: time.Minute, Logger: logger})
	sel := selector.New(c, selector.Policy{
		Strategy: "round_robin",
		Ejection: selector.Ejection{ConsecutiveFailures: 2, MaxPercent: 100},
	}, selector.Options{Logger: logger, OnEject: h.ejects.record})
	p := pool.New(tr, pool.Options{})
	t.Cleanup(func() { p.Close() })
	h.client = client.New(sel, p, nil, opts, logger)
	return h
}

// totalCalls counts the calls that reached the harness's nodes.
func (h *harness) totalCalls() int {
	total := 0
	for _, n := range h.nodes {
		c, _ := n.stats()
		total += c
	}
	return total
}

func defaults() client.Options {
	return client.Options{Timeout: 2 * time.Second, Attempts: 3, Backoff: time.Millisecond, BackoffMax: 5 * time.Millisecond, RetryRatio: 0.2, RetryMinPerSecond: 10}
}

func call(h *harness, ctx context.Context, service string) (*client.Response, *callerr.Error) {
	return callReq(h, ctx, &client.Request{Service: service, Endpoint: "E.P", Body: []byte("{}")})
}

func callReq(h *harness, ctx context.Context, req *client.Request) (*client.Response, *callerr.Error) {
	resp, err := h.client.Call(ctx, req)
	if err != nil {
		var e *callerr.Error
		if !errors.As(err, &e) {
			panic("client returned a non-callerr error: " + err.Error())
		}
		return nil, e
	}
	return resp, nil
}

// TestRetriesGoToAnotherNode: an attempt that provably never reached an app (no
// connection, or micro at the node refused it before its app) goes to another node, and so
// does any failed attempt of a call that is safe to repeat.
func TestRetriesGoToAnotherNode(t *testing.T) {
	for _, tc := range []struct {
		name       string
		failed     spec
		idempotent bool // the caller marks the call
	}{
		{"connect refused", spec{status: 0}, false},
		{"refused by micro at the node", spec{status: 503, kind: transport.ErrorRefused}, false},
		{"no app at the node", spec{status: 503, kind: transport.ErrorUnavailable}, false},
		{"app 502, marked by the caller", spec{status: 502}, true},
		{"app 503, declared by the node", spec{status: 503, idempotent: true}, false},
		{"app 504, marked by the caller", spec{status: 504}, true},
		{"app broke the call, declared", spec{status: 502, kind: transport.ErrorApp, idempotent: true}, false},
		{"reply too large, marked", spec{status: 502, kind: transport.ErrorReply}, true},
		{"closed mid-reply, declared", spec{status: -1, idempotent: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessOf(t, defaults(), tc.failed, spec{status: 200, idempotent: tc.failed.idempotent})
			for i := range 10 {
				resp, e := callReq(h, context.Background(), &client.Request{Service: "svc", Endpoint: "E.P", Idempotent: tc.idempotent})
				if e != nil {
					t.Fatalf("call %d failed: %v", i, e)
				}
				if resp.Status != 200 || string(resp.Body) != "n1" || resp.Node != "n1" {
					t.Fatalf("call %d: %d %q from %s", i, resp.Status, resp.Body, resp.Node)
				}
			}
		})
	}
}

// TestAtMostOnce: a call that may have reached an app runs once, unless it is safe to
// repeat; the caller learns why it was not retried.
func TestAtMostOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		failed spec
		status int    // the caller's answer
		detail string // in the caller's error, when the client makes one
	}{
		{"app 502", spec{status: 502}, 502, ""},
		{"app 503", spec{status: 503}, 503, ""},
		{"app 504", spec{status: 504}, 504, ""},
		{"app broke the call", spec{status: 502, kind: transport.ErrorApp}, 502, "not declared idempotent"},
		{"reply too large", spec{status: 502, kind: transport.ErrorReply}, 502, "not declared idempotent"},
		{"closed mid-reply", spec{status: -1}, 502, "not declared idempotent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessOf(t, defaults(), tc.failed, tc.failed, tc.failed)
			resp, e := call(h, context.Background(), "svc")
			switch {
			case tc.detail == "" && (e != nil || resp.Status != tc.status || resp.Attempts != 1):
				t.Fatalf("got %+v %v, want the app's own %d after 1 attempt", resp, e, tc.status)
			case tc.detail != "" && (e == nil || e.Code != tc.status || !strings.Contains(e.Detail, tc.detail)):
				t.Fatalf("got %+v %v, want %d saying %q", resp, e, tc.status, tc.detail)
			}
			if n := h.totalCalls(); n != 1 {
				t.Fatalf("the call ran %d times on the nodes, want once", n)
			}
		})
	}
}

// TestAttemptTimeout: a hung node costs a call that is safe to repeat only the attempt
// timeout, and the node sees that smaller budget; a call that is not safe to repeat waits
// for the whole budget on it.
func TestAttemptTimeout(t *testing.T) {
	opts := defaults()
	opts.AttemptTimeout = 100 * time.Millisecond
	h := newHarnessOf(t, opts, spec{status: 200, idempotent: true}, spec{status: 200, idempotent: true})
	h.nodes[0].mu.Lock()
	h.nodes[0].delay = 5 * time.Second
	h.nodes[0].mu.Unlock()
	for i := range 4 {
		resp, e := call(h, context.Background(), "svc")
		if e != nil || resp.Node != "n1" {
			t.Fatalf("call %d: %+v %v, want an answer from n1", i, resp, e)
		}
	}
	if _, b := h.nodes[0].stats(); b <= 0 || b > 100*time.Millisecond {
		t.Errorf("the hung node saw budget %v, want at most the attempt timeout", b)
	}
	if got := h.ejects.all(); !slices.Contains(got, "n0/E.P") {
		t.Errorf("ejections %v: the node that timed out its attempts was not ejected for E.P", got)
	}

	h = newHarnessOf(t, opts, spec{status: 200}, spec{status: 200})
	h.nodes[0].mu.Lock()
	h.nodes[0].delay = 5 * time.Second
	h.nodes[0].mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, e := call(h, ctx, "svc"); e == nil || e.Code != 504 {
		t.Fatalf("non-idempotent call to a hung node: %v, want 504 at the end of its budget", e)
	}
	if _, b := h.nodes[0].stats(); b <= 200*time.Millisecond {
		t.Errorf("the hung node saw budget %v, want the call's whole budget (~300ms)", b)
	}
}

// TestCallerMistakesDoNotEject: only the node's own faults count toward its ejection.
func TestCallerMistakesDoNotEject(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  spec
		eject string // the ejection expected, or ""
	}{
		{"app 400", spec{status: 400}, ""},
		{"app 404", spec{status: 404}, ""},
		{"app 429", spec{status: 429}, ""},
		{"caller's fault at the node", spec{status: 413, kind: transport.ErrorCaller}, ""},
		{"refused for capacity", spec{status: 503, kind: transport.ErrorRefused}, ""},
		{"reply too large", spec{status: 502, kind: transport.ErrorReply}, ""},
		{"app 500", spec{status: 500}, "n0/E.P"},
		{"app broke the call", spec{status: 502, kind: transport.ErrorApp}, "n0/E.P"},
		{"no app at the node", spec{status: 503, kind: transport.ErrorUnavailable}, "n0/"},
		{"connect refused", spec{status: 0}, "n0/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := defaults()
			opts.Attempts = 1
			h := newHarnessOf(t, opts, tc.spec, spec{status: 200})
			for range 6 {
				_, _ = call(h, context.Background(), "svc")
			}
			got := h.ejects.all()
			switch {
			case tc.eject == "" && len(got) > 0:
				t.Fatalf("ejections %v, want none", got)
			case tc.eject != "" && !slices.Contains(got, tc.eject):
				t.Fatalf("ejections %v, want %s", got, tc.eject)
			}
		})
	}
}

// TestShortBudgetTimeoutsDoNotEject: a caller that asks for less than the default budget
// chose to give up early; its timeouts do not count against the node. Timeouts of the
// default budget do.
func TestShortBudgetTimeoutsDoNotEject(t *testing.T) {
	opts := defaults()
	opts.Attempts, opts.Timeout = 1, 150*time.Millisecond
	h := newHarnessOf(t, opts, spec{status: 200}, spec{status: 200})
	h.nodes[0].mu.Lock()
	h.nodes[0].delay = 2 * time.Second
	h.nodes[0].mu.Unlock()
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, _ = call(h, ctx, "svc")
		cancel()
	}
	if got := h.ejects.all(); len(got) > 0 {
		t.Fatalf("ejections %v after timeouts of budgets the caller shortened, want none", got)
	}
	for range 4 {
		_, _ = call(h, context.Background(), "svc")
	}
	if got := h.ejects.all(); !slices.Contains(got, "n0/E.P") {
		t.Fatalf("ejections %v, want n0 for E.P after timeouts of the default budget", got)
	}
}

// TestCallerGoneAndBadMessage: a caller that goes away, or a request that cannot be sent,
// ends the call without counting against any node.
func TestCallerGoneAndBadMessage(t *testing.T) {
	opts := defaults()
	opts.Attempts = 1
	h := newHarnessOf(t, opts, spec{status: 200}, spec{status: 200})
	h.nodes[0].mu.Lock()
	h.nodes[0].delay = 2 * time.Second
	h.nodes[0].mu.Unlock()
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, e := callReq(h, ctx, &client.Request{Service: "svc", Endpoint: "E.P"})
		if e != nil && e.Code != callerr.StatusClientClosed {
			t.Fatalf("a call whose caller went away: %v, want 499 (or a quick answer)", e)
		}
		_, e = callReq(h, context.Background(), &client.Request{Service: "svc", Endpoint: "E.P", Header: map[string]string{"X-Bad": "a\rb"}})
		if e == nil || e.Code != 400 {
			t.Fatalf("a request with a bad header: %v, want 400", e)
		}
	}
	if got := h.ejects.all(); len(got) > 0 {
		t.Fatalf("ejections %v, want none", got)
	}
}

// TestWrappersSeeFaults: client wrappers learn whether an outcome is the node's fault.
func TestWrappersSeeFaults(t *testing.T) {
	opts := defaults()
	opts.Attempts = 1
	h := newHarnessOf(t, opts, spec{status: 500}, spec{status: 404}, spec{status: 503, kind: transport.ErrorRefused}, spec{status: 0})
	rec := &resultWrapper{}
	h.client.SetChain(wrapper.NewChain([]wrapper.Link{{Wrapper: rec}}))
	for range 4 {
		_, _ = call(h, context.Background(), "svc")
	}
	want := map[string]bool{"n0": true, "n1": false, "n2": false, "n3": true}
	got := rec.faults()
	for n, fault := range want {
		if f, ok := got[n]; !ok || f != fault {
			t.Errorf("node %s: wrapper saw fault=%v (seen %v), want %v", n, f, ok, fault)
		}
	}
}

// resultWrapper lets every call through and records whether each node's outcome was a
// fault.
type resultWrapper struct {
	mu sync.Mutex
	m  map[string]bool
}

func (w *resultWrapper) Name() string { return "results" }
func (w *resultWrapper) OnRequest(context.Context, *wrapper.Call) wrapper.Verdict {
	return wrapper.Verdict{}
}
func (w *resultWrapper) OnResponse(_ context.Context, c *wrapper.Call, r *wrapper.Result) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = make(map[string]bool)
	}
	w.m[c.Node] = r.Fault
}
func (w *resultWrapper) Close(context.Context) error { return nil }
func (w *resultWrapper) faults() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.m)
}

func TestNoRetryOnAppAnswers(t *testing.T) {
	for _, status := range []int{500, 404, 429} {
		h := newHarness(t, defaults(), status, status)
		resp, e := call(h, context.Background(), "svc")
		if e != nil || resp.Status != status || resp.Attempts != 1 {
			t.Fatalf("status %d: %+v %v", status, resp, e)
		}
	}
}

func TestEachNodeTriedOnce(t *testing.T) {
	h := newHarnessOf(t, defaults(), spec{status: 0}, spec{status: 503, kind: transport.ErrorUnavailable}, spec{status: 503, kind: transport.ErrorUnavailable})
	_, e := call(h, context.Background(), "svc")
	if e == nil || e.Code != 502 {
		t.Fatalf("got %v, want 502", e)
	}
	for _, n := range h.nodes[1:] {
		if calls, _ := n.stats(); calls != 1 {
			t.Errorf("node %s got %d calls, want 1", n.id, calls)
		}
	}

	// Every node refused the call for want of capacity: 503 with the last Retry-After.
	h = newHarnessOf(t, defaults(), spec{status: 503, kind: transport.ErrorRefused}, spec{status: 503, kind: transport.ErrorRefused})
	_, e = call(h, context.Background(), "svc")
	if e == nil || e.Code != 503 || e.RetryAfter != "3" {
		t.Fatalf("got %+v, want 503 with Retry-After 3", e)
	}
}

func TestAttemptsBound(t *testing.T) {
	opts := defaults()
	opts.Attempts = 2
	h := newHarnessOf(t, opts, spec{status: 503, kind: transport.ErrorUnavailable}, spec{status: 503, kind: transport.ErrorUnavailable}, spec{status: 503, kind: transport.ErrorUnavailable})
	_, e := call(h, context.Background(), "svc")
	if e == nil || e.Code != 502 {
		t.Fatalf("got %v, want 502", e)
	}
	total := 0
	for _, n := range h.nodes {
		c, _ := n.stats()
		total += c
	}
	if total != 2 {
		t.Errorf("%d attempts, want 2", total)
	}
}

// TestUnreached: a call whose every attempt failed to connect is marked as having reached
// no app; one that reached an app is not.
func TestUnreached(t *testing.T) {
	h := newHarnessOf(t, defaults(), spec{status: 0}, spec{status: 0}, spec{status: 0})
	_, e := call(h, context.Background(), "svc")
	if e == nil || !e.Unreached {
		t.Fatalf("got %+v, want an error marked Unreached", e)
	}
	h = newHarnessOf(t, defaults(), spec{status: 0}, spec{status: -1}, spec{status: 0})
	req := &client.Request{Service: "svc", Endpoint: "E", Idempotent: true}
	_, err := h.client.Call(context.Background(), req)
	var ce *callerr.Error
	if errors.As(err, &ce) && ce.Unreached {
		t.Fatalf("a call that may have reached an app is marked Unreached: %v", ce)
	}
}

func TestRetryBudgetExhausted(t *testing.T) {
	opts := defaults()
	opts.RetryRatio, opts.RetryMinPerSecond = 0, 0
	h := newHarness(t, opts, 0, 200)
	sawExhausted := false
	for range 4 {
		if _, e := call(h, context.Background(), "svc"); e != nil {
			if e.Code != 502 {
				t.Fatalf("got %v, want 502", e)
			}
			sawExhausted = true
		}
	}
	if !sawExhausted {
		t.Fatal("a call to the failing node was retried with no retry budget")
	}
}

func TestBudgetSpentOnHangingNode(t *testing.T) {
	h := newHarness(t, defaults(), 200)
	h.nodes[0].mu.Lock()
	h.nodes[0].delay = 2 * time.Second
	h.nodes[0].mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, e := call(h, ctx, "svc")
	if e == nil || e.Code != 504 || e.Status != "Gateway Timeout" {
		t.Fatalf("got %v, want 504", e)
	}
	if _, b := h.nodes[0].stats(); b <= 0 || b > 100*time.Millisecond {
		t.Errorf("node saw budget %v, want in (0, 100ms]", b)
	}
}

func TestUnknownServiceAndSpentBudget(t *testing.T) {
	h := newHarness(t, defaults(), 200)
	if _, e := call(h, context.Background(), "nosuch"); e == nil || e.Code != 404 {
		t.Fatalf("unknown service: %v, want 404", e)
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, e := call(h, ctx, "svc"); e == nil || e.Code != 504 {
		t.Fatalf("spent budget: %v, want 504", e)
	}
	if calls, _ := h.nodes[0].stats(); calls != 0 {
		t.Errorf("an attempt started with a spent budget")
	}
}

// refusedExchange is an Exchange whose every attempt is refused by micro at the node before
// its app saw it, and whose request can be sent again only while replayable is set.
type refusedExchange struct {
	attempts   int
	replayable bool
}

func (ex *refusedExchange) Attempt(context.Context, *registry.Node, time.Duration, map[string]string) (client.Answer, bool, error) {
	ex.attempts++
	return client.Answer{Status: 503, Error: transport.ErrorRefused, Body: []byte(`{"id":"micro.inbound","code":503,"detail":"busy","status":"Service Unavailable"}`)}, true, nil
}

func (ex *refusedExchange) Replayable() bool { return ex.replayable }

// TestDoReplayer: a call whose Exchange can no longer send its request again (its body went
// out past the retry buffer) is not retried, and says why.
func TestDoReplayer(t *testing.T) {
	h := newHarness(t, defaults(), 200, 200)
	req := &client.Request{Service: "svc", Endpoint: "E.P"}
	ex := &refusedExchange{replayable: true}
	if _, err := h.client.Do(context.Background(), req, ex); err == nil || ex.attempts != 3 {
		t.Fatalf("replayable: %d attempts, %v; want 3 and a failure", ex.attempts, err)
	}
	ex = &refusedExchange{}
	_, err := h.client.Do(context.Background(), req, ex)
	var e *callerr.Error
	if !errors.As(err, &e) || e.Code != 503 || !strings.Contains(e.Detail, "client.retry_buffer") || ex.attempts != 1 {
		t.Fatalf("not replayable: %d attempts, %v; want 1 and a 503 naming client.retry_buffer", ex.attempts, err)
	}
}
