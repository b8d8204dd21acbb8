package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The http-wasm guests of these tests were written and built by the http-wasm project,
// not here. Each comes, pre-built, in a Go module that the go command downloads from the
// module proxy; the source of each lies next to it in the module.
const (
	// The TinyGo SDK of http-wasm; its guests are built with TinyGo (the .go beside each).
	guestTinyGo = "github.com/http-wasm/http-wasm-guest-tinygo@v0.3.0"
	// The Go host of http-wasm; its example and test guests are written in the WebAssembly
	// text format (the .wat beside each).
	hostGo = "github.com/http-wasm/http-wasm-host-go@v0.7.0"
)

// httpWasmGuest returns the path of the guest at path in module (module@version),
// downloading the module with `go mod download` when it is not in the module cache.
func httpWasmGuest(t *testing.T, module, path string) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", module).Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &info); err != nil || jerr != nil || info.Dir == "" {
		t.Fatalf("downloading the http-wasm guests of %s (go mod download -json %s; needs the module proxy or a module cache that has it): %v %s %s",
			module, module, err, info.Error, out)
	}
	p := filepath.Join(info.Dir, filepath.FromSlash(path))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the http-wasm guest %s of %s: %v", path, module, err)
	}
	return p
}

// loopGuest is an http-wasm guest whose handle_request never returns:
//
//	(module
//	  (memory (export "memory") 1)
//	  (func (export "handle_request") (result i64) (loop (br 0)) unreachable)
//	  (func (export "handle_response") (param i32 i32)))
var loopGuest = []byte{
	0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x02, 0x60, 0x00, 0x01, 0x7e, 0x60,
	0x02, 0x7f, 0x7f, 0x00, 0x03, 0x03, 0x02, 0x00, 0x01, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x2d,
	0x03, 0x0e, 0x68, 0x61, 0x6e, 0x64, 0x6c, 0x65, 0x5f, 0x72, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74,
	0x00, 0x00, 0x0f, 0x68, 0x61, 0x6e, 0x64, 0x6c, 0x65, 0x5f, 0x72, 0x65, 0x73, 0x70, 0x6f, 0x6e,
	0x73, 0x65, 0x00, 0x01, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x0a, 0x0d, 0x02,
	0x08, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x00, 0x0b, 0x02, 0x00, 0x0b,
}

// rewriteGuest is an http-wasm guest, written here, that replaces the body of every call
// with {"name":"wasm"} and lets it go on:
//
//	(module
//	  (import "http_handler" "write_body" (func $write_body (param i32 i32 i32)))
//	  (memory (export "memory") 1 1)
//	  (data (i32.const 0) "{\22name\22:\22wasm\22}")
//	  (func (export "handle_request") (result i64)
//	    (call $write_body (i32.const 0) (i32.const 0) (i32.const 15))
//	    (i64.const 1))
//	  (func (export "handle_response") (param i32 i32)))
var rewriteGuest = []byte{
	0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x10, 0x03, 0x60, 0x03, 0x7f, 0x7f, 0x7f,
	0x00, 0x60, 0x00, 0x01, 0x7e, 0x60, 0x02, 0x7f, 0x7f, 0x00, 0x02, 0x1b, 0x01, 0x0c, 0x68, 0x74,
	0x74, 0x70, 0x5f, 0x68, 0x61, 0x6e, 0x64, 0x6c, 0x65, 0x72, 0x0a, 0x77, 0x72, 0x69, 0x74, 0x65,
	0x5f, 0x62, 0x6f, 0x64, 0x79, 0x00, 0x00, 0x03, 0x03, 0x02, 0x01, 0x02, 0x05, 0x04, 0x01, 0x01,
	0x01, 0x01, 0x07, 0x2d, 0x03, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x0e, 0x68,
	0x61, 0x6e, 0x64, 0x6c, 0x65, 0x5f, 0x72, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x00, 0x01, 0x0f,
	0x68, 0x61, 0x6e, 0x64, 0x6c, 0x65, 0x5f, 0x72, 0x65, 0x73, 0x70, 0x6f, 0x6e, 0x73, 0x65, 0x00,
	0x02, 0x0a, 0x11, 0x02, 0x0c, 0x00, 0x41, 0x00, 0x41, 0x00, 0x41, 0x0f, 0x10, 0x00, 0x42, 0x01,
	0x0b, 0x02, 0x00, 0x0b, 0x0b, 0x15, 0x01, 0x00, 0x41, 0x00, 0x0b, 0x0f, 0x7b, 0x22, 0x6e, 0x61,
	0x6d, 0x65, 0x22, 0x3a, 0x22, 0x77, 0x61, 0x73, 0x6d, 0x22, 0x7d,
}

// TestHTTPWasmGuests: micro runs guests built for the http-wasm handler ABI, as server
// wrappers: one sets a request header the app sees, one answers in place of the app
// (an auth check, and a TinyGo guest that writes a body), the log one sees the response,
// and one that traps and one that loops get their on_trap verdicts.
func TestHTTPWasmGuests(t *testing.T) {
	t.Parallel()
	loop := filepath.Join(t.TempDir(), "loop.wasm")
	if err := os.WriteFile(loop, loopGuest, 0o644); err != nil {
		t.Fatal(err)
	}
	rewrite := filepath.Join(t.TempDir(), "rewrite.wasm")
	if err := os.WriteFile(rewrite, rewriteGuest, 0o644); err != nil {
		t.Fatal(err)
	}
	guests := []struct{ name, path, services, extra string }{
		// handle_request sets the request header Content-Type: text/plain and goes on.
		{"header", httpWasmGuest(t, hostGo, "internal/test/testdata/e2e/header_value.wasm"), "count", ""},
		// Logs "before" in handle_request, which goes on, and "after" in handle_response.
		{"log", httpWasmGuest(t, guestTinyGo, "internal/test/testdata/e2e/tinygo/log/main.wasm"), "count", ""},
		// Basic auth: without the expected Authorization, answers 401 with WWW-Authenticate.
		{"auth", httpWasmGuest(t, hostGo, "examples/auth.wasm"), "greeter", ""},
		// Answers every call with the body "hello world" (and status 200).
		{"hello", httpWasmGuest(t, guestTinyGo, "internal/test/testdata/bench/tinygo/write_body/main.wasm"), "hello", ""},
		// Traps in handle_request.
		{"trap", httpWasmGuest(t, hostGo, "internal/test/testdata/error/panic_on_handle_request.wasm"), "trap", `on_trap = "closed"`},
		{"loop", loop, "loop", "on_trap = \"open\"\ntimeout = \"100ms\""},
		// Replaces the body of every call with {"name":"wasm"}.
		{"rewrite", rewrite, "rewrite", ""},
	}
	var names []string
	var tables strings.Builder
	for _, g := range guests {
		names = append(names, fmt.Sprintf("%q", g.name))
		fmt.Fprintf(&tables, "\n[wrappers.%s]\npath = %q\nabi = \"http-wasm\"\nservices = [%q]\n%s\n", g.name, g.path, g.services, g.extra)
	}
	services := counterService("count", filepath.Join(t.TempDir(), "count"), t.TempDir()) +
		greeterService("greeter", 1, "") + greeterService("hello", 1, "") + greeterService("trap", 1, "") + greeterService("loop", 1, "") + greeterService("rewrite", 1, "")
	cfg := baseConfig(t.TempDir(), services)
	cfg = strings.Replace(cfg, "[server]\n", "[server]\nwrappers = ["+strings.Join(names, ", ")+"]\n", 1) + tables.String()
	m := startMicro(t, cfg)

	t.Run("sets a header", func(t *testing.T) {
		r, err := m.post("/count/echo/x", "{}", map[string]string{"Content-Type": "application/json"})
		if err != nil || r.status != 200 {
			t.Fatalf("call: %v %d %s", err, r.status, r.body)
		}
		var e echoed
		if err := json.Unmarshal(r.body, &e); err != nil {
			t.Fatalf("echo: %v: %s", err, r.body)
		}
		if got := e.Header.Values("Content-Type"); len(got) != 1 || got[0] != "text/plain" {
			t.Errorf("the app got Content-Type %q, want the guest's text/plain", got)
		}
		// The guest's log line reaches micro's log through a pipe.
		eventually(t, 10*time.Second, func() error {
			if !strings.Contains(m.logs.String(), "msg=after wrapper=log") {
				return errors.New("handle_response of the log guest did not log")
			}
			return nil
		})
	})
	t.Run("answers in place of the app", func(t *testing.T) {
		r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 401 {
			t.Fatalf("without credentials: %v %d %s, want 401", err, r.status, r.body)
		}
		if got := r.header.Get("WWW-Authenticate"); got != `Basic realm="test"` {
			t.Errorf("WWW-Authenticate %q", got)
		}
		r, err = m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, map[string]string{"Authorization": "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="})
		if err != nil || r.status != 200 || !strings.Contains(string(r.body), "Ada") {
			t.Fatalf("with credentials: %v %d %s, want the app's 200", err, r.status, r.body)
		}
		r, err = m.call("hello", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 200 {
			t.Fatalf("hello: %v %d %s", err, r.status, r.body)
		}
		if d, _ := r.json(t)["detail"].(string); d != "hello world" || strings.Contains(string(r.body), "Ada") {
			t.Errorf("hello: %s, want the guest's body as the detail", r.body)
		}
	})
	t.Run("rewrites a body", func(t *testing.T) {
		r, err := m.call("rewrite", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 200 || !strings.Contains(string(r.body), "Hello, wasm!") {
			t.Fatalf("rewrite: %v %d %s, want the app to greet the body the guest wrote", err, r.status, r.body)
		}
	})
	t.Run("faults", func(t *testing.T) {
		r, err := m.call("trap", "Greeter.Hello", `{"name":"Ada"}`, nil)
		// The inbound server answers 503 (on_trap closed); the calling micro tries the
		// node again (it is the only one) and then answers 502 with that 503's detail.
		if err != nil || (r.status != 503 && r.status != 502) || !strings.Contains(string(r.body), "wrapper trap failed") {
			t.Errorf("trap: %v %d %s, want 503 from on_trap closed", err, r.status, r.body)
		}
		r, err = m.call("loop", "Greeter.Hello", `{"name":"Ada"}`, nil)
		if err != nil || r.status != 200 || !strings.Contains(string(r.body), "Ada") {
			t.Errorf("loop: %v %d %s, want the app's answer (on_trap open)", err, r.status, r.body)
		}
		for _, want := range []string{"wrapper=trap instance=0 phase=on_request err=\"guest trapped", "ran longer than its time limit"} {
			eventually(t, 10*time.Second, func() error {
				if !strings.Contains(m.logs.String(), want) {
					return fmt.Errorf("the log lacks %q", want)
				}
				return nil
			})
		}
	})
}
