// Command subscriber is an app for micro's end-to-end tests of publish and subscribe: it
// takes message deliveries, records each, and fails them on request.
//
// It listens on MICRO_APP_ADDR. Every POST /{endpoint} is a delivery; the app appends a line
//
//	<name> <status> <topic> <message id> <delivery> <body>
//
// to LOG_FILE, where name is SUB_NAME, status is ok or fail, and topic, message id and
// delivery are the Micro-Topic, Micro-Message-Id and Micro-Delivery headers micro sets. It
// fails (500) the first FAIL_TIMES deliveries of each message id, counted in files under
// STATE_DIR so that all instances count together, and every delivery while the file
// STATE_DIR/fail exists. Otherwise it answers 200.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

func main() {
	failTimes, _ := strconv.Atoi(os.Getenv("FAIL_TIMES"))
	a := &app{log: os.Getenv("LOG_FILE"), name: os.Getenv("SUB_NAME"), state: os.Getenv("STATE_DIR"), failTimes: failTimes}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /{endpoint}", a.deliver)
	if err := http.ListenAndServe(os.Getenv("MICRO_APP_ADDR"), mux); err != nil {
		fmt.Fprintln(os.Stderr, "subscriber:", err)
		os.Exit(1)
	}
}

type app struct {
	log, name, state string
	failTimes        int
	mu               sync.Mutex
}

func (a *app) deliver(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := r.Header.Get("Micro-Message-Id")
	status := "ok"
	if a.fail(id) {
		status = "fail"
	}
	a.record(fmt.Sprintf("%s %s %s %s %s %s\n", a.name, status, r.Header.Get("Micro-Topic"), id, r.Header.Get("Micro-Delivery"), strings.ReplaceAll(string(body), " ", "")))
	if status == "fail" {
		http.Error(w, "failing on purpose", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

// fail reports whether this delivery of message id fails.
func (a *app) fail(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := os.Stat(filepath.Join(a.state, "fail")); err == nil {
		return true
	}
	if a.failTimes <= 0 || id == "" || strings.ContainsAny(id, "/.") {
		return false
	}
	// One file per message id and subscriber name; its length counts the failures. Appends
	// of one byte are atomic, so instances count together.
	path := filepath.Join(a.state, a.name+"-"+id)
	st, err := os.Stat(path)
	if err == nil && st.Size() >= int64(a.failTimes) {
		return false
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return false
	}
	defer f.Close()
	_, _ = f.Write([]byte{'x'})
	return true
}

// record appends line to the log file in one write.
func (a *app) record(line string) {
	f, err := os.OpenFile(a.log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "subscriber:", err)
		return
	}
	defer f.Close()
	_, _ = f.Write([]byte(line))
}
