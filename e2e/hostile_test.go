package e2e

// The hostile-input suite: one test per way a hostile or careless caller hurt micro before
// (issue 8). Each runs real micro processes on loopback.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// rawRequest writes raw to addr and returns the status of the answer, or an error when none
// came.
func rawRequest(addr string, cfg *tls.Config, raw string) (int, error) {
	c, err := dialRaw(addr, cfg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// dialRaw connects to addr, over TLS with cfg when it is set.
func dialRaw(addr string, cfg *tls.Config) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if cfg == nil {
		return d.Dial("tcp", addr)
	}
	return tls.DialWithDialer(d, "tcp", addr, cfg)
}

// mustHello makes one Greeter.Hello call that must succeed.
func mustHello(t *testing.T, m *micro) {
	t.Helper()
	r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
	if err != nil || r.status != 200 {
		t.Fatalf("Greeter.Hello: %v %d %s", err, r.status, r.body)
	}
}

// TestHostileInputNoCrash (item 1): no input crashes micro, on any listener; bad entries in
// the embedded registry are skipped.
func TestHostileInputNoCrash(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	m := startMicro(t, baseConfig(reg, greeterService("greeter", 1, "")))
	// The inbound takes only callers of the trust domain: these bytes come from one.
	listeners := map[string]*tls.Config{m.inbound: testTLS(t, reg, "tester"), strings.TrimPrefix(m.ingress, "http://"): nil}
	for _, raw := range []string{
		"POST /%FF/x HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nContent-Length: 0\r\n\r\n",
		"POST /%C0%AF/%FF%FE HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nContent-Length: 0\r\n\r\n",
		"POST /greeter/Greeter.Hello HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 99999999999h\r\nContent-Length: 0\r\n\r\n",
		"POST /greeter/Greeter.Hello HTTP/1.1\r\nHost: x\r\nMicro-Stream: 1\r\nMicro-Timeout: 1s\r\nContent-Length: 0\r\n\r\n",
		"POST /greeter/%00 HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nContent-Length: 0\r\n\r\n",
		"POST //Greeter.Hello HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nContent-Length: 0\r\n\r\n",
	} {
		for addr, cfg := range listeners {
			status, err := rawRequest(addr, cfg, raw)
			if err != nil || status < 400 || status > 499 {
				t.Errorf("%s ← %q: %d %v, want a 4xx answer", addr, raw, status, err)
			}
		}
	}
	// Bad bytes after the HTTP/2 preface, on either listener: the connection ends with a
	// GOAWAY or is closed, and micro goes on.
	for _, junk := range []string{
		"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + strings.Repeat("\xff", 64), // settings, then garbage
		"\xff\xff\xff\x01\x05\x00\x00\x00\x01" + strings.Repeat("A", 100),   // a frame header claiming 16 MiB
		"\x00\x00\x10\x01\x05\x00\x00\x00\x01" + strings.Repeat("\x80", 16), // headers that are not HPACK
	} {
		for addr, cfg := range listeners {
			if cfg != nil {
				cfg = cfg.Clone()
				cfg.NextProtos = []string{"h2"}
			}
			c, err := dialRaw(addr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"+junk)
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Errorf("%s ← h2 preface and %q: the connection was not closed: %v", addr, junk, err)
			}
			c.Close()
		}
	}
	// A FIFO, a symlink to it and a huge file in the registry: skipped, never a trap.
	dir := filepath.Join(reg, "greeter")
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "fifo.json"), filepath.Join(dir, "link.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "huge.json"), make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(reg, "junk"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(reg, "junk", "n.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		mustHello(t, m)
		if _, err := m.services(); err != nil {
			t.Fatalf("/services with traps in the registry: %v", err)
		}
	}
	select {
	case <-m.done:
		t.Fatalf("micro exited: %v", m.exitErr)
	default:
	}
	m.waitHealthy()
}

// TestHostileCallersCannotOpenBreakers (item 2): requests micro refuses, and upgrades the app
// refuses for the request's own reasons, never count against a node.
func TestHostileCallersCannotOpenBreakers(t *testing.T) {
	t.Parallel()
	cfg := baseConfig(t.TempDir(), greeterService("greeter", 2, ""))
	cfg = strings.Replace(cfg, "[client]", `[client]
wrappers = ["breaker"]`, 1) + fmt.Sprintf(`
[wrappers.breaker]
path = %q
[wrappers.breaker.config]
key = "node"
consecutive_failures = 3
cooldown = "10s"
`, bins.breaker)
	m := startMicro(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 20 {
		r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{"Micro-Stream": "1"})
		if err != nil || r.status != 400 {
			t.Fatalf("Micro-Stream on a plain call %d: %v %d %s, want 400", i, err, r.status, r.body)
		}
		_, resp, err := websocket.Dial(ctx, strings.Replace(m.ingress, "http", "ws", 1)+"/greeter/Greeter.Stream",
			&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("WebSocket with a foreign Origin %d: %v %v, want 403", i, err, resp)
		}
		// Greeter.Hello is no WebSocket: the app refuses the upgrade itself, for the
		// request's own reason.
		_, resp, err = websocket.Dial(ctx, strings.Replace(m.ingress, "http", "ws", 1)+"/greeter/Greeter.Hello", nil)
		if err == nil || resp == nil || resp.StatusCode < 400 || resp.StatusCode > 499 {
			t.Fatalf("WebSocket to a plain endpoint %d: %v %v, want the app's 4xx", i, err, resp)
		}
	}
	for i := range 40 {
		r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 200 {
			t.Fatalf("call %d after the hostile ones: %v %d %s", i, err, r.status, r.body)
		}
	}
	for _, bad := range []string{"-> open", "node ejected"} {
		if strings.Contains(m.logs.String(), bad) {
			t.Fatalf("the log says %q: a caller's requests counted against a node", bad)
		}
	}
}

// counterService declares the counter app as service "count" behind one micro: Count.Safe
// is declared idempotent, Count.Once is not.
func counterService(name, countFile, faultDir string) string {
	return fmt.Sprintf(`
[services.count]
command = [%q]
health = "/health"
idempotent = ["Count.Safe"]
env = { COUNT_FILE = %q, COUNT_NAME = %q, FAULT_DIR = %q }
`, bins.counter, countFile, name, faultDir)
}

// executions reads the counter app's file: how often each call id ran.
func executions(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	n := make(map[string]int)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "exec" {
			n[f[1]]++
		}
	}
	return n
}

// TestHostileAtMostOnce (item 3): with every fault the suite knows on one of two nodes (a
// reply over max_body, a node that closes mid-reply, a hung node, a killed node), a call to
// an endpoint not declared idempotent runs at most once, and a call to a declared one never
// fails.
func TestHostileAtMostOnce(t *testing.T) {
	t.Parallel()
	reg, faults := t.TempDir(), t.TempDir()
	countFile := filepath.Join(t.TempDir(), "count")
	base := func(name string) string {
		cfg := baseConfig(reg, counterService(name, countFile, faults))
		cfg = strings.Replace(cfg, "[server]", "[server]\nmax_body = \"64KiB\"", 1)
		// Round robin, and no ejection, so that the faulty node keeps getting its share.
		return strings.Replace(cfg, "[client]", `[client]
attempt_timeout = "300ms"
attempts = 3
strategy = "round_robin"
ejection = { consecutive_failures = 100000 }`, 1)
	}
	a := startMicro(t, base("a"))
	b := startMicro(t, base("b"))
	eventually(t, 20*time.Second, func() error {
		if n := len(mustServices(t, a)["count"]); n != 2 {
			return fmt.Errorf("%d nodes of count", n)
		}
		return nil
	})

	var mu sync.Mutex
	outcomes := map[string]int{} // call id → status (0: no answer)
	seq := 0
	callN := func(endpoint string, n int) {
		var wg sync.WaitGroup
		for range n {
			mu.Lock()
			seq++
			id := fmt.Sprintf("%s-%d", endpoint, seq)
			mu.Unlock()
			wg.Go(func() {
				r, err := a.call("count", endpoint, "{}", map[string]string{"X-Call-Id": id, "Micro-Timeout": "2s"})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					outcomes[id] = 0
				} else {
					outcomes[id] = r.status
				}
			})
		}
		wg.Wait()
	}
	for _, fault := range []string{"big", "half", "hang"} {
		if err := os.WriteFile(filepath.Join(faults, "b"), []byte(fault), 0o644); err != nil {
			t.Fatal(err)
		}
		callN("Count.Once", 10)
		callN("Count.Safe", 10)
	}
	if err := os.Remove(filepath.Join(faults, "b")); err != nil {
		t.Fatal(err)
	}
	// A killed node, while calls run.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			callN("Count.Once", 4)
			callN("Count.Safe", 4)
		}
	}()
	time.Sleep(20 * time.Millisecond) // let some calls be in flight on b; not a readiness wait
	b.kill(syscall.SIGKILL)
	<-done

	execs := executions(t, countFile)
	failedSafe, onceRan, onceFailed := 0, 0, 0
	mu.Lock()
	defer mu.Unlock()
	for id, status := range outcomes {
		n := execs[id]
		switch {
		case strings.HasPrefix(id, "Count.Once"):
			if n > 1 {
				t.Errorf("call %s (not idempotent) ran %d times (status %d)", id, n, status)
			}
			if status == 200 && n != 1 {
				t.Errorf("call %s succeeded but ran %d times", id, n)
			}
			onceRan += n
			if status != 200 {
				onceFailed++
			}
		case status != 200:
			failedSafe++
			t.Errorf("call %s (idempotent) failed with %d", id, status)
		}
	}
	if onceFailed == 0 {
		t.Errorf("no call to Count.Once failed: the faults were not injected")
	}
	t.Logf("%d calls; Count.Once: %d executions, %d failed as they may; Count.Safe: %d failed",
		len(outcomes), onceRan, onceFailed, failedSafe)
}

// rss returns the resident set size of pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// seriesCount counts the micro_ series that /metrics lists.
func seriesCount(t *testing.T, m *micro) int {
	t.Helper()
	resp, err := http.Get(m.ingress + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "micro_") {
			n++
		}
	}
	return n
}

// junk makes n calls to made-up service names from 8 workers.
func junk(m *micro, from, n int) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				_, _ = m.call(fmt.Sprintf("junk-%d", i), fmt.Sprintf("X.Y%d", i), "", nil)
			}
		})
	}
	for i := from; i < from+n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

// TestHostileJunkBounded (item 4): junk names add no metric series and no memory, and sockets
// that send headers and no body neither hold micro nor starve callers.
func TestHostileJunkBounded(t *testing.T) {
	t.Parallel()
	cfg := baseConfig(t.TempDir(), greeterService("greeter", 1, ""))
	cfg = strings.Replace(cfg, "[server]", "[server]\nmax_inflight = 64\nbody_timeout = \"1s\"", 1)
	m := startMicro(t, cfg)
	mustHello(t, m)
	junk(m, 0, 5000) // warm up: the one "other" label, pools, buffers
	series := seriesCount(t, m)
	before := rss(t, m.cmd.Process.Pid)
	junk(m, 5000, 50000)
	after := rss(t, m.cmd.Process.Pid)
	if got := seriesCount(t, m); got != series {
		t.Errorf("/metrics has %d micro_ series after 50,000 junk calls, %d before", got, series)
	}
	t.Logf("RSS %.1f MiB before and %.1f MiB after 50,000 junk calls", float64(before)/(1<<20), float64(after)/(1<<20))
	if after > before+24<<20 {
		t.Errorf("RSS grew from %.1f to %.1f MiB through 50,000 junk calls", float64(before)/(1<<20), float64(after)/(1<<20))
	}

	// 200 sockets send headers and no body: past max_inflight a caller gets a fast 503,
	// and once body_timeout passes every socket is closed and calls go through again.
	addr := strings.TrimPrefix(m.ingress, "http://")
	var conns []net.Conn
	for range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "POST /greeter/Greeter.Hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
		conns = append(conns, c)
	}
	r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
	if err != nil || (r.status != 200 && (r.status != 503 || r.header.Get("Retry-After") == "")) {
		t.Fatalf("a call beside 200 stalled sockets: %v %d %v %s, want 200 or 503 with Retry-After", err, r.status, r.header, r.body)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("stalled socket %d not closed by micro: %v", i, err)
		}
	}
	mustHello(t, m)
}

// TestHostileBrowser (item 5): what a web page of another site sends is refused, streams
// included; the check can be opened for a deployment that wants it.
func TestHostileBrowser(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	m := startMicro(t, baseConfig(reg, greeterService("greeter", 1, "")))
	post := func(host string, hdr map[string]string) int {
		req, err := http.NewRequest("POST", m.ingress+"/greeter/Greeter.Hello", strings.NewReader(`{"name":"Ada"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		req.Header.Set("Content-Type", "text/plain")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	own := strings.TrimPrefix(m.ingress, "http://")
	for _, tc := range []struct {
		name, host string
		hdr        map[string]string
		want       int
	}{
		{"cross-site form post", own, map[string]string{"Origin": "https://evil.example"}, 403},
		{"cross-site fetch", own, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"DNS rebinding", "evil.example", nil, 403},
		{"same origin", own, map[string]string{"Origin": m.ingress}, 200},
		{"no browser", own, nil, 200},
	} {
		if got := post(tc.host, tc.hdr); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, strings.Replace(m.ingress, "http", "ws", 1)+"/greeter/Greeter.Stream",
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Errorf("cross-site WebSocket: %v %v, want 403", err, resp)
	}

	// Allowed origins, and the check turned off.
	m2 := startMicro(t, strings.Replace(baseConfig(reg, greeterService("greeter", 1, "")), "[server]",
		"[server]\nallowed_origins = [\"https://app.example\"]", 1))
	if got := postTo(t, m2, "https://app.example"); got != 200 {
		t.Errorf("allowed origin: %d, want 200", got)
	}
	if got := postTo(t, m2, "https://evil.example"); got != 403 {
		t.Errorf("other origin beside an allowed one: %d, want 403", got)
	}
	m3 := startMicro(t, strings.Replace(baseConfig(reg, greeterService("greeter", 1, "")), "[server]",
		"[server]\ncheck_origin = false", 1))
	if got := postTo(t, m3, "https://evil.example"); got != 200 {
		t.Errorf("check_origin = false: %d, want 200", got)
	}
}

// postTo posts Greeter.Hello to m's ingress with the given Origin and returns the status.
func postTo(t *testing.T, m *micro, origin string) int {
	t.Helper()
	r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{"Origin": origin})
	if err != nil {
		t.Fatal(err)
	}
	return r.status
}

// TestHostileCancellation (item 6): a caller who gives up cancels the app's request, and a
// budget past client.max_timeout is refused.
func TestHostileCancellation(t *testing.T) {
	t.Parallel()
	reg, faults := t.TempDir(), t.TempDir()
	countFile := filepath.Join(t.TempDir(), "count")
	m := startMicro(t, baseConfig(reg, counterService("a", countFile, faults)))

	r, err := m.call("count", "Count.Once", "{}", map[string]string{"Micro-Timeout": "1h"})
	if err != nil || r.status != 400 || !strings.Contains(string(r.body), "client.max_timeout") {
		t.Fatalf("Micro-Timeout: 1h: %v %d %s, want 400 naming client.max_timeout", err, r.status, r.body)
	}

	for i := range 3 {
		id := fmt.Sprintf("wait-%d", i)
		ctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(ctx, "POST", m.ingress+"/count/Count.Wait", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Call-Id", id)
		req.Header.Set("Micro-Timeout", "30s")
		errc := make(chan error, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		eventually(t, 20*time.Second, func() error {
			if b, _ := os.ReadFile(countFile); !strings.Contains(string(b), "wait "+id+"\n") {
				return fmt.Errorf("call %s not at the app yet", id)
			}
			return nil
		})
		gone := time.Now()
		cancel() // the caller gives up and closes its connection
		<-errc
		eventually(t, 10*time.Second, func() error {
			b, _ := os.ReadFile(countFile)
			if !strings.Contains(string(b), "cancelled "+id+" ") {
				return fmt.Errorf("the app's request for %s is not cancelled", id)
			}
			return nil
		})
		t.Logf("call %s: the app saw its request cancelled %v after the caller left (its budget was 30s)",
			id, time.Since(gone).Round(time.Millisecond))
	}
}
