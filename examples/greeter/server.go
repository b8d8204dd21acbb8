package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// timeoutHeader carries the remaining budget of a call, as micro sends it.
	timeoutHeader = "Micro-Timeout"
	// maxBody bounds request and upstream reply bodies.
	maxBody = 1 << 20
	// maxSleep bounds Greeter.Sleep.
	maxSleep = 10 * time.Minute
)

// server holds the greeter's state; its handler serves the endpoints.
type server struct {
	instance string
	ingress  string // host:port of micro's ingress, for Greeter.Call
	fail     atomic.Bool
	failDir  string // when a file named after the instance exists here, it fails too
	client   *http.Client
	logger   *slog.Logger

	// Greeter.Stream's streams: stopping ends when the greeter stops (endStreams), which
	// closes the open streams; streams counts them. streamMu orders streams.Add before
	// the stop, so that close can wait for the streams.
	streamMu sync.Mutex
	stopping context.Context
	stop     context.CancelFunc
	streams  sync.WaitGroup
}

func newServer(instance, ingress string, fail bool, logger *slog.Logger) *server {
	s := &server{
		instance: instance,
		ingress:  ingress,
		client:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		logger:   logger,
	}
	s.stopping, s.stop = context.WithCancel(context.Background())
	s.fail.Store(fail)
	return s
}

// close ends the open streams and waits for them, and releases the idle connections to
// the ingress.
func (s *server) close() {
	s.endStreams()
	s.streams.Wait()
	s.client.CloseIdleConnections()
}

// handler routes the greeter's endpoints.
func (s *server) handler() http.Handler {
	endpoints := map[string]http.HandlerFunc{
		"Greeter.Hello":   s.failing(s.hello),
		"Greeter.Sleep":   s.failing(s.sleep),
		"Greeter.Fail":    s.failing(s.failEndpoint),
		"Greeter.Call":    s.failing(s.call),
		"Greeter.SetFail": s.setFail,
	}
	mux := http.NewServeMux()
	for name, h := range endpoints {
		mux.Handle("POST /"+name, http.MaxBytesHandler(h, maxBody))
	}
	mux.Handle("GET /"+streamEndpoint, s.failing(s.stream))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/")
		if name == streamEndpoint {
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is a WebSocket: it wants GET with Upgrade: websocket, not %s", name, r.Method))
			return
		}
		if _, ok := endpoints[name]; ok {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s wants POST, not %s", name, r.Method))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown endpoint %q", name))
	})
	return mux
}

// failingNow reports whether the failing mode is on: by SetFail or GREETER_FAIL, or by a
// file named after the instance in GREETER_FAIL_DIR (so a test can fail one instance).
func (s *server) failingNow() bool {
	if s.fail.Load() {
		return true
	}
	if s.failDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(s.failDir, s.instance))
	return err == nil
}

// failing wraps h so that it answers 500 while the failing mode is on.
func (s *server) failing(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.failingNow() {
			writeError(w, http.StatusInternalServerError, "greeter "+s.instance+" is in failing mode")
			return
		}
		h(w, r)
	}
}

// reply is what Hello and Sleep answer.
type reply struct {
	Greeting string `json:"greeting"`
	Instance string `json:"instance"`
	Budget   string `json:"budget"`
}

func (s *server) hello(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.Name == "" {
		writeError(w, http.StatusBadRequest, `"name" is required`)
		return
	}
	writeJSON(w, http.StatusOK, reply{
		Greeting: "Hello, " + req.Name + "!",
		Instance: s.instance,
		Budget:   r.Header.Get(timeoutHeader),
	})
}

func (s *server) sleep(w http.ResponseWriter, r *http.Request) {
	var req struct {
		MS int64 `json:"ms"`
	}
	if !decode(w, r, &req) {
		return
	}
	d := time.Duration(req.MS) * time.Millisecond
	if req.MS < 0 || d > maxSleep {
		writeError(w, http.StatusBadRequest, fmt.Sprintf(`"ms" is %d: want 0 to %d`, req.MS, maxSleep.Milliseconds()))
		return
	}
	budget := r.Header.Get(timeoutHeader)
	s.logger.Info("sleeping", "instance", s.instance, "ms", req.MS, "budget", budget)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return // the caller is gone; nobody reads a reply
	}
	writeJSON(w, http.StatusOK, reply{
		Greeting: fmt.Sprintf("Slept %dms", req.MS),
		Instance: s.instance,
		Budget:   budget,
	})
}

func (s *server) failEndpoint(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusInternalServerError, "Greeter.Fail always fails (instance "+s.instance+")")
}

func (s *server) setFail(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Fail *bool `json:"fail"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.Fail == nil {
		writeError(w, http.StatusBadRequest, `"fail" is required`)
		return
	}
	s.fail.Store(*req.Fail)
	s.logger.Info("failing mode set", "instance", s.instance, "fail", *req.Fail)
	writeJSON(w, http.StatusOK, map[string]any{"instance": s.instance, "fail": *req.Fail})
}

// call forwards a call to another service through micro's ingress.
func (s *server) call(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Service  string          `json:"service"`
		Endpoint string          `json:"endpoint"`
		Body     json.RawMessage `json:"body"`
	}
	if !decode(w, r, &req) {
		return
	}
	switch {
	case req.Service == "" || strings.Contains(req.Service, "/"):
		writeError(w, http.StatusBadRequest, fmt.Sprintf(`"service" is %q: want a service name`, req.Service))
		return
	case req.Endpoint == "" || strings.Contains(req.Endpoint, "/"):
		writeError(w, http.StatusBadRequest, fmt.Sprintf(`"endpoint" is %q: want an endpoint name`, req.Endpoint))
		return
	case s.ingress == "":
		writeError(w, http.StatusInternalServerError, "MICRO_INGRESS is not set: greeter does not know micro's ingress")
		return
	}
	body := req.Body
	if len(body) == 0 {
		body = json.RawMessage("{}")
	}
	url := "http://" + s.ingress + "/" + req.Service + "/" + req.Endpoint
	up, err := http.NewRequestWithContext(r.Context(), http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("calling %s: %v", url, err))
		return
	}
	up.Header.Set("Content-Type", "application/json")
	if b := r.Header.Get(timeoutHeader); b != "" {
		up.Header.Set(timeoutHeader, b)
	}
	resp, err := s.client.Do(up)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("calling %s: %v", url, err))
		return
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("reading the reply of %s: %v", url, err))
		return
	}
	if len(data) > maxBody {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("the reply of %s is larger than %d bytes", url, maxBody))
		return
	}
	upstream := json.RawMessage(data)
	if !json.Valid(data) {
		// Not JSON (an empty body, or text): pass it on as a JSON string.
		upstream, _ = json.Marshal(string(data))
	}
	writeJSON(w, resp.StatusCode, struct {
		Instance string          `json:"instance"`
		Reply    json.RawMessage `json:"reply"`
	}{s.instance, upstream})
}

// decode reads r's JSON body into v. On failure it writes a 400 (or 413) and reports false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(r.Body).Decode(v)
	if err == nil {
		return true
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body is larger than %d bytes", tooLarge.Limit))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "missing JSON body")
	default:
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
	}
	return false
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		data = []byte(`{"error":"encoding the reply failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}
