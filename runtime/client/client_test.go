package client_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
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
)

// node is a real inbound listener that answers every call with a scripted status, after an
// optional delay, and records what it received.
type node struct {
	id     string
	addr   string
	status int
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
			b, _ := budget.Parse(m.Header[transport.HeaderTimeout])
			n.mu.Lock()
			n.calls++
			n.budget = b
			status, delay := n.status, n.delay
			n.mu.Unlock()
			if m.Header[transport.HeaderNode] != n.id {
				status = 400
			}
			time.Sleep(delay)
			_ = c.Send(context.Background(), &transport.Message{
				Header: map[string]string{transport.HeaderStatus: strconv.Itoa(status)},
				Body:   []byte(n.id),
			})
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
}

// newHarness registers one node per status under service "svc" in a real embedded
// registry, each served by a real HTTP transport listener; status 0 means a node whose
// address refuses connections.
func newHarness(t *testing.T, opts client.Options, statuses ...int) *harness {
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

	h := &harness{}
	svc := &registry.Service{Name: "svc"}
	for i, st := range statuses {
		n := &node{id: "n" + strconv.Itoa(i), status: st}
		if st == 0 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			n.addr = ln.Addr().String()
			ln.Close()
		} else {
			l, err := tr.Listen(ctx, "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			n.addr = l.Addr()
			go n.serve(t, l)
		}
		h.nodes = append(h.nodes, n)
		svc.Nodes = append(svc.Nodes, &registry.Node{ID: n.id, Address: n.addr})
	}
	if err := reg.Register(ctx, svc, time.Minute); err != nil {
		t.Fatal(err)
	}
	c := cache.New(reg, cache.Options{TTL: time.Minute, Logger: logger})
	sel := selector.New(c, selector.Policy{Strategy: "round_robin"}, selector.Options{Logger: logger})
	p := pool.New(tr, pool.Options{})
	t.Cleanup(func() { p.Close() })
	h.client = client.New(sel, p, nil, opts, logger)
	return h
}

func defaults() client.Options {
	return client.Options{Timeout: 2 * time.Second, Attempts: 3, Backoff: time.Millisecond, BackoffMax: 5 * time.Millisecond, RetryRatio: 0.2, RetryMinPerSecond: 10}
}

func call(h *harness, ctx context.Context, service string) (*client.Response, *callerr.Error) {
	resp, err := h.client.Call(ctx, &client.Request{Service: service, Endpoint: "E.P", Body: []byte("{}")})
	if err != nil {
		var e *callerr.Error
		if !errors.As(err, &e) {
			panic("client returned a non-callerr error: " + err.Error())
		}
		return nil, e
	}
	return resp, nil
}

func TestRetriesGoToAnotherNode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		failed int // status of the failing node; 0 refuses connections
	}{{"connect refused", 0}, {"503", 503}, {"502", 502}, {"504", 504}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, defaults(), tc.failed, 200)
			for i := range 10 {
				resp, e := call(h, context.Background(), "svc")
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
	h := newHarness(t, defaults(), 503, 503, 503)
	_, e := call(h, context.Background(), "svc")
	if e == nil || e.Code != 502 {
		t.Fatalf("got %v, want 502", e)
	}
	for _, n := range h.nodes {
		if calls, _ := n.stats(); calls != 1 {
			t.Errorf("node %s got %d calls, want 1", n.id, calls)
		}
	}
}

func TestAttemptsBound(t *testing.T) {
	opts := defaults()
	opts.Attempts = 2
	h := newHarness(t, opts, 503, 503, 503)
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

func TestRetryBudgetExhausted(t *testing.T) {
	opts := defaults()
	opts.RetryRatio, opts.RetryMinPerSecond = 0, 0
	h := newHarness(t, opts, 503, 200)
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
