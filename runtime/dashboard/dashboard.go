// Package dashboard holds the live dashboard that micro's ingress serves at /ui: one HTML
// page, one script and one style sheet, written by hand and embedded in the binary. Nothing
// is built and nothing is fetched from elsewhere.
//
// The page reads three things from the same ingress: GET /status once, for its first paint
// (a status.Snapshot as JSON), then GET /ui/events, server-sent events that each carry a
// whole Snapshot, and GET /traces?id=TRACE_ID for the waterfall of a failed call. The
// ingress serves those; this package serves only the files, through [Lookup] for any HTTP
// server, or through [Handler] for net/http.
//
// Every response of the dashboard carries [Headers], whose Content-Security-Policy allows
// nothing but the page's own script, style and requests to its own origin. The script
// renders what a snapshot holds (service names, endpoints, node IDs, error texts, all of it
// partly from requests) only as text.
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Path is where the dashboard's page is served; its other files are under Path + "/".
const Path = "/ui"

// Asset is one embedded file of the dashboard.
type Asset struct {
	// Body is the file. It is shared by every caller: do not modify it.
	Body []byte
	// ContentType is its media type, with its charset.
	ContentType string
	// ETag is its strong entity tag, quoted, from a hash of Body.
	ETag string
}

// NotModified reports whether a request's If-None-Match header value (maybe "") matches
// a's ETag, so that the answer is 304 Not Modified.
func (a Asset) NotModified(ifNoneMatch string) bool {
	for tag := range strings.SplitSeq(ifNoneMatch, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == a.ETag { // If-None-Match compares weakly
			return true
		}
	}
	return false
}

//go:embed assets
var files embed.FS

// file is the embedded file served at path, or "".
func file(path string) string {
	switch path {
	case Path, Path + "/", Path + "/index.html":
		return "assets/index.html"
	case Path + "/app.js":
		return "assets/app.js"
	case Path + "/app.css":
		return "assets/app.css"
	}
	return ""
}

// assets reads the embedded files once, on first use, by name. The map is never written
// after that.
var assets = sync.OnceValue(func() map[string]Asset {
	m := map[string]Asset{}
	for _, name := range []string{"assets/index.html", "assets/app.js", "assets/app.css"} {
		body, err := files.ReadFile(name)
		if err != nil {
			panic("dashboard: embedded " + name + " is missing: " + err.Error()) // a build error
		}
		sum := sha256.Sum256(body)
		m[name] = Asset{Body: body, ContentType: contentType(name), ETag: `"` + hex.EncodeToString(sum[:12]) + `"`}
	}
	return m
})

// contentType is the media type of an embedded file, by its extension.
func contentType(name string) string {
	switch {
	case strings.HasSuffix(name, ".html"):
		return "text/html; charset=utf-8"
	case strings.HasSuffix(name, ".js"):
		return "text/javascript; charset=utf-8"
	case strings.HasSuffix(name, ".css"):
		return "text/css; charset=utf-8"
	}
	return "application/octet-stream"
}

// Lookup returns the asset served at path: "/ui" and "/ui/" (and "/ui/index.html") are the
// page, "/ui/app.js" its script and "/ui/app.css" its style sheet. It reports false for
// any other path.
func Lookup(path string) (Asset, bool) {
	name := file(path)
	if name == "" {
		return Asset{}, false
	}
	return assets()[name], true
}

// ContentSecurityPolicy is the policy of every dashboard response: the page runs only its
// own script and style, talks only to its own origin, and cannot be framed.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Headers returns the security headers that every dashboard response carries, found or
// not, as name and value pairs: the Content-Security-Policy, X-Content-Type-Options,
// Referrer-Policy and Cache-Control (no-cache: a browser revalidates with the ETag).
// Each call returns a new slice.
func Headers() [][2]string {
	return [][2]string{
		{"Content-Security-Policy", ContentSecurityPolicy},
		{"X-Content-Type-Options", "nosniff"},
		{"Referrer-Policy", "no-referrer"},
		{"Cache-Control", "no-cache"},
	}
}

// Handler returns a net/http handler that serves the dashboard's files, as Lookup finds
// them by the request's path, with Headers: GET and HEAD only (405 otherwise), 304 when
// If-None-Match matches, 404 in plain text for a path that is not one of them. Mount it
// at "/ui" and "/ui/"; the ingress serves /ui/events itself.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

// serve is the Handler.
func serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for _, kv := range Headers() {
		h.Set(kv[0], kv[1])
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		plain(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed: use GET or HEAD\n")
		return
	}
	a, ok := Lookup(r.URL.Path)
	if !ok {
		plain(w, http.StatusNotFound, "404 no such page of the dashboard\n")
		return
	}
	h.Set("ETag", a.ETag)
	if a.NotModified(r.Header.Get("If-None-Match")) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", a.ContentType)
	h.Set("Content-Length", strconv.Itoa(len(a.Body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(a.Body) // an error means the client went away
	}
}

// plain writes a plain text answer.
func plain(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg))
}
