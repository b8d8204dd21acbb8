package browsertest

import (
	"bytes"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// livePage updates #status over server-sent events: "connected" when the
// stream opens, then the data of each event.
const livePage = `<!doctype html>
<html><head><meta charset="utf-8"><title>live</title><link rel="icon" href="data:,"></head>
<body style="font-family: sans-serif">
<h1>browsertest smoke</h1>
<p id="status">connecting</p>
<script>
const status = document.getElementById("status");
const es = new EventSource("/events");
es.onopen = () => { status.textContent = "connected"; };
es.onmessage = (e) => { status.textContent = "update: " + e.data; };
</script>
</body></html>`

// TestLiveUpdateOverSSE loads a page that changes its text on server-sent
// events, pushes two events, and sees the page show each without a reload.
func TestLiveUpdateOverSSE(t *testing.T) {
	t.Parallel()
	start := time.Now()

	updates := make(chan string)
	var pageLoads atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		pageLoads.Add(1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, livePage)
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			return
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case u := <-updates:
				fmt.Fprintf(w, "data: %s\n\n", u)
				if err := rc.Flush(); err != nil {
					return
				}
			}
		}
	})
	srv := httptest.NewServer(mux) // on 127.0.0.1
	t.Cleanup(srv.Close)           // registered first, so it runs after the browser closed

	b := Start(t) // closes before srv.Close runs
	b.Navigate(srv.URL + "/")
	b.WaitText("#status", "connected", 10*time.Second)

	for _, u := range []string{"deploy 1", "deploy 2"} {
		select {
		case updates <- u:
		case <-time.After(10 * time.Second):
			t.Fatalf("the page's event stream did not take %q", u)
		}
		if got := b.WaitText("#status", "update: "+u, 10*time.Second); got != "update: "+u {
			t.Fatalf("#status = %q, want %q", got, "update: "+u)
		}
	}
	if n := pageLoads.Load(); n != 1 {
		t.Fatalf("the page was loaded %d times, want 1 (the updates must come without a reload)", n)
	}
	if got := b.Text("h1"); got != "browsertest smoke" {
		t.Errorf("h1 = %q", got)
	}

	shot := filepath.Join(t.TempDir(), "live.png")
	b.Screenshot(shot)
	data, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot is not a PNG (%d bytes)", len(data))
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil || cfg.Width == 0 || cfg.Height == 0 {
		t.Fatalf("screenshot: %dx%d, %v", cfg.Width, cfg.Height, err)
	}

	if errs := b.ConsoleErrors(); len(errs) != 0 {
		t.Errorf("console errors: %q", errs)
	}
	reqs := b.Requests()
	if !slices.ContainsFunc(reqs, func(r Request) bool { return r.Type == "EventSource" }) {
		t.Errorf("no EventSource request among %v", reqs)
	}
	b.AssertClean()
	t.Logf("%d bytes of %dx%d PNG; %d requests; took %v", len(data), cfg.Width, cfg.Height, len(reqs), time.Since(start))
}

// TestRecordsErrors checks that the browser records a console.error, an
// uncaught exception and a failed request, so that AssertClean would catch them.
func TestRecordsErrors(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><html><head><link rel="icon" href="data:,"></head><body>
<p id="done">working</p>
<script>
console.error("boom", 42);
fetch("/missing").then(() => {
  document.getElementById("done").textContent = "fetched";
  throw new Error("kaput");
});
</script></body></html>`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	b := Start(t)
	b.Navigate(srv.URL + "/")
	b.WaitText("#done", "fetched", 10*time.Second)

	errs := b.ConsoleErrors()
	joined := strings.Join(errs, "\n")
	for _, want := range []string{"console.error: boom 42", "kaput"} {
		if !strings.Contains(joined, want) {
			t.Errorf("console errors lack %q:\n%s", want, joined)
		}
	}
	failed := b.FailedRequests()
	if !slices.ContainsFunc(failed, func(f FailedRequest) bool {
		return f.Status == http.StatusNotFound && strings.HasSuffix(f.URL, "/missing")
	}) {
		t.Errorf("failed requests lack the 404 of /missing: %v", failed)
	}
	if out := b.NonLoopbackRequests(); len(out) != 0 {
		t.Errorf("requests outside loopback: %v", out)
	}
}

func TestIsLoopbackURL(t *testing.T) {
	for u, want := range map[string]bool{
		"http://127.0.0.1:8080/ui":         true,
		"http://127.3.4.5/":                true,
		"ws://[::1]:9/x":                   true,
		"http://localhost:1/":              true,
		"data:image/png;base64,AAAA":       true,
		"about:blank":                      true,
		"blob:http://127.0.0.1:1/abc":      true,
		"https://fonts.googleapis.com/css": false,
		"http://10.0.0.1/":                 false,
		"http://[::2]/":                    false,
		"file:///etc/passwd":               false,
		"http://127.0.0.1.example.com/":    false,
	} {
		if got := IsLoopbackURL(u); got != want {
			t.Errorf("IsLoopbackURL(%q) = %v, want %v", u, got, want)
		}
	}
}
