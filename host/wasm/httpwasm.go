package wasm

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"
)

// This file runs guests of the http-wasm handler ABI (https://http-wasm.io/http-handler-abi/),
// the ABI of a Wrapper loaded with Options.ABI = ABIHTTPWasm. Such a guest sees a call as
// an HTTP request: handle_request either answers it in place of the app (next = 0: a
// Reject verdict with the guest's status, body and headers) or lets it continue (next = 1,
// with the request headers it set); handle_response then sees the outcome. The instances,
// their limits and their replacement are the Wrapper's, as for micro's own guests; only the
// host module and the two phases differ. abi/README.md says what of the ABI micro supports.

// The names and values of the http-wasm handler ABI that micro uses.
const (
	httpModule               = "http_handler"
	httpExportHandleRequest  = "handle_request"
	httpExportHandleResponse = "handle_response"
	httpExportMemory         = "memory"
	// A guest built as a WASI command (TinyGo's default) registers its handlers in
	// _start; a reactor has _initialize.
	httpExportStart      = "_start"
	httpExportInitialize = "_initialize"

	// Header kinds.
	httpHeaderRequest          = 0
	httpHeaderResponse         = 1
	httpHeaderRequestTrailers  = 2
	httpHeaderResponseTrailers = 3
	// Body kinds.
	httpBodyRequest  = 0
	httpBodyResponse = 1

	// Log levels.
	httpLogDebug = -1
	httpLogInfo  = 0
	httpLogWarn  = 1
	httpLogError = 2

	// httpProtocol is what get_protocol_version says: micro's calls have no HTTP version
	// of their own, and apps get HTTP/1.1.
	httpProtocol = "HTTP/1.1"
	// httpDefaultStatus is the status of an answer whose guest set none.
	httpDefaultStatus = 200
	// httpFeatures are the features enable_features grants: buffer_request (micro holds a
	// request body up to server.InMemoryBody whole, so a guest can read it and the app still
	// gets it), but not buffer_response or trailers, which micro's wrappers do not see.
	httpFeatures = 1
	// httpMaxBody bounds a request body a guest writes.
	httpMaxBody = 4 << 20
)

// httpPending is a call that handle_request let through: the instance that saw it, and
// the request context to give handle_response.
type httpPending struct {
	inst   *instance
	reqCtx uint32
}

// httpCall is what the http-wasm host functions read and write during one guest call.
type httpCall struct {
	phase  phase // phaseInit, phaseRequest or phaseResponse
	call   *wrapper.Call
	result *wrapper.Result

	// req is the guest's view of the request headers, made on first use: the call's
	// headers but micro's own (Micro-*), with the guest's changes. set names the headers
	// the guest set or added, which the call continues with.
	req http.Header
	set map[string]struct{}

	// The answer of handle_request, when the guest gives one.
	status int
	header http.Header
	body   []byte

	// read is how much of the request body the guest has read; reqBody is the body it
	// wrote for the request (reqBodySet once it wrote one), which the call continues with.
	read       int
	reqBody    []byte
	reqBodySet bool
}

// heldBody returns the request body, trapping when micro does not hold it whole.
func (hc *httpCall) heldBody(fn string) []byte {
	switch {
	case hc.phase != phaseRequest:
		httpTrap(fn, "the request body is gone once the call went on")
	case !hc.call.BodyHeld:
		httpTrap(fn, "the body of this call streams (it is longer than 64KiB, of unknown length, or on HTTP/2, or the wrapper is a client's): micro's wrappers get only bodies it holds whole")
	}
	return hc.call.Body
}

// requestHeader returns the guest's view of the request headers.
func (hc *httpCall) requestHeader() http.Header {
	if hc.req == nil {
		hc.req = make(http.Header, len(hc.call.Header))
		for k, v := range hc.call.Header {
			if !reservedHeader(k) {
				ck := textproto.CanonicalMIMEHeaderKey(k)
				hc.req[ck] = append(hc.req[ck], v)
			}
		}
	}
	return hc.req
}

// reservedHeader reports whether name is one of micro's own headers.
func reservedHeader(name string) bool {
	p := abi.ReservedHeaderPrefix
	return len(name) >= len(p) && strings.EqualFold(name[:len(p)], p)
}

// method is the call's HTTP method.
func (hc *httpCall) method() string {
	if m := lookupCallHeader(hc.call.Header, transport.HeaderMethod); m != "" {
		return m
	}
	return http.MethodPost
}

// uri is the call's request URI: /{service}, then the path and query the app gets.
func (hc *httpCall) uri() string {
	if p := lookupCallHeader(hc.call.Header, transport.HeaderPath); p != "" {
		return "/" + hc.call.Service + p
	}
	return "/" + hc.call.Service + "/" + hc.call.Endpoint
}

func lookupCallHeader(h map[string]string, name string) string {
	v, _ := lookupHeader(h, []byte(name))
	return v
}

// httpTrap stops the guest with an abiError about the http-wasm host function fn.
func httpTrap(fn, format string, args ...any) {
	panic(&abiError{module: httpModule, fn: fn, msg: fmt.Sprintf(format, args...)})
}

// needHTTPCall returns the instance's call state, and traps unless a call is in progress.
func needHTTPCall(inst *instance, fn string) *httpCall {
	hc := &inst.hw
	if hc.call == nil {
		httpTrap(fn, "no request in progress")
	}
	return hc
}

// httpBuf checks that the guest's buffer [ptr, ptr+limit) lies in its memory.
func httpBuf(m api.Module, fn string, ptr, limit uint32) []byte {
	b, ok := m.Memory().Read(ptr, limit)
	if !ok {
		httpTrap(fn, "range [%d, %d) lies outside the guest's memory of %d bytes", ptr, uint64(ptr)+uint64(limit), m.Memory().Size())
	}
	return b
}

// httpWrite implements the (buf, buf_limit) -> len protocol: v is written when it fits.
func httpWrite(m api.Module, fn, v string, ptr, limit uint32) uint64 {
	buf := httpBuf(m, fn, ptr, limit)
	if len(v) <= len(buf) {
		copy(buf, v)
	}
	return uint64(uint32(len(v)))
}

// httpWriteList writes vs NUL-terminated when they fit in [ptr, ptr+limit), and returns
// their count in the high 32 bits and their encoded length in the low ones.
func httpWriteList(m api.Module, fn string, vs []string, ptr, limit uint32) uint64 {
	buf := httpBuf(m, fn, ptr, limit)
	n := 0
	for _, v := range vs {
		n += len(v) + 1
	}
	if n <= len(buf) {
		for _, v := range vs {
			buf = buf[copy(buf, v):]
			buf[0] = 0
			buf = buf[1:]
		}
	}
	return uint64(len(vs))<<32 | uint64(uint32(n))
}

// httpString copies the guest's string at [ptr, ptr+n), which may be at most limit bytes.
func httpString(m api.Module, fn, what string, ptr, n uint32, limit int) string {
	if int64(n) > int64(limit) {
		httpTrap(fn, "%s of %d bytes is longer than the limit of %d", what, n, limit)
	}
	return string(httpBuf(m, fn, ptr, n))
}

// httpHeaderName reads a header name and returns it in canonical form.
func httpHeaderName(m api.Module, fn string, ptr, n uint32) string {
	return textproto.CanonicalMIMEHeaderKey(httpString(m, fn, "name", ptr, n, abi.MaxHeaderNameLen))
}

// headers returns the headers of kind that fn may read: nil when there are none.
func (hc *httpCall) headers(fn string, kind uint32) http.Header {
	switch kind {
	case httpHeaderRequest:
		return hc.requestHeader()
	case httpHeaderResponse:
		// In handle_response, micro has the response's status but not its headers.
		return hc.header
	case httpHeaderRequestTrailers, httpHeaderResponseTrailers:
		return nil
	}
	httpTrap(fn, "unknown header kind %d", kind)
	return nil
}

// change applies a guest's change of header name of kind: set replaces its values with
// value, add appends value, and remove (value ignored) drops it.
func (hc *httpCall) change(fn string, kind uint32, name, value string, op string) {
	if err := checkHeader(name, value); err != "" {
		httpTrap(fn, "%s", err)
	}
	switch kind {
	case httpHeaderRequest:
		if hc.phase != phaseRequest {
			httpTrap(fn, "the request headers can change only in %s", httpExportHandleRequest)
		}
		h := hc.requestHeader()
		if op == "remove" {
			if _, ok := lookupHeader(hc.call.Header, []byte(name)); ok {
				httpTrap(fn, "micro cannot remove header %q from a call: a wrapper can only set request headers", name)
			}
			delete(h, name)
			delete(hc.set, name)
			return
		}
		if hc.set == nil {
			hc.set = make(map[string]struct{}, 2)
		}
		if _, ok := hc.set[name]; !ok && len(hc.set) >= abi.MaxHeaders {
			httpTrap(fn, "more than %d request headers set", abi.MaxHeaders)
		}
		hc.set[name] = struct{}{}
		editHeader(h, name, value, op)
	case httpHeaderResponse:
		if hc.phase != phaseRequest {
			httpTrap(fn, "micro's wrappers cannot change the response of a call that went on")
		}
		if hc.header == nil {
			hc.header = make(http.Header, 2)
		}
		if _, ok := hc.header[name]; !ok && op != "remove" && len(hc.header) >= abi.MaxHeaders {
			httpTrap(fn, "more than %d response headers set", abi.MaxHeaders)
		}
		editHeader(hc.header, name, value, op)
	case httpHeaderRequestTrailers, httpHeaderResponseTrailers:
		httpTrap(fn, "micro does not support trailers (enable_features grants no trailers)")
	default:
		httpTrap(fn, "unknown header kind %d", kind)
	}
}

func editHeader(h http.Header, name, value, op string) {
	switch op {
	case "set":
		h[name] = []string{value}
	case "add":
		h[name] = append(h[name], value)
	default:
		delete(h, name)
	}
}

// httpChange returns the host function that changes a header: set, add or remove.
func httpChange(fn, op string) api.GoModuleFunc {
	return func(ctx context.Context, m api.Module, stack []uint64) {
		hc := needHTTPCall(instanceFrom(ctx), fn)
		kind := uint32(stack[0])
		name := httpHeaderName(m, fn, uint32(stack[1]), uint32(stack[2]))
		var value string
		if op != "remove" {
			value = httpString(m, fn, "value", uint32(stack[3]), uint32(stack[4]), abi.MaxHeaderValueLen)
		}
		hc.change(fn, kind, name, value, op)
	}
}

// httpRequestField returns the host function that reads a field of the request, and the
// one that sets it, which micro allows only to the value it has: a wrapper cannot reroute
// a call.
func httpRequestField(get, set string, field func(*httpCall) string) []hostFunc {
	return []hostFunc{
		{get, []api.ValueType{i32, i32}, []api.ValueType{i32},
			func(ctx context.Context, m api.Module, stack []uint64) {
				hc := needHTTPCall(instanceFrom(ctx), get)
				stack[0] = httpWrite(m, get, field(hc), uint32(stack[0]), uint32(stack[1]))
			}},
		{set, []api.ValueType{i32, i32}, nil,
			func(ctx context.Context, m api.Module, stack []uint64) {
				hc := needHTTPCall(instanceFrom(ctx), set)
				v := httpString(m, set, "value", uint32(stack[0]), uint32(stack[1]), abi.MaxHeaderValueLen)
				if cur := field(hc); v != cur {
					httpTrap(set, "micro routes a call by its service and endpoint: a wrapper cannot change %q to %q", cur, v)
				}
			}},
	}
}

// slogLevel maps an http-wasm log level onto slog's.
func slogLevel(level int32) slog.Level {
	switch {
	case level <= httpLogDebug:
		return slog.LevelDebug
	case level == httpLogInfo:
		return slog.LevelInfo
	case level == httpLogWarn:
		return slog.LevelWarn
	}
	return slog.LevelError
}

// httpHostFuncs are the functions of httpModule.
var httpHostFuncs = append([]hostFunc{
	{"enable_features", []api.ValueType{i32}, []api.ValueType{i32},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			instanceFrom(ctx)
			stack[0] = uint64(uint32(stack[0]) & httpFeatures)
		}},
	{"get_config", []api.ValueType{i32, i32}, []api.ValueType{i32},
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			stack[0] = httpWrite(m, "get_config", inst.w.config, uint32(stack[0]), uint32(stack[1]))
		}},
	{"log_enabled", []api.ValueType{i32}, []api.ValueType{i32},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			level := int32(uint32(stack[0]))
			stack[0] = 0
			if level <= httpLogError && inst.logger.Enabled(context.Background(), slogLevel(level)) {
				stack[0] = 1
			}
		}},
	{"log", []api.ValueType{i32, i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			level := int32(uint32(stack[0]))
			b := httpBuf(m, "log", uint32(stack[1]), uint32(stack[2]))
			if level > httpLogError {
				return // none
			}
			if len(b) > abi.MaxLogLen {
				b = b[:abi.MaxLogLen]
			}
			inst.logger.Log(context.Background(), slogLevel(level), strings.ToValidUTF8(string(b), "\uFFFD"))
		}},
	{"get_protocol_version", []api.ValueType{i32, i32}, []api.ValueType{i32},
		func(ctx context.Context, m api.Module, stack []uint64) {
			needHTTPCall(instanceFrom(ctx), "get_protocol_version")
			stack[0] = httpWrite(m, "get_protocol_version", httpProtocol, uint32(stack[0]), uint32(stack[1]))
		}},
	{"get_source_addr", []api.ValueType{i32, i32}, []api.ValueType{i32},
		func(ctx context.Context, m api.Module, stack []uint64) {
			// A call names its caller (wrapper.Call.Caller), not an address.
			needHTTPCall(instanceFrom(ctx), "get_source_addr")
			stack[0] = httpWrite(m, "get_source_addr", "", uint32(stack[0]), uint32(stack[1]))
		}},
	{"get_header_names", []api.ValueType{i32, i32, i32}, []api.ValueType{i64},
		func(ctx context.Context, m api.Module, stack []uint64) {
			const fn = "get_header_names"
			h := needHTTPCall(instanceFrom(ctx), fn).headers(fn, uint32(stack[0]))
			names := make([]string, 0, len(h))
			for k := range h {
				names = append(names, strings.ToLower(k))
			}
			stack[0] = httpWriteList(m, fn, names, uint32(stack[1]), uint32(stack[2]))
		}},
	{"get_header_values", []api.ValueType{i32, i32, i32, i32, i32}, []api.ValueType{i64},
		func(ctx context.Context, m api.Module, stack []uint64) {
			const fn = "get_header_values"
			h := needHTTPCall(instanceFrom(ctx), fn).headers(fn, uint32(stack[0]))
			name := httpHeaderName(m, fn, uint32(stack[1]), uint32(stack[2]))
			stack[0] = httpWriteList(m, fn, h[name], uint32(stack[3]), uint32(stack[4]))
		}},
	{"set_header_value", []api.ValueType{i32, i32, i32, i32, i32}, nil, httpChange("set_header_value", "set")},
	{"add_header_value", []api.ValueType{i32, i32, i32, i32, i32}, nil, httpChange("add_header_value", "add")},
	{"remove_header", []api.ValueType{i32, i32, i32}, nil, httpChange("remove_header", "remove")},
	{"read_body", []api.ValueType{i32, i32, i32}, []api.ValueType{i64},
		func(ctx context.Context, m api.Module, stack []uint64) {
			const fn = "read_body"
			hc := needHTTPCall(instanceFrom(ctx), fn)
			if kind := uint32(stack[0]); kind != httpBodyRequest {
				httpTrap(fn, "micro's wrappers do not see the bodies of answers (body kind %d)", kind)
			}
			body := hc.heldBody(fn)
			buf := httpBuf(m, fn, uint32(stack[1]), uint32(stack[2]))
			n := copy(buf, body[hc.read:])
			hc.read += n
			var eof uint64
			if hc.read >= len(body) {
				eof = 1 << 32
			}
			stack[0] = eof | uint64(n)
		}},
	{"write_body", []api.ValueType{i32, i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			const fn = "write_body"
			hc := needHTTPCall(instanceFrom(ctx), fn)
			b := httpBuf(m, fn, uint32(stack[1]), uint32(stack[2]))
			switch kind := uint32(stack[0]); {
			case kind == httpBodyRequest:
				hc.heldBody(fn)
				if !hc.reqBodySet {
					hc.reqBody, hc.reqBodySet = nil, true // a first write replaces the body
				}
				if len(hc.reqBody)+len(b) > httpMaxBody {
					httpTrap(fn, "the request body written is larger than %d bytes", httpMaxBody)
				}
				hc.reqBody = append(hc.reqBody, b...)
				return
			case kind != httpBodyResponse:
				httpTrap(fn, "unknown body kind %d", kind)
			case hc.phase != phaseRequest:
				httpTrap(fn, "micro's wrappers cannot change the response of a call that went on")
			}
			// The answer's body becomes the rejection's message, which is bounded.
			hc.body = append(hc.body, b[:min(len(b), max(0, abi.MaxMessageLen-len(hc.body)))]...)
		}},
	{"get_status_code", nil, []api.ValueType{i32},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			hc := needHTTPCall(instanceFrom(ctx), "get_status_code")
			status := hc.status
			if hc.phase == phaseResponse {
				status = hc.result.Status
			}
			stack[0] = api.EncodeI32(int32(status))
		}},
	{"set_status_code", []api.ValueType{i32}, nil,
		func(ctx context.Context, _ api.Module, stack []uint64) {
			const fn = "set_status_code"
			hc := needHTTPCall(instanceFrom(ctx), fn)
			status := int32(uint32(stack[0]))
			switch {
			case hc.phase != phaseRequest:
				httpTrap(fn, "micro's wrappers cannot change the response of a call that went on")
			case status < 200 || status > 599:
				httpTrap(fn, "status %d is not in [200, 599]", status)
			}
			hc.status = int(status)
		}},
}, append(
	httpRequestField("get_method", "set_method", (*httpCall).method),
	httpRequestField("get_uri", "set_uri", (*httpCall).uri)...)...)

var httpRequiredExports = []exportSig{
	{httpExportHandleRequest, nil, []api.ValueType{i64}},
	{httpExportHandleResponse, []api.ValueType{i32, i32}, nil},
}

// checkHTTPModule says what keeps a compiled module from being an http-wasm guest.
func checkHTTPModule(m wazero.CompiledModule) error {
	problems := checkExports(m, httpRequiredExports)
	if _, ok := m.ExportedMemories()[httpExportMemory]; !ok {
		problems = append(problems, "missing export "+httpExportMemory+" (the guest's memory)")
	}
	problems = append(problems, checkImports(m, httpModule, httpHostFuncs)...)
	if len(problems) > 0 {
		return fmt.Errorf("not an http-wasm guest: %s", strings.Join(problems, "; "))
	}
	return nil
}

// startHTTP starts an http-wasm instance: it runs the guest's _start or _initialize, if
// it has one, within InitTimeout.
func (inst *instance) startHTTP() error {
	inst.onRequest = inst.mod.ExportedFunction(httpExportHandleRequest)
	inst.onResponse = inst.mod.ExportedFunction(httpExportHandleResponse)
	inst.phases = abi.PhaseRequest | abi.PhaseResponse
	for _, name := range []string{httpExportStart, httpExportInitialize} {
		if f := inst.mod.ExportedFunction(name); f != nil {
			inst.hw = httpCall{phase: phaseInit}
			_, err := inst.call(f, InitTimeout)
			inst.hw = httpCall{}
			if err != nil {
				return fmt.Errorf("%s: %s", name, inst.describe(err, InitTimeout))
			}
			return nil
		}
	}
	return nil
}

// httpRequest runs handle_request for c on inst, the instance of s, which the caller has
// locked; it unlocks s, or hands it to fault.
func (w *Wrapper) httpRequest(s *slot, inst *instance, c *wrapper.Call) wrapper.Verdict {
	inst.hw = httpCall{phase: phaseRequest, call: c, status: httpDefaultStatus}
	ctxNext, err := inst.call(inst.onRequest, w.timeout)
	s.record(w, phaseRequest, inst.started, err == nil && ctxNext&1 == 0, err != nil)
	if err != nil {
		inst.hw = httpCall{}
		return w.failVerdict(w.fault(s, inst, phaseRequest, err))
	}
	hc := &inst.hw
	var v wrapper.Verdict
	if ctxNext&1 == 1 {
		v.Action = wrapper.Continue
		v.SetBody, v.Body = hc.reqBodySet, hc.reqBody
		for name := range hc.set {
			if vs := hc.req[name]; len(vs) > 0 {
				if v.Header == nil {
					v.Header = make(map[string]string, len(hc.set))
				}
				v.Header[name] = strings.Join(vs, ", ")
			}
		}
		if s.pending == nil {
			s.pending = make(map[*wrapper.Call]httpPending)
		}
		s.pending[c] = httpPending{inst: inst, reqCtx: uint32(ctxNext >> 32)}
	} else {
		v = w.httpAnswer(hc)
	}
	inst.hw = httpCall{}
	s.unlock()
	return v
}

// httpAnswer turns the answer of a handle_request that did not let the call go on into a
// rejection: its status, its body as the message, and its headers as the reply's, but
// those of the body's encoding, since the reply's body is micro's error.
func (w *Wrapper) httpAnswer(hc *httpCall) wrapper.Verdict {
	v := wrapper.Verdict{Action: wrapper.Reject, Status: hc.status, Message: strings.ToValidUTF8(string(hc.body), "\uFFFD")}
	if v.Message == "" {
		v.Message = fmt.Sprintf("wrapper %s answered %d", w.name, hc.status)
	}
	for name, vs := range hc.header {
		switch name {
		case "Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding":
			continue
		}
		if v.ReplyHeader == nil {
			v.ReplyHeader = make(map[string]string, len(hc.header))
		}
		v.ReplyHeader[name] = strings.Join(vs, ", ")
	}
	return v
}

// httpResponse runs handle_response for c, when handle_request let it through on the
// instance that s still has. The caller has locked s; httpResponse unlocks it, or hands
// it to fault.
func (w *Wrapper) httpResponse(s *slot, c *wrapper.Call, r *wrapper.Result) {
	p, ok := s.pending[c]
	delete(s.pending, c)
	if !ok || s.inst != p.inst {
		// The call went on without this guest (it failed open), or its instance has been
		// replaced since: the new one never saw the request.
		s.unlock()
		return
	}
	var isError uint64
	if r.Err != "" {
		isError = 1
	}
	inst := p.inst
	inst.hw = httpCall{phase: phaseResponse, call: c, result: r}
	_, err := inst.call(inst.onResponse, w.timeout, uint64(p.reqCtx), isError)
	inst.hw = httpCall{}
	s.record(w, phaseResponse, inst.started, false, err != nil)
	if err != nil {
		w.fault(s, inst, phaseResponse, err)
		return
	}
	s.unlock()
}
