package wasm

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

// setState calls set_state on the probe with the four strings, laid out in its memory.
func (p *probe) setState(service, endpoint, node, value string) error {
	var args []uint64
	for i, s := range []string{service, endpoint, node, value} {
		at := uint32(i) * 8192
		p.put(at, s)
		args = append(args, uint64(at), uint64(len(s)))
	}
	_, err := p.call(abi.ImportSetState, args...)
	return err
}

// TestABISetState checks set_state's store: a state per scope, replaced and deleted, its
// bounds, and the strings and ranges that trap.
func TestABISetState(t *testing.T) {
	p := newProbe(t)
	p.in(phaseRequest)
	st := &p.inst.w.states
	states := func() []wrapper.State { s, _ := st.report(); return s }
	for _, s := range [][4]string{
		{"greeter", "", "n2", "open"},
		{"", "", "n1", "open"},
		{"greeter", "Greeter.Hello", "", "closed"},
		{"", "", "n1", "half-open"}, // replaces
		{"", "", "n3", "open"},
		{"", "", "n3", ""}, // deletes
		{"", "", "n4", ""}, // deletes nothing
		{"", "", "", "ready"},
	} {
		if err := p.setState(s[0], s[1], s[2], s[3]); err != nil {
			t.Fatalf("set_state%q: %v", s, err)
		}
	}
	want := []wrapper.State{
		{Value: "ready"},
		{Node: "n1", Value: "half-open"},
		{Service: "greeter", Node: "n2", Value: "open"},
		{Service: "greeter", Endpoint: "Greeter.Hello", Value: "closed"},
	}
	if got := states(); !slices.Equal(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}

	long := strings.Repeat("x", abi.MaxStateFieldLen+1)
	for _, tc := range []struct {
		s    [4]string
		want string
	}{
		{[4]string{long, "", "", "v"}, "service of 257 bytes is longer than the limit of 256"},
		{[4]string{"", long, "", "v"}, "endpoint of 257 bytes is longer than the limit of 256"},
		{[4]string{"", "", long, "v"}, "node of 257 bytes is longer than the limit of 256"},
		{[4]string{"", "", "n1", strings.Repeat("v", abi.MaxStateValueLen+1)}, "value of 257 bytes is longer than the limit of 256"},
		{[4]string{"", "", "n\x001", "v"}, `node "n\x001" has a control character at byte 1`},
		{[4]string{"", "", "n1", "open\n"}, "control character at byte 4"},
		{[4]string{"", "E\xff", "", "v"}, `endpoint "E\xff" is not valid UTF-8`},
	} {
		wantABIError(t, fmt.Sprintf("set_state%.30q", tc.s), p.setState(tc.s[0], tc.s[1], tc.s[2], tc.s[3]), tc.want)
	}
	for _, args := range [][]uint64{
		{memSize - 2, 3, 0, 0, 0, 0, 0, 1},
		{0, 0, memSize, 1, 0, 0, 0, 1},
		{0, 0, 0, 0, 0xffffffff, 2, 0, 1},
		{0, 0, 0, 0, 0, 0, memSize - 1, 2},
	} {
		_, err := p.call(abi.ImportSetState, args...)
		wantABIError(t, fmt.Sprint("set_state", args), err, "outside the guest's memory")
	}
	if err := p.setState(strings.Repeat("s", 256), "é", "", strings.Repeat("v", 256)); err != nil {
		t.Errorf("strings at their limits: %v", err)
	}
	if got := states(); len(got) != len(want)+1 {
		t.Errorf("states after the traps %v: a call that traps must publish nothing", got)
	}

	// An update of a known scope with its value costs no allocation.
	fields := [3][]byte{[]byte("greeter"), nil, []byte("n2")}
	value := []byte("open")
	if n := testing.AllocsPerRun(100, func() { st.set(p.inst, fields, value) }); n != 0 {
		t.Errorf("%v allocations per update with the same value, want 0", n)
	}

	// Past MaxStates, new scopes are dropped, counted and logged once; known ones change.
	for i := 0; len(states()) < abi.MaxStates; i++ {
		if err := p.setState("", "", fmt.Sprint("node-", i), "open"); err != nil {
			t.Fatal(err)
		}
	}
	for _, node := range []string{"new-1", "new-2"} {
		if err := p.setState("", "", node, "open"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.setState("", "", "n1", "closed"); err != nil {
		t.Fatal(err)
	}
	got, dropped := st.report()
	if len(got) != abi.MaxStates || dropped != 2 {
		t.Errorf("%d states, %d dropped; want %d and 2", len(got), dropped, abi.MaxStates)
	}
	if i, ok := slices.BinarySearchFunc(got, "n1", func(s wrapper.State, n string) int {
		return strings.Compare(s.Service+s.Endpoint+s.Node, n)
	}); !ok || got[i].Value != "closed" {
		t.Errorf("a known scope at the bound was not changed: %v", got)
	}
	n := 0
	for _, l := range p.logs.lines() {
		if strings.Contains(l, "states for new scopes are dropped") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d log lines about dropped states, want 1: %q", n, p.logs.lines())
	}
}

// stateGuest returns a hand-written guest whose on_request publishes the same state, and
// continues.
func stateGuest() []byte {
	base := &wasmModule{}
	minimalGuest(func(m *wasmModule) { *base = *m })
	i32 := api.ValueTypeI32
	m := &wasmModule{
		imports: []wasmImport{{abi.ModuleName, abi.ImportSetState, funcType{params: []api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32}}}},
		funcs:   base.funcs,
		data:    []wasmData{{offset: 16, bytes: []byte("greeter" + "n1" + "open")}},
	}
	m.funcs[3].body = concat(i32Const(16), i32Const(7), i32Const(0), i32Const(0), i32Const(23), i32Const(2),
		i32Const(25), i32Const(4), call(0), i32Const(0))
	for _, e := range base.exports {
		if e.kind == 0 {
			e.index++ // after the import
		}
		m.exports = append(m.exports, e)
	}
	return m.bytes()
}

// TestReportNoAllocations checks that neither the counts of a call nor publishing a state
// that did not change allocate: a call that publishes costs as many allocations as one
// that does not, and those are none.
func TestReportNoAllocations(t *testing.T) {
	h, _ := newTestHost(t)
	ctx := context.Background()
	publishing, err := h.Load(ctx, "publishing", stateGuest(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	idle, err := h.Load(ctx, "idle", minimalGuest(nil), Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := newCall(nil)
	r := &wrapper.Result{Status: 200}
	base := testing.AllocsPerRun(1000, func() { idle.OnRequest(ctx, c); idle.OnResponse(ctx, c, r) })
	if base != 0 {
		t.Errorf("%v allocations per call", base)
	}
	if got := testing.AllocsPerRun(1000, func() { publishing.OnRequest(ctx, c) }); got != base {
		t.Errorf("%v allocations per call that publishes a state, %v per call that does not", got, base)
	}
	if got, want := publishing.Report(), (wrapper.Report{Instances: 1, Calls: 1001, States: []wrapper.State{{Service: "greeter", Node: "n1", Value: "open"}}}); got.Calls != want.Calls ||
		!slices.Equal(got.States, want.States) || got.Instances != 1 {
		t.Errorf("report %+v, want %+v", got, want)
	}
}

// TestReport runs a Go guest that publishes states through sdk/wrapper, rejects and fails,
// and checks the wrapper's report: its counts, and its states, which the instance that
// failed loses.
func TestReport(t *testing.T) {
	h, _ := newTestHost(t)
	ctx := context.Background()
	w := load(t, h, "state", Options{})
	ready := wrapper.State{Value: "ready"}
	if got := w.Report(); got.Instances != 1 || got.Calls != 0 || got.Time != 0 || !slices.Equal(got.States, []wrapper.State{ready}) {
		t.Fatalf("report after the load: %+v, want 1 instance, no calls and the state of its Init", got)
	}
	up := newCall(map[string]string{"X-State": "up", "X-Endpoint": "Greeter.Hello"})
	ok := &wrapper.Result{Status: 200}
	for range 3 {
		if v := w.OnRequest(ctx, up); v.Action != wrapper.Continue {
			t.Fatalf("verdict %+v", v)
		}
		w.OnResponse(ctx, up, ok)
	}
	if v := w.OnRequest(ctx, newCall(map[string]string{"X-Reject": "1"})); v.Action != wrapper.Reject {
		t.Fatalf("verdict %+v, want a rejection", v)
	}
	want := []wrapper.State{ready, {Service: "greeter", Endpoint: "Greeter.Hello", Node: "greeter-1", Value: "up"}}
	if got := w.Report(); got.Calls != 4 || got.Rejects != 1 || got.Faults != 0 || got.Time <= 0 || !slices.Equal(got.States, want) {
		t.Fatalf("report %+v, want 4 calls, 1 rejected, some time, and states %v", got, want)
	}
	// A trap in on_request, then one in on_response: each replaces the instance, and the
	// new one lost what the old one published, but for what its Init publishes again.
	w.OnRequest(ctx, newCall(map[string]string{"X-Trap": "1"}))
	c := newCall(nil)
	w.OnRequest(ctx, c) // waits for the new instance
	if got := w.Report().States; !slices.Equal(got, []wrapper.State{ready}) {
		t.Errorf("states after a trap %v, want only the new instance's %v", got, ready)
	}
	w.OnRequest(ctx, up)
	w.OnResponse(ctx, up, &wrapper.Result{Status: 599})
	w.OnRequest(ctx, c)
	got := w.Report()
	if got.Instances != 1 || got.Calls != 8 || got.Rejects != 1 || got.Faults != 2 || got.Time <= 0 || !slices.Equal(got.States, []wrapper.State{ready}) {
		t.Errorf("report %+v, want 1 instance, 8 calls, 1 rejected, 2 faults, some time, and the state %v", got, ready)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w.Report(); got.Instances != 0 || got.Calls != 8 {
		t.Errorf("report of a closed wrapper %+v, want no instances and the counts", got)
	}
}

// TestReportInstances checks that a wrapper keeps the states of all its instances, and
// that an instance that fails takes only its own with it.
func TestReportInstances(t *testing.T) {
	h, _ := newTestHost(t)
	ctx := context.Background()
	w := load(t, h, "state", Options{Instances: 2})
	// Two services that shard to different instances.
	calls := map[int]*wrapper.Call{}
	for i := 0; len(calls) < 2; i++ {
		c := newCall(map[string]string{"X-State": "up"})
		c.Service = fmt.Sprint("svc", i)
		if _, ok := calls[w.pick(c).idx]; !ok {
			calls[w.pick(c).idx] = c
		}
	}
	for _, c := range calls {
		w.OnRequest(ctx, c)
	}
	ready := wrapper.State{Value: "ready"}
	scope := func(c *wrapper.Call) wrapper.State {
		return wrapper.State{Service: c.Service, Node: c.Node, Value: "up"}
	}
	want := []wrapper.State{ready, scope(calls[0]), scope(calls[1])}
	slices.SortFunc(want[1:], func(a, b wrapper.State) int { return strings.Compare(a.Service, b.Service) })
	if got := w.Report(); got.Instances != 2 || got.Calls != 2 || !slices.Equal(got.States, want) {
		t.Fatalf("report %+v, want 2 instances, 2 calls and states %v", got, want)
	}
	// Instance 1 fails: the states it set last go, "ready" among them; instance 0's stay.
	trap := newCall(map[string]string{"X-Trap": "1"})
	trap.Service = calls[1].Service
	w.OnRequest(ctx, trap)
	if got := w.Report().States; !slices.Contains(got, scope(calls[0])) || slices.Contains(got, scope(calls[1])) {
		t.Errorf("states after instance 1 failed: %v, want instance 0's %v and not instance 1's", got, scope(calls[0]))
	}
}

// TestReportHTTPWasm checks the counts of an http-wasm guest's calls.
func TestReportHTTPWasm(t *testing.T) {
	h, _ := newTestHost(t)
	ctx := context.Background()
	answer := loadHTTP(t, h, "answer", answerGuest, Options{})
	answer.OnRequest(ctx, &wrapper.Call{Service: "s", Endpoint: "E"})
	if got := answer.Report(); got.Instances != 1 || got.Calls != 1 || got.Rejects != 1 || got.Faults != 0 || got.Time <= 0 {
		t.Errorf("report of an answer %+v, want 1 call, rejected", got)
	}
	trap := loadHTTP(t, h, "trap", httpGuest(nil, opUnreachable, nil, ""), Options{})
	trap.OnRequest(ctx, &wrapper.Call{Service: "s", Endpoint: "E"})
	if got := trap.Report(); got.Calls != 1 || got.Rejects != 0 || got.Faults != 1 {
		t.Errorf("report of a trap %+v, want 1 call, 1 fault", got)
	}
}

// TestBreakerStates runs the shipped breaker wrapper and follows a node's breaker in the
// wrapper's report: open after a fault, half-open with a probe in flight after the
// cooldown, closed after the probe's success.
func TestBreakerStates(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the breaker wrapper")
	}
	h, _ := newTestHost(t)
	ctx := context.Background()
	const cooldown = 500 * time.Millisecond
	w, err := h.Load(ctx, "breaker", buildShipped(t, "wrapper-breaker"), Options{Timeout: 5 * time.Second,
		Config: fmt.Appendf(nil, `{"key": "node", "consecutive_failures": 1, "cooldown": %q}`, cooldown)})
	if err != nil {
		t.Fatal(err)
	}
	c := newCall(nil)
	state := func(want string) {
		t.Helper()
		var states []wrapper.State
		if want != "" {
			states = []wrapper.State{{Node: c.Node, Value: want}}
		}
		if got := w.Report().States; !slices.Equal(got, states) {
			t.Fatalf("states %v, want %v", got, states)
		}
	}
	if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
		t.Fatalf("verdict %+v", v)
	}
	w.OnResponse(ctx, c, &wrapper.Result{Status: 200})
	state("") // closed since it was made
	w.OnRequest(ctx, c)
	opened := time.Now()
	w.OnResponse(ctx, c, &wrapper.Result{Status: 502, Err: "connection refused", Fault: true})
	state("open")
	if v := w.OnRequest(ctx, c); v.Action != wrapper.RejectNode && time.Since(opened) < cooldown {
		t.Fatalf("verdict of an open breaker %+v, want the node refused", v)
	}
	time.Sleep(time.Until(opened.Add(cooldown + 10*time.Millisecond)))
	if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
		t.Fatalf("the probe after the cooldown: %+v", v)
	}
	state("half-open")
	w.OnResponse(ctx, c, &wrapper.Result{Status: 200})
	state("closed")
	if got := w.Report(); got.Instances != 1 || got.Calls != 4 || got.Rejects != 1 || got.Faults != 0 {
		t.Errorf("report %+v, want 4 calls, 1 rejected", got)
	}
}

// BenchmarkRecord measures what counting a guest call costs the host (slot.record), next
// to a read of the clock that measuring every call would add.
func BenchmarkRecord(b *testing.B) {
	w := &Wrapper{epoch: time.Now()}
	s := newSlot(0)
	b.Run("record", func(b *testing.B) {
		start := w.now()
		for b.Loop() {
			s.record(w, phaseRequest, start, false, false)
		}
	})
	b.Run("clock", func(b *testing.B) {
		var sum int64
		for b.Loop() {
			sum += w.now()
		}
		_ = sum
	})
}
