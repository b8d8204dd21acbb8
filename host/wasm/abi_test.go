package wasm

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

// probe is a hand-made guest that imports every host function and exports each as
// "call_NAME", forwarding its arguments: the test drives the ABI boundary with any
// pointers and lengths, as a buggy or hostile guest would.
type probe struct {
	rt   wazero.Runtime
	mod  api.Module
	inst *instance
	logs *logRecorder
	fns  map[string]api.Function
}

const probePages = 1

func probeModule() []byte {
	m := &wasmModule{memPages: probePages}
	for i, f := range hostFuncs {
		typ := funcType{params: f.params, results: f.results}
		m.imports = append(m.imports, wasmImport{abi.ModuleName, f.name, typ})
		var body []byte
		for j := range f.params {
			body = append(body, localGet(uint32(j))...)
		}
		body = append(body, call(uint32(i))...)
		m.funcs = append(m.funcs, wasmFunc{typ: typ, body: body})
		m.exports = append(m.exports, wasmExport{"call_" + f.name, 0, uint32(len(hostFuncs) + i)})
	}
	m.exports = append(m.exports, wasmExport{"memory", 2, 0})
	return m.bytes()
}

func newProbe(t testing.TB) *probe {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { rt.Close(ctx) })
	if err := instantiateHostModule(ctx, rt, abi.ModuleName, hostFuncs); err != nil {
		t.Fatal(err)
	}
	mod, err := rt.Instantiate(ctx, probeModule())
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogRecorder()
	w := &Wrapper{name: "probe", config: `{"limit":5}`, logger: slog.New(logs), epoch: time.Now()}
	w.syncWall()
	inst := &instance{w: w, mod: mod, mem: mod.Memory(), logger: w.logger}
	inst.ctx = context.WithValue(ctx, instanceKey{}, inst)
	p := &probe{rt: rt, mod: mod, inst: inst, logs: logs, fns: map[string]api.Function{}}
	for _, f := range hostFuncs {
		p.fns[f.name] = mod.ExportedFunction("call_" + f.name)
	}
	return p
}

// in puts the probe in a phase, with a call and a result.
func (p *probe) in(ph phase) {
	p.inst.st = callState{
		phase: ph,
		call: &wrapper.Call{Service: "greeter", Endpoint: "Greeter.Hello", Node: "n1", Caller: "app",
			Header:   map[string]string{"X-Test": "value", "Micro-Timeout": "1s"},
			Deadline: time.Now().Add(time.Hour)},
		result: &wrapper.Result{Status: 502, Err: "connection refused", Latency: 7 * time.Millisecond, Fault: true},
	}
	if ph == phaseInit || ph == phaseIdle {
		p.inst.st.call, p.inst.st.result = nil, nil
	}
}

func (p *probe) call(name string, params ...uint64) (uint64, error) {
	res, err := p.fns[name].Call(p.inst.ctx, params...)
	if err != nil || len(res) == 0 {
		return 0, err
	}
	return res[0], nil
}

func (p *probe) put(ptr uint32, s string) {
	if !p.mod.Memory().Write(ptr, []byte(s)) {
		panic("put out of range")
	}
}

func (p *probe) get(ptr, n uint32) string {
	b, ok := p.mod.Memory().Read(ptr, n)
	if !ok {
		panic("get out of range")
	}
	return string(b)
}

// wantABIError checks that err is a trap from a host function's check, saying want.
func wantABIError(t *testing.T, what string, err error, want string) {
	t.Helper()
	var ae *abiError
	if !errors.As(err, &ae) || !strings.Contains(ae.Error(), want) {
		t.Errorf("%s: got %v, want an ABI error with %q", what, err, want)
	}
}

const memSize = probePages * wasmPageSize

func TestABIGetProtocol(t *testing.T) {
	p := newProbe(t)
	p.in(phaseRequest)

	n, err := p.call(abi.ImportGetService, 100, 64)
	if err != nil || n != 7 || p.get(100, 7) != "greeter" {
		t.Fatalf("get_service: %d %v %q", n, err, p.get(100, 7))
	}
	// A buffer too small gets nothing written, and the length to retry with.
	p.put(300, "......")
	if n, err := p.call(abi.ImportGetEndpoint, 300, 5); err != nil || n != 13 || p.get(300, 6) != "......" {
		t.Errorf("get_endpoint into 5 bytes: %d %v %q", n, err, p.get(300, 6))
	}
	// The last byte of memory is usable; one past it is not.
	if n, err := p.call(abi.ImportGetNode, memSize-2, 2); err != nil || n != 2 || p.get(memSize-2, 2) != "n1" {
		t.Errorf("get_node at the end of memory: %d %v", n, err)
	}
	for _, tc := range []struct{ ptr, n uint64 }{
		{memSize - 1, 2}, {memSize, 1}, {memSize + 1, 0}, {0xffffffff, 1}, {1, 0xffffffff}, {0xffffffff, 0xffffffff},
	} {
		_, err := p.call(abi.ImportGetCaller, tc.ptr, tc.n)
		wantABIError(t, "get_caller out of range", err, "lies outside the guest's memory of 65536 bytes")
	}
	// An empty buffer at the very end is in range.
	if n, err := p.call(abi.ImportGetCaller, memSize, 0); err != nil || n != 3 {
		t.Errorf("get_caller with an empty buffer: %d %v", n, err)
	}

	// Headers match case-insensitively; an absent one is -1; a bad name is a trap.
	p.put(1000, "x-TEST")
	if n, err := p.call(abi.ImportGetHeader, 1000, 6, 2000, 64); err != nil || n != 5 || p.get(2000, 5) != "value" {
		t.Errorf("get_header: %d %v", n, err)
	}
	p.put(1000, "X-None")
	if n, err := p.call(abi.ImportGetHeader, 1000, 6, 2000, 64); err != nil || int32(uint32(n)) != abi.HeaderAbsent {
		t.Errorf("get_header of an absent header: %d %v", int32(uint32(n)), err)
	}
	_, err = p.call(abi.ImportGetHeader, 1000, abi.MaxHeaderNameLen+1, 2000, 64)
	wantABIError(t, "get_header long name", err, "longer than the limit of 256")
	_, err = p.call(abi.ImportGetHeader, memSize-3, 6, 2000, 64)
	wantABIError(t, "get_header name out of range", err, "outside the guest's memory")
	_, err = p.call(abi.ImportGetHeader, 1000, 6, memSize-3, 64)
	wantABIError(t, "get_header absent, buffer out of range", err, "outside the guest's memory")

	if b, err := p.call(abi.ImportGetBudget); err != nil || time.Duration(b) < 59*time.Minute {
		t.Errorf("get_budget: %v %v", time.Duration(b), err)
	}
	p.inst.st.call.Deadline = time.Time{}
	if b, err := p.call(abi.ImportGetBudget); err != nil || int64(b) != abi.BudgetNone {
		t.Errorf("get_budget without a deadline: %d %v", int64(b), err)
	}
	if n, err := p.call(abi.ImportGetConfig, 0, 100); err != nil || p.get(0, uint32(n)) != `{"limit":5}` {
		t.Errorf("get_config: %d %v", n, err)
	}
}

func TestABIPhases(t *testing.T) {
	p := newProbe(t)
	for _, tc := range []struct {
		fn     string
		params []uint64
		ok     []phase
	}{
		{abi.ImportGetService, []uint64{0, 10}, []phase{phaseRequest, phaseResponse}},
		{abi.ImportGetHeader, []uint64{0, 1, 0, 10}, []phase{phaseRequest, phaseResponse}},
		{abi.ImportGetBudget, nil, []phase{phaseRequest, phaseResponse}},
		{abi.ImportSetHeader, []uint64{100, 1, 0, 0}, []phase{phaseRequest}},
		{abi.ImportSetReplyHeader, []uint64{100, 1, 0, 0}, []phase{phaseRequest}},
		{abi.ImportSetReject, []uint64{429, 0, 0}, []phase{phaseRequest}},
		{abi.ImportGetStatus, nil, []phase{phaseResponse}},
		{abi.ImportGetError, []uint64{0, 10}, []phase{phaseResponse}},
		{abi.ImportGetLatency, nil, []phase{phaseResponse}},
		{abi.ImportGetFault, nil, []phase{phaseResponse}},
		{abi.ImportSetPhases, []uint64{1}, []phase{phaseInit}},
		{abi.ImportSetCallBlock, []uint64{1024, abi.CallBlockLen}, []phase{phaseInit}},
		{abi.ImportGetConfig, []uint64{0, 10}, []phase{phaseIdle, phaseInit, phaseRequest, phaseResponse}},
		{abi.ImportLog, []uint64{0, 0, 0}, []phase{phaseIdle, phaseInit, phaseRequest, phaseResponse}},
		{abi.ImportGetLease, []uint64{100, 1, 1, 200}, []phase{phaseIdle, phaseInit, phaseRequest, phaseResponse}},
		{abi.ImportSetState, []uint64{0, 0, 0, 0, 100, 1, 100, 1}, []phase{phaseIdle, phaseInit, phaseRequest, phaseResponse}},
	} {
		p.put(100, "X")
		for _, ph := range []phase{phaseIdle, phaseInit, phaseRequest, phaseResponse} {
			p.in(ph)
			_, err := p.call(tc.fn, tc.params...)
			want := false
			for _, o := range tc.ok {
				want = want || o == ph
			}
			if want && err != nil {
				t.Errorf("%s in %s: %v", tc.fn, ph, err)
			}
			if !want {
				var ae *abiError
				if !errors.As(err, &ae) {
					t.Errorf("%s in %s: got %v, want a trap", tc.fn, ph, err)
				}
			}
		}
	}
	p.in(phaseResponse)
	if s, _ := p.call(abi.ImportGetStatus); s != 502 {
		t.Errorf("get_status = %d", s)
	}
	if l, _ := p.call(abi.ImportGetLatency); time.Duration(l) != 7*time.Millisecond {
		t.Errorf("get_latency = %v", time.Duration(l))
	}
	if n, _ := p.call(abi.ImportGetError, 0, 100); p.get(0, uint32(n)) != "connection refused" {
		t.Errorf("get_error = %q", p.get(0, uint32(n)))
	}
	if f, err := p.call(abi.ImportGetFault); f != 1 || err != nil {
		t.Errorf("get_fault of a fault = %d, %v; want 1", f, err)
	}
	p.inst.st.result = &wrapper.Result{Status: 404, Latency: time.Millisecond}
	if f, err := p.call(abi.ImportGetFault); f != 0 || err != nil {
		t.Errorf("get_fault of a 404 that is no fault = %d, %v; want 0", f, err)
	}
}

func TestABISetters(t *testing.T) {
	p := newProbe(t)
	p.in(phaseRequest)
	set := func(fn, name, value string) error {
		p.put(0, name)
		p.put(4096, value)
		_, err := p.call(fn, 0, uint64(len(name)), 4096, uint64(len(value)))
		return err
	}
	if err := set(abi.ImportSetHeader, "x-trace-id", "abc"); err != nil {
		t.Fatal(err)
	}
	if err := set(abi.ImportSetHeader, "X-TRACE-ID", "def"); err != nil { // replaces
		t.Fatal(err)
	}
	if err := set(abi.ImportSetReplyHeader, "retry-after", "3"); err != nil {
		t.Fatal(err)
	}
	if got := p.inst.st.header; len(got) != 1 || got["X-Trace-Id"] != "def" {
		t.Errorf("headers set: %v", got)
	}
	if got := p.inst.st.replyHeader; len(got) != 1 || got["Retry-After"] != "3" {
		t.Errorf("reply headers set: %v", got)
	}
	for _, tc := range []struct{ name, value, want string }{
		{"", "v", "empty header name"},
		{"Bad Name", "v", "not allowed in a name"},
		{"X-Ok", "a\r\nInjected: 1", "control character"},
		{"micro-timeout", "1h", "reserved"},
		{"Micro-Caller", "x", "reserved"},
		{strings.Repeat("x", abi.MaxHeaderNameLen+1), "v", "name of 257 bytes is longer than the limit of 256"},
		{"X-Big", strings.Repeat("v", abi.MaxHeaderValueLen+1), "value of 8193 bytes is longer than the limit of 8192"},
	} {
		wantABIError(t, "set_header "+tc.name[:min(len(tc.name), 20)], set(abi.ImportSetHeader, tc.name, tc.value), tc.want)
	}
	p.in(phaseRequest)
	for i := range abi.MaxHeaders {
		if err := set(abi.ImportSetHeader, "X-H"+strings.Repeat("i", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	wantABIError(t, "one header too many", set(abi.ImportSetHeader, "X-One-More", "v"), "more than 64 headers")

	// set_reject: status bounds, and a message cut to its limit.
	for _, s := range []uint64{399, 600, 200, 0xffffffff} {
		_, err := p.call(abi.ImportSetReject, s, 0, 0)
		wantABIError(t, "set_reject status", err, "is not 0 or in [400, 599]")
	}
	long := strings.Repeat("é", abi.MaxMessageLen) // 2 bytes each
	p.put(0, long)
	if _, err := p.call(abi.ImportSetReject, 429, 0, uint64(len(long))); err != nil {
		t.Fatal(err)
	}
	if m := p.inst.st.rejectMsg; len(m) != abi.MaxMessageLen || p.inst.st.rejectStatus != 429 {
		t.Errorf("reject: status %d, message of %d bytes", p.inst.st.rejectStatus, len(m))
	}

	// log: any level, a message cut to its limit, into the wrapper's log.
	p.put(0, "hello from the guest")
	if _, err := p.call(abi.ImportLog, uint64(uint32(abi.LogWarn)), 0, 20); err != nil {
		t.Fatal(err)
	}
	if p.logs.find("WARN hello from the guest") == "" {
		t.Errorf("log: %q", p.logs.lines())
	}
	_, err := p.call(abi.ImportLog, 0, memSize-5, 10)
	wantABIError(t, "log out of range", err, "outside the guest's memory")

	// fail ends the call with the guest's message.
	p.put(0, "bad config: rate must be positive")
	_, err = p.call(abi.ImportFail, 0, 33)
	var gf *guestFailure
	if !errors.As(err, &gf) || gf.msg != "bad config: rate must be positive" {
		t.Errorf("fail: %v", err)
	}

	p.in(phaseInit)
	_, err = p.call(abi.ImportSetPhases, 8)
	wantABIError(t, "set_phases unknown bit", err, "unknown phase bits")
}

// TestABICallBlock checks set_call_block, and what the host writes into the block before
// each call.
func TestABICallBlock(t *testing.T) {
	p := newProbe(t)
	p.in(phaseInit)
	_, err := p.call(abi.ImportSetCallBlock, 1024, abi.CallBlockLen-1)
	wantABIError(t, "a block too small", err, "block of 79 bytes is smaller than 80")
	_, err = p.call(abi.ImportSetCallBlock, memSize-abi.CallBlockLen+1, abi.CallBlockLen)
	wantABIError(t, "a block past the memory", err, "outside the guest's memory")
	if p.inst.st.hasBlock {
		t.Fatal("a refused block was registered")
	}
	const at = 1024
	if _, err := p.call(abi.ImportSetCallBlock, at, abi.CallBlockLen+8); err != nil { // larger is fine
		t.Fatal(err)
	}
	if !p.inst.st.hasBlock || p.inst.st.block != at {
		t.Fatalf("block registered at %d (%v), want %d", p.inst.st.block, p.inst.st.hasBlock, at)
	}
	p.inst.block, p.inst.hasBlock = p.inst.st.block, p.inst.st.hasBlock // as instantiate does after on_init
	p.put(at+abi.CallBlockLen, "tail")

	le := binary.LittleEndian
	u64 := func(off int) uint64 { return le.Uint64([]byte(p.get(at+uint32(off), 8))) }
	u32 := func(off int) uint32 { return le.Uint32([]byte(p.get(at+uint32(off), 4))) }
	versions := func() (v [abi.FieldError + 1]uint64) {
		for f := range v {
			v[f] = u64(abi.CallBlockVersions + 8*f)
		}
		return v
	}
	fill := func(ph phase) time.Time {
		p.inst.st.phase = ph
		before := time.Now()
		p.inst.fillBlock(p.inst.w.now())
		return before
	}

	p.in(phaseRequest)
	before := fill(phaseRequest)
	now := time.Unix(0, int64(u64(abi.CallBlockNow)))
	if u32(abi.CallBlockSize) != abi.CallBlockLen || u32(abi.CallBlockSize+4) != 0 {
		t.Errorf("size %d, reserved %d; want %d and 0", u32(abi.CallBlockSize), u32(abi.CallBlockSize+4), abi.CallBlockLen)
	}
	if now.Before(before.Add(-time.Millisecond)) || now.After(time.Now().Add(time.Millisecond)) {
		t.Errorf("now = %v, want the wall clock (%v)", now, before)
	}
	if b := time.Duration(u64(abi.CallBlockBudget)); b < 59*time.Minute || b > time.Hour {
		t.Errorf("budget = %v, want the call's hour", b)
	}
	if u64(abi.CallBlockLatency) != 0 || u32(abi.CallBlockStatus) != 0 || u32(abi.CallBlockFault) != 0 {
		t.Errorf("outcome in on_request: latency %d, status %d, fault %d; want 0s",
			u64(abi.CallBlockLatency), u32(abi.CallBlockStatus), u32(abi.CallBlockFault))
	}
	first := versions()
	for f, v := range first {
		if v == 0 {
			t.Errorf("version of field %d is 0", f)
		}
	}
	if p.get(at+abi.CallBlockLen, 4) != "tail" {
		t.Error("the host wrote past the block's first CallBlockLen bytes")
	}

	// The same call's outcome: only the error changed.
	fill(phaseResponse)
	if time.Duration(u64(abi.CallBlockLatency)) != 7*time.Millisecond || u32(abi.CallBlockStatus) != 502 || u32(abi.CallBlockFault) != 1 {
		t.Errorf("outcome: latency %d, status %d, fault %d", u64(abi.CallBlockLatency), u32(abi.CallBlockStatus), u32(abi.CallBlockFault))
	}
	want := first
	want[abi.FieldError]++
	if got := versions(); got != want {
		t.Errorf("versions after the outcome %v, want %v: only the error changed", got, want)
	}
	// Another call, to another node, with no deadline.
	p.in(phaseRequest)
	p.inst.st.call.Node, p.inst.st.call.Deadline = "n2", time.Time{}
	fill(phaseRequest)
	want[abi.FieldNode]++
	want[abi.FieldError]++ // empty again
	if got := versions(); got != want {
		t.Errorf("versions after a call to another node %v, want %v", got, want)
	}
	if b := int64(u64(abi.CallBlockBudget)); b != abi.BudgetNone {
		t.Errorf("budget without a deadline = %d, want BudgetNone", b)
	}
	// A call with equal fields in other strings changes nothing.
	p.inst.st.call = &wrapper.Call{Service: strings.Clone("greeter"), Endpoint: strings.Clone("Greeter.Hello"),
		Node: strings.Clone("n2"), Caller: strings.Clone("app")}
	fill(phaseRequest)
	if got := versions(); got != want {
		t.Errorf("versions after a call with equal fields %v, want %v", got, want)
	}
}

// FuzzABI calls host functions with any arguments in any phase. Whatever a guest passes, a
// host function either works or traps with an ABI error (never with a Go runtime error,
// which would be a host bug), and it never writes outside the buffer it was given.
func FuzzABI(f *testing.F) {
	for _, v := range []uint32{0, 1, 6, 100, memSize - 1, memSize, memSize + 1, 1 << 31, 0xffffffff} {
		for fn := range len(hostFuncs) {
			f.Add(uint8(fn), uint8(phaseRequest), v, uint32(10), uint32(100), v)
			f.Add(uint8(fn), uint8(phaseResponse), uint32(100), v, v, uint32(64))
		}
	}
	p := newProbe(f)
	f.Fuzz(func(t *testing.T, fn, ph uint8, a, b, c, d uint32) {
		hf := hostFuncs[int(fn)%len(hostFuncs)]
		p.in(phase(ph % 4))
		// Something to read: a header name at 0, and a message.
		p.put(0, "X-Test")
		args := []uint64{uint64(a), uint64(b), uint64(c), uint64(d), uint64(c), uint64(d), uint64(a), uint64(b)}[:len(hf.params)]
		before := p.get(0, memSize)
		_, err := p.call(hf.name, args...)
		after := p.get(0, memSize)
		if err != nil {
			var (
				ae *abiError
				gf *guestFailure
			)
			if !errors.As(err, &ae) && !errors.As(err, &gf) {
				t.Fatalf("%s%v: an error that is not the ABI's: %v", hf.name, args, err)
			}
		}
		// Only the get functions write, and only into their buffer.
		lo, hi := uint64(0), uint64(0)
		switch {
		case hf.name == abi.ImportGetLease: // the rate, at out_ptr
			lo, hi = uint64(d), uint64(d)+8
		case len(hf.params) == 2:
			lo, hi = uint64(a), uint64(a)+uint64(b)
		case len(hf.params) == 4:
			lo, hi = uint64(c), uint64(c)+uint64(d)
		}
		if !strings.HasPrefix(hf.name, "get_") || err != nil {
			lo, hi = 0, 0
		}
		for i := range uint64(memSize) {
			if (i < lo || i >= hi) && before[i] != after[i] {
				t.Fatalf("%s%v wrote at %d, outside [%d, %d)", hf.name, args, i, lo, hi)
			}
		}
	})
}
