package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/microhost/micro/runtime/transport"
)

// seenStream is what a fake ingress saw of one stream.
type seenStream struct {
	path, budget string
	messages     []string
	closeStatus  websocket.StatusCode // how the client ended it; -1 if it just went away
}

// fakeIngress is an httptest WebSocket server standing in for micro's ingress. For each
// message it receives, serve says what to do: it returns the replies to send, and, when
// end is true, the close status and reason to end the stream with (-1: drop the connection
// with no close frame).
type fakeIngress struct {
	*httptest.Server
	seen chan seenStream
}

type action struct {
	replies []string
	end     bool
	status  websocket.StatusCode
	reason  string
}

func newFakeIngress(t *testing.T, serve func(n int, msg string) action) *fakeIngress {
	t.Helper()
	f := &fakeIngress{seen: make(chan seenStream, 1)}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seenStream{path: r.URL.Path, budget: r.Header.Get(transport.HeaderTimeout)}
		defer func() { f.seen <- s }()
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("fake ingress: accept: %v", err)
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		for n := 1; ; n++ {
			_, data, err := c.Read(ctx)
			if err != nil {
				s.closeStatus = websocket.CloseStatus(err)
				return
			}
			s.messages = append(s.messages, string(data))
			a := serve(n, string(data))
			for _, rep := range a.replies {
				if err := c.Write(ctx, websocket.MessageText, []byte(rep)); err != nil {
					t.Errorf("fake ingress: write: %v", err)
					return
				}
			}
			if a.end {
				if a.status == -1 {
					c.CloseNow()
				} else {
					c.Close(a.status, a.reason)
				}
				s.closeStatus = -2 // the server ended it
				return
			}
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeIngress) addr() string { return strings.TrimPrefix(f.URL, "http://") }

// stream runs micro call --stream against f with the given stdin and extra arguments.
func (f *fakeIngress) stream(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	all := append([]string{"call", "--stream", "-address", f.addr()}, args...)
	err = run(ctx, all, strings.NewReader(stdin), &o, &e)
	return o.String(), e.String(), err
}

func echo(n int, msg string) action { return action{replies: []string{"echo " + msg}} }

func TestCallStreamArgs(t *testing.T) {
	f := newFakeIngress(t, echo)
	stdout, stderr, err := f.stream(t, "ignored\n", "-timeout", "1500ms", "-idle", "100ms", "greeter", "Greeter.Stream", `{"name":"Ada"}`, "Grace")
	if err != nil {
		t.Fatalf("micro call --stream: %v\n%s", err, stderr)
	}
	if want := "echo {\"name\":\"Ada\"}\necho Grace\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	s := <-f.seen
	if s.path != "/greeter/Greeter.Stream" || s.budget != "1.5s" {
		t.Errorf("ingress saw path %q budget %q, want /greeter/Greeter.Stream and 1.5s", s.path, s.budget)
	}
	if strings.Join(s.messages, "|") != `{"name":"Ada"}|Grace` {
		t.Errorf("ingress got messages %q, want the two arguments (and not stdin)", s.messages)
	}
	if s.closeStatus != websocket.StatusNormalClosure {
		t.Errorf("the client ended the stream with %v, want a normal close", s.closeStatus)
	}
}

func TestCallStreamStdin(t *testing.T) {
	// Two replies per message: micro call does not assume one.
	f := newFakeIngress(t, func(n int, msg string) action {
		return action{replies: []string{msg + " 1", msg + " 2\n"}}
	})
	stdout, stderr, err := f.stream(t, "a\r\nb\n\nc", "-idle", "100ms", "-v", "svc", "X.Y")
	if err != nil {
		t.Fatalf("micro call --stream: %v\n%s", err, stderr)
	}
	if want := "a 1\na 2\nb 1\nb 2\n 1\n 2\nc 1\nc 2\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	if !strings.Contains(stderr, "101 Switching Protocols") || !strings.Contains(stderr, "sent 4 message(s), received 8") {
		t.Errorf("-v stderr %q, want the status and the counts", stderr)
	}
	s := <-f.seen
	if strings.Join(s.messages, "|") != "a|b||c" || s.budget != "" {
		t.Errorf("ingress got messages %q budget %q, want the lines of stdin and no budget", s.messages, s.budget)
	}
	if s.closeStatus != websocket.StatusNormalClosure {
		t.Errorf("the client ended the stream with %v, want a normal close", s.closeStatus)
	}
}

// TestCallStreamServerCloses: a normal close by the server ends the call at once, with
// exit 0, with no wait for -idle, even with input left unsent.
func TestCallStreamServerCloses(t *testing.T) {
	f := newFakeIngress(t, func(n int, msg string) action {
		return action{replies: []string{"bye " + msg}, end: true, status: websocket.StatusNormalClosure}
	})
	stdout, stderr, err := f.stream(t, "", "-idle", "1h", "svc", "X.Y", "a")
	if err != nil || stdout != "bye a\n" {
		t.Errorf("server's normal close: %q %v, want bye a and no error\n%s", stdout, err, stderr)
	}
	<-f.seen

	// The server closes after the first of many messages on stdin.
	stdout, stderr, err = f.stream(t, strings.Repeat("x\n", 1000), "-idle", "1h", "svc", "X.Y")
	if err != nil || stdout != "bye x\n" {
		t.Errorf("server's normal close mid-input: %q %v, want bye x and no error\n%s", stdout, err, stderr)
	}
	<-f.seen
}

// TestCallStreamWaitsForReplies: after the input ends, micro call keeps printing replies
// (it does not stop at one reply per message) until the server closes.
func TestCallStreamWaitsForReplies(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Errorf("read: %v", err)
			return
		}
		c.Write(ctx, websocket.MessageText, append([]byte("first "), data...))
		time.Sleep(100 * time.Millisecond) // a slow second reply, well after the last send
		c.Write(ctx, websocket.MessageText, append([]byte("second "), data...))
		c.Close(websocket.StatusNormalClosure, "")
	}))
	defer ts.Close()
	stdout, stderr, err := micro(t, "call", "--stream", "-idle", "1h", "-address", ts.URL, "svc", "X.Y", "a")
	if err != nil || stdout != "first a\nsecond a\n" {
		t.Errorf("%q %v, want both replies and no error\n%s", stdout, err, stderr)
	}
}

func TestCallStreamErrorClose(t *testing.T) {
	f := newFakeIngress(t, func(n int, msg string) action {
		if n == 2 {
			return action{end: true, status: websocket.StatusInternalError, reason: `{"error":"the app went away"}`}
		}
		return echo(n, msg)
	})
	stdout, _, err := f.stream(t, "", "-idle", "1h", "svc", "X.Y", "a", "b", "c")
	if err == nil {
		t.Fatal("micro call --stream after a 1011 close: no error, want one (exit 1)")
	}
	if errors.Is(err, errUsage) || !strings.Contains(err.Error(), "1011") || !strings.Contains(err.Error(), `{"error":"the app went away"}`) {
		t.Errorf("error %q, want one with status 1011 and the reason", err)
	}
	if !strings.HasPrefix(stdout, "echo a\n") {
		t.Errorf("stdout %q, want the reply that came before the close", stdout)
	}
	<-f.seen
}

func TestCallStreamBroken(t *testing.T) {
	f := newFakeIngress(t, func(n int, msg string) action {
		return action{end: true, status: -1}
	})
	_, _, err := f.stream(t, "", "-idle", "1h", "svc", "X.Y", "a")
	if err == nil || !strings.Contains(err.Error(), "broke without a close") {
		t.Errorf("a dropped connection: %v, want an error saying the stream broke", err)
	}
	<-f.seen
}

func TestCallStreamUpgradeRefused(t *testing.T) {
	var budget string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		budget = r.Header.Get(transport.HeaderTimeout)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"no node of greeter"}`))
	}))
	defer ts.Close()
	var o, e bytes.Buffer
	err := run(context.Background(), []string{"call", "--stream", "-timeout", "2s", "-address", ts.URL, "greeter", "Greeter.Stream", "a"}, strings.NewReader(""), &o, &e)
	if err == nil || errors.Is(err, errUsage) || !strings.Contains(err.Error(), "503") {
		t.Errorf("refused upgrade: %v, want an error naming the 503", err)
	}
	if e.String() != "{\"error\":\"no node of greeter\"}\n" || o.Len() != 0 {
		t.Errorf("refused upgrade: stderr %q stdout %q, want the JSON error on stderr", e.String(), o.String())
	}
	if budget != "2s" {
		t.Errorf("upgrade request's Micro-Timeout %q, want 2s", budget)
	}
}

func TestCallStreamNoIngress(t *testing.T) {
	ts := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(ts.URL, "http://")
	ts.Close() // nothing listens there now
	_, _, err := micro(t, "call", "--stream", "-address", addr, "svc", "X.Y", "a")
	if err == nil || !strings.Contains(err.Error(), "is micro running") {
		t.Errorf("no ingress: %v, want a dial error with a hint", err)
	}
}

func TestCallStreamUsage(t *testing.T) {
	_, stderr, err := micro(t, "call", "--stream", "-address", "127.0.0.1:1", "svc")
	if !errors.Is(err, errUsage) || !strings.Contains(stderr, "--stream") {
		t.Errorf("one argument: %v %q, want usage", err, stderr)
	}
	if _, _, err := micro(t, "call", "--stream", "-idle", "0s", "-address", "127.0.0.1:1", "svc", "X.Y"); err == nil || !strings.Contains(err.Error(), "-idle") {
		t.Errorf("-idle 0: %v, want an error naming -idle", err)
	}
	sc := streamCall{base: "https://example.com:8443", service: "s", endpoint: "E.P"}
	if got := sc.url(); got != "wss://example.com:8443/s/E.P" {
		t.Errorf("url = %q", got)
	}
}

// TestCallStreamOpenTimeout: -timeout bounds opening the stream, even when the ingress never
// answers the upgrade.
func TestCallStreamOpenTimeout(t *testing.T) {
	release := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer ts.Close()
	defer close(release)
	_, _, err := micro(t, "call", "--stream", "-timeout", "50ms", "-address", ts.URL, "svc", "X.Y", "a")
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("an upgrade that never comes: %v, want the deadline exceeded", err)
	}
}

// TestCallStreamInterrupted: cancelling the context (Ctrl-C) while stdin is still open ends
// the stream with 1001 (going away).
func TestCallStreamInterrupted(t *testing.T) {
	f := newFakeIngress(t, echo)
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var o, e bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"call", "--stream", "-address", f.addr(), "svc", "X.Y"}, pr, &o, &e)
	}()
	// The input is read only once the stream is open, and a line at a time: when the second
	// write returns, the first line has gone to the sender.
	for _, line := range []string{"a\n", "b\n"} {
		if _, err := io.WriteString(pw, line); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted: %v, want context.Canceled", err)
	}
	if s := <-f.seen; s.closeStatus != websocket.StatusGoingAway {
		t.Errorf("ingress saw the stream end with %v, want 1001 (going away)", s.closeStatus)
	}
}

// TestCallStreamGreeter runs micro call --stream against the real greeter, behind a reverse
// proxy that stands in for the ingress (it maps /greeter/{endpoint} to the greeter's
// /{endpoint}).
func TestCallStreamGreeter(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the greeter")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command in PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "greeter")
	if out, err := exec.Command(goBin, "build", "-o", bin, "../../examples/greeter").CombinedOutput(); err != nil {
		t.Fatalf("building the greeter: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "MICRO_APP_ADDR="+addr, "MICRO_INSTANCE=greeter-1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the greeter did not come up on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	app, _ := url.Parse("http://" + addr)
	proxy := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(app)
		r.Out.URL.Path = strings.TrimPrefix(r.In.URL.Path, "/greeter")
	}})
	defer proxy.Close()

	stdout, stderr, err := micro(t, "call", "--stream", "-idle", "200ms", "-address", proxy.URL, "greeter", "Greeter.Stream", `{"name":"Ada"}`, "Grace")
	want := `{"greeting":"Hello, Ada!","instance":"greeter-1","seq":1}` + "\n" +
		`{"greeting":"Hello, Grace!","instance":"greeter-1","seq":2}` + "\n"
	if err != nil || stdout != want {
		t.Errorf("stream to the greeter: %v\nstdout %q\nwant   %q\nstderr %s", err, stdout, want, stderr)
	}

	// The app dies mid-stream: the client sees the stream break, not a hang.
	stdout, _, err = micro(t, "call", "--stream", "-idle", "1h", "-address", proxy.URL, "greeter", "Greeter.Stream", "Ada", `{"die":true}`, "Grace")
	if err == nil || !strings.Contains(err.Error(), "broke without a close") || !strings.Contains(stdout, "Hello, Ada!") {
		t.Errorf("the greeter dies mid-stream: %v, stdout %q; want Ada's reply, then an error saying the stream broke", err, stdout)
	}

	// The failing greeter refuses the stream; its JSON error goes to stderr.
	if status, err := http.Post("http://"+addr+"/Greeter.SetFail", "application/json", strings.NewReader(`{"fail":true}`)); err != nil || status.StatusCode != 200 {
		t.Fatalf("SetFail: %v %v", status, err)
	}
	_, stderr, err = micro(t, "call", "--stream", "-address", proxy.URL, "greeter", "Greeter.Stream", "Ada")
	if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(stderr, `"error":"greeter greeter-1 is in failing mode"`) {
		t.Errorf("failing greeter: %v, stderr %q; want a 500 with the greeter's JSON error", err, stderr)
	}
}
