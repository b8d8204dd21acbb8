package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/dashboard"
)

// Paths of the dashboard and of what it reads.
const (
	// StatusPath is where the ingress answers GET with a status.Snapshot as JSON.
	StatusPath = "/status"
	// UIPath is the dashboard's page; its assets live under it.
	UIPath = "/ui"
	// EventsPath sends a status.Snapshot every second as a server-sent event.
	EventsPath = "/ui/events"
)

// Bounds of the live feeds at EventsPath.
const (
	// MaxFeeds is how many live feeds may be open at once; past it, 503.
	MaxFeeds = 32
	// feedInterval is the time between two events of a feed.
	feedInterval = time.Second
	// feedWriteTimeout is how long one event may take to write before the feed ends: a
	// viewer that stopped reading does not hold a feed.
	feedWriteTimeout = 10 * time.Second
)

// feeds counts the open live feeds and ends them all on close.
type feeds struct {
	open   atomic.Int32
	done   chan struct{}
	closer sync.Once
}

func newFeeds() *feeds { return &feeds{done: make(chan struct{})} }

// enter counts a new feed, or reports false when MaxFeeds are open.
func (f *feeds) enter() bool {
	if f.open.Add(1) > MaxFeeds {
		f.open.Add(-1)
		return false
	}
	return true
}

func (f *feeds) leave() { f.open.Add(-1) }

// close ends every feed, open or to come.
func (f *feeds) close() { f.closer.Do(func() { close(f.done) }) }

// EndFeeds ends the dashboard's live feeds, and refuses new ones, so that a graceful
// shutdown does not wait for viewers.
func (in *Ingress) EndFeeds() { in.feeds.close() }

// runFeed sends events to w until a write fails or takes longer than feedWriteTimeout
// (which setDeadline enforces), the viewer leaves (stop closes), or the feeds end.
func (in *Ingress) runFeed(w io.Writer, flush func() error, setDeadline func(time.Time) error, stop <-chan struct{}) {
	tick := time.NewTicker(feedInterval)
	defer tick.Stop()
	// A viewer whose feed broke comes back after a second (the default is 3).
	first := "retry: 1000\n\n"
	for {
		b, err := json.Marshal(in.cfg.Status())
		if err != nil {
			in.log.Error("dashboard: encoding the status", "err", err)
			return
		}
		if setDeadline(time.Now().Add(feedWriteTimeout)) != nil {
			return
		}
		if _, err := io.WriteString(w, first+"data: "); err != nil {
			return
		}
		first = ""
		if _, err := w.Write(append(b, "\n\n"...)); err != nil || flush() != nil {
			return
		}
		select {
		case <-in.feeds.done:
			return
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// serveDashboard serves r when it asks for StatusPath, EventsPath or the dashboard's page
// and assets, on the net/http path, and reports whether it did.
func (in *Ingress) serveDashboard(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	if path != StatusPath && path != UIPath && !strings.HasPrefix(path, UIPath+"/") {
		return false
	}
	if in.cfg.Status == nil {
		callerr.New(IngressID, http.StatusNotFound, "this micro has no dashboard").Write(w)
		return true
	}
	switch path {
	case StatusPath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			callerr.New(IngressID, http.StatusMethodNotAllowed, "%s: GET only", StatusPath).Write(w)
			return true
		}
		writeJSON(w, http.StatusOK, in.cfg.Status())
	case EventsPath:
		in.events(w, r)
	default:
		dashboard.Handler().ServeHTTP(w, r)
	}
	return true
}

// events serves a live feed on the net/http path.
func (in *Ingress) events(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		callerr.New(IngressID, http.StatusMethodNotAllowed, "%s: GET only", EventsPath).Write(w)
		return
	}
	if !in.feeds.enter() {
		callerr.New(IngressID, http.StatusServiceUnavailable, "%d live feeds are open already", MaxFeeds).Write(w)
		return
	}
	defer in.feeds.leave()
	for k, v := range eventHeaders() {
		w.Header().Set(k, v)
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	in.runFeed(w, rc.Flush, rc.SetWriteDeadline, r.Context().Done())
}

// eventHeaders are the headers of a live feed's answer.
func eventHeaders() map[string]string {
	return map[string]string{
		"Content-Type":           "text/event-stream",
		"Cache-Control":          "no-cache",
		"X-Content-Type-Options": "nosniff",
	}
}

// fastDashboard serves StatusPath, EventsPath and the dashboard's assets on the HTTP/1.1
// path, and reports whether the request's path (without its query) asks for one of them.
func (in *Ingress) fastDashboard(c *fasthttp.RequestCtx, p []byte) bool {
	if string(p) != StatusPath && string(p) != UIPath && !bytes.HasPrefix(p, []byte(UIPath+"/")) {
		return false // a call: no allocation on its way
	}
	path := string(p)
	if in.cfg.Status == nil {
		fastError(c, callerr.New(IngressID, http.StatusNotFound, "this micro has no dashboard"), "")
		return true
	}
	if !c.IsGet() && !c.IsHead() {
		c.Response.Header.Set("Allow", "GET, HEAD")
		fastError(c, callerr.New(IngressID, http.StatusMethodNotAllowed, "%s: GET only", path), "")
		return true
	}
	switch path {
	case StatusPath:
		fastJSON(c, http.StatusOK, in.cfg.Status())
	case EventsPath:
		in.fastEvents(c)
	default:
		a, ok := dashboard.Lookup(path)
		for _, h := range dashboard.Headers() {
			c.Response.Header.Set(h[0], h[1])
		}
		switch {
		case !ok:
			c.SetStatusCode(http.StatusNotFound)
			c.SetContentType("text/plain; charset=utf-8")
			c.SetBodyString("404 not found\n")
		case a.NotModified(string(c.Request.Header.Peek("If-None-Match"))):
			c.Response.Header.Set("ETag", a.ETag)
			c.SetStatusCode(http.StatusNotModified)
		default:
			c.Response.Header.Set("ETag", a.ETag)
			c.SetContentType(a.ContentType)
			c.SetBody(a.Body)
		}
	}
	return true
}

// fastEvents serves a live feed on the HTTP/1.1 path: it takes the connection over, so
// that the feed neither holds a server worker's write deadline nor delays a shutdown,
// and closes it when the feed ends.
func (in *Ingress) fastEvents(c *fasthttp.RequestCtx) {
	if !in.feeds.enter() {
		fastError(c, callerr.New(IngressID, http.StatusServiceUnavailable, "%d live feeds are open already", MaxFeeds), "")
		return
	}
	c.HijackSetNoResponse(true)
	c.Hijack(func(conn net.Conn) {
		defer in.feeds.leave()
		bw := bufio.NewWriter(conn)
		head := "HTTP/1.1 200 OK\r\nConnection: close\r\n"
		for k, v := range eventHeaders() {
			head += k + ": " + v + "\r\n"
		}
		_, _ = bw.WriteString(head + "\r\n") // a failure shows at the first flush
		// The viewer sends nothing more; a read that ends means it left. The reader is
		// done with conn when it closes gone: fasthttp reuses conn once this returns.
		gone := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, io.LimitReader(conn, 1<<10))
			_ = conn.SetWriteDeadline(time.Now())
			close(gone)
		}()
		in.runFeed(bw, bw.Flush, conn.SetWriteDeadline, gone)
		_ = conn.SetReadDeadline(time.Now())
		<-gone
	})
}
