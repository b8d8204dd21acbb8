package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/transport"
)

// countingServer serves h on loopback, counting the connections it accepts in conns, and
// returns its address.
func countingServer(t *testing.T, conns *atomic.Int64, h http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// rawServer answers each connection with serve, on loopback.
func rawServer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func request(method, uri, body string, hdr ...string) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	req.Header.SetHost("app")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	if body != "" {
		req.SetBodyString(body)
	}
	return req
}

func TestRoundTripAndReuse(t *testing.T) {
	var conns atomic.Int64
	addr := countingServer(t, &conns, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
		w.Header().Set("X-Got", r.Method+" "+r.RequestURI+" "+strings.Join(r.Header["X-Multi"], ",")+" "+string(b))
		w.WriteHeader(201)
	}))
	c := New(Options{})
	defer c.Close()
	for range 5 {
		req := request("PATCH", "/users/42?x=1", "body", "X-Multi", "one", "X-Multi", "two")
		resp := fasthttp.AcquireResponse()
		sent, err := c.Do(context.Background(), addr, req, resp)
		if err != nil || !sent {
			t.Fatalf("Do: %v (sent %v)", err, sent)
		}
		if resp.StatusCode() != 201 || string(resp.Header.Peek("X-Got")) != "PATCH /users/42?x=1 one,two body" {
			t.Fatalf("got %d %q", resp.StatusCode(), resp.Header.Peek("X-Got"))
		}
		n := 0
		for k := range resp.Header.All() {
			if string(k) == "Set-Cookie" {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("%d Set-Cookie headers, want 2", n)
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 5 calls in a row, want 1 kept alive", n)
	}
}

func TestFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	half := rawServer(t, func(c net.Conn) {
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":")
	})
	hang := rawServer(t, func(c net.Conn) {
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = io.Copy(io.Discard, c)
	})
	big := rawServer(t, func(c net.Conn) {
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n"+strings.Repeat("x", 2000))
	})
	hugeHeader := rawServer(t, func(c net.Conn) {
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("x", 20000)+"\r\nContent-Length: 0\r\n\r\n")
	})
	c := New(Options{MaxBody: 1000, MaxHeaderBytes: 8 << 10})
	defer c.Close()
	do := func(addr string, ctx context.Context) (bool, error) {
		return c.Do(ctx, addr, request("POST", "/x", "{}"), fasthttp.AcquireResponse())
	}
	bg := context.Background()

	sent, err := do(refused, bg)
	var ce *transport.ConnectError
	if !errors.As(err, &ce) || sent {
		t.Errorf("refused: %v (sent %v), want a ConnectError, not sent", err, sent)
	}
	if sent, err := do(half, bg); err == nil || !sent {
		t.Errorf("half a reply: %v (sent %v), want an error after sending", err, sent)
	}
	if sent, err := do(big, bg); !errors.Is(err, fasthttp.ErrBodyTooLarge) || !sent {
		t.Errorf("body over the limit: %v (sent %v), want ErrBodyTooLarge", err, sent)
	}
	if _, err := do(hugeHeader, bg); err == nil {
		t.Errorf("header over the limit: no error")
	}

	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	if sent, err := do(hang, ctx); !errors.Is(err, context.DeadlineExceeded) || !sent {
		t.Errorf("deadline: %v (sent %v), want DeadlineExceeded after sending", err, sent)
	}
	ctx, cancel = context.WithCancel(bg)
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if _, err := do(hang, ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancel: %v, want Canceled", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a cancelled exchange returned after %v", took)
	}
}

// TestIdleClosedByServer: a connection the server closed while it was idle is not reused.
func TestIdleClosedByServer(t *testing.T) {
	var served atomic.Int64
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		served.Add(1)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// and close the connection at once, without saying so
	})
	c := New(Options{})
	defer c.Close()
	for i := range 3 {
		if i > 0 {
			// Wait until the close has arrived, which is what the pool checks for.
			deadline := time.Now().Add(5 * time.Second)
			for !func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				list := c.idle[addr]
				return len(list) == 0 || !list[len(list)-1].peek.Alive()
			}() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
		sent, err := c.Do(context.Background(), addr, request("POST", "/x", "{}"), fasthttp.AcquireResponse())
		if err != nil || !sent {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := served.Load(); n != 3 {
		t.Errorf("served %d, want 3", n)
	}
}

// TestStreamedAnswers: an answer longer than InMemory, or chunked, streams: the connection
// goes back to the pool once the body is read to its end and closed, and not when the body
// broke off, grew past MaxBody, or was closed unread. A HEAD's answer has no body whatever
// its Content-Length says.
func TestStreamedAnswers(t *testing.T) {
	var conns atomic.Int64
	addr := countingServer(t, &conns, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/long":
			w.Header().Set("Content-Length", "5000")
			_, _ = w.Write([]byte(strings.Repeat("l", 5000)))
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			for range 5 {
				_, _ = w.Write([]byte(strings.Repeat("c", 1000)))
				_ = http.NewResponseController(w).Flush()
			}
			w.Header().Set("X-Sum", "5000")
		case "/endless":
			for range 100 {
				_, _ = w.Write([]byte(strings.Repeat("e", 1000)))
				_ = http.NewResponseController(w).Flush()
			}
		case "/head":
			w.Header().Set("Content-Length", "1000")
		}
	}))
	c := New(Options{InMemory: 1000, MaxBody: 50000})
	defer c.Close()
	get := func(method, path string) (*fasthttp.Response, error) {
		resp := fasthttp.AcquireResponse()
		_, err := c.Do(context.Background(), addr, request(method, path, ""), resp)
		return resp, err
	}
	for _, path := range []string{"/long", "/chunked", "/long", "/chunked"} {
		resp, err := get("GET", path)
		if err != nil {
			t.Fatal(err)
		}
		if !resp.IsBodyStream() {
			t.Fatalf("%s: a body of 5000 bytes was read whole, with InMemory 1000", path)
		}
		b, err := io.ReadAll(resp.BodyStream())
		if err != nil || len(b) != 5000 {
			t.Fatalf("%s: %d bytes, %v", path, len(b), err)
		}
		_ = resp.CloseBodyStream()
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 4 streamed answers read whole, want 1", n)
	}

	// With max_body no more than what may be held, a chunked body over it is refused whole,
	// as one of known length is; one within it is held.
	small := New(Options{MaxBody: 3000})
	defer small.Close()
	if sent, err := small.Do(context.Background(), addr, request("GET", "/chunked", ""), fasthttp.AcquireResponse()); !errors.Is(err, fasthttp.ErrBodyTooLarge) || !sent {
		t.Errorf("a chunked body over MaxBody: %v, want ErrBodyTooLarge", err)
	}
	held := fasthttp.AcquireResponse()
	if _, err := New(Options{}).Do(context.Background(), addr, request("GET", "/chunked", ""), held); err != nil || held.IsBodyStream() || len(held.Body()) != 5000 {
		t.Errorf("a short chunked body: %v, stream %v, %d bytes; want it held whole", err, held.IsBodyStream(), len(held.Body()))
	}

	resp, err := get("HEAD", "/head")
	if err != nil || resp.IsBodyStream() || len(resp.Body()) != 0 || resp.Header.ContentLength() != 1000 {
		t.Fatalf("HEAD: %v, %d bytes, Content-Length %d", err, len(resp.Body()), resp.Header.ContentLength())
	}

	resp, err = get("GET", "/endless")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.BodyStream()); !errors.Is(err, fasthttp.ErrBodyTooLarge) {
		t.Errorf("a chunked body past MaxBody: %v, want ErrBodyTooLarge", err)
	}
	_ = resp.CloseBodyStream()
	resp, err = get("GET", "/long")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.CloseBodyStream() // unread: the connection cannot serve another exchange
	before := conns.Load()
	resp, err = get("GET", "/long")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.BodyStream())
	_ = resp.CloseBodyStream()
	if conns.Load() == before {
		t.Error("a connection whose body was closed unread was reused")
	}

	half := rawServer(t, func(c net.Conn) {
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"+strings.Repeat("h", 2000))
	})
	resp = fasthttp.AcquireResponse()
	if _, err := c.Do(context.Background(), half, request("GET", "/", ""), resp); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.BodyStream()); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a streamed body that broke off: %v, want ErrUnexpectedEOF", err)
	}
}
