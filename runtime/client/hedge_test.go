package client_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/client"
)

// setDelay makes node i answer after d.
func (h *harness) setDelay(i int, d time.Duration) {
	h.nodes[i].mu.Lock()
	h.nodes[i].delay = d
	h.nodes[i].mu.Unlock()
}

// warm makes n calls that succeed, so that the client has latencies of svc's E.P.
func (h *harness) warm(t *testing.T, n int, idempotent bool) {
	t.Helper()
	for i := range n {
		if _, e := callReq(h, context.Background(), &client.Request{Service: "svc", Endpoint: "E.P", Idempotent: idempotent}); e != nil {
			t.Fatalf("warm-up call %d: %v", i, e)
		}
	}
}

// TestHedgeWins: once a call that is safe to repeat has waited past the hedge delay, a
// second attempt goes to another node and its answer is the call's; the slow node's
// attempt is given up, and attempts given up in a row eject the node for the endpoint, as
// failures do.
func TestHedgeWins(t *testing.T) {
	opts := defaults()
	opts.Hedge = client.Hedge{Quantile: 0.9, Min: time.Millisecond}
	opts.MinSamples = 10
	h := newHarnessOf(t, opts, spec{status: 200, idempotent: true}, spec{status: 200, idempotent: true})
	h.warm(t, 20, false)
	h.setDelay(0, 10*time.Second)
	hedged := 0
	for i := range 6 {
		resp, e := call(h, context.Background(), "svc")
		if e != nil || resp.Status != 200 || resp.Node != "n1" || string(resp.Body) != "n1" {
			t.Fatalf("call %d: %+v %v, want n1's answer", i, resp, e)
		}
		if resp.Attempts == 2 {
			hedged++
		}
	}
	if hedged == 0 {
		t.Fatal("no call was hedged, though round robin sent some to the hung node")
	}
	if calls, _ := h.nodes[0].stats(); calls < 20/2+hedged {
		t.Errorf("the slow node saw %d calls, want its warm-up share and the %d hedged ones", calls, hedged)
	}
	if got := h.ejects.all(); !slices.Equal(got, []string{"n0/E.P"}) {
		t.Errorf("ejections %v, want n0 for E.P after its attempts were given up", got)
	}
}

// TestNoHedge: a call runs once, however slow, when it is not safe to repeat, when the
// retry budget has nothing left to pay for a hedge, or when its route turns hedging off.
func TestNoHedge(t *testing.T) {
	for _, tc := range []struct {
		name       string
		edit       func(*client.Options)
		idempotent bool
	}{
		{"not safe to repeat", func(*client.Options) {}, false},
		{"no retry budget", func(o *client.Options) { o.RetryRatio, o.RetryMinPerSecond = 0, 0 }, true},
		{"route without hedging", func(o *client.Options) { o.Routes = map[string]client.Route{"svc": {NoHedge: true}} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := defaults()
			opts.Hedge = client.Hedge{Quantile: 0.5, Min: time.Millisecond}
			opts.MinSamples = 1
			tc.edit(&opts)
			h := newHarnessOf(t, opts, spec{status: 200, idempotent: tc.idempotent}, spec{status: 200, idempotent: tc.idempotent})
			h.warm(t, 10, false)
			before := h.totalCalls()
			h.setDelay(0, 30*time.Millisecond)
			h.setDelay(1, 30*time.Millisecond)
			for i := range 4 {
				if resp, e := call(h, context.Background(), "svc"); e != nil || resp.Attempts != 1 {
					t.Fatalf("call %d: %+v %v, want one attempt", i, resp, e)
				}
			}
			if n := h.totalCalls() - before; n != 4 {
				t.Fatalf("4 calls ran %d times on the nodes, want once each", n)
			}
		})
	}
}

// TestAdaptiveAttemptTimeout: once an endpoint has answers, an attempt of a call that is
// safe to repeat gets a timeout derived from them (here the floor, since the answers are
// fast), so a hung node costs that much rather than the budget; a route can pin it.
func TestAdaptiveAttemptTimeout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes map[string]client.Route
		most   time.Duration // the budget the hung node may see
	}{
		{"adaptive", nil, 60 * time.Millisecond},
		{"pinned by the route", map[string]client.Route{"svc": {AttemptTimeout: 120 * time.Millisecond}}, 120 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := defaults()
			opts.Adaptive = client.Adaptive{Quantile: 0.99, Factor: 2, Min: 60 * time.Millisecond}
			opts.MinSamples = 10
			opts.Routes = tc.routes
			h := newHarnessOf(t, opts, spec{status: 200, idempotent: true}, spec{status: 200, idempotent: true})
			h.warm(t, 20, false)
			h.setDelay(0, 10*time.Second)
			for i := range 4 {
				resp, e := call(h, context.Background(), "svc")
				if e != nil || resp.Node != "n1" {
					t.Fatalf("call %d: %+v %v, want an answer from n1", i, resp, e)
				}
			}
			if _, b := h.nodes[0].stats(); b <= 0 || b > tc.most {
				t.Errorf("the hung node saw budget %v, want at most %v", b, tc.most)
			}
			if got := h.ejects.all(); !slices.Contains(got, "n0/E.P") {
				t.Errorf("ejections %v: the node that timed out its attempts was not ejected for E.P", got)
			}
		})
	}
}

// TestAdaptiveNeedsSamples: before an endpoint has MinSamples answers, an attempt gets the
// whole budget.
func TestAdaptiveNeedsSamples(t *testing.T) {
	opts := defaults()
	opts.Adaptive = client.Adaptive{Quantile: 0.99, Factor: 2, Min: time.Millisecond}
	opts.MinSamples = 1000
	h := newHarnessOf(t, opts, spec{status: 200, idempotent: true})
	h.warm(t, 5, false)
	if _, b := h.nodes[0].stats(); b < time.Second {
		t.Errorf("the node saw budget %v, want the call's whole budget (2s) without enough samples", b)
	}
}
