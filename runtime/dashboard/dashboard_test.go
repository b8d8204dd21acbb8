package dashboard_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/microhost/micro/runtime/dashboard"
)

func TestDashboardLookup(t *testing.T) {
	for path, ctype := range map[string]string{
		"/ui":         "text/html; charset=utf-8",
		"/ui/":        "text/html; charset=utf-8",
		"/ui/app.js":  "text/javascript; charset=utf-8",
		"/ui/app.css": "text/css; charset=utf-8",
	} {
		a, ok := dashboard.Lookup(path)
		if !ok {
			t.Errorf("Lookup(%q): not found", path)
			continue
		}
		if a.ContentType != ctype {
			t.Errorf("Lookup(%q).ContentType = %q, want %q", path, a.ContentType, ctype)
		}
		if len(a.Body) == 0 {
			t.Errorf("Lookup(%q): empty body", path)
		}
		if !regexp.MustCompile(`^"[0-9a-f]{24}"$`).MatchString(a.ETag) {
			t.Errorf("Lookup(%q).ETag = %q, want a quoted hash", path, a.ETag)
		}
	}
	page, _ := dashboard.Lookup("/ui")
	slash, _ := dashboard.Lookup("/ui/")
	js, _ := dashboard.Lookup("/ui/app.js")
	if page.ETag != slash.ETag || string(page.Body) != string(slash.Body) {
		t.Error(`"/ui" and "/ui/" differ`)
	}
	if page.ETag == js.ETag {
		t.Error("the page and the script have one ETag")
	}
	for _, path := range []string{"", "/", "/uix", "/ui/events", "/ui/nope", "/ui/assets/app.js", "/ui/../ui/app.js", "/ui/app.js/", "/UI", "/ui//app.js"} {
		if _, ok := dashboard.Lookup(path); ok {
			t.Errorf("Lookup(%q): found", path)
		}
	}
}

func TestDashboardNotModified(t *testing.T) {
	a, _ := dashboard.Lookup("/ui/app.js")
	for header, want := range map[string]bool{
		"":                        false,
		a.ETag:                    true,
		"W/" + a.ETag:             true,
		`"x", ` + a.ETag:          true,
		"*":                       true,
		`"x"`:                     false,
		strings.Trim(a.ETag, `"`): false,
	} {
		if got := a.NotModified(header); got != want {
			t.Errorf("NotModified(%q) = %v, want %v", header, got, want)
		}
	}
}

func TestDashboardHeaders(t *testing.T) {
	h := dashboard.Headers()
	got := map[string]string{}
	for _, kv := range h {
		got[kv[0]] = kv[1]
	}
	want := map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
			"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"Cache-Control":          "no-cache",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	h[0][1] = "changed"
	if dashboard.Headers()[0][1] == "changed" {
		t.Error("Headers returns shared state")
	}
}

// checkHeaders checks that resp carries the dashboard's headers.
func checkHeaders(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	for _, kv := range dashboard.Headers() {
		if got := resp.Header.Get(kv[0]); got != kv[1] {
			t.Errorf("%s: %s = %q, want %q", what, kv[0], got, kv[1])
		}
	}
}

func TestDashboardHandler(t *testing.T) {
	srv := httptest.NewServer(dashboard.Handler())
	defer srv.Close()
	do := func(method, path string, header ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}

	page, _ := dashboard.Lookup("/ui")
	for _, path := range []string{"/ui", "/ui/"} {
		resp, body := do("GET", path)
		if resp.StatusCode != http.StatusOK || body != string(page.Body) {
			t.Errorf("GET %s: %s, %d bytes", path, resp.Status, len(body))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", path, ct)
		}
		if et := resp.Header.Get("ETag"); et != page.ETag {
			t.Errorf("GET %s: ETag %q, want %q", path, et, page.ETag)
		}
		checkHeaders(t, "GET "+path, resp)
	}

	js, _ := dashboard.Lookup("/ui/app.js")
	resp, body := do("HEAD", "/ui/app.js")
	if resp.StatusCode != http.StatusOK || body != "" || resp.ContentLength != int64(len(js.Body)) {
		t.Errorf("HEAD /ui/app.js: %s, %d bytes, Content-Length %d", resp.Status, len(body), resp.ContentLength)
	}
	checkHeaders(t, "HEAD", resp)

	resp, body = do("GET", "/ui/app.js", "If-None-Match", js.ETag)
	if resp.StatusCode != http.StatusNotModified || body != "" {
		t.Errorf("GET with If-None-Match: %s, %q", resp.Status, body)
	}
	if resp.Header.Get("ETag") != js.ETag {
		t.Errorf("304: ETag %q", resp.Header.Get("ETag"))
	}
	checkHeaders(t, "304", resp)
	resp, _ = do("GET", "/ui/app.js", "If-None-Match", page.ETag)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET with another ETag: %s", resp.Status)
	}

	for _, m := range []string{"POST", "PUT", "DELETE", "OPTIONS"} {
		resp, body := do(m, "/ui/")
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /ui/: %s", m, resp.Status)
		}
		if a := resp.Header.Get("Allow"); a != "GET, HEAD" {
			t.Errorf("%s /ui/: Allow %q", m, a)
		}
		if m != "OPTIONS" && !strings.Contains(body, "GET or HEAD") {
			t.Errorf("%s /ui/: body %q", m, body)
		}
		checkHeaders(t, m, resp)
	}

	resp, body = do("GET", "/ui/nope?x=<b>")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /ui/nope: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("404: Content-Type %q", ct)
	}
	if strings.Contains(body, "<") || strings.Contains(body, "{") {
		t.Errorf("404: body %q, want plain text", body)
	}
	checkHeaders(t, "404", resp)
}

// TestDashboardAssetsSafe reads the assets for what the Content-Security-Policy would
// block or what could turn data into markup: inline scripts, styles and handlers, HTML
// sinks in the script, and anything fetched from another origin.
func TestDashboardAssetsSafe(t *testing.T) {
	page, _ := dashboard.Lookup("/ui")
	js, _ := dashboard.Lookup("/ui/app.js")
	css, _ := dashboard.Lookup("/ui/app.css")
	html := string(page.Body)
	for _, re := range []string{
		`<script(?:\s[^>]*)?>[^<]`, // an inline script
		`<style`,
		`\sstyle=`,
		`\son[a-z]+=`,
		`javascript:`,
	} {
		if m := regexp.MustCompile(`(?i)` + re).FindString(html); m != "" {
			t.Errorf("index.html has %q (%s)", m, re)
		}
	}
	for _, tag := range regexp.MustCompile(`(?i)<script[^>]*>`).FindAllString(html, -1) {
		if !strings.Contains(tag, ` src="/ui/`) {
			t.Errorf("index.html has a script of its own: %s", tag)
		}
	}
	for _, id := range []string{"health", "updated", "live", "wrappers", "plugins", "config", "failed", "waterfall"} {
		if !strings.Contains(html, `id="`+id+`"`) {
			t.Errorf("index.html lacks id=%q", id)
		}
	}
	if !strings.Contains(html, "<title>micro</title>") {
		t.Error("index.html: title is not micro")
	}
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
		"setAttribute(\"on", "setAttribute(\"style", "setAttribute(\"href", "setAttribute(\"src", "querySelector", ".href", "srcdoc"} {
		if strings.Contains(string(js.Body), sink) {
			t.Errorf("app.js uses %s", sink)
		}
	}
	for name, body := range map[string][]byte{"index.html": page.Body, "app.js": js.Body, "app.css": css.Body} {
		if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(`).Find(body); m != nil {
			t.Errorf("%s refers to something elsewhere: %q", name, m)
		}
	}
}
