//go:build !wasip1

package wrapper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/sdk/wrapper/internal/nativehost"
)

// fake is the host, as the tests play it.
type fake struct {
	handler     *Handler
	config      string
	fields      [fieldError + 1]string
	headers     map[string]string
	now         time.Time
	budget      int64
	status      int32
	latency     int64
	fault       int32
	setHeaders  [][2]string
	setReply    [][2]string
	rejected    *[2]any
	phases      int32
	block       []byte
	versions    [fieldError + 1]uint64
	seen        [fieldError + 1]string // the fields as the block's versions last saw them
	logs        []string
	getCalls    int // values written: the config, fields and headers read
	failMessage string
	leases      map[string]float64 // the leases held
	asked       []string           // the get_lease calls, as "resource demand"
	states      []string           // the set_state calls, as "service|endpoint|node|value"
}

// Begin writes the call block as micro does before a guest call: the fields of the
// response only in on_response, and a new version of each field that changed since the
// last call.
func (f *fake) Begin(e nativehost.Export) {
	if e == nativehost.OnInit || f.block == nil {
		return
	}
	response := e == nativehost.OnResponse
	b := f.block
	clear(b)
	binary.NativeEndian.PutUint32(b[abi.CallBlockSize:], abi.CallBlockLen)
	binary.NativeEndian.PutUint64(b[abi.CallBlockNow:], uint64(f.now.UnixNano()))
	binary.NativeEndian.PutUint64(b[abi.CallBlockBudget:], uint64(f.budget))
	if response {
		binary.NativeEndian.PutUint64(b[abi.CallBlockLatency:], uint64(f.latency))
		binary.NativeEndian.PutUint32(b[abi.CallBlockStatus:], uint32(f.status))
		binary.NativeEndian.PutUint32(b[abi.CallBlockFault:], uint32(f.fault))
	}
	for i, v := range f.fields {
		if i == int(fieldError) && !response {
			v = ""
		}
		if v != f.seen[i] || f.versions[i] == 0 {
			f.seen[i] = v
			f.versions[i]++
		}
		binary.NativeEndian.PutUint64(b[abi.CallBlockVersions+8*i:], f.versions[i])
	}
}

// call plays micro's call of an export, returning its result and the message of a
// failure, or "".
func (f *fake) call(e nativehost.Export) (int32, string) {
	code, err := nativeCall(f, f.handler, e)
	f.failMessage = ""
	if err != nil {
		f.failMessage = err.Error()
	}
	return code, f.failMessage
}

// request plays micro's on_request, response its on_response.
func (f *fake) request() int32 { code, _ := f.call(nativehost.OnRequest); return code }
func (f *fake) response()      { f.call(nativehost.OnResponse) }

func (f *fake) write(v string, buf []byte) int32 {
	f.getCalls++
	if len(v) <= len(buf) {
		copy(buf, v)
	}
	return int32(len(v))
}

func (f *fake) GetConfig(buf []byte) int32 { return f.write(f.config, buf) }
func (f *fake) GetField(fl int32, buf []byte) (int32, error) {
	return f.write(f.fields[fl], buf), nil
}
func (f *fake) GetHeader(name string, buf []byte) (int32, error) {
	for k, v := range f.headers {
		if strings.EqualFold(k, name) {
			return f.write(v, buf), nil
		}
	}
	return abi.HeaderAbsent, nil
}
func (f *fake) GetLease(resource string, demand uint64) (float64, bool, error) {
	if resource == "" {
		return 0, false, errors.New("bad call to micro.get_lease: empty resource name")
	}
	f.asked = append(f.asked, fmt.Sprint(resource, " ", demand))
	rate, held := f.leases[resource]
	return rate, held, nil
}
func (f *fake) SetHeader(n, v string) error {
	if strings.HasPrefix(n, abi.ReservedHeaderPrefix) {
		return errors.New("bad call to micro.set_header: reserved")
	}
	f.setHeaders = append(f.setHeaders, [2]string{n, v})
	return nil
}
func (f *fake) SetReplyHeader(n, v string) error {
	f.setReply = append(f.setReply, [2]string{n, v})
	return nil
}
func (f *fake) SetReject(status int32, msg string) error {
	f.rejected = &[2]any{status, msg}
	return nil
}
func (f *fake) SetPhases(mask int32) error  { f.phases = mask; return nil }
func (f *fake) SetCallBlock(b []byte) error { f.block = b; return nil }
func (f *fake) SetState(service, endpoint, node, value string) error {
	if value == "bad" {
		return errors.New("bad call to micro.set_state: bad value")
	}
	f.states = append(f.states, strings.Join([]string{service, endpoint, node, value}, "|"))
	return nil
}
func (f *fake) Log(level int32, msg string) { f.logs = append(f.logs, msg) }

// start resets the package's caches, makes h the fake's handler and plays micro's
// on_init; it returns the fake and on_init's failure message, or "".
func start(t *testing.T, config string, h Handler) (*fake, string) {
	t.Helper()
	fieldValue, fieldVersion = [fieldError + 1]string{}, [fieldError + 1]uint64{}
	lastHeaders, nextHeader = [4]struct{ name, value string }{}, 0
	scratch = make([]byte, 256)
	f := &fake{handler: &h, config: config, phases: abi.PhaseRequest | abi.PhaseResponse, headers: map[string]string{}, now: time.Now()}
	_, fail := f.call(nativehost.OnInit)
	return f, fail
}

func TestInitAndConfig(t *testing.T) {
	type cfg struct {
		Rate  float64 `json:"rate"`
		Burst int     `json:"burst"`
	}
	var got cfg
	h := Handler{
		Init: func(b []byte) error {
			got = cfg{Burst: 1}
			return DecodeConfig(b, &got)
		},
		OnRequest: func(Request) Result { return Continue() },
	}
	f, fail := start(t, `{"rate": 2.5}`, h)
	if fail != "" || got != (cfg{Rate: 2.5, Burst: 1}) {
		t.Errorf("init: %q, config %+v", fail, got)
	}
	if f.phases != abi.PhaseRequest {
		t.Errorf("phases %b: a handler without OnResponse must ask for the request phase only", f.phases)
	}
	// A config larger than the scratch buffer is read in a second call.
	long := `{"rate": 1, "burst": 2` + strings.Repeat(" ", 1000) + `}`
	if _, fail := start(t, long, h); fail != "" || got.Burst != 2 {
		t.Errorf("long config: %q, %+v", fail, got)
	}
	if _, fail := start(t, `{"rate": 1, "brust": 2}`, h); fail != `config: json: unknown field "brust"` {
		t.Errorf("unknown field: %q", fail)
	}
	if _, fail := start(t, `{"rate": "fast"}`, h); !strings.Contains(fail, "config: json: cannot unmarshal string") || !strings.Contains(fail, "rate") {
		t.Errorf("bad type: %q", fail)
	}
}

func TestDecodeConfig(t *testing.T) {
	var v struct{ A int }
	for _, tc := range []struct{ in, err string }{
		{``, ""},
		{`  `, ""},
		{`{}`, ""},
		{`{"A": 3}`, ""},
		{`{"A": 3} {}`, "config: unexpected data after the JSON object"},
		{`{"A": 3} x`, "config: unexpected data after the JSON object"},
		{`{"B": 3}`, `config: json: unknown field "B"`},
		{`[1]`, "config: json: cannot unmarshal array"},
	} {
		err := DecodeConfig([]byte(tc.in), &v)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.HasPrefix(err.Error(), tc.err)) {
			t.Errorf("DecodeConfig(%q) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

func TestHandleMistakes(t *testing.T) {
	if _, fail := start(t, "", Handler{}); fail != "wrapper.Handle: Handler.OnRequest is nil" {
		t.Errorf("nil OnRequest: %q", fail)
	}
	// Handle, as a guest's init func calls it.
	t.Cleanup(func() { handler, handleErr = nil, nil })
	handler, handleErr = nil, nil
	Handle(Handler{OnRequest: func(Request) Result { return Continue() }})
	if handleErr != nil {
		t.Errorf("first Handle: %v", handleErr)
	}
	Handle(Handler{OnRequest: func(Request) Result { return Continue() }})
	if handleErr == nil || handleErr.Error() != "wrapper.Handle called more than once" {
		t.Errorf("second Handle: %v", handleErr)
	}
	f, _ := start(t, "", Handler{OnRequest: func(Request) Result { return Continue() }})
	f.handler = nil
	if _, fail := f.call(nativehost.OnInit); !strings.Contains(fail, "no wrapper.Handler") {
		t.Errorf("no Handle: %q", fail)
	}
	if _, fail := start(t, "", Handler{Init: func([]byte) error { return errors.New("no way") }, OnRequest: func(Request) Result { return Continue() }}); fail != "no way" {
		t.Errorf("Init error: %q", fail)
	}
}

func TestRequest(t *testing.T) {
	var seen []string
	f, _ := start(t, "", Handler{
		OnRequest: func(r Request) Result {
			x, ok := r.Header("x-test")
			_, none := r.Header("X-None")
			seen = append(seen, r.Service(), r.Endpoint(), r.Node(), r.Caller(), x, r.Service())
			if !ok || none || r.Budget() != 3*time.Second {
				t.Errorf("header %v, absent header %v, budget %v", ok, none, r.Budget())
			}
			r.SetHeader("X-Out", "1")
			switch x {
			case "reject":
				SetReplyHeader("Retry-After", "2")
				return Reject(429, "slow down")
			case "node":
				return RejectNode("not you")
			case "panic":
				panic("boom")
			}
			return Continue()
		},
		OnResponse: func(r Response) {
			seen = append(seen, r.Err(), time.Duration(r.Status()).String(), r.Latency().String(), strconv.FormatBool(r.Fault()))
		},
	})
	f.fields = [fieldError + 1]string{"greeter", "Greeter.Hello", "node-1", strings.Repeat("c", 300), "refused"}
	f.headers["X-Test"] = "go"
	f.budget = int64(3 * time.Second)
	if code := f.request(); code != abi.ResultContinue || f.rejected != nil {
		t.Errorf("continue: code %d, rejected %v", code, f.rejected)
	}
	want := []string{"greeter", "Greeter.Hello", "node-1", strings.Repeat("c", 300), "go", "greeter"}
	if !slices.Equal(seen, want) {
		t.Errorf("the request: %q", seen)
	}
	if f.getCalls != 6 { // config is not read without Init; Service() twice is read once
		t.Errorf("%d reads from the host, want 6: a field read twice in a call must be cached", f.getCalls)
	}
	if !slices.Equal(f.setHeaders, [][2]string{{"X-Out", "1"}}) {
		t.Errorf("headers set: %v", f.setHeaders)
	}
	f.status, f.latency, f.fault = 2, int64(time.Millisecond), 1
	seen = nil
	f.response()
	if !slices.Equal(seen, []string{"refused", "2ns", "1ms", "true"}) {
		t.Errorf("the response: %q", seen)
	}
	f.status, f.fault = 404, 0
	seen = nil
	f.response()
	if !slices.Equal(seen, []string{"refused", "404ns", "1ms", "false"}) {
		t.Errorf("a response that is no fault: %q", seen)
	}

	f.headers["X-Test"] = "reject"
	if code := f.request(); code != abi.ResultReject || *f.rejected != [2]any{int32(429), "slow down"} ||
		!slices.Equal(f.setReply, [][2]string{{"Retry-After", "2"}}) {
		t.Errorf("reject: code %d, %v, reply headers %v", code, f.rejected, f.setReply)
	}
	f.headers["X-Test"] = "node"
	if code := f.request(); code != abi.ResultRejectNode || *f.rejected != [2]any{int32(0), "not you"} {
		t.Errorf("reject node: code %d, %v", code, f.rejected)
	}
	f.headers["X-Test"] = "panic"
	if _, fail := f.call(nativehost.OnRequest); fail != "panic in OnRequest: boom" {
		t.Errorf("panic: %q", fail)
	}
	if len(f.logs) == 0 || !strings.Contains(f.logs[len(f.logs)-1], "goroutine") {
		t.Errorf("the panic's stack was not logged: %q", f.logs)
	}
}

// TestInterning checks that repeated values come back as the same string, without a new
// allocation per call: a handler that reads them allocates no more than one that does not.
func TestInterning(t *testing.T) {
	f, _ := start(t, "", Handler{OnRequest: func(r Request) Result {
		r.Service()
		r.Header("X-Key")
		return Continue()
	}})
	f.fields[fieldService] = "greeter"
	f.headers["X-Key"] = "k1"
	f.request()
	reading := testing.AllocsPerRun(100, func() { f.request() })
	idle, _ := start(t, "", Handler{OnRequest: func(Request) Result { return Continue() }})
	if base := testing.AllocsPerRun(100, func() { idle.request() }); reading != base {
		t.Errorf("%v allocations per call reading repeated values, %v reading none: want as many", reading, base)
	}
	f.fields[fieldService] = "billing"
	var got string
	f.handler.OnRequest = func(r Request) Result { got = r.Service(); return Continue() }
	f.request()
	if got != "billing" {
		t.Errorf("a changed value: %q", got)
	}
}

func TestLogf(t *testing.T) {
	f, _ := start(t, "", Handler{OnRequest: func(Request) Result {
		Logf(0, "a %d b %s", 1, "x")
		return Continue()
	}})
	f.request()
	if !slices.Equal(f.logs, []string{"a 1 b x"}) {
		t.Errorf("logs: %q", f.logs)
	}
}

// TestNoHost checks that the package says what is wrong when it is used outside a guest
// call.
func TestNoHost(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "wrappertest") {
			t.Errorf("Logf outside a guest call: panic %v, want one that points at wrappertest", r)
		}
	}()
	Logf(0, "nobody hears this")
}

// TestTrap checks that a host's error ends the guest call, with the error, and that
// Goexit in a handler is reported.
func TestTrap(t *testing.T) {
	f, _ := start(t, "", Handler{OnRequest: func(r Request) Result {
		r.SetHeader("Micro-Mine", "1")
		t.Error("SetHeader returned after the host refused it")
		return Continue()
	}})
	if _, fail := f.call(nativehost.OnRequest); fail != "bad call to micro.set_header: reserved" {
		t.Errorf("trap: %q", fail)
	}
	f.handler.OnRequest = func(Request) Result { runtime.Goexit(); return Continue() }
	if _, fail := f.call(nativehost.OnRequest); !strings.Contains(fail, "without returning") {
		t.Errorf("Goexit: %q", fail)
	}
}

// TestABINames checks that the wasm directives in host_wasip1.go use abi's names, since a
// directive cannot name a constant.
func TestABINames(t *testing.T) {
	src, err := os.ReadFile("host_wasip1.go")
	if err != nil {
		t.Fatal(err)
	}
	exports := map[string]bool{}
	for _, m := range regexp.MustCompile(`//go:wasmexport (\S+)`).FindAllStringSubmatch(string(src), -1) {
		exports[m[1]] = true
	}
	for _, name := range []string{abi.ExportABIVersion, abi.ExportOnInit, abi.ExportOnRequest, abi.ExportOnResponse} {
		if !exports[name] {
			t.Errorf("host_wasip1.go does not export %s", name)
		}
		delete(exports, name)
	}
	if len(exports) > 0 {
		t.Errorf("host_wasip1.go exports names that abi does not know: %v", exports)
	}
	// What the package imports: the budget, status, latency and fault come in the call
	// block instead of from get_budget, get_status, get_latency and get_fault.
	known := map[string]bool{}
	for _, name := range []string{abi.ImportGetConfig, abi.ImportGetService, abi.ImportGetEndpoint, abi.ImportGetNode,
		abi.ImportGetCaller, abi.ImportGetHeader, abi.ImportSetHeader, abi.ImportSetReplyHeader,
		abi.ImportSetReject, abi.ImportGetError, abi.ImportSetPhases, abi.ImportSetCallBlock,
		abi.ImportGetLease, abi.ImportSetState, abi.ImportLog, abi.ImportFail} {
		known[name] = true
	}
	imports := regexp.MustCompile(`//go:wasmimport (\S+) (\S+)`).FindAllStringSubmatch(string(src), -1)
	if len(imports) != len(known) {
		t.Errorf("host_wasip1.go has %d imports, abi %d", len(imports), len(known))
	}
	for _, m := range imports {
		if m[1] != abi.ModuleName || !known[m[2]] {
			t.Errorf("host_wasip1.go imports %s.%s, which abi does not define", m[1], m[2])
		}
	}
}

// TestCallBlockLayout checks that callBlock is laid out as abi's CallBlock offsets say.
func TestCallBlockLayout(t *testing.T) {
	var b callBlock
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"size", unsafe.Offsetof(b.size), abi.CallBlockSize},
		{"now", unsafe.Offsetof(b.now), abi.CallBlockNow},
		{"budget", unsafe.Offsetof(b.budget), abi.CallBlockBudget},
		{"latency", unsafe.Offsetof(b.latency), abi.CallBlockLatency},
		{"status", unsafe.Offsetof(b.status), abi.CallBlockStatus},
		{"fault", unsafe.Offsetof(b.fault), abi.CallBlockFault},
		{"versions", unsafe.Offsetof(b.versions), abi.CallBlockVersions},
		{"the block", unsafe.Sizeof(b), abi.CallBlockLen},
	} {
		if tc.got != tc.want {
			t.Errorf("%s at %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

// TestNow checks that Now is the time micro put in the call block during calls, and the
// clock in Init.
func TestNow(t *testing.T) {
	var inInit, inRequest, inResponse time.Time
	before := time.Now()
	f, fail := start(t, "", Handler{
		Init:       func([]byte) error { inInit = Now(); return nil },
		OnRequest:  func(Request) Result { inRequest = Now(); return Continue() },
		OnResponse: func(Response) { inResponse = Now() },
	})
	if fail != "" {
		t.Fatal(fail)
	}
	if inInit.Before(before) || inInit.After(time.Now()) {
		t.Errorf("Now in Init = %v, want the clock (between %v and now)", inInit, before)
	}
	if len(f.block) != int(unsafe.Sizeof(block)) || unsafe.Pointer(&f.block[0]) != unsafe.Pointer(&block) {
		t.Fatalf("on_init registered %p (%d bytes) as the call block, want %p", f.block, len(f.block), &block)
	}
	f.now = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	f.request()
	f.now = f.now.Add(time.Millisecond)
	f.response()
	if want := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC); !inRequest.Equal(want) || !inResponse.Equal(want.Add(time.Millisecond)) {
		t.Errorf("Now in OnRequest %v, in OnResponse %v; want the block's %v and %v", inRequest, inResponse, want, want.Add(time.Millisecond))
	}
}

// TestFieldVersions checks that a field is read from the host again exactly when its
// version in the call block changes.
func TestFieldVersions(t *testing.T) {
	var got []string
	f, _ := start(t, "", Handler{
		OnRequest:  func(r Request) Result { got = append(got, r.Service(), r.Node()); return Continue() },
		OnResponse: func(r Response) { got = append(got, r.Err(), r.Node()) },
	})
	f.fields[fieldService], f.fields[fieldNode] = "greeter", "n1"
	calls := func() int { n := f.getCalls; f.getCalls = 0; return n }
	for _, step := range []struct {
		do    func()
		want  []string
		reads int
	}{
		{func() { f.request() }, []string{"greeter", "n1"}, 2},
		{func() { f.response() }, []string{"", "n1"}, 1},
		{func() { f.request() }, []string{"greeter", "n1"}, 0},
		{func() { f.fields[fieldNode] = "n2"; f.request() }, []string{"greeter", "n2"}, 1},
		{func() { f.fields[fieldError] = "refused"; f.response() }, []string{"refused", "n2"}, 1},
		{func() { f.response() }, []string{"refused", "n2"}, 0},
		{func() { f.request() }, []string{"greeter", "n2"}, 0},
		{func() { f.response() }, []string{"refused", "n2"}, 1}, // on_request's empty error came between
		{func() { f.fields[fieldNode] = "n1"; f.request() }, []string{"greeter", "n1"}, 1},
	} {
		got = nil
		step.do()
		if n := calls(); !slices.Equal(got, step.want) || n != step.reads {
			t.Errorf("got %q with %d host reads, want %q with %d", got, n, step.want, step.reads)
		}
	}
}

// TestLease checks that Lease passes the resource and the demand to the host, returns
// its answer, and fails the guest call when the host traps.
func TestLease(t *testing.T) {
	type answer struct {
		rate float64
		held bool
	}
	var got []answer
	resource := "api"
	f, fail := start(t, "", Handler{
		Init: func([]byte) error {
			rate, held := Lease("api", 0)
			got = append(got, answer{rate, held})
			return nil
		},
		OnRequest: func(Request) Result {
			rate, held := Lease(resource, 7)
			got = append(got, answer{rate, held})
			return Continue()
		},
	})
	if fail != "" {
		t.Fatal(fail)
	}
	f.request()
	f.leases = map[string]float64{"api": 120.5}
	f.request()
	if want := []answer{{0, false}, {0, false}, {120.5, true}}; !slices.Equal(got, want) {
		t.Errorf("answers %v, want %v", got, want)
	}
	if want := []string{"api 0", "api 7", "api 7"}; !slices.Equal(f.asked, want) {
		t.Errorf("asked %q, want %q", f.asked, want)
	}
	resource = ""
	if _, fail := f.call(nativehost.OnRequest); fail != "bad call to micro.get_lease: empty resource name" {
		t.Errorf("a bad name: %q, want the host's trap", fail)
	}
}

// TestSetState checks that SetState passes its strings to the host, in every phase, and
// fails the guest call when the host traps.
func TestSetState(t *testing.T) {
	value := "open"
	f, fail := start(t, "", Handler{
		Init:       func([]byte) error { SetState("", "", "", "ready"); return nil },
		OnRequest:  func(Request) Result { SetState("greeter", "Greeter.Hello", "n1", value); return Continue() },
		OnResponse: func(Response) { SetState("", "", "n1", "") },
	})
	if fail != "" {
		t.Fatal(fail)
	}
	f.request()
	f.response()
	if want := []string{"|||ready", "greeter|Greeter.Hello|n1|open", "||n1|"}; !slices.Equal(f.states, want) {
		t.Errorf("states %q, want %q", f.states, want)
	}
	value = "bad"
	if _, fail := f.call(nativehost.OnRequest); fail != "bad call to micro.set_state: bad value" {
		t.Errorf("a bad value: %q, want the host's trap", fail)
	}
}
