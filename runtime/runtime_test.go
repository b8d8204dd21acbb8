package runtime_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	micrort "github.com/microhost/micro/runtime"

	"github.com/microhost/micro/runtime/broker"
	embeddedbroker "github.com/microhost/micro/runtime/broker/embedded"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/embedded"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/transport/httptransport"
	"github.com/microhost/micro/runtime/wrapper"
)

// start runs a Runtime on loopback that fronts an in-process app as service "echo".
func start(tb testing.TB) (rt *micrort.Runtime, cfg *config.Config) {
	return startWith(tb, nil, nil)
}

// startWith is start with a change to the config and a wrapper factory.
func startWith(tb testing.TB, edit func(*config.Config), wf func(context.Context, string, config.Wrapper, wrapper.Leases, *slog.Logger) (wrapper.Wrapper, error)) (rt *micrort.Runtime, cfg *config.Config) {
	tb.Helper()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/Echo.Stream" {
			echoStream(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Path", r.URL.Path)
		w.Header().Set("X-Budget", r.Header.Get(transport.HeaderTimeout))
		w.Header().Set("X-Wrapped", r.Header.Get("X-Wrapped"))
		_, _ = w.Write(b)
	}))
	tb.Cleanup(app.Close)

	c := config.Default()
	c.Server.Ingress = "127.0.0.1:0"
	c.Registry.Dir = tb.TempDir()
	c.Broker.Dir = tb.TempDir()
	c.Security.Dir = tb.TempDir()
	c.Registry.TTL, c.Registry.Heartbeat = 2*time.Second, 500*time.Millisecond
	c.Services = map[string]config.Service{"echo": {Version: "1.0.0", Address: app.URL, Instances: 1}}
	if edit != nil {
		edit(&c)
	}
	if err := config.Validate(&c); err != nil {
		tb.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	rt = micrort.New(&c, micrort.Factories{
		Registry: func(_ context.Context, rc config.Registry, l *slog.Logger) (registry.Registry, error) {
			return embedded.Open(rc.Dir, embedded.Options{Logger: l})
		},
		Transport: func(_ context.Context, c config.Transport, s config.Server, l *slog.Logger) (transport.Transport, error) {
			t := httptransport.New(httptransport.Options{MaxBody: int64(s.MaxBody), Logger: l})
			if c.Plugin == "t2" {
				return schemed{t}, nil
			}
			return t, nil
		},
		Broker: func(ctx context.Context, bc config.Broker, l *slog.Logger) (broker.Broker, error) {
			return embeddedbroker.Open(ctx, embeddedbroker.Options{Dir: bc.Dir, MaxBytes: int64(bc.MaxBytes), MaxMessage: int64(bc.MaxMessage), Logger: l})
		},
		Wrapper: wf,
	}, logger)
	if err := rt.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := rt.Stop(context.Background()); err != nil {
			tb.Error(err)
		}
	})
	return rt, &c
}

func post(tb testing.TB, client *http.Client, url, body string) (*http.Response, string) {
	tb.Helper()
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestRuntimeCallAndApply(t *testing.T) {
	rt, cfg := start(t)
	url := "http://" + rt.IngressAddr() + "/echo/Echo.Say"
	resp, body := post(t, http.DefaultClient, url, `{"x":1}`)
	if resp.StatusCode != 200 || body != `{"x":1}` || resp.Header.Get("X-Path") != "/Echo.Say" {
		t.Fatalf("call: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if d, err := time.ParseDuration(resp.Header.Get("X-Budget")); err != nil || d <= 0 || d > cfg.Client.Timeout {
		t.Fatalf("budget at the app: %q", resp.Header.Get("X-Budget"))
	}

	// A smaller body limit applies live.
	next := *cfg
	next.Server.MaxBody = 4
	rt.Apply(context.Background(), &next)
	if resp, body := post(t, http.DefaultClient, url, `{"x":1}`); resp.StatusCode != 413 {
		t.Fatalf("after max_body = 4: %d %s", resp.StatusCode, body)
	}
	// Removing the service deregisters it: calls get a 404 once the cache hears of it and
	// the grace for a service whose last node left (the registry TTL) has passed.
	next.Server.MaxBody = cfg.Server.MaxBody
	next.Services = nil
	rt.Apply(context.Background(), &next)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, body := post(t, http.DefaultClient, url, `{}`)
		if resp.StatusCode == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after removing the service: %d %s", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkCallThroughMicro is one call through the ingress, the client, the HTTP
// transport and the inbound server to an in-process app.
func BenchmarkCallThroughMicro(b *testing.B) {
	rt, _ := start(b)
	url := "http://" + rt.IngressAddr() + "/echo/Echo.Say"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	body := []byte(`{"name":"Ada"}`)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}

// load is a steady stream of calls from 4 goroutines to url, counting outcomes.
type load struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	ok, bad  int
	firstBad string
}

func startLoad(url string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	for range 4 {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := http.Post(url, "application/json", strings.NewReader(`{}`))
				l.mu.Lock()
				if err != nil || resp.StatusCode != 200 {
					l.bad++
					if l.firstBad == "" {
						l.firstBad = fmt.Sprint(err, resp)
					}
				} else {
					l.ok++
				}
				l.mu.Unlock()
				if resp != nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	return l
}

// waitCalls waits until n more calls have succeeded.
func (l *load) waitCalls(t *testing.T, n int) {
	t.Helper()
	l.mu.Lock()
	target := l.ok + n
	l.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); ; {
		l.mu.Lock()
		got := l.ok
		l.mu.Unlock()
		if got >= target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls stalled at %d", got)
		}
		runtime.Gosched()
	}
}

// stop ends the load and fails t if any call failed.
func (l *load) stop(t *testing.T) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	if l.bad > 0 || l.ok == 0 {
		t.Fatalf("%d calls failed of %d; first: %s", l.bad, l.ok+l.bad, l.firstBad)
	}
}

// TestRegistrySwapUnderLoad switches between two embedded registries (two directories)
// while calls stream, both ways: no call fails, and the services move.
func TestRegistrySwapUnderLoad(t *testing.T) {
	rt, cfg := start(t)
	url := "http://" + rt.IngressAddr() + "/echo/Echo.Say"
	l := startLoad(url)
	first := cfg.Registry.Dir
	second := t.TempDir()
	for i, dir := range []string{second, first, second} {
		next := *cfg
		next.Registry.Dir = dir
		rt.Apply(context.Background(), &next)
		// The services moved: registered in the new directory, gone from the old one.
		reg, err := embedded.Open(dir, embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.GetService(context.Background(), "echo"); err != nil {
			t.Errorf("switch %d: echo not in the new registry: %v", i, err)
		}
		reg.Close()
		old := first
		if dir == first {
			old = second
		}
		reg, _ = embedded.Open(old, embedded.Options{})
		if _, err := reg.GetService(context.Background(), "echo"); err == nil {
			t.Errorf("switch %d: echo still in the old registry", i)
		}
		reg.Close()
		l.waitCalls(t, 50) // calls run on the new registry before the next switch
	}
	l.stop(t)
}

// goWrapper is a native wrapper for tests of the chain logic: it rejects calls that carry
// X-Block, marks the others with X-Wrapped, and records outcomes.
type goWrapper struct {
	name    string
	mu      sync.Mutex
	results []wrapper.Result
	closed  bool
}

func (w *goWrapper) Name() string { return w.name }

func (w *goWrapper) OnRequest(_ context.Context, c *wrapper.Call) wrapper.Verdict {
	if _, ok := c.Header["X-Block"]; ok {
		return wrapper.Verdict{Action: wrapper.Reject, Status: 429, Message: "blocked by " + w.name, ReplyHeader: map[string]string{"Retry-After": "7"}}
	}
	return wrapper.Verdict{Header: map[string]string{"X-Wrapped": w.name}}
}

func (w *goWrapper) OnResponse(_ context.Context, _ *wrapper.Call, r *wrapper.Result) {
	w.mu.Lock()
	w.results = append(w.results, *r)
	w.mu.Unlock()
}

func (w *goWrapper) Close(context.Context) error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return nil
}

func TestWrapperChains(t *testing.T) {
	var (
		mu     sync.Mutex
		loaded = map[string]*goWrapper{}
	)
	factory := func(_ context.Context, name string, _ config.Wrapper, _ wrapper.Leases, _ *slog.Logger) (wrapper.Wrapper, error) {
		mu.Lock()
		defer mu.Unlock()
		w := &goWrapper{name: name}
		loaded[name] = w
		return w, nil
	}
	rt, cfg := startWith(t, func(c *config.Config) {
		w := config.DefaultWrapper()
		w.Path = "/nonexistent/w.wasm"
		c.Wrappers = map[string]config.Wrapper{"cw": w, "sw": w}
		c.Client.Wrappers = []string{"cw"}
		c.Server.Wrappers = []string{"sw"}
	}, factory)
	url := "http://" + rt.IngressAddr() + "/echo/Echo.Say"

	resp, body := post(t, http.DefaultClient, url, `{}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-Wrapped") != "sw" {
		t.Fatalf("call: %d %s, X-Wrapped %q (the server wrapper's header reaches the app last)", resp.StatusCode, body, resp.Header.Get("X-Wrapped"))
	}
	req, _ := http.NewRequest("POST", url, strings.NewReader(`{}`))
	req.Header.Set("X-Block", "1")
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != 429 || r2.Header.Get("Retry-After") != "7" || !strings.Contains(string(b), "blocked by cw") {
		t.Fatalf("blocked call: %d %v %s", r2.StatusCode, r2.Header, b)
	}
	mu.Lock()
	cw, sw := loaded["cw"], loaded["sw"]
	mu.Unlock()
	cw.mu.Lock()
	if len(cw.results) != 1 || cw.results[0].Status != 200 || cw.results[0].Latency <= 0 {
		t.Errorf("client wrapper saw %+v, want one 200 with a latency", cw.results)
	}
	cw.mu.Unlock()

	// Live: drop the client wrapper; it is closed and calls pass again.
	next := *cfg
	next.Client.Wrappers = nil
	rt.Apply(context.Background(), &next)
	req, _ = http.NewRequest("POST", url, strings.NewReader(`{}`))
	req.Header.Set("X-Block", "1")
	r3, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(r3.Body)
	r3.Body.Close()
	if r3.StatusCode != 429 || !strings.Contains(string(b), "blocked by sw") {
		// The server wrapper still blocks, and it now answers first: cw is gone.
		t.Fatalf("after dropping cw: %d %s", r3.StatusCode, b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		cw.mu.Lock()
		closed := cw.closed
		cw.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dropped wrapper was not closed")
		}
		runtime.Gosched()
	}
	sw.mu.Lock()
	if sw.closed {
		t.Error("the kept server wrapper was closed")
	}
	sw.mu.Unlock()
}

// schemed is an HTTP transport whose addresses carry a scheme, as a plugin transport's do
// ("t2:127.0.0.1:port"), so that the runtime's switch between transports can be tested
// with real connections.
type schemed struct{ transport.Transport }

type schemedListener struct{ transport.Listener }

func (l schemedListener) Addr() string { return "t2:" + l.Listener.Addr() }

func (s schemed) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	return s.Transport.Dial(ctx, strings.TrimPrefix(addr, "t2:"))
}

func (s schemed) Listen(ctx context.Context, addr string) (transport.Listener, error) {
	l, err := s.Transport.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	return schemedListener{l}, nil
}

// TestTransportSwitchUnderLoad switches the inbound transport from HTTP to t2 and back
// while calls stream: no call fails, and the nodes are re-registered at the new address.
func TestTransportSwitchUnderLoad(t *testing.T) {
	rt, cfg := startWith(t, func(c *config.Config) { c.Server.DrainTimeout = time.Second }, nil)
	url := "http://" + rt.IngressAddr() + "/echo/Echo.Say"
	l := startLoad(url)
	registered := func() string {
		reg, err := embedded.Open(cfg.Registry.Dir, embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		svc, err := reg.GetService(context.Background(), "echo")
		if err != nil {
			t.Fatal(err)
		}
		return svc.Nodes[0].Address
	}
	l.waitCalls(t, 50)
	for _, plugin := range []string{"t2", "http", "t2"} {
		next := *cfg
		next.Transport.Plugin = plugin
		rt.Apply(context.Background(), &next)
		addr := registered()
		if strings.HasPrefix(addr, "t2:") != (plugin == "t2") || addr != rt.InboundAddr() {
			t.Fatalf("after switching to %s the node is registered at %q (inbound %q)", plugin, addr, rt.InboundAddr())
		}
		l.waitCalls(t, 100)
	}
	l.stop(t)
}

// echoStream answers each WebSocket message with "echo: " and the message; a message
// "die" drops the connection without a close frame, as a crashed app would.
func echoStream(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	for {
		typ, b, err := ws.Read(r.Context())
		if err != nil {
			return
		}
		if string(b) == "die" {
			return // CloseNow: no close frame
		}
		if err := ws.Write(r.Context(), typ, append([]byte("echo: "), b...)); err != nil {
			return
		}
	}
}

func TestStream(t *testing.T) {
	rt, _ := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "ws://" + rt.IngressAddr() + "/echo/Echo.Stream"
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Micro-Timeout": {"2s"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"a", "b", "c"} {
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := ws.Read(ctx)
		if err != nil || string(b) != "echo: "+msg {
			t.Fatalf("reply to %q: %q %v", msg, b, err)
		}
	}
	if err := ws.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("clean close: %v", err)
	}

	// The app dies mid-stream: the client sees a close with an error, not a hang.
	ws, _, err = websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte("die")); err != nil {
		t.Fatal(err)
	}
	_, _, err = ws.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusInternalError || !strings.Contains(err.Error(), "app closed the stream") {
		t.Fatalf("after the app died: %v (status %v)", err, websocket.CloseStatus(err))
	}

	// A stream to an unknown service fails at the upgrade with the JSON error.
	_, resp, err := websocket.Dial(ctx, "ws://"+rt.IngressAddr()+"/nosuch/X.Y", nil)
	if err == nil || resp == nil || resp.StatusCode != 404 {
		t.Fatalf("unknown service: %v %v", err, resp)
	}
}

// BenchmarkStream sends messages down one stream (WebSocket → ingress → HTTP transport →
// inbound → app WebSocket) and reads their echoes, pipelined: one op is one message each
// way.
func BenchmarkStream(b *testing.B) {
	rt, _ := start(b)
	ctx := context.Background()
	ws, _, err := websocket.Dial(ctx, "ws://"+rt.IngressAddr()+"/echo/Echo.Stream", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ws.CloseNow()
	msg := []byte(`{"name":"Ada"}`)
	b.ReportAllocs()
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		for range b.N {
			if err := ws.Write(ctx, websocket.MessageText, msg); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for range b.N {
		if _, _, err := ws.Read(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
