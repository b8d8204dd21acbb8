package wasm

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/api"

	"github.com/microhost/micro/runtime/wrapper"
)

// These tests run http-wasm guests assembled by hand (wasmbin_test.go), each doing one
// thing of the http-wasm handler ABI; e2e/httpwasm_test.go runs guests that the http-wasm
// project built.

var (
	tI64         = funcType{results: []api.ValueType{api.ValueTypeI64}}
	tI32I32      = funcType{params: []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}}
	tI32         = funcType{params: []api.ValueType{api.ValueTypeI32}}
	tI32x3       = funcType{params: []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}}
	tI32x5       = funcType{params: []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}}
	tI32x3RetI64 = funcType{params: []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, results: []api.ValueType{api.ValueTypeI64}}
)

// Instructions.
func i64Const(v int64) []byte { return append([]byte{0x42}, sleb(v)...) }

var (
	opUnreachable = []byte{0x00}
	opLoopForever = []byte{0x03, 0x40, 0x0c, 0x00, 0x0b} // loop br 0 end
)

// httpGuest returns an http-wasm guest that imports the http_handler functions imports
// (named with their types), whose handle_request runs request and whose handle_response
// runs response. data is copied into its memory at 0.
func httpGuest(imports []wasmImport, request, response []byte, data string) []byte {
	m := &wasmModule{imports: imports}
	n := uint32(len(imports))
	m.funcs = []wasmFunc{{typ: tI64, body: request}, {typ: tI32I32, body: response}}
	m.exports = []wasmExport{{"handle_request", 0, n}, {"handle_response", 0, n + 1}, {"memory", 2, 0}}
	if data != "" {
		m.data = []wasmData{{0, []byte(data)}}
	}
	return m.bytes()
}

func hImport(name string, t funcType) wasmImport { return wasmImport{"http_handler", name, t} }

// setHeaderGuest sets the request header X-Guest: yes and lets the call go on with request
// context 7; its handle_response traps unless it gets 7, and is_error 0.
var setHeaderGuest = httpGuest(
	[]wasmImport{hImport("set_header_value", tI32x5)},
	concat(call0(0, i32Const(0), i32Const(0), i32Const(7), i32Const(16), i32Const(3)), i64Const(7<<32|1)),
	concat(
		localGet(0), i32Const(7), []byte{0x47, 0x04, 0x40}, opUnreachable, []byte{0x0b}, // if reqCtx != 7: trap
		localGet(1), []byte{0x04, 0x40}, opUnreachable, []byte{0x0b}), // if is_error: trap
	place(map[int]string{0: "X-Guest", 16: "yes"}))

// answerGuest answers in place of the app: 429, Retry-After: 5, Content-Type: text/plain
// and the body "slow down".
var answerGuest = httpGuest(
	[]wasmImport{hImport("set_status_code", tI32), hImport("set_header_value", tI32x5), hImport("write_body", tI32x3)},
	concat(
		call0(0, i32Const(429)),
		call0(1, i32Const(1), i32Const(0), i32Const(11), i32Const(16), i32Const(1)),
		call0(1, i32Const(1), i32Const(48), i32Const(12), i32Const(64), i32Const(10)),
		call0(2, i32Const(1), i32Const(32), i32Const(9)),
		i64Const(0)),
	nil,
	place(map[int]string{0: "Retry-After", 16: "5", 32: "slow down", 48: "Content-Type", 64: "text/plain"}))

// place lays strings out at their offsets, for a guest's data.
func place(at map[int]string) string {
	var b []byte
	for off, s := range at {
		if need := off + len(s); len(b) < need {
			b = append(b, make([]byte, need-len(b))...)
		}
		copy(b[off:], s)
	}
	return string(b)
}

// call0 is the instructions that push args and call function i.
func call0(i uint32, args ...[]byte) []byte { return concat(concat(args...), call(i)) }

func loadHTTP(t *testing.T, h *Host, name string, bin []byte, opts Options) *Wrapper {
	t.Helper()
	opts.ABI = ABIHTTPWasm
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	w, err := h.Load(context.Background(), name, bin, opts)
	if err != nil {
		t.Fatalf("Load(%s): %v", name, err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

func TestHTTPWasmSetsRequestHeader(t *testing.T) {
	h, rec := newTestHost(t)
	w := loadHTTP(t, h, "setheader", setHeaderGuest, Options{Instances: 4})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				c := &wrapper.Call{Service: fmt.Sprintf("svc%d", (g+i)%5), Endpoint: "E", Header: map[string]string{"X-Guest": "no"}}
				v := w.OnRequest(context.Background(), c)
				if v.Action != wrapper.Continue || len(v.Header) != 1 || v.Header["X-Guest"] != "yes" {
					t.Errorf("verdict %+v, want continue with X-Guest: yes", v)
					return
				}
				w.OnResponse(context.Background(), c, &wrapper.Result{Status: 200})
			}
		})
	}
	wg.Wait()
	if l := rec.find("guest failed"); l != "" {
		t.Errorf("handle_response did not get the request context: %s", l)
	}
}

func TestHTTPWasmAnswers(t *testing.T) {
	h, _ := newTestHost(t)
	w := loadHTTP(t, h, "answer", answerGuest, Options{})
	v := w.OnRequest(context.Background(), &wrapper.Call{Service: "s", Endpoint: "E"})
	if v.Action != wrapper.Reject || v.Status != 429 || v.Message != "slow down" {
		t.Fatalf("verdict %+v, want a rejection 429 \"slow down\"", v)
	}
	// The reply's body is micro's error, so the answer's Content-Type does not apply.
	if len(v.ReplyHeader) != 1 || v.ReplyHeader["Retry-After"] != "5" {
		t.Errorf("reply headers %v, want Retry-After: 5 only", v.ReplyHeader)
	}
}

// TestHTTPWasmRequestView: the guest sees the call as an HTTP request, and micro's own
// headers are not part of it.
func TestHTTPWasmRequestView(t *testing.T) {
	h, _ := newTestHost(t)
	// handle_request writes the method at 0, the URI at 16 and the request's header names
	// at 128, then answers with them as the body: "<method> <uri> <names>".
	guest := httpGuest(
		[]wasmImport{hImport("get_method", tI32I32RetI32), hImport("get_uri", tI32I32RetI32),
			hImport("get_header_names", tI32x3RetI64), hImport("write_body", tI32x3)},
		concat(
			call0(3, i32Const(1), i32Const(0), call0(0, i32Const(0), i32Const(16))),                               // body += method
			call0(3, i32Const(1), i32Const(16), call0(1, i32Const(16), i32Const(112))),                            // body += uri
			call0(3, i32Const(1), i32Const(128), i32WrapI64(call0(2, i32Const(0), i32Const(128), i32Const(256)))), // body += names
			i64Const(0)),
		nil, "")
	w := loadHTTP(t, h, "view", guest, Options{})
	for _, tc := range []struct {
		header map[string]string
		want   string
	}{
		{map[string]string{"x-a": "1", "Micro-Node": "n1"}, "POST/svc/Greeter.Hellox-a\x00"},
		{map[string]string{"Micro-Method": "GET", "Micro-Path": "/users/42?x=1"}, "GET/svc/users/42?x=1"},
	} {
		v := w.OnRequest(context.Background(), &wrapper.Call{Service: "svc", Endpoint: "Greeter.Hello", Header: tc.header})
		if v.Message != tc.want {
			t.Errorf("headers %v: the guest saw %q, want %q", tc.header, v.Message, tc.want)
		}
	}
}

var tI32I32RetI32 = funcType{params: []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, results: []api.ValueType{api.ValueTypeI32}}

func i32WrapI64(b []byte) []byte { return append(b, 0xa7) }

// TestHTTPWasmFaults: what micro cannot do for an http-wasm guest traps it, and a trap or a
// loop gets the wrapper's on_trap verdict, as for micro's own guests.
func TestHTTPWasmFaults(t *testing.T) {
	h, rec := newTestHost(t)
	for _, tc := range []struct {
		name    string
		guest   []byte
		opts    Options
		wantLog string
	}{
		{"trap", httpGuest(nil, opUnreachable, nil, ""), Options{OnTrap: OnTrapClosed}, "guest trapped"},
		{"loop", httpGuest(nil, concat(opLoopForever, opUnreachable), nil, ""), Options{OnTrap: OnTrapOpen, Timeout: 50 * time.Millisecond}, "longer than its time limit"},
		{"reroute", httpGuest([]wasmImport{hImport("set_uri", tI32I32)}, concat(call0(0, i32Const(0), i32Const(2)), i64Const(1)), nil, "/x"),
			Options{OnTrap: OnTrapClosed}, "cannot change"},
		{"readbody", httpGuest([]wasmImport{hImport("read_body", tI32x3RetI64)}, concat(call0(0, i32Const(0), i32Const(0), i32Const(16)), []byte{0x1a}, i64Const(1)), nil, ""),
			Options{OnTrap: OnTrapClosed}, "the body of this call streams"},
		{"removeheader", httpGuest([]wasmImport{hImport("remove_header", tI32x3)}, concat(call0(0, i32Const(0), i32Const(0), i32Const(5)), i64Const(1)), nil, "X-Key"),
			Options{OnTrap: OnTrapClosed}, "cannot remove header"},
		{"microheader", httpGuest([]wasmImport{hImport("set_header_value", tI32x5)}, concat(call0(0, i32Const(0), i32Const(0), i32Const(10), i32Const(0), i32Const(1)), i64Const(1)), nil, "Micro-Node"),
			Options{OnTrap: OnTrapClosed}, "reserved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := loadHTTP(t, h, tc.name, tc.guest, tc.opts)
			for range 2 { // the second call runs on the replaced instance
				v := w.OnRequest(context.Background(), &wrapper.Call{Service: "s", Endpoint: "E", Header: map[string]string{"X-Key": "k"}})
				switch tc.opts.OnTrap {
				case OnTrapOpen:
					if v.Action != wrapper.Continue {
						t.Fatalf("verdict %+v, want continue (on_trap open)", v)
					}
				default:
					if v.Action != wrapper.Reject || v.Status != 503 || !strings.Contains(v.Message, tc.wantLog) {
						t.Fatalf("verdict %+v, want 503 with %q", v, tc.wantLog)
					}
				}
			}
			if rec.find("wrapper="+tc.name, "guest failed", tc.wantLog) == "" {
				t.Errorf("no log of the failure %q:\n%s", tc.wantLog, strings.Join(rec.lines(), "\n"))
			}
		})
	}
}

func TestHTTPWasmRefusesModules(t *testing.T) {
	h, _ := newTestHost(t)
	for _, tc := range []struct {
		name, want string
		guest      []byte
	}{
		{"no handle_response", "missing export handle_response", (&wasmModule{
			funcs: []wasmFunc{{typ: tI64, body: i64Const(1)}}, exports: []wasmExport{{"handle_request", 0, 0}, {"memory", 2, 0}}}).bytes()},
		{"micro's abi", "imports micro.get_service: only http_handler", httpGuest(
			[]wasmImport{{"micro", "get_service", tI32I32RetI32}}, i64Const(1), nil, "")},
		{"unknown function", "imports http_handler.get_secret, which micro does not provide", httpGuest(
			[]wasmImport{hImport("get_secret", tI32)}, i64Const(1), nil, "")},
		{"micro guest", "missing export handle_request", minimalGuest(nil)},
	} {
		_, err := h.Load(context.Background(), "bad", tc.guest, Options{ABI: ABIHTTPWasm})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `wrapper "bad"`) {
			t.Errorf("%s: Load error %v, want one with %q", tc.name, err, tc.want)
		}
	}
	if _, err := h.Load(context.Background(), "bad", setHeaderGuest, Options{ABI: "proxy-wasm"}); err == nil || !strings.Contains(err.Error(), "proxy-wasm") {
		t.Errorf("Load with an unknown ABI: %v", err)
	}
}

// TestHTTPWasmBody: a guest reads the body of a call that micro holds whole and writes the
// body the call continues with.
func TestHTTPWasmBody(t *testing.T) {
	h, _ := newTestHost(t)
	guest := httpGuest([]wasmImport{hImport("read_body", tI32x3RetI64), hImport("write_body", tI32x3)},
		concat(
			call0(1, i32Const(0), i32Const(100), i32WrapI64(call0(0, i32Const(0), i32Const(100), i32Const(64)))), // body = what was read
			call0(1, i32Const(0), i32Const(0), i32Const(1)),                                                      // body += "!"
			i64Const(1)),
		nil, "!")
	w := loadHTTP(t, h, "body", guest, Options{})
	c := &wrapper.Call{Service: "s", Endpoint: "E", Body: []byte("hello"), BodyHeld: true}
	v := w.OnRequest(context.Background(), c)
	if v.Action != wrapper.Continue || !v.SetBody || string(v.Body) != "hello!" {
		t.Fatalf("verdict %+v, want the call to go on with the body hello!", v)
	}
	w.OnResponse(context.Background(), c, &wrapper.Result{Status: 200})
}
