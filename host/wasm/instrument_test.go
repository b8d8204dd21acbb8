package wasm

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// loopModule exports "spin", a loop without end, and "count", which loops n times and
// returns 0. It has a memory and no global; extraExport, if set, exports count under
// another name too.
func loopModule(extraExport string) []byte {
	m := &wasmModule{
		funcs: []wasmFunc{
			{typ: tVoid, body: []byte{0x03, 0x40, 0x0c, 0x00, 0x0b}},
			{typ: tI32RetI, body: concat(
				[]byte{0x03, 0x40}, localGet(0), i32Const(1), []byte{0x6b, 0x22, 0x00, 0x0d, 0x00, 0x0b},
				localGet(0))},
		},
		exports: []wasmExport{{"spin", 0, 0}, {"count", 0, 1}},
	}
	if extraExport != "" {
		m.exports = append(m.exports, wasmExport{extraExport, 0, 1})
	}
	return m.bytes()
}

func TestInstrumentStopsLoops(t *testing.T) {
	ctx := context.Background()
	mod, stop := instantiateInstrumented(t, loopModule(""))
	if res, err := mod.ExportedFunction("count").Call(ctx, 1000); err != nil || res[0] != 0 {
		t.Fatalf("count(1000) = %v, %v: a loop that ends must run as before", res, err)
	}
	done := make(chan error)
	go func() {
		_, err := mod.ExportedFunction("spin").Call(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("spin returned before the stop: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	gcDoesNotWait(t, "looping", done)
	stop.Set(1)
	if err := <-done; err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("spin after the stop: %v, want an unreachable trap", err)
	}
}

// twiceBody is the body of twice, function index self: (i32) -> i32, twice(0) = 1 and
// twice(n) = twice(n-1) + twice(n-1). It returns 2^n (mod 2^32) after 2^(n+1)-1 calls,
// recursing without a loop and no deeper than n.
func twiceBody(self uint32) []byte {
	return concat(
		localGet(0), []byte{0x45, 0x04, 0x7f}, // if n == 0 (result i32)
		i32Const(1),
		[]byte{0x05}, // else
		localGet(0), i32Const(1), []byte{0x6b}, call(self),
		localGet(0), i32Const(1), []byte{0x6b}, call(self),
		[]byte{0x6a, 0x0b}) // i32.add, end
}

// endlessTwice is an argument of twice that makes it run for minutes: 2^36 calls, at a few
// nanoseconds each.
const endlessTwice = 35

// recursionModule exports "twice" (see twiceBody), and "run", which stores 1 at address 0
// of its memory, then returns twice(n). It has no loop.
func recursionModule() []byte {
	return (&wasmModule{
		funcs: []wasmFunc{
			{typ: tI32RetI, body: twiceBody(0)},
			{typ: tI32RetI, body: concat(i32Const(0), i32Const(1), []byte{0x3a, 0x00, 0x00}, localGet(0), call(0))},
		},
		exports: []wasmExport{{"twice", 0, 0}, {"run", 0, 1}},
	}).bytes()
}

// instantiateInstrumented instruments module and instantiates it in a runtime of its own,
// closed with the test. It returns the module and its stop global.
func instantiateInstrumented(t *testing.T, module []byte) (api.Module, api.MutableGlobal) {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { rt.Close(ctx) })
	b, err := instrument(module)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := rt.Instantiate(ctx, b)
	if err != nil {
		t.Fatalf("the instrumented module does not instantiate: %v", err)
	}
	stop, ok := mod.ExportedGlobal(stopExport).(api.MutableGlobal)
	if !ok {
		t.Fatalf("no mutable global %s", stopExport)
	}
	return mod, stop
}

// TestInstrumentStopsRecursion checks that a guest that recurses without a loop is stopped
// as a looping one is, and does not hold up a garbage collection meanwhile.
func TestInstrumentStopsRecursion(t *testing.T) {
	ctx := context.Background()
	mod, stop := instantiateInstrumented(t, recursionModule())
	if res, err := mod.ExportedFunction("twice").Call(ctx, 10); err != nil || res[0] != 1024 {
		t.Fatalf("twice(10) = %v, %v: a recursion that ends must run as before", res, err)
	}
	// start calls run(endlessTwice) and returns once the guest runs.
	start := func() chan error {
		mod.Memory().WriteByte(0, 0)
		done := make(chan error, 1)
		go func() {
			_, err := mod.ExportedFunction("run").Call(ctx, endlessTwice)
			done <- err
		}()
		waitFor(t, func() bool {
			b, _ := mod.Memory().ReadByte(0)
			return b == 1
		})
		return done
	}
	stopped := func(done chan error) {
		t.Helper()
		stop.Set(1)
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "unreachable") {
				t.Fatalf("run after the stop: %v, want an unreachable trap", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("run(%d) still ran 10s after the stop, and would for minutes", endlessTwice)
		}
		stop.Set(0)
	}
	stopped(start())

	done := start()
	gcDoesNotWait(t, "recursing", done)
	stopped(done)
}

// gcDoesNotWait checks that a garbage collection, which stops the world, ends while a
// guest (what it is doing: looping, recursing) runs, and that the guest's call, which
// reports to done, runs on.
func gcDoesNotWait(t *testing.T, what string, done <-chan error) {
	t.Helper()
	gc := make(chan struct{})
	go func() {
		runtime.GC()
		close(gc)
	}()
	select {
	case <-gc:
	case <-time.After(30 * time.Second):
		t.Fatalf("a garbage collection waited 30s for a %s guest", what)
	}
	select {
	case err := <-done:
		t.Fatalf("the %s guest returned before the stop: %v", what, err)
	default:
	}
}

// TestInstrumentEntryChecks checks which function bodies get a check at their entry: all
// but those that reach a loop, whose check runs on entry, before they can branch or call.
func TestInstrumentEntryChecks(t *testing.T) {
	check := fuelCheck(0, 1, true)
	for _, tc := range []struct {
		name  string
		body  []byte
		entry bool
	}{
		{"empty", nil, true},
		{"constant", i32Const(0), true},
		{"recursion", twiceBody(0), true},
		{"loop first", []byte{0x03, 0x40, 0x0b}, false},
		{"blocks, then a loop", []byte{0x02, 0x40, 0x02, 0x40, 0x03, 0x40, 0x0b, 0x0b, 0x0b}, false},
		{"as Go starts a function", []byte{0x23, 0x00, 0x21, 0x00, 0x02, 0x40, 0x03, 0x40, 0x0b, 0x0b}, false},
		{"a call before the loop", concat(call(0), []byte{0x03, 0x40, 0x0b}), true},
		{"a branch before the loop", []byte{0x02, 0x40, 0x0c, 0x00, 0x03, 0x40, 0x0b, 0x0b}, true},
		{"an if before the loop", concat(i32Const(1), []byte{0x04, 0x40, 0x0b, 0x03, 0x40, 0x0b}), true},
	} {
		code := concat([]byte{0x00}, tc.body, []byte{0x0b}) // no locals
		out, err := instrumentBody(nil, code, 2, check)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := bytes.HasPrefix(out[1:], check); got != tc.entry {
			t.Errorf("%s: entry check %v, want %v (instrumented: % x)", tc.name, got, tc.entry, out)
		}
	}
}

func TestInstrumentRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		wasm []byte
		want string
	}{
		{"not wasm", []byte("hello"), "not a wasm binary"},
		{"version 2", []byte("\x00asm\x02\x00\x00\x00"), "unsupported wasm binary version"},
		{"truncated", minimalGuest(nil)[:40], "unexpected end of data"},
		{"reserved export", loopModule(stopExport), "a name micro reserves"},
		{"start function", append(loopModule(""), 0x08, 0x01, 0x00), "has a start function"},
		{"gc opcode", (&wasmModule{funcs: []wasmFunc{{typ: tVoid, body: []byte{0xfb, 0x00}}}}).bytes(), "unsupported opcode 0xfb"},
		{"global out of range", (&wasmModule{funcs: []wasmFunc{{typ: tVoid, body: []byte{0x23, 0x00, 0x1a}}}}).bytes(), "global index 0 out of range"},
	} {
		if _, err := instrument(tc.wasm); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestInstrumentGoGuest(t *testing.T) {
	b, err := instrument(guests["echo"])
	if err != nil {
		t.Fatal(err)
	}
	if len(b) <= len(guests["echo"]) {
		t.Errorf("instrumented guest of %d bytes, not larger than the %d it came from", len(b), len(guests["echo"]))
	}
}

// dataSegments returns how many data segments a module has.
func dataSegments(t *testing.T, module []byte) int {
	t.Helper()
	r := &reader{b: module, pos: 8}
	for r.pos < len(r.b) && r.err == nil {
		id, payload := r.byte(), r.bytes(int(r.u32()))
		if id == secData {
			return int((&reader{b: payload}).u32())
		}
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return 0
}

// memoryAfterInstantiation returns the first page of the memory of a module once wazero
// has instantiated it, and so written its data segments.
func memoryAfterInstantiation(t *testing.T, module []byte) []byte {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	mod, err := rt.Instantiate(ctx, module)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := mod.Memory().Read(0, wasmPageSize)
	return bytes.Clone(b)
}

func TestInstrumentMergesData(t *testing.T) {
	withData := func(data ...wasmData) []byte {
		return minimalGuest(func(m *wasmModule) { m.data = data })
	}
	// Out of order, separated by short runs of zeros, and once by a long one.
	segs := []wasmData{
		{offset: 100, bytes: []byte("world")},
		{offset: 10, bytes: []byte("hello")},
		{offset: 20, bytes: []byte{0, 0, 7}},
		{offset: 40000, bytes: []byte("far away")},
		{offset: 105, bytes: []byte("!")},
	}
	for _, tc := range []struct {
		name     string
		module   []byte
		segments int
	}{
		{"merged", withData(segs...), 2},
		{"overlapping, kept", withData(wasmData{offset: 10, bytes: []byte("hello")}, wasmData{offset: 12, bytes: []byte("LL")}), 2},
		{"one, kept", withData(segs[0]), 1},
	} {
		b, err := instrument(tc.module)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n := dataSegments(t, b); n != tc.segments {
			t.Errorf("%s: %d segments, want %d", tc.name, n, tc.segments)
		}
		if !bytes.Equal(memoryAfterInstantiation(t, b), memoryAfterInstantiation(t, tc.module)) {
			t.Errorf("%s: the memory differs from the original module's", tc.name)
		}
	}
	// A Go guest: some 40,000 segments become a few.
	b, err := instrument(guests["pass"])
	if err != nil {
		t.Fatal(err)
	}
	if before, after := dataSegments(t, guests["pass"]), dataSegments(t, b); before < 1000 || after > 20 {
		t.Errorf("the pass guest's %d data segments became %d, want a few", before, after)
	}
}

// FuzzInstrument checks that instrument never panics, and that whatever wazero accepts,
// instrument accepts too, into a module that wazero still accepts. It compiles as micro does,
// with compile, which turns a wazero panic on a malformed module into an error.
//
// wazero allocates what a module declares before it reads it (a type of 2^32 parameters is
// 4 GiB), which would take the fuzzer down, so inputs that may declare a large count (three
// bytes in a row with the LEB128 continuation bit) are only given to instrument.
func FuzzInstrument(f *testing.F) {
	f.Add(loopModule(""))
	f.Add(recursionModule())
	f.Add(minimalGuest(nil))
	f.Add(probeModule())
	f.Add(withImport("env", "g", tVoid))
	f.Add(minimalGuest(func(m *wasmModule) {
		m.data = []wasmData{{offset: 9, bytes: []byte("b")}, {offset: 1, bytes: []byte("a")}, {offset: 5000, bytes: []byte("c")}}
	}))
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	f.Cleanup(func() { rt.Close(ctx) })
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := instrument(b)
		if mayDeclareLarge(b) {
			return
		}
		cm, cerr := compile(ctx, rt, b)
		if cerr != nil {
			return
		}
		cm.Close(ctx)
		if err != nil {
			if strings.Contains(err.Error(), "start function") || strings.Contains(err.Error(), "reserves") {
				return
			}
			t.Fatalf("wazero compiles the module, but instrument fails: %v", err)
		}
		cm2, err := compile(ctx, rt, out)
		if err != nil {
			t.Fatalf("the instrumented module does not compile: %v", err)
		}
		defer cm2.Close(ctx)
		if _, ok := cm2.ExportedFunctions()[stopExport]; ok {
			t.Fatal("the stop global is exported as a function")
		}
	})
}

// mayDeclareLarge reports whether b has three bytes in a row with the high bit set, which a
// LEB128 number of 2^21 or more needs.
func mayDeclareLarge(b []byte) bool {
	run := 0
	for _, c := range b {
		if c&0x80 == 0 {
			run = 0
			continue
		}
		if run++; run == 3 {
			return true
		}
	}
	return false
}

// BenchmarkInstrument measures instrument on a Go guest.
func BenchmarkInstrument(b *testing.B) {
	wasm := guests["echo"]
	b.SetBytes(int64(len(wasm)))
	for b.Loop() {
		if _, err := instrument(wasm); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoopChecks compares the ways to make loops stoppable, on one call of count(1000)
// (a loop of 1000 iterations) and on an empty call: none, instrument's checks, and
// wazero's WithCloseOnContextDone, which this package does not use.
func BenchmarkLoopChecks(b *testing.B) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		instrument bool
		close      bool
	}{{"unchecked", false, false}, {"instrumented", true, false}, {"close-on-context-done", false, true}} {
		rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCloseOnContextDone(tc.close))
		wasm := loopModule("")
		if tc.instrument {
			var err error
			if wasm, err = instrument(wasm); err != nil {
				b.Fatal(err)
			}
		}
		mod, err := rt.Instantiate(ctx, wasm)
		if err != nil {
			b.Fatal(err)
		}
		count := mod.ExportedFunction("count")
		for _, n := range []uint64{1, 1000} {
			b.Run(fmt.Sprintf("%s/iterations=%d", tc.name, n), func(b *testing.B) {
				stack := []uint64{0}
				for b.Loop() {
					stack[0] = n
					if err := count.CallWithStack(ctx, stack); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		rt.Close(ctx)
	}
}

// BenchmarkEntryChecks measures the checks at function entries, on one call of twice(n),
// which makes 2^(n+1)-1 calls of a function without a loop: unchecked, and instrumented.
func BenchmarkEntryChecks(b *testing.B) {
	ctx := context.Background()
	for _, instrumented := range []bool{false, true} {
		rt := wazero.NewRuntime(ctx)
		wasm := recursionModule()
		name := "unchecked"
		if instrumented {
			var err error
			if wasm, err = instrument(wasm); err != nil {
				b.Fatal(err)
			}
			name = "instrumented"
		}
		mod, err := rt.Instantiate(ctx, wasm)
		if err != nil {
			b.Fatal(err)
		}
		twice := mod.ExportedFunction("twice")
		for _, n := range []uint64{0, 10} {
			b.Run(fmt.Sprintf("%s/calls=%d", name, 1<<(n+1)-1), func(b *testing.B) {
				stack := []uint64{0}
				for b.Loop() {
					stack[0] = n
					if err := twice.CallWithStack(ctx, stack); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		rt.Close(ctx)
	}
}
