// Command counter is an app for micro's end-to-end tests: it records every call it executes,
// and misbehaves on request, so that a test can count how often a call ran and inject the
// faults a node can have.
//
// It listens on MICRO_APP_ADDR. Every POST /{endpoint} appends a line
//
//	exec <call id> <endpoint> <name>
//
// to the file COUNT_FILE, where the call id is the X-Call-Id header and name is COUNT_NAME,
// before it answers 200 {"name":…}. While the file FAULT_DIR/COUNT_NAME exists, its content
// says how the app misbehaves after recording the call:
//
//	big   the reply exceeds 64KiB
//	half  the app closes the connection half-way through its reply
//	hang  the app does not answer until its request is cancelled
//	slow F D  a share F of the calls (e.g. 0.05) answer after D (e.g. 100ms), or when
//	          their request is cancelled, whichever comes first
//
// Any request under /echo/ is answered with its method, request URI, headers and body
// length as JSON, and two Set-Cookie headers.
//
// POST /Count.Wait never answers: it records "wait <call id>", and, when its request is
// cancelled, "cancelled <call id> <milliseconds since it arrived>".
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	a := &app{file: os.Getenv("COUNT_FILE"), name: os.Getenv("COUNT_NAME"), faults: os.Getenv("FAULT_DIR")}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /Count.Wait", a.wait)
	mux.HandleFunc("/echo/", echo)
	mux.HandleFunc("POST /{endpoint}", a.count)
	if err := http.ListenAndServe(os.Getenv("MICRO_APP_ADDR"), mux); err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(1)
	}
}

type app struct {
	file, name, faults string
	mu                 sync.Mutex
}

// record appends one line to the count file.
func (a *app) record(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := os.OpenFile(a.file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, format+"\n", args...)
}

func (a *app) fault() string {
	b, err := os.ReadFile(filepath.Join(a.faults, a.name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (a *app) count(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	a.record("exec %s %s %s", r.Header.Get("X-Call-Id"), r.PathValue("endpoint"), a.name)
	fault := a.fault()
	if f := strings.Fields(fault); len(f) == 3 && f[0] == "slow" {
		share, _ := strconv.ParseFloat(f[1], 64)
		d, _ := time.ParseDuration(f[2])
		if rand.Float64() < share {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
	}
	switch fault {
	case "big":
		_, _ = w.Write([]byte(`{"pad":"` + strings.Repeat("x", 80<<10) + `"}`))
		return
	case "half":
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":")
		_ = brw.Flush()
		c.Close()
		return
	case "hang":
		<-r.Context().Done()
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"name\":%q}\n", a.name)
}

func (a *app) wait(w http.ResponseWriter, r *http.Request) {
	// net/http notices a client that goes away once the body has been read.
	_, _ = io.Copy(io.Discard, r.Body)
	start := time.Now()
	id := r.Header.Get("X-Call-Id")
	a.record("wait %s", id)
	<-r.Context().Done()
	a.record("cancelled %s %d", id, time.Since(start).Milliseconds())
}

func echo(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "uri": r.RequestURI, "header": r.Header, "body": n})
}
