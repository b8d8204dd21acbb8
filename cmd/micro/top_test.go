package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/status"
)

func topFloat(f float64) *float64 { return &f }

// topSnapshot is a canned snapshot with routes of different rates, successes and
// latencies, some names with control characters in them, and nodes out of rotation.
func topSnapshot() status.Snapshot {
	return status.Snapshot{
		Time:     time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local),
		Instance: "host-1\x1b[2J",
		Window:   10,
		Health:   "degraded",
		Errors:   []string{"registry: down\r\x1b[31m"},
		Routes: []status.Route{
			{Service: "greeter", Endpoint: "Greeter.Hello", Node: "g1",
				Stats: status.Stats{RPS: 12.5, Success: topFloat(1), P50: topFloat(2.25), P99: topFloat(9.5), Retries: 0.5}},
			{Service: "greeter", Endpoint: "Greeter.Hello", Node: "g2",
				Stats: status.Stats{RPS: 3, Success: topFloat(0.9), P50: topFloat(4), P99: topFloat(250), Hedges: 0.25}},
			{Service: "billing\x1b]0;pwned\x07", Endpoint: "Pay\tNow\n", Node: "b1",
				Stats: status.Stats{RPS: 40, Success: topFloat(0.99996), P50: topFloat(1), P99: topFloat(3)}},
			{Service: "idle", Endpoint: "Ping", Node: "i1"}, // nothing in the window
		},
		Services: []status.Service{
			{Name: "greeter", Nodes: []status.Node{
				{ID: "g1", Breaker: "closed"},
				{ID: "g2", Breaker: "open"},
				{ID: "g3", EjectedEndpoints: []string{"Greeter.Hello"}, EjectedFor: 12},
			}},
			{Name: "billing\x1b[H", Nodes: []status.Node{{ID: "b1\u009b", Ejected: true, EjectedFor: 30, Breaker: "half-open"}}},
		},
	}
}

// topServer serves GET /status with snap, and counts the requests.
func topServer(t *testing.T, snap func() status.Snapshot) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if r.Method != http.MethodGet || r.URL.Path != "/status" {
			http.Error(w, `{"id":"micro.ingress","code":404,"detail":"not here","status":"Not Found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(snap())
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// runTopCmd runs `micro top args...` and returns its stdout and stderr.
func runTopCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"top"}, args...), strings.NewReader(""), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// routeOrder returns the SERVICE column of the routes table in out.
func routeOrder(t *testing.T, out string) []string {
	t.Helper()
	var names []string
	in := false
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "SERVICE" && !in:
			in = true
		case in && len(f) == 0:
			return names
		case in:
			names = append(names, f[0]+"/"+f[2])
		}
	}
	return names
}

func TestTopOnce(t *testing.T) {
	srv, n := topServer(t, topSnapshot)
	out, stderr, err := runTopCmd(t, "-address", srv.URL, "-once")
	if err != nil {
		t.Fatalf("top: %v\n%s", err, stderr)
	}
	if n.Load() != 1 {
		t.Errorf("%d requests, want 1", n.Load())
	}
	for _, want := range []string{
		"micro host-1?[2J  health degraded  03:04:05  window 10s  4 routes\n",
		"registry: down??[31m",
		"SERVICE", "ENDPOINT", "NODE", "RPS", "SUCCESS", "P50 MS", "P99 MS", "RETRIES/S", "HEDGES/S",
		"billing?]0;pwned?", "Pay?Now?", "99.99%", // rounded down, not 100.00%
		"NODES OUT OF ROTATION",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.ContainsAny(out, "\x1b\x07\r\t\u009b") {
		t.Errorf("output has control characters: %q", out)
	}
	if got := routeOrder(t, out); strings.Join(got, " ") != "billing?]0;pwned?/b1 greeter/g1 greeter/g2 idle/i1" {
		t.Errorf("order by rps: %q", got)
	}
	rows := map[string]bool{}
	for line := range strings.Lines(out) {
		rows[strings.Join(strings.Fields(line), " ")] = true
	}
	for _, want := range []string{
		// The routes: service, endpoint, node, RPS, success, p50, p99, retries/s, hedges/s.
		"greeter Greeter.Hello g1 12.5 100.00% 2.2 9.5 0.5 0.0",
		"greeter Greeter.Hello g2 3.0 90.00% 4.0 250.0 0.0 0.2",
		"idle Ping i1 0.0 - - - 0.0 0.0", // nothing in the window
		// The nodes out of rotation: g2 (open breaker), g3 (ejected for an endpoint), b1.
		"greeter g2 - open",
		"greeter g3 ejected for Greeter.Hello (12s left) -",
		"billing?[H b1? ejected (30s left) half-open",
	} {
		if !rows[want] {
			t.Errorf("no row %q in:\n%s", want, out)
		}
	}
	if slices.ContainsFunc(slices.Collect(maps.Keys(rows)), func(r string) bool { return strings.HasPrefix(r, "greeter g1 ") }) {
		t.Errorf("g1, closed and not ejected, is listed as out of rotation:\n%s", out)
	}
}

func TestTopSort(t *testing.T) {
	srv, _ := topServer(t, topSnapshot)
	for sort, want := range map[string]string{
		"rps":     "billing?]0;pwned?/b1 greeter/g1 greeter/g2 idle/i1",
		"success": "greeter/g2 billing?]0;pwned?/b1 greeter/g1 idle/i1", // worst first, none last
		"p50":     "greeter/g2 greeter/g1 billing?]0;pwned?/b1 idle/i1", // slowest first
		"p99":     "greeter/g2 greeter/g1 billing?]0;pwned?/b1 idle/i1",
		"name":    "billing?]0;pwned?/b1 greeter/g1 greeter/g2 idle/i1",
	} {
		out, stderr, err := runTopCmd(t, "-address", srv.URL, "-once", "-sort", sort)
		if err != nil {
			t.Fatalf("-sort %s: %v\n%s", sort, err, stderr)
		}
		if got := strings.Join(routeOrder(t, out), " "); got != want {
			t.Errorf("-sort %s: %s, want %s", sort, got, want)
		}
	}
	out, _, err := runTopCmd(t, "-address", srv.URL, "-once", "-limit", "2")
	if err != nil {
		t.Fatal(err)
	}
	if got := routeOrder(t, out); len(got) != 2 || !strings.Contains(out, "4 routes (2 shown)") {
		t.Errorf("-limit 2: %q\n%s", got, out)
	}
}

func TestTopEmpty(t *testing.T) {
	srv, _ := topServer(t, func() status.Snapshot { return status.Snapshot{Instance: "x", Health: "ok", Window: 3} })
	out, _, err := runTopCmd(t, "-address", srv.URL, "-once")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "no calls in the window") || strings.Contains(out, "NODES OUT") {
		t.Errorf("empty snapshot:\n%s", out)
	}
}

func TestTopJSON(t *testing.T) {
	srv, _ := topServer(t, topSnapshot)
	out, _, err := runTopCmd(t, "-address", srv.URL, "-json") // stdout is no terminal: once
	if err != nil {
		t.Fatal(err)
	}
	var got status.Snapshot
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("-json: %v\n%s", err, out)
	}
	want := topSnapshot()
	if got.Instance != want.Instance || len(got.Routes) != len(want.Routes) || got.Routes[2].Service != want.Routes[2].Service {
		t.Errorf("-json: %+v", got)
	}
	if strings.Count(out, "\n") != 1 {
		t.Errorf("-json printed %d lines, want 1", strings.Count(out, "\n"))
	}
}

func TestTopBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-sort", "latency"},
		{"-interval", "1ms"},
		{"-interval", "soon"},
		{"-limit", "-1"},
		{"-nope"},
		{"extra"},
	} {
		out, stderr, err := runTopCmd(t, append([]string{"-address", "127.0.0.1:1"}, args...)...)
		if err == nil {
			t.Errorf("%q: no error", args)
			continue
		}
		if !errors.Is(err, errUsage) && !strings.Contains(err.Error(), "flag") && !strings.Contains(err.Error(), "invalid") {
			t.Errorf("%q: error %v, want a usage error", args, err)
		}
		if out != "" || stderr == "" {
			t.Errorf("%q: stdout %q, stderr %q", args, out, stderr)
		}
	}
	_, stderr, err := runTopCmd(t, "-h")
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr, "Usage: micro top") || !strings.Contains(stderr, "-sort") {
		t.Errorf("-h: %v\n%s", err, stderr)
	}
}

// closedAddress returns a loopback address that nothing listens on.
func closedAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestTopUnreachable(t *testing.T) {
	addr := closedAddress(t)
	out, _, err := runTopCmd(t, "-address", addr, "-once")
	if err == nil {
		t.Fatalf("no error; output %q", out)
	}
	if msg := err.Error(); !strings.Contains(msg, "cannot reach micro at http://"+addr) || !strings.Contains(msg, "refused") {
		t.Errorf("error %q does not name the address and why", msg)
	}
	srv, _ := topServer(t, topSnapshot)
	_, _, err = runTopCmd(t, "-address", srv.URL+"/elsewhere", "-once")
	if err == nil || !strings.Contains(err.Error(), "micro at "+srv.URL+"/elsewhere: GET /status") || !strings.Contains(err.Error(), "not here") {
		t.Errorf("a 404: %v", err)
	}
}

// lineWriter collects what is written to it, and tells how often a string was written.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	seen chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case w.seen <- string(p):
	default:
	}
	return w.buf.Write(p)
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestTopLive redraws against a micro that is down at first, then comes up: it waits
// and retries, then draws the table in place, until its context ends.
func TestTopLive(t *testing.T) {
	var up atomic.Bool
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1); !up.Load() {
			// Not micro yet: drop the connection, as a port with nothing behind it would.
			hj, _ := w.(http.Hijacker)
			c, _, err := hj.Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		_ = json.NewEncoder(w).Encode(topSnapshot())
	}))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := &lineWriter{seen: make(chan string, 100)}
	done := make(chan error, 1)
	go func() {
		done <- runTop(ctx, topOptions{base: srv.URL, interval: 100 * time.Millisecond, sort: "rps", live: true}, w)
	}()
	waitFor := func(what string) string {
		t.Helper()
		for {
			select {
			case s := <-w.seen:
				if strings.Contains(s, what) {
					return s
				}
			case <-ctx.Done():
				t.Fatalf("no %q written; output so far %q", what, w.String())
			}
		}
	}
	first := waitFor("waiting for micro at " + srv.URL + ": ")
	waitFor("waiting for micro at ") // it keeps trying
	if !strings.HasPrefix(first, ansiHome) || !strings.HasSuffix(first, ansiClearLine+"\n"+ansiClearDown) {
		t.Errorf("the waiting line is not a redraw: %q", first)
	}
	up.Store(true)
	frame := waitFor("NODES OUT OF ROTATION")
	if !strings.HasPrefix(frame, ansiHome) || !strings.Contains(frame, "greeter") {
		t.Errorf("frame %q", frame)
	}
	if strings.Count(frame, "\x1b") != strings.Count(frame, "\n")+2 { // only ours: home, a clear per line, a clear below
		t.Errorf("a frame has escapes of its own: %q", frame)
	}
	waitFor("NODES OUT OF ROTATION") // and redraws
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after Ctrl-C: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("top did not stop when its context ended")
	}
	if !strings.HasPrefix(w.String(), ansiClear) {
		t.Errorf("live output does not start by clearing the screen: %q", w.String()[:min(20, len(w.String()))])
	}
}
