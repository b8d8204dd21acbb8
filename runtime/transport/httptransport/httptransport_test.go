package httptransport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

func TestRoundTripKeepAlive(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, echo)
	c := dial(t, tr, l.Addr())
	ctx := context.Background()

	cases := []struct{ service, endpoint, body string }{
		{"greeter", "Greeter.Hello", `{"name":"Ada"}`},
		{"greeter", "Greeter.Empty", ""},
		{"odd/service name", "End%point?x#y", "binary\x00\xff"},
		{"ünïcode", "端点", strings.Repeat("x", 100_000)},
	}
	for i, tc := range cases {
		m := req(tc.service, tc.endpoint, tc.body,
			"X-Custom", fmt.Sprint("value ", i), "micro-timeout", "250ms", "content-type", "application/json")
		resp, err := call(ctx, c, m)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got := string(resp.Body); got != tc.body {
			t.Errorf("call %d: body %q, want %q", i, trunc(got), trunc(tc.body))
		}
		want := map[string]string{
			transport.HeaderStatus:   "200",
			transport.HeaderService:  tc.service,
			transport.HeaderEndpoint: tc.endpoint,
			"X-Custom":               fmt.Sprint("value ", i),
			transport.HeaderTimeout:  "250ms",
			"Content-Type":           "application/json",
		}
		for k, v := range want {
			if resp.Header[k] != v {
				t.Errorf("call %d: header %s = %q, want %q (all: %v)", i, k, resp.Header[k], v, resp.Header)
			}
		}
		for _, k := range []string{"Content-Length", "Connection", "Transfer-Encoding"} {
			if _, ok := resp.Header[k]; ok {
				t.Errorf("call %d: framing header %s leaked into the message", i, k)
			}
		}
		if !c.Reusable() {
			t.Fatalf("call %d: conn not reusable after a clean call", i)
		}
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func TestStatusMapping(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, echo)
	c := dial(t, tr, l.Addr())
	for _, status := range []string{"201", "204", "404", "429", "502", "503", "504"} {
		body := "x"
		if status == "204" {
			body = ""
		}
		resp, err := call(context.Background(), c, req("s", "e", body, "X-Status", status))
		if err != nil {
			t.Fatalf("status %s: %v", status, err)
		}
		if got := resp.Header[transport.HeaderStatus]; got != status {
			t.Errorf("status %s: got %s", status, got)
		}
		if string(resp.Body) != body {
			t.Errorf("status %s: body %q, want %q", status, resp.Body, body)
		}
	}
}

func TestServerSendRefusesBadResponses(t *testing.T) {
	tr := newTransport(t, Options{MaxBody: 16})
	got := make(chan []error, 1)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		if _, err := c.Recv(ctx); err != nil {
			got <- []error{err}
			return
		}
		bad := []*transport.Message{
			nil,
			{Header: map[string]string{transport.HeaderStatus: "abc"}},
			{Header: map[string]string{transport.HeaderStatus: "99"}},
			{Header: map[string]string{transport.HeaderStatus: "204"}, Body: []byte("no body allowed")},
			{Header: map[string]string{"Bad Header": "v"}},
			{Header: map[string]string{"X-Inject": "a\r\nSet-Cookie: x"}},
			{Body: bytes.Repeat([]byte("z"), 17)},
		}
		var errs []error
		for _, m := range bad {
			errs = append(errs, c.Send(ctx, m))
		}
		// The conn is still open: a good answer goes through.
		errs = append(errs, c.Send(ctx, &transport.Message{Header: map[string]string{transport.HeaderStatus: "418"}}))
		got <- errs
	})
	c := dial(t, tr, l.Addr())
	resp, err := call(context.Background(), c, req("s", "e", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header[transport.HeaderStatus] != "418" {
		t.Errorf("status %s, want 418", resp.Header[transport.HeaderStatus])
	}
	errs := <-got
	for i, err := range errs[:len(errs)-1] {
		if err == nil {
			t.Errorf("bad response %d: Send succeeded", i)
		}
	}
	if !errors.Is(errs[6], ErrBodyTooLarge) {
		t.Errorf("oversized body: %v, want ErrBodyTooLarge", errs[6])
	}
	if err := errs[len(errs)-1]; err != nil {
		t.Errorf("good response after bad ones: %v", err)
	}
}

func TestClientSendRefusesBadRequests(t *testing.T) {
	tr := newTransport(t, Options{MaxBody: 8})
	l := serve(t, tr, echo)
	c := dial(t, tr, l.Addr())
	ctx := context.Background()
	bad := []*transport.Message{
		nil,
		{Header: map[string]string{transport.HeaderService: "s"}},
		{Header: map[string]string{transport.HeaderEndpoint: "e"}},
		req("s", "e", "", "Bad:Name", "v"),
		req("s", "e", "", "X-Inject", "v\rHost: evil"),
		req("s", "e", "123456789"),
	}
	for i, m := range bad {
		if err := c.Send(ctx, m); err == nil {
			t.Fatalf("bad request %d: Send succeeded", i)
		} else if i == len(bad)-1 && !errors.Is(err, ErrBodyTooLarge) {
			t.Errorf("oversized body: %v, want ErrBodyTooLarge", err)
		}
		if !c.Reusable() {
			t.Fatalf("bad request %d broke the conn", i)
		}
	}
	if _, err := call(ctx, c, req("s", "e", "12345678")); err != nil {
		t.Fatalf("good request after bad ones: %v", err)
	}
	if _, err := c.Recv(ctx); err == nil {
		t.Error("Recv without Send succeeded")
	}
}

func TestRequestErrors(t *testing.T) {
	tr := newTransport(t, Options{MaxBody: 1024})
	l := serve(t, tr, echo)
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + l.Addr()

	cases := []struct {
		method, path string
		body         io.Reader
		want         int
	}{
		// Any method and any path under the service: the app's own.
		{"GET", "/greeter/Greeter.Hello", nil, 200},
		{"PUT", "/greeter/Greeter.Hello", strings.NewReader("{}"), 200},
		{"POST", "/greeter", nil, 200},
		{"POST", "/greeter/", nil, 200},
		{"DELETE", "/a/b/c", nil, 200},
		{"POST", "/", nil, 400},
		{"POST", "//Greeter.Hello", nil, 400},
		{"POST", "/a/b%0a", nil, 400},
		{"POST", "/greeter/Greeter.Hello", bytes.NewReader(make([]byte, 1025)), 413},
		// Chunked (no Content-Length): the limit applies while reading.
		{"POST", "/greeter/Greeter.Hello", io.MultiReader(strings.NewReader(strings.Repeat("y", 2000))), 413},
		{"POST", "/greeter/Greeter.Hello?q=1", strings.NewReader("ok"), 200},
	}
	for _, tc := range cases {
		r, err := http.NewRequest(tc.method, base+tc.path, tc.body)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(r)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: status %d, want %d (%s)", tc.method, tc.path, resp.StatusCode, tc.want, b)
		}
		if tc.want == 405 && resp.Header.Get("Allow") != "POST" {
			t.Errorf("%s %s: Allow %q, want POST", tc.method, tc.path, resp.Header.Get("Allow"))
		}
		if tc.want != 200 && resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: the JSON error the server sent did not arrive: %q", tc.method, tc.path, b)
		}
	}
}

// Requests that net/http itself refuses still get an answer, and the server keeps serving.
func TestMalformedRequests(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, echo)
	for _, raw := range []string{
		"POST /a%zz/b HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	} {
		nc, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(nc, raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		nc.Close()
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: status %d, want 400", raw, resp.StatusCode)
		}
	}
	if _, err := call(context.Background(), dial(t, tr, l.Addr()), req("s", "e", "")); err != nil {
		t.Fatalf("a good call after malformed ones: %v", err)
	}
}

func TestRequestErrorStatus(t *testing.T) {
	tr := newTransport(t, Options{})
	errc := make(chan error, 1)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		_, err := c.Recv(context.Background())
		errc <- err
		_ = c.Send(context.Background(), &transport.Message{Header: map[string]string{transport.HeaderStatus: "405"}})
	})
	resp, err := http.Get("http://" + l.Addr() + "//e")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	err = <-errc
	// The inbound server reads the status through this interface, without importing us.
	se, ok := err.(interface{ StatusCode() int })
	if !ok || se.StatusCode() != http.StatusBadRequest {
		t.Fatalf("Recv error %v (%T): want a StatusCode() of 400", err, err)
	}
}

func TestResponseBodyTooLarge(t *testing.T) {
	server := newTransport(t, Options{MaxBody: 1 << 20})
	l := serve(t, server, echo)
	client := newTransport(t, Options{MaxBody: 1 << 10})
	c := dial(t, client, l.Addr())
	ctx := context.Background()

	// The client's limit applies to what it sends and to what it receives.
	if err := c.Send(ctx, req("s", "e", strings.Repeat("a", 2<<10))); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("Send of 2 KiB with a 1 KiB limit: %v", err)
	}
	// A server answering 4 KiB to a 1 KiB-limit client.
	raw := rawServer(t, func(br *bufio.Reader, w io.Writer) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n%s", strings.Repeat("c", 4096))
	})
	rc := dial(t, client, raw)
	if _, err := call(ctx, rc, req("s", "e", "hi")); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("4 KiB response with a 1 KiB limit: %v", err)
	}
	if rc.Reusable() {
		t.Error("conn reusable after an oversized response")
	}

	// The same without Content-Length (chunked).
	raw = rawServer(t, func(br *bufio.Reader, w io.Writer) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		for range 8 {
			fmt.Fprintf(w, "200\r\n%s\r\n", strings.Repeat("d", 512))
		}
		io.WriteString(w, "0\r\n\r\n")
	})
	rc = dial(t, client, raw)
	if _, err := call(ctx, rc, req("s", "e", "hi")); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("chunked 4 KiB response with a 1 KiB limit: %v", err)
	}
}

// rawServer answers each connection on 127.0.0.1:0 with handle and returns its address.
func rawServer(t testing.TB, handle func(br *bufio.Reader, w io.Writer)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				handle(bufio.NewReader(nc), nc)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func TestResponseHeaderTooLarge(t *testing.T) {
	addr := rawServer(t, func(br *bufio.Reader, w io.Writer) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(w, "HTTP/1.1 200 OK\r\n")
		for i := range 1000 {
			if _, err := fmt.Fprintf(w, "X-H%d: %s\r\n", i, strings.Repeat("v", 100)); err != nil {
				return
			}
		}
		io.WriteString(w, "Content-Length: 0\r\n\r\n")
	})
	tr := newTransport(t, Options{MaxHeaderBytes: 4 << 10})
	c := dial(t, tr, addr)
	_, err := call(context.Background(), c, req("s", "e", ""))
	if err == nil || !strings.Contains(err.Error(), "header") {
		t.Fatalf("100 KB of response headers with a 4 KiB limit: %v", err)
	}
}

func TestServerAsksToClose(t *testing.T) {
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	tr := newTransport(t, Options{})
	c := dial(t, tr, ln.Addr().String())
	resp, err := call(context.Background(), c, req("s", "e", ""))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Body) != "bye" {
		t.Errorf("body %q", resp.Body)
	}
	if c.Reusable() {
		t.Error("conn reusable after Connection: close")
	}
}

// hang starts a server that accepts calls and answers none until the test ends.
func hang(t *testing.T, tr *Transport) transport.Listener {
	release := make(chan struct{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		<-release
	})
	t.Cleanup(func() { close(release) }) // runs before the listener's cleanup
	return l
}

func TestRecvDeadline(t *testing.T) {
	tr := newTransport(t, Options{})
	l := hang(t, tr)
	c := dial(t, tr, l.Addr())

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := call(ctx, c, req("s", "e", "x"))
		errc <- err
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv error %v, want one wrapping context.DeadlineExceeded", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Recv did not return after its deadline")
	}
	if c.Reusable() {
		t.Fatal("conn reusable after a timed-out call")
	}
	if err := c.Send(context.Background(), req("s", "e", "")); err == nil {
		t.Fatal("Send on a conn broken by a timeout succeeded")
	}
}

func TestRecvCancel(t *testing.T) {
	tr := newTransport(t, Options{})
	l := hang(t, tr)
	c := dial(t, tr, l.Addr())

	ctx, cancel := context.WithCancel(context.Background())
	if err := c.Send(ctx, req("s", "e", "")); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Recv(ctx)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv error %v, want one wrapping context.Canceled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Recv did not return after cancel")
	}
	if c.Reusable() {
		t.Fatal("conn reusable after a cancelled call")
	}
}

// A response that arrives after the caller gave up must never be read as the answer to the
// next call on the same conn.
func TestLateResponseNotReadByNextCall(t *testing.T) {
	tr := newTransport(t, Options{})
	release := make(chan struct{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		m, err := c.Recv(context.Background())
		if err != nil {
			return
		}
		if m.Header[transport.HeaderEndpoint] == "slow" {
			<-release
		}
		_ = c.Send(context.Background(), &transport.Message{Body: []byte(m.Header[transport.HeaderEndpoint])})
	})
	c := dial(t, tr, l.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := call(ctx, c, req("s", "slow", "")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow call: %v", err)
	}
	close(release)
	if _, err := call(context.Background(), c, req("s", "fast", "")); err == nil {
		t.Fatal("the next call on a timed-out conn succeeded; it could read the late answer")
	}
	// A fresh conn gets its own answer.
	resp, err := call(context.Background(), dial(t, tr, l.Addr()), req("s", "fast", ""))
	if err != nil || string(resp.Body) != "fast" {
		t.Fatalf("fresh conn: %v, %q", err, resp.Body)
	}
}

func TestConnectError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	tr := newTransport(t, Options{})
	_, err = tr.Dial(context.Background(), addr)
	var ce *transport.ConnectError
	if !errors.As(err, &ce) || ce.Addr != addr {
		t.Fatalf("dial a closed port: %v (%T), want *transport.ConnectError for %s", err, err, addr)
	}
	if !transport.IsConnectError(err) {
		t.Error("IsConnectError is false")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = tr.Dial(ctx, addr)
	if !errors.As(err, &ce) || !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with a cancelled context: %v, want a ConnectError wrapping context.Canceled", err)
	}
}

func TestCloseWithoutSendAnswers502(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		_, _ = c.Recv(context.Background())
		c.Close()
	})
	c := dial(t, tr, l.Addr())
	resp, err := call(context.Background(), c, req("s", "e", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header[transport.HeaderStatus] != "502" {
		t.Fatalf("status %s, want 502", resp.Header[transport.HeaderStatus])
	}
}

func TestServerConnProtocol(t *testing.T) {
	tr := newTransport(t, Options{})
	conns := make(chan transport.Conn, 1)
	l := serve(t, tr, func(c transport.Conn) { conns <- c })
	c := dial(t, tr, l.Addr())
	ctx := context.Background()
	if err := c.Send(ctx, req("s", "e", "")); err != nil {
		t.Fatal(err)
	}
	sc := <-conns
	if _, err := sc.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Recv(ctx); !errors.Is(err, io.EOF) {
		t.Errorf("second Recv: %v, want io.EOF", err)
	}
	if got := sc.(*serverConn).RemoteAddr(); got == "" {
		t.Error("RemoteAddr is empty")
	}
	if err := sc.Send(ctx, &transport.Message{Body: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	if err := sc.Send(ctx, &transport.Message{Body: []byte("two")}); err == nil {
		t.Error("second Send succeeded")
	}
	sc.Close()
	if _, err := sc.Recv(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Recv after Close: %v, want ErrClosed", err)
	}
	resp, err := c.Recv(ctx)
	if err != nil || string(resp.Body) != "one" {
		t.Fatalf("client got %v, %q", err, resp.Body)
	}
}

// A handler whose client disconnects ends, and a late Send reports it.
func TestClientDisconnectEndsHandler(t *testing.T) {
	tr := newTransport(t, Options{})
	conns := make(chan transport.Conn, 1)
	l := serve(t, tr, func(c transport.Conn) { conns <- c })
	c := dial(t, tr, l.Addr())
	if err := c.Send(context.Background(), req("s", "e", "body")); err != nil {
		t.Fatal(err)
	}
	sc := (<-conns).(*serverConn)
	c.Close()
	select {
	case <-sc.gone:
	case <-time.After(testTimeout):
		t.Fatal("handler still running after the client disconnected")
	}
	if err := sc.Send(context.Background(), &transport.Message{}); err == nil {
		t.Fatal("Send after the client left succeeded")
	}
}

func TestListenerClose(t *testing.T) {
	tr := New(Options{})
	l, err := tr.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, port, err := net.SplitHostPort(l.Addr()); err != nil || port == "0" {
		t.Fatalf("Addr %q: want the bound port", l.Addr())
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	// Transport.Close closes the listeners it made.
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-accepted; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := tr.Dial(context.Background(), l.Addr()); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Dial on a closed transport: %v", err)
	}
	if _, err := tr.Listen(context.Background(), "127.0.0.1:0"); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Listen on a closed transport: %v", err)
	}
	if _, err := net.Dial("tcp", l.Addr()); err == nil {
		t.Error("the closed listener still accepts TCP connections")
	}
}

func TestListenBadAddr(t *testing.T) {
	tr := newTransport(t, Options{})
	if _, err := tr.Listen(context.Background(), "127.0.0.1:notaport"); err == nil || !strings.Contains(err.Error(), "notaport") {
		t.Fatalf("Listen on a bad address: %v", err)
	}
}

// An idle client conn notices that the server closed it, so a pool will not hand it out.
func TestIdleConnNoticesServerClose(t *testing.T) {
	tr := newTransport(t, Options{})
	l, err := tr.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go echo(c)
		}
	}()
	c := dial(t, tr, l.Addr())
	if _, err := call(context.Background(), c, req("s", "e", "")); err != nil {
		t.Fatal(err)
	}
	if !c.Reusable() {
		t.Fatal("not reusable after a clean call")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle conn to notice the server closed", func() bool { return !c.Reusable() })
}

func TestInformationalResponsesSkipped(t *testing.T) {
	addr := rawServer(t, func(br *bufio.Reader, w io.Writer) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(w, "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
		io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok")
	})
	tr := newTransport(t, Options{})
	resp, err := call(context.Background(), dial(t, tr, addr), req("s", "e", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header[transport.HeaderStatus] != "200" || string(resp.Body) != "ok" || resp.Header["X-A"] != "1"+transport.ValueSep+"2" {
		t.Fatalf("got %v %q", resp.Header, resp.Body)
	}
}

// The request on the wire is what the package doc promises.
func TestWireFormat(t *testing.T) {
	got := make(chan *http.Request, 1)
	addr := rawServer(t, func(br *bufio.Reader, w io.Writer) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		got <- r
		io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	})
	tr := newTransport(t, Options{})
	if _, err := call(context.Background(), dial(t, tr, addr),
		req("a b/c", "E.F", "xyz", "X-K", "v", "Connection", "close")); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.Method != "POST" || r.RequestURI != "/a%20b%2Fc/E.F" || r.Host != addr {
		t.Errorf("request line %s %s, Host %s", r.Method, r.RequestURI, r.Host)
	}
	if r.ContentLength != 3 || r.Header.Get("X-K") != "v" {
		t.Errorf("Content-Length %d, X-K %q", r.ContentLength, r.Header.Get("X-K"))
	}
	if r.Close || r.Header.Get(transport.HeaderService) != "" {
		t.Errorf("framing or path headers were sent as headers: %v", r.Header)
	}
}

// A body within the client's limit but over the server's gets the server's 413, whether the
// server drains the rest (small excess, conn kept) or closes while the client still writes.
func TestRequestBodyOverServerLimit(t *testing.T) {
	server := newTransport(t, Options{MaxBody: 1 << 10})
	l := serve(t, server, echo)
	client := newTransport(t, Options{MaxBody: 8 << 20})
	for _, n := range []int{2 << 10, 4 << 20} {
		c := dial(t, client, l.Addr())
		resp, err := call(context.Background(), c, req("s", "e", strings.Repeat("a", n)))
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if got := resp.Header[transport.HeaderStatus]; got != "413" {
			t.Fatalf("%d bytes: status %s, want 413", n, got)
		}
	}
}

// TestSlowBodyAnswered408: a client that sends headers and then no body is answered 408
// once the body timeout passes, and its connection is closed: it cannot hold the server.
func TestSlowBodyAnswered408(t *testing.T) {
	tr := newTransport(t, Options{BodyTimeout: 100 * time.Millisecond})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		_, err := c.Recv(context.Background())
		status := 200
		var se interface{ StatusCode() int }
		if errors.As(err, &se) {
			status = se.StatusCode()
		}
		_ = c.Send(context.Background(), &transport.Message{Header: map[string]string{transport.HeaderStatus: strconv.Itoa(status)}})
	})
	nc, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _ = io.WriteString(nc, "POST /s/e HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to a request whose body never came: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the connection stayed open after the 408")
	}
}

// TestBadMessageIsMessageError: a message that cannot be sent is reported as a
// *transport.MessageError, so that callers know no peer would take it.
func TestBadMessageIsMessageError(t *testing.T) {
	tr := newTransport(t, Options{MaxBody: 8})
	l := serve(t, tr, echo)
	c := dial(t, tr, l.Addr())
	for _, m := range []*transport.Message{req("s", "e", "", "X-Inject", "v\rHost: evil"), req("s", "e", "123456789")} {
		var me *transport.MessageError
		if err := c.Send(context.Background(), m); !errors.As(err, &me) {
			t.Errorf("Send(%v) = %v, want a *transport.MessageError", m.Header, err)
		}
	}
}

// TestAnyRequest: any method and target under the service, and repeated headers both ways,
// travel as they are.
func TestAnyRequest(t *testing.T) {
	tr := newTransport(t, Options{})
	got := make(chan *transport.Message, 1)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		m, err := c.Recv(context.Background())
		if err != nil {
			t.Error(err)
			return
		}
		got <- m
		_ = c.Send(context.Background(), &transport.Message{Header: map[string]string{
			"Set-Cookie": "a=1" + transport.ValueSep + "b=2",
		}})
	})
	c := dial(t, tr, l.Addr())
	m := req("users", "orders", "", transport.HeaderMethod, "DELETE", transport.HeaderPath, "/orders/42%2F7?expand=items&x=1",
		"X-Multi", "one"+transport.ValueSep+"two")
	resp, err := call(context.Background(), c, m)
	if err != nil {
		t.Fatal(err)
	}
	in := <-got
	for k, want := range map[string]string{
		transport.HeaderService: "users", transport.HeaderEndpoint: "orders", transport.HeaderMethod: "DELETE",
		transport.HeaderPath: "/orders/42%2F7?expand=items&x=1", "X-Multi": "one" + transport.ValueSep + "two",
	} {
		if in.Header[k] != want {
			t.Errorf("server got %s = %q, want %q", k, in.Header[k], want)
		}
	}
	if resp.Header["Set-Cookie"] != "a=1"+transport.ValueSep+"b=2" {
		t.Errorf("client got Set-Cookie %q, want both cookies", resp.Header["Set-Cookie"])
	}
	for _, bad := range []map[string]string{{transport.HeaderMethod: "GE T"}, {transport.HeaderPath: "no-slash"}, {transport.HeaderPath: "/a b"}} {
		m := req("s", "e", "")
		for k, v := range bad {
			m.Header[k] = v
		}
		var me *transport.MessageError
		if err := c.Send(context.Background(), m); !errors.As(err, &me) {
			t.Errorf("Send with %v = %v, want a *transport.MessageError", bad, err)
		}
	}
}
