package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// echoed is what the counter app's /echo/ answers.
type echoed struct {
	Method, URI string
	Header      http.Header
	Body        int
}

// TestAnyHTTPApp: micro fronts any HTTP app: every method, path and query, with repeated
// headers both ways, through two micros; and an app reaches a service the usual HTTP way,
// through HTTP_PROXY pointed at the ingress.
func TestAnyHTTPApp(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	countFile := filepath.Join(t.TempDir(), "count")
	// Bodies up to 256 MiB: what passes streams, and is never held whole.
	big := func(cfg string) string { return strings.Replace(cfg, "[server]", "[server]\nmax_body = \"256MiB\"", 1) }
	b := startMicro(t, big(baseConfig(reg, counterService("b", countFile, t.TempDir()))))
	a := startMicro(t, big(baseConfig(reg, "")))
	eventually(t, 20*time.Second, func() error {
		if n := len(mustServices(t, a)["count"]); n != 1 {
			return fmt.Errorf("%d nodes of count", n)
		}
		return nil
	})
	do := func(c *http.Client, method, url, body string, hdr http.Header) (*http.Response, echoed) {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e echoed
		if resp.StatusCode != 200 || json.Unmarshal(b, &e) != nil {
			t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, b)
		}
		return resp, e
	}
	for _, method := range []string{"GET", "DELETE", "PUT", "PATCH", "POST"} {
		resp, e := do(http.DefaultClient, method, a.ingress+"/count/echo/users/42%2F7?expand=orders&x=1", "payload",
			http.Header{"X-Multi": {"one", "two"}})
		if e.Method != method || e.URI != "/echo/users/42%2F7?expand=orders&x=1" {
			t.Errorf("%s: the app got %s %s", method, e.Method, e.URI)
		}
		if got := e.Header["X-Multi"]; len(got) != 2 || got[0] != "one" || got[1] != "two" {
			t.Errorf("%s: the app got X-Multi %q, want both values in order", method, got)
		}
		if method != "GET" && e.Body != len("payload") {
			t.Errorf("%s: the app got a body of %d bytes", method, e.Body)
		}
		if got := resp.Header["Set-Cookie"]; len(got) != 2 {
			t.Errorf("%s: the caller got Set-Cookie %q, want both", method, got)
		}
	}

	// HTTP_PROXY: GET http://count/echo/hello, sent to the ingress.
	proxy, err := url.Parse(a.ingress)
	if err != nil {
		t.Fatal(err)
	}
	pc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
	_, e := do(pc, "GET", "http://count/echo/hello?q=1", "", nil)
	if e.Method != "GET" || e.URI != "/echo/hello?q=1" {
		t.Errorf("through HTTP_PROXY the app got %s %s", e.Method, e.URI)
	}

	// A PUT of 128 MiB streams through both micros, and neither holds it.
	rssBefore := map[*micro]int64{a: rss(t, a.cmd.Process.Pid), b: rss(t, b.cmd.Process.Pid)}
	const size = 128 << 20
	req, err := http.NewRequest("PUT", a.ingress+"/count/echo/upload", io.LimitReader(zeros{}, size))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var up echoed
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		err = json.Unmarshal(raw, &up)
	}
	if err != nil || resp.StatusCode != 200 || up.Body != size {
		t.Fatalf("PUT of 128 MiB: %d %.200s: the app got %d bytes, %v", resp.StatusCode, raw, up.Body, err)
	}
	for m, before := range rssBefore {
		if grew := rss(t, m.cmd.Process.Pid) - before; grew > 32<<20 {
			t.Errorf("a micro's RSS grew by %d MiB while 128 MiB passed: the body was held", grew>>20)
		}
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
