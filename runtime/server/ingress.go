// Package server holds micro's two servers: the ingress, where local apps call services by
// name, and the inbound server, where other micro processes reach the services fronted here.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/transport"
)

// IngressID names the ingress in the errors it returns.
const IngressID = "micro.ingress"

// Caller makes calls by service name; *client.Client is one.
type Caller interface {
	Call(ctx context.Context, req *client.Request) (*client.Response, error)
}

// Recorder records finished calls; *metrics.Metrics is one.
type Recorder interface {
	Call(service string, code int, d time.Duration)
	Inbound(service string, code int, d time.Duration)
}

// Status is what GET /health reports.
type Status struct {
	// Status is "ok" or "degraded".
	Status string `json:"status"`
	// Services maps each fronted service to its count of ready instances.
	Services map[string]int `json:"services"`
	// Errors lists current problems, such as a registry that cannot be reached.
	Errors []string `json:"errors,omitempty"`
}

// IngressConfig wires an Ingress.
type IngressConfig struct {
	Caller Caller
	// Streamer opens the streams that WebSocket requests ask for; nil refuses them.
	Streamer Streamer
	Recorder Recorder
	// Metrics serves GET /metrics.
	Metrics http.Handler
	// Services lists the registry's services for GET /services.
	Services func(ctx context.Context) ([]*registry.Service, error)
	// Health reports GET /health.
	Health func() Status
	// MaxBody bounds request bodies.
	MaxBody int64
}

// Ingress is the HTTP handler apps call: POST /{service}/{endpoint}, with the budget in
// the Micro-Timeout header, and GET /health, /metrics and /services.
type Ingress struct {
	cfg     IngressConfig
	maxBody atomic.Int64
}

// NewIngress returns the ingress handler.
func NewIngress(cfg IngressConfig) *Ingress {
	in := &Ingress{cfg: cfg}
	in.maxBody.Store(cfg.MaxBody)
	return in
}

// SetMaxBody changes the request body limit.
func (in *Ingress) SetMaxBody(n int64) { in.maxBody.Store(n) }

// ServeHTTP routes a request.
func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health":
		in.health(w)
		return
	case "/metrics":
		in.cfg.Metrics.ServeHTTP(w, r)
		return
	case "/services":
		in.services(w, r)
		return
	}
	in.call(w, r)
}

func (in *Ingress) call(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	service, endpoint, err := ParsePath(r.URL.Path)
	if err != nil {
		callerr.New(IngressID, http.StatusBadRequest, "%v", err).Write(w)
		return
	}
	code := http.StatusOK
	defer func() { in.cfg.Recorder.Call(service, code, time.Since(start)) }()
	fail := func(e *callerr.Error) {
		code = e.Code
		e.Write(w)
	}
	if r.Method == http.MethodGet && isWebSocket(r) {
		code = in.stream(w, r, service, endpoint)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(callerr.New(IngressID, http.StatusMethodNotAllowed, "method %s: calls are POST /{service}/{endpoint}", r.Method))
		return
	}
	ctx := r.Context()
	if v := r.Header.Get(transport.HeaderTimeout); v != "" {
		d, err := budget.Parse(v)
		if err != nil {
			fail(callerr.New(IngressID, http.StatusBadRequest, "%v", err))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, in.maxBody.Load()))
	if err != nil {
		if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
			fail(callerr.New(IngressID, http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes (server.max_body)", mbe.Limit))
			return
		}
		fail(callerr.New(IngressID, http.StatusBadRequest, "reading request body: %v", err))
		return
	}
	resp, err := in.cfg.Caller.Call(ctx, &client.Request{
		Service:  service,
		Endpoint: endpoint,
		Header:   CopyHeader(r.Header),
		Body:     body,
	})
	if err != nil {
		fail(callerr.As(IngressID, err))
		return
	}
	code = resp.Status
	h := w.Header()
	for k, v := range resp.Header {
		if !hopByHop(k) {
			h.Set(k, v)
		}
	}
	h.Set(transport.HeaderNode, resp.Node)
	h.Set("Micro-Attempts", strconv.Itoa(resp.Attempts))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

func (in *Ingress) health(w http.ResponseWriter) {
	st := in.cfg.Health()
	code := http.StatusOK
	if st.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
}

func (in *Ingress) services(w http.ResponseWriter, r *http.Request) {
	list, err := in.cfg.Services(r.Context())
	if err != nil {
		callerr.New(IngressID, http.StatusServiceUnavailable, "listing services: %v", err).Write(w)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ParsePath splits a call path "/{service}/{endpoint}". The service is lower-case letters,
// digits, '-', '_' and '.'; the endpoint adds upper-case letters; both are at most 128 bytes.
func ParsePath(p string) (service, endpoint string, err error) {
	rest, ok := strings.CutPrefix(p, "/")
	if !ok {
		return "", "", fmt.Errorf("path %q: want /{service}/{endpoint}", p)
	}
	service, endpoint, ok = strings.Cut(rest, "/")
	if !ok || strings.Contains(endpoint, "/") {
		return "", "", fmt.Errorf("path %q: want /{service}/{endpoint}", truncate(p))
	}
	if err := checkName("service", service, false); err != nil {
		return "", "", err
	}
	if err := checkName("endpoint", endpoint, true); err != nil {
		return "", "", err
	}
	return service, endpoint, nil
}

func checkName(what, s string, upper bool) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s name %q: want 1 to 128 characters", what, truncate(s))
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		case upper && c >= 'A' && c <= 'Z':
		default:
			return fmt.Errorf("%s name %q has a character that is not allowed (%q)", what, truncate(s), c)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// CopyHeader returns the first value of each end-to-end header of h, leaving out hop-by-hop
// headers and micro's own routing headers, which each hop sets anew.
func CopyHeader(h http.Header) map[string]string {
	m := make(map[string]string, len(h))
	for k, v := range h {
		if len(v) == 0 || hopByHop(k) {
			continue
		}
		switch k {
		case transport.HeaderService, transport.HeaderEndpoint, transport.HeaderNode, transport.HeaderTimeout, transport.HeaderStatus:
			continue
		}
		m[k] = v[0]
	}
	return m
}

// hopByHop reports whether the canonical header k belongs to one connection only.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", transport.HeaderStatus:
		return true
	}
	return false
}
