package server

import (
	"fmt"
	"github.com/microhost/micro/runtime/callerr"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// Settings are the knobs of the ingress and inbound servers that apply while they serve.
type Settings struct {
	// MaxBody bounds request and response bodies, and stream messages, in bytes.
	MaxBody int64
	// MaxInflight bounds the calls and open streams a server serves at once; past it a
	// call is answered 503 with Retry-After at once.
	MaxInflight int
	// MaxBudget is the longest budget a call may carry. The ingress refuses a longer
	// Micro-Timeout with 400; the inbound server cuts a longer one to MaxBudget.
	MaxBudget time.Duration
	// RetryBuffer is how much of a streamed request body a call keeps so that it can be
	// sent again to another node.
	RetryBuffer int64
	// StreamIdle closes a stream that carried no message either way for this long.
	StreamIdle time.Duration
	// CheckOrigin makes the ingress refuse what a web page of another site would send: a
	// Host that is not one of the ingress's names, or an Origin of another site.
	CheckOrigin bool
	// AllowedHosts are host names, besides localhost and IP addresses, that the ingress
	// answers to.
	AllowedHosts []string
	// AllowedOrigins are origins ("https://app.example.com") whose pages may call the
	// ingress.
	AllowedOrigins []string
	// Allow maps a service fronted here to the services whose callers the inbound admits
	// (services.NAME.allow); a service that is not in it admits every caller.
	Allow map[string][]string
}

// DefaultSettings are the settings of a server that is given none: micro's defaults.
func DefaultSettings() Settings {
	return Settings{
		MaxBody:     4 << 20,
		MaxInflight: 1024,
		MaxBudget:   time.Minute,
		RetryBuffer: 64 << 10,
		StreamIdle:  5 * time.Minute,
		CheckOrigin: true,
	}
}

// settings holds a server's current Settings.
type settings struct{ p atomic.Pointer[Settings] }

func (s *settings) load() *Settings { return s.p.Load() }

// store makes a copy of st current, with defaults for its zero limits.
func (s *settings) store(st Settings) {
	def := DefaultSettings()
	if st.MaxBody <= 0 {
		st.MaxBody = def.MaxBody
	}
	if st.MaxInflight <= 0 {
		st.MaxInflight = def.MaxInflight
	}
	if st.MaxBudget <= 0 {
		st.MaxBudget = def.MaxBudget
	}
	if st.StreamIdle <= 0 {
		st.StreamIdle = def.StreamIdle
	}
	s.p.Store(&st)
}

// gate counts the calls a server serves, to shed those past its limit.
type gate struct{ n atomic.Int64 }

// enter admits a call unless limit calls are in already, and then returns the 503, with
// Retry-After, that the server id sheds it with. An admitted call must leave.
func (g *gate) enter(id string, limit int) *callerr.Error {
	if g.n.Add(1) > int64(limit) {
		g.n.Add(-1)
		e := callerr.New(id, http.StatusServiceUnavailable, "no capacity: %d calls in flight (server.max_inflight)", limit)
		e.RetryAfter = shedRetryAfter
		return e
	}
	return nil
}

func (g *gate) leave() { g.n.Add(-1) }

// shedRetryAfter is the Retry-After, in seconds, of a call shed for want of capacity.
const shedRetryAfter = "1"

// recovered logs a panic that a server recovered from, with what it was serving. It
// returns a short description of the panic for the caller's error. It re-panics with
// http.ErrAbortHandler, net/http's way to abort a response, so that net/http handles it.
func recovered(logger *slog.Logger, p any, what string, attrs ...any) string {
	if p == http.ErrAbortHandler {
		panic(p)
	}
	attrs = append(attrs, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	logger.Error("recovered from a panic while serving "+what+"; micro goes on serving", attrs...)
	return fmt.Sprintf("internal error while serving %s (logged)", what)
}

// filterHeader copies the end-to-end headers of h that micro passes on into a message
// header, with repeated values joined by transport.ValueSep, leaving out hop-by-hop headers
// and every Micro-* header: micro sets its own, and one that a caller or an app sends must
// not pass for micro's.
func filterHeader(h map[string][]string) map[string]string {
	m := make(map[string]string, len(h))
	for k, v := range h {
		if len(v) > 0 && !hopByHop(k) && !transport.IsMicroHeader(k) {
			m[k] = strings.Join(v, transport.ValueSep)
		}
	}
	return m
}

// hopByHop reports whether the canonical header k belongs to one connection only.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length":
		return true
	}
	return false
}
