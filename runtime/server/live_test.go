package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/status"
)

// dashboardIngress is a test ingress whose status counts the snapshots it made.
func dashboardIngress() (*Ingress, *atomic.Int64) {
	var n atomic.Int64
	in := newTestIngress(&echoCaller{})
	in.cfg.Status = func() status.Snapshot {
		return status.Snapshot{Instance: fmt.Sprint("micro-", n.Add(1)), Health: "ok", Services: []status.Service{{Name: "<b>greeter</b>"}}}
	}
	return in, &n
}

// TestDashboardPaths: /status answers the snapshot, /ui the embedded page with its
// security headers; other methods, unknown assets and other sites are refused, and none
// of these paths is taken for a call.
func TestDashboardPaths(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		in, _ := dashboardIngress()
		w := serve(h(in), "GET", "/status", "", nil)
		var s status.Snapshot
		if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil || w.Code != 200 || s.Instance != "micro-1" || s.Services[0].Name != "<b>greeter</b>" {
			t.Fatalf("GET /status: %d %s", w.Code, w.Body)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET /status: Content-Type %q", ct)
		}
		for _, path := range []string{"/ui", "/ui/"} {
			w = serve(h(in), "GET", path, "", nil)
			if w.Code != 200 || !strings.Contains(w.Body.String(), "<html") || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
				t.Fatalf("GET %s: %d %q %.200s", path, w.Code, w.Header().Get("Content-Type"), w.Body)
			}
			if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
			}
			if w.Header().Get("X-Content-Type-Options") != "nosniff" || w.Header().Get("ETag") == "" {
				t.Errorf("GET %s: headers %v", path, w.Header())
			}
		}
		js := serve(h(in), "GET", "/ui/app.js", "", nil)
		if js.Code != 200 || !strings.Contains(js.Header().Get("Content-Type"), "javascript") {
			t.Fatalf("GET /ui/app.js: %d %q", js.Code, js.Header().Get("Content-Type"))
		}
		if w := serve(h(in), "GET", "/ui/app.js", "", map[string]string{"If-None-Match": js.Header().Get("ETag")}); w.Code != 304 || w.Body.Len() != 0 {
			t.Errorf("GET /ui/app.js with its ETag: %d, %d bytes", w.Code, w.Body.Len())
		}
		for _, c := range []struct{ method, path string }{{"POST", "/status"}, {"DELETE", "/ui"}, {"PUT", "/ui/app.js"}} {
			if w := serve(h(in), c.method, c.path, "x", nil); w.Code != 405 {
				t.Errorf("%s %s: %d %s, want 405", c.method, c.path, w.Code, w.Body)
			}
		}
		for _, path := range []string{"/ui/nope", "/ui/../../etc/passwd", "/ui/%3Cscript%3E", "/ui/assets/index.html/"} {
			if w := serve(h(in), "GET", path, "", nil); w.Code != 404 || strings.Contains(w.Body.String(), "<script") {
				t.Errorf("GET %s: %d %.100s, want 404", path, w.Code, w.Body)
			}
		}
		// A page of another site may not read the status.
		if w := serve(h(in), "GET", "/status", "", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}); w.Code != 403 {
			t.Errorf("cross-site GET /status: %d", w.Code)
		}
		if w := serve(h(in), "GET", "/ui/events", "", map[string]string{"Sec-Fetch-Site": "cross-site"}); w.Code != 403 {
			t.Errorf("cross-site GET /ui/events: %d", w.Code)
		}
		// Nor a page of a name rebound to loopback (DNS rebinding).
		req := httptest.NewRequest("GET", "/status", nil)
		req.Host = "evil.example"
		w = httptest.NewRecorder()
		h(in).ServeHTTP(w, req)
		if w.Code != 403 {
			t.Errorf("GET /status for Host evil.example: %d %.100s", w.Code, w.Body)
		}

		noStatus := newTestIngress(&echoCaller{})
		for _, path := range []string{"/status", "/ui", "/ui/events"} {
			if w := serve(h(noStatus), "GET", path, "", nil); w.Code != 404 {
				t.Errorf("GET %s without a status: %d", path, w.Code)
			}
		}
	})
}

// TestEventsFeed: /ui/events sends a fresh snapshot every second on both paths, ends when
// its viewer leaves or the feeds end, and refuses viewers past MaxFeeds.
func TestEventsFeed(t *testing.T) {
	for _, path := range []string{"fasthttp", "net-http"} {
		t.Run(path, func(t *testing.T) {
			in, _ := dashboardIngress()
			var addr string
			if path == "fasthttp" {
				addr = fastServer(t, in.ServeFast)
			} else {
				srv := httptest.NewServer(in)
				t.Cleanup(srv.Close)
				addr = srv.Listener.Addr().String()
			}
			open := func() (*bufio.Reader, net.Conn) {
				t.Helper()
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				fmt.Fprintf(conn, "GET /ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
				br := bufio.NewReader(conn)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
					t.Fatalf("GET /ui/events: %d %v", resp.StatusCode, resp.Header)
				}
				return bufio.NewReader(resp.Body), conn
			}
			next := func(r *bufio.Reader) status.Snapshot {
				t.Helper()
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						t.Fatalf("reading the feed: %v", err)
					}
					if data, ok := strings.CutPrefix(line, "data: "); ok {
						var s status.Snapshot
						if err := json.Unmarshal([]byte(data), &s); err != nil {
							t.Fatalf("event %q: %v", data, err)
						}
						return s
					}
				}
			}
			// feedsEnd waits until no feed is open.
			feedsEnd := func(which string) {
				t.Helper()
				eventuallyOK(t, func() error {
					if n := in.feeds.open.Load(); n != 0 {
						return fmt.Errorf("%d feeds still open, after %s", n, which)
					}
					return nil
				})
			}
			r, conn := open()
			a, b := next(r), next(r)
			if a.Instance == b.Instance || a.Services[0].Name != "<b>greeter</b>" {
				t.Fatalf("two events: %+v, %+v; want two snapshots", a, b)
			}

			// The viewer leaves: its feed ends and is no longer counted.
			conn.Close()
			feedsEnd("the viewer left")

			// A viewer that sends bytes after its request (junk, or a request pipelined
			// behind a feed) gets no answer to them, and the server keeps none of them (the
			// HTTP/1.1 path ends such a feed after 1 KiB); its leaving ends the feed.
			r, conn = open()
			if _, err := conn.Write(append([]byte("GET /status HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff"), bytes.Repeat([]byte("junk"), 1<<12)...)); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(2500 * time.Millisecond))
			rest, _ := io.ReadAll(r) // until the feed ends, or the deadline
			if bytes.Contains(rest, []byte("HTTP/1.1")) || bytes.Contains(rest, []byte("junk")) {
				t.Fatalf("after junk, the feed sent %q", rest)
			}
			conn.Close()
			feedsEnd("the viewer that sent junk left")

			// Past MaxFeeds, 503.
			for range MaxFeeds {
				r, _ := open()
				next(r)
			}
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET /ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || resp.StatusCode != 503 {
				t.Fatalf("feed %d: %v %v, want 503", MaxFeeds+1, resp, err)
			}

			// EndFeeds ends them all.
			in.EndFeeds()
			feedsEnd("EndFeeds")
		})
	}
}
