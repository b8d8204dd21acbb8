package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/microhost/micro/plugins/registry-consul/consultest"
	"github.com/microhost/micro/sdk/registry"
)

// The tests below run against a real Consul agent (consultest). TestConsul shares one agent
// among subtests that use distinct service names; tests that restart the agent or enable
// ACLs start their own.

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newRegistry returns an initialised registry on the agent at addr, logging into logs.
func newRegistry(t testing.TB, c registry.Config, logs *syncBuffer) *consul {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if logs != nil {
		log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r := newConsul(log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Init(ctx, c); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return r
}

// eventually calls f until it returns nil, failing the test with f's last error after
// timeout.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConsul(t *testing.T) {
	agent := consultest.Start(t)
	cfg := registry.Config{Address: agent.Addr}

	t.Run("RegisterGetListDeregister", func(t *testing.T) {
		ctx := ctxT(t)
		r := newRegistry(t, cfg, nil)
		svc := &registry.Service{Name: "greeter", Nodes: []*registry.Node{
			{ID: "greeter-2", Address: "127.0.0.1:9002", Version: "1.1.0",
				Metadata: map[string]string{"zone": "b"}, Endpoints: []string{"Greeter.Hello", "Greeter.Bye"},
				Idempotent: []string{"Greeter.Hello"}},
			{ID: "greeter-1", Address: "[::1]:9001", Version: "1.0.0"},
		}}
		if err := r.Register(ctx, svc, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		got, err := r.GetService(ctx, "greeter")
		if err != nil {
			t.Fatal(err)
		}
		want := &registry.Service{Name: "greeter", Nodes: []*registry.Node{svc.Nodes[1], svc.Nodes[0]}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("GetService:\n got %s\nwant %s", dump(got), dump(want))
		}

		list, err := r.ListServices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range list {
			names = append(names, s.Name)
			if s.Name == "greeter" && !reflect.DeepEqual(s, want) {
				t.Errorf("ListServices' greeter:\n got %s\nwant %s", dump(s), dump(want))
			}
		}
		if !slices.Contains(names, "greeter") || slices.Contains(names, "consul") {
			t.Errorf("ListServices names = %v, want greeter and not consul", names)
		}

		// The service is visible to Consul's own API, with micro's fields in Meta.
		c, _ := api.NewClient(&api.Config{Address: agent.Addr})
		cs, _, err := c.Catalog().Service("greeter", "", nil)
		if err != nil || len(cs) != 2 {
			t.Fatalf("catalog greeter = %d entries, %v; want 2", len(cs), err)
		}
		for _, e := range cs {
			if e.ServiceID == "greeter-2" && (e.ServiceMeta["micro_version"] != "1.1.0" ||
				e.ServiceMeta["micro_endpoints"] != "Greeter.Hello,Greeter.Bye" || e.ServiceMeta["zone"] != "b") {
				t.Errorf("catalog meta of greeter-2 = %v", e.ServiceMeta)
			}
		}

		if err := r.Deregister(ctx, &registry.Service{Name: "greeter", Nodes: svc.Nodes[:1]}); err != nil {
			t.Fatal(err)
		}
		got, err = r.GetService(ctx, "greeter")
		if err != nil || len(got.Nodes) != 1 || got.Nodes[0].ID != "greeter-1" {
			t.Fatalf("after deregistering greeter-2: GetService = %s, %v; want greeter-1 only", dump(got), err)
		}
		if err := r.Deregister(ctx, svc); err != nil {
			t.Fatalf("Deregister of a node already gone: %v", err)
		}
		if _, err := r.GetService(ctx, "greeter"); err != registry.ErrNotFound {
			t.Fatalf("after Deregister: GetService error = %v, want registry.ErrNotFound", err)
		}
		if _, err := r.GetService(ctx, "never-registered"); err != registry.ErrNotFound {
			t.Fatalf("GetService of an unknown service: error = %v, want registry.ErrNotFound", err)
		}
	})

	t.Run("HeartbeatUpdatesTTLOnly", func(t *testing.T) {
		ctx := ctxT(t)
		proxy := newCountingProxy(t, agent.Addr)
		r := newRegistry(t, registry.Config{Address: proxy.addr()}, nil)
		svc := &registry.Service{Name: "beat", Nodes: []*registry.Node{{ID: "beat-1", Address: "127.0.0.1:9100", Version: "1"}}}
		for range 3 {
			if err := r.Register(ctx, svc, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if n := proxy.count("PUT /v1/agent/service/register"); n != 1 {
			t.Errorf("3 Registers of one definition made %d service registrations, want 1", n)
		}
		if n := proxy.count("PUT /v1/agent/check/update/service:beat-1"); n != 2 {
			t.Errorf("3 Registers of one definition made %d TTL updates, want 2", n)
		}

		// A changed definition is registered in full.
		svc.Nodes[0].Version = "2"
		if err := r.Register(ctx, svc, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if n := proxy.count("PUT /v1/agent/service/register"); n != 2 {
			t.Errorf("after a version change: %d service registrations, want 2", n)
		}
		got, err := r.GetService(ctx, "beat")
		if err != nil || got.Nodes[0].Version != "2" {
			t.Fatalf("GetService after the change = %s, %v; want version 2", dump(got), err)
		}

		// Removed behind the plugin's back: the next heartbeat registers it again.
		c, _ := api.NewClient(&api.Config{Address: agent.Addr})
		if err := c.Agent().ServiceDeregister("beat-1"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.GetService(ctx, "beat"); err != registry.ErrNotFound {
			t.Fatalf("after deregistering by hand: GetService error = %v, want ErrNotFound", err)
		}
		if err := r.Register(ctx, svc, 10*time.Second); err != nil {
			t.Fatalf("heartbeat after the agent lost the node: %v", err)
		}
		if _, err := r.GetService(ctx, "beat"); err != nil {
			t.Fatalf("GetService after the heartbeat re-registered: %v", err)
		}
		_ = r.Deregister(ctx, svc)
	})

	t.Run("TTLExpiry", func(t *testing.T) {
		ctx := ctxT(t)
		r := newRegistry(t, cfg, nil)
		live := &registry.Service{Name: "expiry", Nodes: []*registry.Node{{ID: "expiry-live", Address: "127.0.0.1:9201"}}}
		dead := &registry.Service{Name: "expiry", Nodes: []*registry.Node{{ID: "expiry-dead", Address: "127.0.0.1:9202"}}}
		const ttl = time.Second
		registered := time.Now() // before the agent starts the dead node's TTL
		if err := r.Register(ctx, dead, ttl); err != nil {
			t.Fatal(err)
		}
		if err := r.Register(ctx, live, ttl); err != nil {
			t.Fatal(err)
		}
		if got, err := r.GetService(ctx, "expiry"); err != nil || len(got.Nodes) != 2 {
			t.Fatalf("GetService = %s, %v; want 2 nodes", dump(got), err)
		}
		// Only the live node heartbeats; the dead one must drop out after its TTL.
		eventually(t, 30*time.Second, func() error {
			if err := r.Register(ctx, live, ttl); err != nil {
				return err
			}
			got, err := r.GetService(ctx, "expiry")
			if err != nil {
				return err
			}
			if len(got.Nodes) != 1 || got.Nodes[0].ID != "expiry-live" {
				return fmt.Errorf("GetService = %s, want expiry-live only", dump(got))
			}
			return nil
		})
		if since := time.Since(registered); since < ttl {
			t.Errorf("the dead node dropped out %v after it registered, before its TTL of %v", since, ttl)
		}
		// Stop heartbeating the live node too: the service is gone.
		eventually(t, 30*time.Second, func() error {
			if _, err := r.GetService(ctx, "expiry"); err != registry.ErrNotFound {
				return fmt.Errorf("GetService error = %v, want ErrNotFound", err)
			}
			return nil
		})
		// A heartbeat brings a critical node back at once.
		if err := r.Register(ctx, live, ttl); err != nil {
			t.Fatal(err)
		}
		if _, err := r.GetService(ctx, "expiry"); err != nil {
			t.Fatalf("GetService after a heartbeat revived the node: %v", err)
		}
		_ = r.Deregister(ctx, live)
		_ = r.Deregister(ctx, dead)
	})

	t.Run("Watch", func(t *testing.T) {
		ctx := ctxT(t)
		r := newRegistry(t, cfg, nil)
		wctx, stop := context.WithCancel(ctx)
		events := make(chan registry.Event, 64)
		watchErr := make(chan error, 1)
		go func() { watchErr <- r.Watch(wctx, events) }()

		// next returns the next event about service "watched", failing after a while.
		next := func(timeout time.Duration) (registry.Event, bool) {
			deadline := time.After(timeout)
			for {
				select {
				case ev := <-events:
					if ev.Service == "watched" {
						return ev, true
					}
				case err := <-watchErr:
					t.Fatalf("Watch returned early: %v", err)
				case <-deadline:
					return registry.Event{}, false
				}
			}
		}
		node := &registry.Node{ID: "watched-1", Address: "127.0.0.1:9300", Version: "1", Metadata: map[string]string{"seq": "0"}}
		svc := &registry.Service{Name: "watched", Nodes: []*registry.Node{node}}

		// Watch starts from a snapshot it takes in the background: change the node until
		// an event shows that Watch is running.
		var ev registry.Event
		for i := 0; ; i++ {
			node.Metadata["seq"] = fmt.Sprint(i)
			if err := r.Register(ctx, svc, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			var ok bool
			if ev, ok = next(2 * time.Second); ok {
				break
			}
			if i == 15 {
				t.Fatal("no event from Watch for a registered node")
			}
		}
		if ev.Type != registry.EventUpdate || ev.Node == nil || ev.Node.ID != "watched-1" {
			t.Fatalf("first event = %+v, want an update of watched-1", ev)
		}
		for len(events) > 0 { // drop wake-ups from the warm-up
			<-events
		}

		// A changed record is an update carrying the new record.
		node.Version = "2"
		node.Endpoints = []string{"W.Get"}
		if err := r.Register(ctx, svc, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		eventuallyEvent(t, next, func(ev registry.Event) bool {
			return ev.Type == registry.EventUpdate && ev.Node != nil && ev.Node.Version == "2" &&
				reflect.DeepEqual(ev.Node.Endpoints, []string{"W.Get"})
		}, "an update of watched-1 to version 2")

		// A second node is an update; deregistering it is a delete.
		other := &registry.Service{Name: "watched", Nodes: []*registry.Node{{ID: "watched-2", Address: "127.0.0.1:9301"}}}
		if err := r.Register(ctx, other, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		eventuallyEvent(t, next, func(ev registry.Event) bool {
			return ev.Type == registry.EventUpdate && ev.Node != nil && ev.Node.ID == "watched-2"
		}, "an update for watched-2")
		if err := r.Deregister(ctx, other); err != nil {
			t.Fatal(err)
		}
		eventuallyEvent(t, next, func(ev registry.Event) bool {
			return ev.Type == registry.EventDelete && ev.Node != nil && ev.Node.ID == "watched-2"
		}, "a delete of watched-2")

		// A node whose TTL runs out is a delete too (its check went critical).
		if err := r.Register(ctx, svc, time.Second); err != nil { // new TTL: full registration
			t.Fatal(err)
		}
		eventuallyEvent(t, next, func(ev registry.Event) bool {
			return ev.Type == registry.EventDelete && ev.Node != nil && ev.Node.ID == "watched-1"
		}, "a delete of watched-1 when its TTL ran out")

		stop()
		select {
		case err := <-watchErr:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Watch after its context ended = %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Watch did not return after its context ended")
		}
		_ = r.Deregister(ctx, svc)
	})

	t.Run("RegisterRejectsBadInput", func(t *testing.T) {
		ctx := ctxT(t)
		r := newRegistry(t, cfg, nil)
		for _, tc := range []struct {
			svc  *registry.Service
			ttl  time.Duration
			want string
		}{
			{&registry.Service{Name: "bad", Nodes: []*registry.Node{{ID: "bad-1", Address: "no-port"}}}, time.Second, `"no-port"`},
			{&registry.Service{Name: "bad", Nodes: []*registry.Node{{ID: "bad-1", Address: "h:1", Metadata: map[string]string{"a b": ""}}}}, time.Second, `"a b"`},
			{&registry.Service{Name: "", Nodes: []*registry.Node{{ID: "bad-1", Address: "h:1"}}}, time.Second, "name is empty"},
			{&registry.Service{Name: "bad", Nodes: []*registry.Node{{ID: "bad-1", Address: "h:1"}}}, 0, "ttl 0s"},
		} {
			err := r.Register(ctx, tc.svc, tc.ttl)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Register(%+v, %v) = %v, want an error containing %s", tc.svc, tc.ttl, err, tc.want)
			}
		}
		if _, err := r.GetService(ctx, "bad"); err != registry.ErrNotFound {
			t.Errorf("GetService after rejected Registers: error = %v, want ErrNotFound", err)
		}
	})

	t.Run("ConfigFromEnv", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", agent.Addr)
		r := newRegistry(t, registry.Config{}, nil)
		if r.addr != agent.Addr {
			t.Errorf("address from CONSUL_HTTP_ADDR = %q, want %q", r.addr, agent.Addr)
		}
		// Config wins over the environment.
		t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
		r = newRegistry(t, cfg, nil)
		if _, err := r.ListServices(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("TokenNeverLogged", func(t *testing.T) {
		const token = "8c3f0b8e-token-never-logged"
		var logs syncBuffer
		r := newRegistry(t, registry.Config{Address: agent.Addr, Token: token}, &logs) // ACLs off: ignored
		ctx := ctxT(t)
		svc := &registry.Service{Name: "tokened", Nodes: []*registry.Node{{ID: "tokened-1", Address: "127.0.0.1:9400"}}}
		var errs []error
		errs = append(errs, r.Register(ctx, svc, time.Minute), r.Register(ctx, svc, time.Minute))
		_, err := r.GetService(ctx, "tokened")
		errs = append(errs, err)
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		errs = append(errs, r.Watch(wctx, make(chan registry.Event, 16)))
		cancel()
		errs = append(errs, r.Deregister(ctx, svc))
		// Failures too: an unreachable agent, and a bad registration.
		errs = append(errs, r.Register(ctx, &registry.Service{Name: "tokened", Nodes: []*registry.Node{{ID: "x", Address: "bad"}}}, time.Minute))
		bad := newConsul(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		errs = append(errs, bad.Init(ctx, registry.Config{Address: "127.0.0.1:1", Token: token}))
		if !strings.Contains(logs.String(), "token_set=true") {
			t.Errorf("Init's log does not say a token is set:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), token) {
			t.Errorf("the token appears in the log:\n%s", logs.String())
		}
		for _, err := range errs {
			if err != nil && strings.Contains(err.Error(), token) {
				t.Errorf("the token appears in an error: %v", err)
			}
		}
	})
}

func TestInitUnreachable(t *testing.T) {
	// A port that was just free: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := ln.Addr().String()
	ln.Close()
	r := newConsul(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Init(ctx, registry.Config{Address: l})
	if err == nil || !strings.Contains(err.Error(), l) {
		t.Fatalf("Init with nothing at %s = %v, want an error naming the address", l, err)
	}
	// Not initialised: every method fails rather than panicking.
	if err := r.Register(ctx, &registry.Service{Name: "s"}, time.Second); err == nil {
		t.Error("Register before a successful Init succeeded")
	}
	if _, err := r.GetService(ctx, "s"); err == nil || errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService before a successful Init = %v, want an error other than ErrNotFound", err)
	}
	if err := r.Watch(ctx, make(chan registry.Event)); err == nil {
		t.Error("Watch before a successful Init returned nil")
	}
}

// TestAgentRestart stops the agent under a registered node and brings it back empty (a dev
// agent keeps no state): the next heartbeat restores the registration.
func TestAgentRestart(t *testing.T) {
	agent := consultest.Start(t)
	r := newRegistry(t, registry.Config{Address: agent.Addr}, nil)
	ctx := ctxT(t)
	svc := &registry.Service{Name: "phoenix", Nodes: []*registry.Node{{ID: "phoenix-1", Address: "127.0.0.1:9500", Version: "3"}}}
	const ttl = 10 * time.Second
	if err := r.Register(ctx, svc, ttl); err != nil {
		t.Fatal(err)
	}

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watchErr := make(chan error, 1)
	go func() { watchErr <- r.Watch(wctx, make(chan registry.Event, 16)) }()

	// Restarted with no failed call in between: the heartbeat finds the check unknown.
	agent.Restart()
	if _, err := r.GetService(ctx, "phoenix"); err != registry.ErrNotFound {
		t.Fatalf("GetService on the restarted, empty agent: error = %v, want ErrNotFound", err)
	}
	if err := r.Register(ctx, svc, ttl); err != nil {
		t.Fatalf("heartbeat after the agent restarted: %v", err)
	}
	got, err := r.GetService(ctx, "phoenix")
	if err != nil || len(got.Nodes) != 1 || got.Nodes[0].Version != "3" {
		t.Fatalf("GetService after the heartbeat = %s, %v; want phoenix-1 version 3", dump(got), err)
	}
	select {
	case err := <-watchErr:
		if err == nil || errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), agent.Addr) {
			t.Errorf("Watch when the agent stopped = %v, want an error naming %s", err, agent.Addr)
		}
	case <-time.After(30 * time.Second):
		t.Error("Watch did not return when its agent stopped")
	}

	// Stopped: calls fail with errors naming the agent; restarted: a heartbeat restores.
	agent.Stop()
	if err := r.Register(ctx, svc, ttl); err == nil || !strings.Contains(err.Error(), agent.Addr) {
		t.Errorf("Register with the agent stopped = %v, want an error naming %s", err, agent.Addr)
	}
	if _, err := r.GetService(ctx, "phoenix"); err == nil || errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService with the agent stopped = %v, want a backend error, not ErrNotFound", err)
	}
	agent.Restart()
	if err := r.Register(ctx, svc, ttl); err != nil {
		t.Fatalf("heartbeat after the agent came back: %v", err)
	}
	if _, err := r.GetService(ctx, "phoenix"); err != nil {
		t.Fatalf("GetService after the heartbeat: %v", err)
	}
}

// TestACLToken runs an agent that denies anonymous requests: the token from Config, or from
// CONSUL_HTTP_TOKEN, is what lets the plugin register.
func TestACLToken(t *testing.T) {
	const token = "3d3b8a4e-acl-management-token"
	agent := consultest.Start(t, consultest.WithACL(token))
	ctx := ctxT(t)
	svc := &registry.Service{Name: "guarded", Nodes: []*registry.Node{{ID: "guarded-1", Address: "127.0.0.1:9600"}}}

	t.Setenv("CONSUL_HTTP_TOKEN", "")
	anon := newRegistry(t, registry.Config{Address: agent.Addr}, nil)
	err := anon.Register(ctx, svc, time.Minute)
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("Register without a token = %v, want a 403 from the agent", err)
	}

	var logs syncBuffer
	r := newRegistry(t, registry.Config{Address: agent.Addr, Token: token}, &logs)
	if err := r.Register(ctx, svc, time.Minute); err != nil {
		t.Fatalf("Register with the token from Config: %v", err)
	}
	if _, err := r.GetService(ctx, "guarded"); err != nil {
		t.Fatalf("GetService with the token from Config: %v", err)
	}

	t.Setenv("CONSUL_HTTP_TOKEN", token)
	env := newRegistry(t, registry.Config{Address: agent.Addr}, &logs)
	if _, err := env.GetService(ctx, "guarded"); err != nil {
		t.Fatalf("GetService with the token from CONSUL_HTTP_TOKEN: %v", err)
	}
	if err := env.Deregister(ctx, svc); err != nil {
		t.Fatalf("Deregister with the token from CONSUL_HTTP_TOKEN: %v", err)
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the token appears in the log:\n%s", logs.String())
	}
}

// BenchmarkGetService measures a passing-only health lookup of a 3-node service against
// a local agent, without the plugin's gRPC hop.
func BenchmarkGetService(b *testing.B) {
	agent := consultest.Start(b)
	r := newRegistry(b, registry.Config{Address: agent.Addr}, nil)
	ctx := context.Background()
	svc := &registry.Service{Name: "bench"}
	for i := range 3 {
		svc.Nodes = append(svc.Nodes, &registry.Node{ID: fmt.Sprintf("bench-%d", i), Address: fmt.Sprintf("127.0.0.1:%d", 9700+i),
			Version: "1", Metadata: map[string]string{"zone": "a"}, Endpoints: []string{"B.Get"}})
	}
	if err := r.Register(ctx, svc, time.Minute); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := r.GetService(ctx, "bench")
		if err != nil || len(s.Nodes) != 3 {
			b.Fatalf("GetService = %v, %v", s, err)
		}
	}
}

// countingProxy forwards to a Consul agent and counts requests by "METHOD path".
type countingProxy struct {
	srv *httptest.Server
	mu  sync.Mutex
	n   map[string]int
}

func newCountingProxy(t testing.TB, agentAddr string) *countingProxy {
	p := &countingProxy{n: make(map[string]int)}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: agentAddr})
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		p.mu.Lock()
		p.n[req.Method+" "+req.URL.Path]++
		p.mu.Unlock()
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *countingProxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *countingProxy) count(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[key]
}

func dump(s *registry.Service) string {
	if s == nil {
		return "<nil>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s[", s.Name)
	for _, n := range s.Nodes {
		fmt.Fprintf(&b, " %+v", *n)
	}
	b.WriteString(" ]")
	return b.String()
}

// eventuallyEvent reads events with next until one matches, failing the test after 30s.
func eventuallyEvent(t testing.TB, next func(time.Duration) (registry.Event, bool), match func(registry.Event) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		ev, ok := next(time.Until(deadline))
		if !ok {
			break
		}
		if match(ev) {
			return
		}
		seen = append(seen, fmt.Sprintf("%+v", ev))
	}
	t.Fatalf("no event from Watch matched %s; saw %v", what, seen)
}
