package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/pool"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/cache"
	"github.com/microhost/micro/runtime/registry/embedded"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/transport/httptransport"
)

// h2Server serves h over HTTP/2 without TLS and returns its address.
func h2Server(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	s.Config.Protocols = new(http.Protocols)
	s.Config.Protocols.SetUnencryptedHTTP2(true)
	s.Start()
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// TestInboundH2Streams: over HTTP/2 the inbound server streams both ways: a body and its
// answer flow at once, line by line, trailers pass, an answer larger than max_body streams
// whole, an answer that breaks off resets the caller's stream, and a gRPC trailers-only
// answer arrives as it was sent.
func TestInboundH2Streams(t *testing.T) {
	h := newInboundHarness(t, Settings{MaxBody: 1 << 10}, h2Path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	post := func(endpoint string, body io.Reader, hdr http.Header) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+h.h2Addr+"/app/"+endpoint, body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = hdr
		req.Header.Set(transport.HeaderTimeout, "5s")
		return h.h2c.RoundTrip(req)
	}

	pr, pw := io.Pipe()
	resp, err := post("Echo.Stream", pr, http.Header{})
	if err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(resp.Body)
	for i := range 5 {
		// Each line comes back before the next is sent: nothing waits for the whole body.
		msg := fmt.Sprintf("line %d", i)
		if _, err := io.WriteString(pw, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		got, err := lines.ReadString('\n')
		if err != nil || got != msg+"\n" {
			t.Fatalf("line %d came back as %q, %v", i, got, err)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(lines); err != nil || len(rest) != 0 {
		t.Fatalf("after the last line: %q, %v", rest, err)
	}
	if got := resp.Trailer.Get("X-Bytes"); got != "35" {
		t.Errorf("trailer X-Bytes %q, want 35", got)
	}
	resp.Body.Close()

	resp, err = post("Big.Reply", http.NoBody, http.Header{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(b) != 1<<10+1 {
		t.Errorf("an answer over max_body: %d, %d bytes, %v; want it whole", resp.StatusCode, len(b), err)
	}

	resp, err = post("Half.Reply", http.NoBody, http.Header{})
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Error("an answer that broke off read as a whole one")
	}

	resp, err = post("Grpc.Fail", http.NoBody, http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("Grpc-Message") != "down for maintenance" || resp.Header.Get(transport.HeaderError) != "" {
		t.Errorf("trailers-only answer: %d %v", resp.StatusCode, resp.Header)
	}
}

// refuser is a node whose micro reads each call's body whole and then refuses it, as a
// node past max_inflight might: another node may take the call.
type refuser struct{ calls, bytes atomic.Int64 }

func (f *refuser) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	f.calls.Add(1)
	f.bytes.Add(n)
	w.Header().Set(transport.HeaderError, transport.ErrorRefused)
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, `{"id":"micro.inbound","code":503,"detail":"refused","status":"Service Unavailable"}`)
}

// testIngressOver is an ingress, on HTTP/2 or on the HTTP/1.1 path, that calls service
// "app" through a real client over a real inbound server (the same protocol) in front of the
// test app, and, when refuse is set, over a refuser too.
type testIngressOver struct {
	addr    string
	p       path
	inbound *inboundHarness
	refuser *refuser
	hc      *http.Client
}

func newIngressOver(t *testing.T, st Settings, p path, refuse bool) *testIngressOver {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	h := &testIngressOver{p: p, inbound: newInboundHarness(t, Settings{MaxBody: st.MaxBody}, p), refuser: &refuser{}}
	reg, err := embedded.Open(t.TempDir(), embedded.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	rs := httptest.NewUnstartedServer(h.refuser)
	rs.Config.Protocols = new(http.Protocols)
	rs.Config.Protocols.SetHTTP1(true)
	rs.Config.Protocols.SetUnencryptedHTTP2(true)
	rs.Start()
	t.Cleanup(rs.Close)
	svc := &registry.Service{Name: "app", Nodes: []*registry.Node{{ID: "inbound", Address: h.inbound.addrOf()}}}
	if refuse {
		svc.Nodes = append(svc.Nodes, &registry.Node{ID: "refuser", Address: rs.Listener.Addr().String()})
	}
	if err := reg.Register(ctx, svc, time.Minute); err != nil {
		t.Fatal(err)
	}
	sel := selector.New(cache.New(reg, cache.Options{TTL: time.Minute, Logger: logger}),
		selector.Policy{Strategy: "round_robin", Ejection: selector.Ejection{ConsecutiveFailures: 1000}},
		selector.Options{Logger: logger})
	tr := httptransport.New(httptransport.Options{Logger: logger})
	t.Cleanup(func() { tr.Close() })
	pl := pool.New(tr, pool.Options{})
	t.Cleanup(func() { pl.Close() })
	c := client.New(sel, pl, nil, client.Options{Timeout: 5 * time.Second, Attempts: 3, RetryRatio: 1, RetryMinPerSecond: 1000}, logger)
	st.MaxBudget, st.MaxInflight = time.Minute, 100
	in := NewIngress(IngressConfig{
		Caller: c, Recorder: nopRecorder{}, Logger: logger, Settings: st,
		Inbound: h.inbound.in,
		Fast:    FastPath{Doer: c, Upstream: h.inbound.up, HTTPNode: func(string) bool { return true }},
	})
	if p == h2Path {
		h.addr = h2Server(t, in)
		h.hc = &http.Client{Transport: h.inbound.h2c}
	} else {
		h.addr = fastServer(t, in.ServeFast)
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		h.hc = &http.Client{Transport: tr}
	}
	return h
}

// post sends body to path at the ingress with host as the authority (or Host).
func (h *testIngressOver) post(t *testing.T, ctx context.Context, host, path string, body io.Reader, hdr http.Header) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+h.addr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// target is the path of a call to endpoint of service "app": over HTTP/2 the authority
// names the service.
func (h *testIngressOver) target(endpoint string) (host, path string) {
	if h.p == h2Path {
		return "app", "/" + endpoint
	}
	return "127.0.0.1", "/app/" + endpoint
}

// unsized hides the length of a reader, so that its body goes chunked.
type unsized struct{ io.Reader }

// TestIngressRetriesReplayBody: a call whose body streams (HTTP/2, or past InMemoryBody on
// HTTP/1.1) that a node refused after reading its body is sent whole to another node, out
// of the retry buffer; one whose body went out past the retry buffer is not retried.
func TestIngressRetriesReplayBody(t *testing.T) {
	for _, p := range []path{http1Path, h2Path} {
		t.Run(p.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			body := strings.Repeat("0123456789abcdef", 8<<10) + "\n" // 128 KiB in one line
			h := newIngressOver(t, Settings{MaxBody: 1 << 20, RetryBuffer: 256 << 10}, p, true)
			host, path := h.target("Echo.Stream")
			for i := range 6 {
				resp, b, err := h.post(t, ctx, host, path, unsized{strings.NewReader(body)}, nil)
				if err != nil || resp.StatusCode != 200 || string(b) != body {
					t.Fatalf("call %d: %v %v: %d bytes back", i, resp, err, len(b))
				}
			}
			if c, n := h.refuser.calls.Load(), h.refuser.bytes.Load(); c == 0 || n != c*int64(len(body)) {
				t.Fatalf("the refuser took %d calls and read %d bytes: the retries were not exercised", c, n)
			}

			small := newIngressOver(t, Settings{MaxBody: 1 << 20, RetryBuffer: 16 << 10}, p, true)
			refused := 0
			for i := range 6 {
				resp, b, err := small.post(t, ctx, host, path, unsized{strings.NewReader(body)}, nil)
				if err != nil {
					t.Fatal(err)
				}
				switch resp.StatusCode {
				case 200:
				case 503:
					refused++
					if !strings.Contains(string(b), "client.retry_buffer") {
						t.Errorf("call %d refused with %s: want the reason, naming client.retry_buffer", i, b)
					}
				default:
					t.Fatalf("call %d: %d %s", i, resp.StatusCode, b)
				}
			}
			if refused == 0 {
				t.Error("no call reached the refuser first, or one was retried past the retry buffer")
			}
		})
	}
}

// TestIngressStreamsBodies: bodies stream through two micros on the HTTP/1.1 path, both ways:
// the app reads the start of a request before its caller has sent the rest, and the caller
// reads the start of an answer before the app has written the rest. A chunked body past
// server.max_body is refused with 413, and counts against no node.
func TestIngressStreamsBodies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := newIngressOver(t, Settings{MaxBody: 1 << 20, RetryBuffer: 64 << 10}, http1Path, false)
	app := h.inbound.app

	pr, pw := io.Pipe()
	done := make(chan string, 1)
	go func() {
		// Stream.Read is safe to repeat: wherever it goes first, it ends at the app.
		_, b, err := h.post(t, ctx, "127.0.0.1", "/app/Stream.Read", pr, http.Header{transport.HeaderIdempotent: {"true"}})
		if err != nil {
			b = []byte(err.Error())
		}
		done <- string(b)
	}()
	first := strings.Repeat("x", 100<<10) + "\n" // past InMemoryBody: the body streams
	if _, err := io.WriteString(pw, first); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-app.firstLine:
		if got != first {
			t.Fatalf("the app's first line: %d bytes", len(got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the app did not get the start of the body before its end was sent: the body was held")
	}
	if _, err := io.WriteString(pw, strings.Repeat("y", 300<<10)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if got := <-done; got != strconv.Itoa(len(first)+300<<10) {
		t.Fatalf("the app read %s bytes, want %d", got, len(first)+300<<10)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+h.addr+"/app/Stream.Write", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(transport.HeaderIdempotent, "true")
	resp, err := h.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	part := make([]byte, 100<<10)
	if _, err := io.ReadFull(resp.Body, part); err != nil {
		t.Fatalf("the start of the answer, before the app wrote the rest: %v", err)
	}
	app.readFirst <- struct{}{}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || len(rest) != 100<<10 || rest[0] != 'b' {
		t.Fatalf("the rest of the answer: %d bytes, %v", len(rest), err)
	}

	// Chunked, 2 MiB against a 1 MiB limit: refused with 413, and the connection closes
	// (the caller may see that first, as a write that fails); the node stays healthy.
	for range 8 {
		resp, b, err := h.post(t, ctx, "127.0.0.1", "/app/Echo.Stream", unsized{strings.NewReader(strings.Repeat("z", 2<<20))}, nil)
		switch {
		case err != nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
		case err != nil:
			t.Fatal(err)
		case resp.StatusCode != 413 || !strings.Contains(string(b), "server.max_body"):
			t.Fatalf("a chunked body past max_body: %d %s", resp.StatusCode, b)
		}
	}
	// The server closed those connections; a client may still hold one it has not seen
	// closed yet (Go's transport does not replay a POST on it), so the check takes a new one.
	h.hc.CloseIdleConnections()
	if _, b, err := h.post(t, ctx, "127.0.0.1", "/app/Echo.Stream", strings.NewReader("ok\n"), nil); err != nil || string(b) != "ok\n" {
		t.Fatalf("after the bodies past max_body: %q, %v", b, err)
	}
}

// TestIngressH2Hostile: over HTTP/2 the ingress drops the Micro-* headers a caller sends,
// refuses junk authorities and paths with 400 naming them, and a caller that goes away
// cancels the app's request, through the inbound server.
func TestIngressH2Hostile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := newIngressOver(t, Settings{RetryBuffer: 64 << 10}, h2Path, true)

	for range 4 { // both nodes: the refuser's calls go to the inbound
		resp, b, err := h.post(t, ctx, "127.0.0.1", "/app/Echo.Headers", nil, http.Header{
			"Micro-Node": {"forged"}, "Micro-Caller": {"someone-else"}, "Micro-Error": {"refused"}, "X-Trace": {"t1"},
		})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %v %s", resp, err, b)
		}
		for _, k := range []string{"Micro-Node", "Micro-Caller", "Micro-Error"} {
			if strings.Contains(string(b), k) {
				t.Errorf("the app saw %s: %s", k, b)
			}
		}
		if !strings.Contains(string(b), "X-Trace") {
			t.Errorf("the app did not see X-Trace: %s", b)
		}
		if resp.Header.Get("Micro-Node") != "inbound" || resp.Header.Get("Micro-Error") != "" {
			t.Errorf("answer headers %v: want the node that answered, and no Micro-Error", resp.Header)
		}
	}

	for _, tc := range []struct{ host, path, want string }{
		{strings.Repeat("a", 200), "/x", "want 1 to 128"},
		{"127.0.0.1", "/", "service"},
		{"127.0.0.1", "/Bad!/x", "Bad!"},
		{"127.0.0.1", "/%FF/x", "not allowed"},
	} {
		resp, b, err := h.post(t, ctx, tc.host, tc.path, nil, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.host, tc.path, err)
		}
		if resp.StatusCode != 400 || !strings.Contains(string(b), tc.want) {
			t.Errorf("%.20s %s: %d %s, want 400 naming %q", tc.host, tc.path, resp.StatusCode, b, tc.want)
		}
	}

	// A gRPC caller gets micro's failures the gRPC way.
	resp, _, err := h.post(t, ctx, "nosuch", "/pkg.Svc/Method", nil, http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != strconv.Itoa(grpcUnimplemented) || !strings.Contains(resp.Header.Get("Grpc-Message"), "nosuch") {
		t.Errorf("gRPC call to an unknown service: %d %v", resp.StatusCode, resp.Header)
	}

	// A caller that goes away cancels the app's request, two hops away.
	gone, leave := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, _, err := h.post(t, gone, "app", "/Wait.Cancel", strings.NewReader("{}"), http.Header{transport.HeaderIdempotent: {"false"}})
		done <- err
	}()
	select {
	case <-h.inbound.app.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not reach the app")
	}
	leave()
	select {
	case <-h.inbound.app.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the app's request was not cancelled when its caller went away")
	}
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("the caller's call ended with %v", err)
	}
}

// TestIngressH2SlowCaller: a caller that sends its headers and then never its body holds
// nothing past its budget: it gets 504, and the ingress
// goes on serving.
func TestIngressH2SlowCaller(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := newIngressOver(t, Settings{RetryBuffer: 64 << 10}, h2Path, false)
	pr, pw := io.Pipe()
	defer pw.Close()
	start := time.Now()
	resp, b, err := h.post(t, ctx, "app", "/Stream.Read", pr, http.Header{transport.HeaderTimeout: {"200ms"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("a body that never came: %d %s, want 504", resp.StatusCode, b)
	}
	t.Logf("answered 504 after %v", time.Since(start).Round(time.Millisecond))
	if _, b, err := h.post(t, ctx, "app", "/Echo.Stream", strings.NewReader("ok\n"), nil); err != nil || string(b) != "ok\n" {
		t.Fatalf("after the slow caller: %q, %v", b, err)
	}
}
