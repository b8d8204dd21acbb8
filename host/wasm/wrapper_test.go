package wasm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

func newCall(header map[string]string) *wrapper.Call {
	return &wrapper.Call{
		Service:  "greeter",
		Endpoint: "Greeter.Hello",
		Node:     "greeter-1",
		Caller:   "app",
		Header:   header,
		Deadline: time.Now().Add(time.Minute),
	}
}

func TestEchoSeesTheCall(t *testing.T) {
	h, logs := newTestHost(t)
	w := load(t, h, "echo", Options{Config: []byte(`{"tag":"t1"}`)})
	ctx := context.Background()

	if l := logs.find("echo ready with tag", "wrapper=echo", "instance=0"); l == "" {
		t.Errorf("the guest's Init log is missing from the host's log:\n%s", strings.Join(logs.lines(), "\n"))
	}

	c := newCall(map[string]string{"X-Test": "x", "Micro-Timeout": "1m"})
	v := w.OnRequest(ctx, c)
	want := wrapper.Verdict{Action: wrapper.Continue, Header: map[string]string{
		"X-Echo":  "t1|greeter|Greeter.Hello|greeter-1|app|x|set",
		"X-Count": "1",
		"X-Last":  "",
	}}
	if !verdictEqual(v, want) {
		t.Fatalf("first call: got %+v, want %+v", v, want)
	}
	w.OnResponse(ctx, c, &wrapper.Result{Status: 200, Latency: 3 * time.Millisecond})
	if got := w.OnRequest(ctx, c).Header["X-Last"]; got != "200||false|greeter|greeter-1|1" {
		t.Errorf("X-Last = %q: OnResponse did not see the outcome", got)
	}
	w.OnResponse(ctx, c, &wrapper.Result{Err: "dial tcp: connection refused", Fault: true})

	// A call without a deadline, with a lower-case header name, and a spent budget.
	c2 := newCall(map[string]string{"x-test": "lower"})
	c2.Deadline = time.Time{}
	v = w.OnRequest(ctx, c2)
	if got := v.Header["X-Echo"]; got != "t1|greeter|Greeter.Hello|greeter-1|app|lower|none" {
		t.Errorf("no deadline: X-Echo = %q", got)
	}
	if got := v.Header["X-Last"]; got != "0|dial tcp: connection refused|true|greeter|greeter-1|2" {
		t.Errorf("X-Last = %q: OnResponse did not see the outcome", got)
	}
	c3 := newCall(nil)
	c3.Deadline = time.Now().Add(-time.Second)
	if got := w.OnRequest(ctx, c3).Header["X-Echo"]; !strings.HasSuffix(got, "|spent") {
		t.Errorf("spent budget: X-Echo = %q", got)
	}
}

// TestGuestClock checks that a guest's wrapper.Now and Budget come from the host's clock, at
// the start of the guest call, through the call block.
func TestGuestClock(t *testing.T) {
	h, _ := newTestHost(t)
	w := load(t, h, "echo", Options{Config: []byte(`{"clock":true}`)})
	c := newCall(nil)
	for range 3 {
		before := time.Now()
		v := w.OnRequest(context.Background(), c)
		after := time.Now()
		var now, budget int64
		if _, err := fmt.Sscanf(v.Header["X-Clock"], "%d|%d", &now, &budget); err != nil {
			t.Fatalf("X-Clock = %q: %v", v.Header["X-Clock"], err)
		}
		// The guests' wall clock may lag a step of the system's by a watchdog tick.
		if t0 := time.Unix(0, now); t0.Before(before.Add(-time.Second)) || t0.After(after.Add(time.Second)) {
			t.Errorf("the guest's Now is %v, want about %v", t0, before)
		}
		if left := time.Duration(budget); left > c.Deadline.Sub(before) || left < c.Deadline.Sub(after) {
			t.Errorf("the guest's budget is %v, want between %v and %v", left, c.Deadline.Sub(after), c.Deadline.Sub(before))
		}
		w.OnResponse(context.Background(), c, &wrapper.Result{Status: 200})
	}
}

func verdictEqual(a, b wrapper.Verdict) bool {
	return a.Action == b.Action && a.Status == b.Status && a.Message == b.Message &&
		maps.Equal(a.Header, b.Header) && maps.Equal(a.ReplyHeader, b.ReplyHeader)
}

func TestEchoRejects(t *testing.T) {
	h, _ := newTestHost(t)
	w := load(t, h, "echo", Options{})
	ctx := context.Background()

	v := w.OnRequest(ctx, newCall(map[string]string{"X-Reject": "slow down"}))
	want := wrapper.Verdict{Action: wrapper.Reject, Status: 429, Message: "rejected: slow down",
		ReplyHeader: map[string]string{"Retry-After": "7"}}
	if !verdictEqual(v, want) {
		t.Errorf("reject: got %+v, want %+v", v, want)
	}
	v = w.OnRequest(ctx, newCall(map[string]string{"X-Reject-Node": "n1"}))
	want = wrapper.Verdict{Action: wrapper.RejectNode, Status: 503, Message: "node refused: n1"}
	if !verdictEqual(v, want) {
		t.Errorf("reject node: got %+v, want %+v", v, want)
	}
}

// TestSerializedCalls checks that calls to one instance never overlap: a guest's plain
// counter sees every call exactly once, even when many goroutines call at once.
func TestSerializedCalls(t *testing.T) {
	for _, instances := range []int{1, 3} {
		t.Run(fmt.Sprintf("instances=%d", instances), func(t *testing.T) {
			h, _ := newTestHost(t)
			w := load(t, h, "echo", Options{Instances: instances, Shard: ShardCaller})
			const goroutines, calls = 8, 150
			var (
				mu     sync.Mutex
				counts = map[int][]int{} // slot -> the X-Count values it gave
				wg     sync.WaitGroup
			)
			for g := range goroutines {
				wg.Go(func() {
					for i := range calls {
						c := newCall(nil)
						c.Caller = fmt.Sprintf("caller-%d-%d", g, i%5)
						v := w.OnRequest(context.Background(), c)
						n, err := strconv.Atoi(v.Header["X-Count"])
						if err != nil {
							t.Errorf("X-Count %q: %v (verdict %+v)", v.Header["X-Count"], err, v)
							return
						}
						w.OnResponse(context.Background(), c, &wrapper.Result{Status: 200})
						mu.Lock()
						counts[w.pick(c).idx] = append(counts[w.pick(c).idx], n)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			total := 0
			for slot, ns := range counts {
				slices.Sort(ns)
				for i, n := range ns {
					if n != i+1 {
						t.Fatalf("instance %d: counts %v...: want each of 1..%d once", slot, ns[max(0, i-3):min(len(ns), i+3)], len(ns))
					}
				}
				total += len(ns)
			}
			if total != goroutines*calls {
				t.Errorf("%d calls counted, want %d", total, goroutines*calls)
			}
			if instances > 1 && len(counts) < 2 {
				t.Errorf("all calls went to one of %d instances", instances)
			}
		})
	}
}

// TestShardKeepsKeyOnInstance checks that one key always reaches the same instance.
func TestShardKeepsKeyOnInstance(t *testing.T) {
	h, _ := newTestHost(t)
	w := load(t, h, "echo", Options{Instances: 4, Shard: ShardNode})
	seen := map[string]int{}
	for i := range 40 {
		c := newCall(nil)
		c.Node = fmt.Sprintf("node-%d", i%8)
		c.Service = fmt.Sprintf("svc-%d", i) // must not matter
		idx := w.pick(c).idx
		if prev, ok := seen[c.Node]; ok && prev != idx {
			t.Fatalf("node %s went to instance %d, then %d", c.Node, prev, idx)
		}
		seen[c.Node] = idx
		w.OnRequest(context.Background(), c)
	}
}

// fault is a way to make a test guest fail.
type fault struct {
	name   string
	guest  string
	header map[string]string
	opts   Options
	reason string // in the verdict's message and the log
}

var faults = []fault{
	{name: "panic", guest: "trap", header: map[string]string{"X-Trap": "panic"}, reason: "guest failed: panic in OnRequest: boom"},
	{name: "nil dereference", guest: "trap", header: map[string]string{"X-Trap": "nil"}, reason: "nil pointer dereference"},
	{name: "exit", guest: "trap", header: map[string]string{"X-Trap": "exit"}, reason: "guest exited with code 3"},
	{name: "endless loop", guest: "loop", header: map[string]string{"X-Loop": "1"}, opts: Options{Timeout: 200 * time.Millisecond},
		reason: "guest stopped: it ran longer than its time limit of 200ms"},
	{name: "memory bomb", guest: "bomb", header: map[string]string{"X-Bomb": "1"}, opts: Options{MemoryLimit: 24 << 20, Timeout: 10 * time.Second},
		reason: "out of memory"},
	{name: "reserved header", guest: "echo", header: map[string]string{"X-Set-Reserved": "1"},
		reason: `bad call to micro.set_header: header "Micro-Timeout" is micro's own`},
}

func TestGuestFaults(t *testing.T) {
	for _, f := range faults {
		for _, onTrap := range []string{OnTrapOpen, OnTrapClosed} {
			t.Run(f.name+"/"+onTrap, func(t *testing.T) {
				h, logs := newTestHost(t)
				opts := f.opts
				opts.OnTrap = onTrap
				w := load(t, h, f.guest, opts)
				ctx := context.Background()

				if v := w.OnRequest(ctx, newCall(nil)); v.Action != wrapper.Continue || (f.guest != "echo" && v.Header["X-Count"] != "1") {
					t.Fatalf("a call before the fault: %+v", v)
				}
				v := w.OnRequest(ctx, newCall(f.header))
				switch onTrap {
				case OnTrapOpen:
					if !verdictEqual(v, wrapper.Verdict{Action: wrapper.Continue}) {
						t.Errorf("fail open: got %+v, want a plain Continue", v)
					}
				case OnTrapClosed:
					if v.Action != wrapper.Reject || v.Status != 503 ||
						!strings.HasPrefix(v.Message, "wrapper "+f.guest+" failed: ") || !strings.Contains(v.Message, f.reason) {
						t.Errorf("fail closed: got %+v, want a 503 whose message names the wrapper and says %q", v, f.reason)
					}
				}
				if l := logs.find("wrapper guest failed", "wrapper="+f.guest, f.reason, "on_trap="+onTrap); l == "" {
					t.Errorf("no log of the failure with %q:\n%s", f.reason, strings.Join(logs.lines(), "\n"))
				}
				// The next call runs on a fresh instance: its counter starts again.
				v = w.OnRequest(ctx, newCall(nil))
				if v.Action != wrapper.Continue || v.Header["X-Count"] != "1" {
					t.Errorf("the call after the fault: got %+v, want a Continue with X-Count 1 from a new instance", v)
				}
				if l := logs.find("wrapper instance replaced", "wrapper="+f.guest); l == "" {
					t.Errorf("no log of the replacement:\n%s", strings.Join(logs.lines(), "\n"))
				}
			})
		}
	}
}

func TestFaultInOnResponse(t *testing.T) {
	h, logs := newTestHost(t)
	w := load(t, h, "trap", Options{})
	ctx := context.Background()
	c := newCall(nil)
	w.OnRequest(ctx, c)
	w.OnRequest(ctx, c)
	w.OnResponse(ctx, c, &wrapper.Result{Status: 599}) // the guest panics on 599
	if l := logs.find("wrapper guest failed", "phase=on_response", "panic in OnResponse: bad status"); l == "" {
		t.Errorf("no log of the failure:\n%s", strings.Join(logs.lines(), "\n"))
	}
	if v := w.OnRequest(ctx, c); v.Header["X-Count"] != "1" {
		t.Errorf("after the failure: %+v, want X-Count 1 from a new instance", v)
	}
}

// TestReplacementBlocksOnlyItsInstance checks that a looping guest holds only its own
// instance: calls that shard to another instance go on meanwhile, and a call waiting for
// the busy instance may give up.
func TestReplacementBlocksOnlyItsInstance(t *testing.T) {
	h, _ := newTestHost(t)
	// A long limit, so that the loop surely outlasts the calls on the other instance.
	w := load(t, h, "loop", Options{Instances: 2, Timeout: 2 * time.Second, OnTrap: OnTrapClosed})
	a, b := newCall(map[string]string{"X-Loop": "1"}), newCall(nil)
	for i := 0; w.pick(a) == w.pick(b); i++ {
		b.Service = fmt.Sprintf("other-%d", i)
	}
	sa := w.pick(a)
	looped := make(chan wrapper.Verdict)
	go func() { looped <- w.OnRequest(context.Background(), a) }()
	waitFor(t, func() bool { return sa.held.Load() == 1 }) // the loop holds its instance
	for range 5 {
		if v := w.OnRequest(context.Background(), b); v.Action != wrapper.Continue || v.Header["X-Count"] == "" {
			t.Fatalf("a call on the other instance: %+v", v)
		}
	}
	// A call for the busy instance whose context ends gets the on_trap verdict.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if v := w.OnRequest(ctx, newCall(nil)); v.Action != wrapper.Reject ||
		!strings.Contains(v.Message, "no instance was free before the call ended: context canceled") {
		t.Errorf("a canceled wait: %+v", v)
	}
	select {
	case v := <-looped:
		t.Fatalf("the looping call ended (%+v) before the calls on the other instance did", v)
	default:
	}
	if v := <-looped; v.Action != wrapper.Reject || !strings.Contains(v.Message, "time limit of 2s") {
		t.Errorf("the looping call: %+v", v)
	}
}

// TestSlotLock checks the slot's lock: one holder at a time, a waiter that gives up leaves
// the lock working, and the lock can be released by another goroutine than the one that
// took it (as a replacement does).
func TestSlotLock(t *testing.T) {
	s := newSlot(0)
	ctx := context.Background()
	if !s.lock(ctx) {
		t.Fatal("a free lock was not taken")
	}
	// A waiter whose context ends gives up, before and after the lock is handed to it.
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if s.lock(canceled) {
		t.Fatal("a held lock was taken with a canceled context")
	}
	if n := s.held.Load(); n != 1 {
		t.Fatalf("held = %d after a waiter gave up, want 1", n)
	}
	// Many goroutines, each incrementing a plain counter under the lock; some give up.
	var (
		wg      sync.WaitGroup
		counter int
		gaveUp  atomic.Int64
	)
	for i := range 8 {
		wg.Go(func() {
			for j := range 2000 {
				lctx := ctx
				if (i+j)%7 == 0 {
					c, cancel := context.WithTimeout(ctx, time.Microsecond)
					defer cancel()
					lctx = c
				}
				if !s.lock(lctx) {
					gaveUp.Add(1)
					continue
				}
				counter++
				s.unlock()
			}
		})
	}
	s.unlock() // from the test's goroutine, as the first holder
	wg.Wait()
	if counter+int(gaveUp.Load()) != 8*2000 {
		t.Errorf("counter %d + %d gave up, want %d calls", counter, gaveUp.Load(), 8*2000)
	}
	if n := s.held.Load(); n != 0 || len(s.handoff) != 0 {
		t.Errorf("after all: held = %d, %d handoffs pending; want a free lock", n, len(s.handoff))
	}
	done := make(chan struct{})
	go func() {
		s.lock(ctx)
		close(done)
	}()
	<-done
	go s.unlock() // another goroutine releases it
	if !s.lock(ctx) {
		t.Fatal("the lock released by another goroutine was not taken")
	}
}

// waitFor polls cond until it holds, for up to 10 seconds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOnResponseAfterTheCallEnded(t *testing.T) {
	h, _ := newTestHost(t)
	w := load(t, h, "echo", Options{})
	ctx, cancel := context.WithCancel(context.Background())
	c := newCall(nil)
	w.OnRequest(ctx, c)
	cancel()
	w.OnResponse(ctx, c, &wrapper.Result{Err: "budget spent"})
	if got := w.OnRequest(context.Background(), c).Header["X-Last"]; got != "0|budget spent|false|greeter|greeter-1|1" {
		t.Errorf("X-Last = %q: the outcome of a call whose context ended was not delivered", got)
	}
}

func TestInitRejectsConfig(t *testing.T) {
	h, _ := newTestHost(t)
	for _, tc := range []struct{ config, want string }{
		{`{"tga":"x"}`, `wrapper "echo": init: config: json: unknown field "tga"`},
		{`{"tag":""}`, `wrapper "echo": init: tag must not be empty`},
		{`{"tag":1}`, `wrapper "echo": init: config: json: cannot unmarshal number into Go struct field config.tag of type string`},
		{`[1]`, `wrapper "echo": config is not a JSON object`},
		{`{"tag":"ok"} x`, `wrapper "echo": config is not a JSON object`},
	} {
		_, err := h.Load(context.Background(), "echo", guests["echo"], Options{Config: []byte(tc.config)})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("config %s: got %v, want %s", tc.config, err, tc.want)
		}
	}
	// A nil map marshals to null: the guest gets {} and its defaults.
	w := load(t, h, "echo", Options{Config: []byte("null")})
	if got := w.OnRequest(context.Background(), newCall(nil)).Header["X-Echo"]; !strings.HasPrefix(got, "echo|") {
		t.Errorf("config null: X-Echo = %q, want the default tag", got)
	}
}

func TestOptions(t *testing.T) {
	h, _ := newTestHost(t)
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Instances: -1}, "instances must be from 1 to 64, got -1"},
		{Options{Shard: "endpoint"}, `shard must be "service", "node" or "caller", got "endpoint"`},
		{Options{OnTrap: "maybe"}, `on_trap must be "open" or "closed", got "maybe"`},
		{Options{MemoryLimit: 1000}, "memory limit must be from 1MiB to 4GiB"},
		{Options{Timeout: -time.Second}, "timeout must be positive and at most 10s, got -1s"},
		{Options{Timeout: 2 * time.Hour}, "timeout must be positive and at most 10s, got 2h0m0s"},
		{Options{MemoryLimit: 1 << 20}, "memory limit of 1048576 bytes is below what the module needs"},
	} {
		_, err := h.Load(context.Background(), "pass", guests["pass"], tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), `wrapper "pass": `) {
			t.Errorf("%+v: got %v, want an error naming the wrapper with %q", tc.opts, err, tc.want)
		}
	}
}

func TestMalformedModules(t *testing.T) {
	h, _ := newTestHost(t)
	for _, tc := range []struct {
		name string
		wasm []byte
		want string
	}{
		{"not wasm", []byte("\x7fELF not wasm at all"), "not a valid wasm module"},
		{"empty", nil, "not a valid wasm module"},
		// wazero v1.12.0 panics on a call to a function whose type index is out of range.
		{"wazero panics", []byte("\x00asm\x01\x00\x00\x00\x01\x04\x01\x60\x00\x00\x03\x03\x02\x00\x05\x0a\x09\x02\x04\x00\x10\x01\x0b\x02\x00\x0b"),
			"the module is malformed (wazero: runtime error: index out of range"},
		{"wrong signature", minimalGuest(func(m *wasmModule) { m.setExport("on_request", 5) }),
			"malformed wrapper module: export on_request is (i32) -> (i32), want () -> (i32)"},
		{"missing export", minimalGuest(func(m *wasmModule) { m.dropExport("on_request") }),
			"malformed wrapper module: missing export on_request () -> (i32)"},
		{"no memory", minimalGuest(func(m *wasmModule) { m.noMemory = true; m.dropExport("memory") }),
			"missing export memory"},
		{"command", minimalGuest(func(m *wasmModule) { m.dropExport("micro_wrapper_abi_v1"); m.setExport("_start", 1) }),
			"the module is a WASI command (it exports _start): build it as a reactor, with -buildmode=c-shared"},
		{"no abi marker", minimalGuest(func(m *wasmModule) { m.dropExport("micro_wrapper_abi_v1") }),
			"not a micro wrapper: the module does not export micro_wrapper_abi_v1"},
		{"unknown import", withImport("micro", "get_everything", tRetI32), "imports micro.get_everything, which micro does not provide"},
		{"wrong import type", withImport("micro", "get_budget", tRetI32), "imports micro.get_budget as () -> (i32), but it is () -> (i64)"},
		{"wrong get_fault type", withImport("micro", "get_fault", tVoid), "imports micro.get_fault as () -> (), but it is () -> (i32)"},
		{"foreign import", withImport("env", "abort", tVoid), "imports env.abort: only micro and wasi_snapshot_preview1 are provided"},
		{"init fails", minimalGuest(func(m *wasmModule) { m.funcs[2].body = i32Const(7) }), "init: on_init returned 7"},
		{"init traps", minimalGuest(func(m *wasmModule) { m.funcs[2].body = []byte{0x00} }), "init: guest trapped: wasm error: unreachable"},
		{"initialize traps", minimalGuest(func(m *wasmModule) { m.funcs[1].body = []byte{0x00} }), "_initialize: guest trapped: wasm error: unreachable"},
	} {
		_, err := h.Load(context.Background(), "bad", tc.wasm, Options{})
		if err == nil || !strings.HasPrefix(err.Error(), `wrapper "bad": `) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming the wrapper with %q", tc.name, err, tc.want)
		}
	}
	// A minimal guest in hand-written Wasm, on the other hand, loads and works.
	w, err := h.Load(context.Background(), "minimal", minimalGuest(nil), Options{OnTrap: OnTrapClosed})
	if err != nil {
		t.Fatal(err)
	}
	if v := w.OnRequest(context.Background(), newCall(nil)); !verdictEqual(v, wrapper.Verdict{}) {
		t.Errorf("minimal guest: %+v", v)
	}
}

// withImport returns a minimal guest that also imports module.name.
func withImport(module, name string, typ funcType) []byte {
	m := &wasmModule{imports: []wasmImport{{module, name, typ}}}
	// minimalGuest's functions, with their indices shifted by the import.
	base := &wasmModule{}
	minimalGuest(func(mm *wasmModule) { *base = *mm })
	m.funcs = base.funcs
	for _, e := range base.exports {
		if e.kind == 0 {
			e.index++
		}
		m.exports = append(m.exports, e)
	}
	return m.bytes()
}

func TestUnknownResultCode(t *testing.T) {
	h, logs := newTestHost(t)
	w, err := h.Load(context.Background(), "odd", minimalGuest(func(m *wasmModule) { m.funcs[3].body = i32Const(9) }), Options{OnTrap: OnTrapClosed})
	if err != nil {
		t.Fatal(err)
	}
	v := w.OnRequest(context.Background(), newCall(nil))
	if v.Action != wrapper.Reject || !strings.Contains(v.Message, "on_request returned 9, which is not a result code") {
		t.Errorf("got %+v", v)
	}
	if logs.find("returned 9") == "" {
		t.Error("no log of the bad result")
	}
}

func TestClose(t *testing.T) {
	h, _ := newTestHost(t)
	w := load(t, h, "echo", Options{OnTrap: OnTrapClosed, Instances: 2})
	w2 := load(t, h, "pass", Options{})
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	v := w.OnRequest(context.Background(), newCall(nil))
	if v.Action != wrapper.Reject || !strings.Contains(v.Message, "the wrapper is closed") {
		t.Errorf("a call after Close: %+v", v)
	}
	w.OnResponse(context.Background(), newCall(nil), &wrapper.Result{})
	if err := h.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !w2.closed.Load() {
		t.Error("Host.Close left a wrapper open")
	}
	if _, err := h.Load(context.Background(), "pass", guests["pass"], Options{}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Load after Host.Close: %v", err)
	}
}

// recursiveGuest is a complete wrapper guest, hand-assembled, with no loop: its on_request
// continues, except for a call with the header X-Recurse, for which it first computes
// twice(endlessTwice), minutes of exponential recursion (see twiceBody).
func recursiveGuest() []byte {
	const name = "X-Recurse"
	return minimalGuest(func(m *wasmModule) {
		m.imports = []wasmImport{{abi.ModuleName, abi.ImportGetHeader,
			funcType{params: []api.ValueType{i32, i32, i32, i32}, results: []api.ValueType{i32}}}}
		for i := range m.exports {
			if m.exports[i].kind == 0 {
				m.exports[i].index++
			}
		}
		twice := uint32(len(m.imports) + len(m.funcs))
		m.funcs = append(m.funcs, wasmFunc{typ: tI32RetI, body: twiceBody(twice)})
		m.funcs[3].body = concat(
			i32Const(0), i32Const(int32(len(name))), i32Const(64), i32Const(0), call(0), // get_header(name, buf of 0 bytes)
			i32Const(0), []byte{0x4e, 0x04, 0x40}, // if the length >= 0: the header is there
			i32Const(endlessTwice), call(twice), []byte{0x1a}, // drop twice(endlessTwice)
			[]byte{0x0b},
			i32Const(abi.ResultContinue))
		m.data = []wasmData{{0, []byte(name)}}
	})
}

// TestRecursionStopped checks that the time limit stops a guest whose on_request recurses
// without a loop: the call gets the on_trap verdict soon after the limit, rather than
// after the minutes the recursion would take; the instance is replaced, and later calls
// work.
func TestRecursionStopped(t *testing.T) {
	const limit = 50 * time.Millisecond
	for _, onTrap := range []string{OnTrapOpen, OnTrapClosed} {
		t.Run(onTrap, func(t *testing.T) {
			h, logs := newTestHost(t)
			ctx := context.Background()
			w, err := h.Load(ctx, "recurse", recursiveGuest(), Options{Timeout: limit, OnTrap: onTrap})
			if err != nil {
				t.Fatal(err)
			}
			if v := w.OnRequest(ctx, newCall(nil)); !verdictEqual(v, wrapper.Verdict{}) {
				t.Fatalf("a call without X-Recurse: %+v, want a plain Continue", v)
			}
			first := w.slots[0].inst

			done := make(chan wrapper.Verdict, 1)
			start := time.Now()
			go func() { done <- w.OnRequest(ctx, newCall(map[string]string{"X-Recurse": "1"})) }()
			var v wrapper.Verdict
			select {
			case v = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("the recursing call still ran 10s after its time limit of %v, and would for minutes", limit)
			}
			if took := time.Since(start); took < limit {
				t.Errorf("the recursing call returned after %v, before its time limit of %v", took, limit)
			}
			const reason = "guest stopped: it ran longer than its time limit of 50ms"
			switch onTrap {
			case OnTrapOpen:
				if !verdictEqual(v, wrapper.Verdict{Action: wrapper.Continue}) {
					t.Errorf("fail open: got %+v, want a plain Continue", v)
				}
			case OnTrapClosed:
				if want := "wrapper recurse failed: " + reason; v.Action != wrapper.Reject || v.Status != 503 || v.Message != want {
					t.Errorf("fail closed: got %+v, want a 503 with %q", v, want)
				}
			}
			if l := logs.find("wrapper guest failed", "wrapper=recurse", "phase=on_request", reason); l == "" {
				t.Errorf("no log of the failure:\n%s", strings.Join(logs.lines(), "\n"))
			}

			// Later calls run on a new instance.
			for i := range 3 {
				if v := w.OnRequest(ctx, newCall(nil)); !verdictEqual(v, wrapper.Verdict{}) {
					t.Fatalf("call %d after the stop: %+v, want a plain Continue", i+1, v)
				}
				w.OnResponse(ctx, newCall(nil), &wrapper.Result{Status: 200})
			}
			if w.slots[0].inst == first || w.slots[0].inst == nil {
				t.Error("the stopped instance was not replaced")
			}
			if l := logs.find("wrapper instance replaced", "wrapper=recurse"); l == "" {
				t.Errorf("no log of the replacement:\n%s", strings.Join(logs.lines(), "\n"))
			}
		})
	}
}
