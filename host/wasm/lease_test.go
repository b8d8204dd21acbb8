package wasm

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

// fakeLeases plays micro's quota client: it holds the leases in rates, and records each
// ask as "resource demand".
type fakeLeases struct {
	mu    sync.Mutex
	rates map[string]float64 // the leases held
	asks  []string
}

var _ wrapper.Leases = (*fakeLeases)(nil)

func (f *fakeLeases) Lease(resource string, demand uint64) (float64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks = append(f.asks, fmt.Sprint(resource, " ", demand))
	rate, held := f.rates[resource]
	return rate, held
}

func (f *fakeLeases) grant(resource string, rate float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rates == nil {
		f.rates = map[string]float64{}
	}
	f.rates[resource] = rate
}

// asked returns the asks so far, and forgets them.
func (f *fakeLeases) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.asks
	f.asks = nil
	return a
}

// steadyLeases holds a lease of rate for every resource, and counts asks and demand
// without allocating, for the benchmarks and the allocation test.
type steadyLeases struct {
	rate         float64
	asks, demand atomic.Uint64
}

func (s *steadyLeases) Lease(_ string, demand uint64) (float64, bool) {
	s.asks.Add(1)
	s.demand.Add(demand)
	return s.rate, true
}

// TestABIGetLease drives get_lease with a probe: what it writes and returns, what it
// hands the Leases, and what it traps on.
func TestABIGetLease(t *testing.T) {
	p := newProbe(t)
	p.in(phaseRequest)
	const out = 1001 // not aligned
	rateAt := func() float64 { return math.Float64frombits(binary.LittleEndian.Uint64([]byte(p.get(out, 8)))) }
	ask := func(name string, demand uint64) (uint64, error) {
		p.put(100, name)
		p.put(out, "garbage!")
		return p.call(abi.ImportGetLease, 100, uint64(len(name)), demand, out)
	}

	// Without Leases, no lease, and the rate 0.
	if held, err := ask("api", 3); err != nil || held != 0 || rateAt() != 0 {
		t.Errorf("no Leases: held %d, rate %v, %v; want 0 and 0", held, rateAt(), err)
	}

	leases := &fakeLeases{}
	p.inst.w.leases = leases
	if held, err := ask("api", 3); err != nil || int32(held) != abi.LeaseNone || rateAt() != 0 {
		t.Errorf("no lease yet: held %d, rate %v, %v", held, rateAt(), err)
	}
	leases.grant("api", 120.5)
	if held, err := ask("api", 1<<63+5); err != nil || int32(held) != abi.LeaseHeld || rateAt() != 120.5 {
		t.Errorf("a lease: held %d, rate %v, %v; want 1 and 120.5", held, rateAt(), err)
	}
	if got, want := leases.asked(), []string{"api 3", "api 9223372036854775813"}; !slices.Equal(got, want) {
		t.Errorf("asks %q, want %q: the demand is unsigned", got, want)
	}
	// A rate that no guest could apply is no lease.
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1), math.Inf(-1)} {
		leases.grant("api", bad)
		if held, err := ask("api", 0); err != nil || held != 0 || rateAt() != 0 {
			t.Errorf("a lease of %v: held %d, rate %v, %v; want no lease and 0", bad, held, rateAt(), err)
		}
	}
	leases.grant("api", 0)
	if held, err := ask("api", 0); err != nil || held != 1 || rateAt() != 0 {
		t.Errorf("a lease of 0: held %d, rate %v, %v", held, rateAt(), err)
	}
	leases.asked()

	// Every phase may ask.
	for _, ph := range []phase{phaseIdle, phaseInit, phaseResponse} {
		p.in(ph)
		if held, err := ask("api", 1); err != nil || held != 1 {
			t.Errorf("in %s: %d, %v", ph, held, err)
		}
	}
	leases.asked()

	// Names: 1 to 128 bytes of [A-Za-z0-9._-].
	for _, name := range []string{"a", "Api_v2.write-1", strings.Repeat("z", abi.MaxResourceNameLen)} {
		if _, err := ask(name, 1); err != nil {
			t.Errorf("name %q: %v", name, err)
		}
	}
	leases.asked()
	for _, tc := range []struct{ name, want string }{
		{"", "bad call to micro.get_lease: empty resource name"},
		{"api v2", `resource name "api v2" has a byte at 3 that is not allowed in a name`},
		{"api/v2", `resource name "api/v2" has a byte at 3`},
		{"\xff", `resource name "\xff" has a byte at 0`},
		{strings.Repeat("z", abi.MaxResourceNameLen+1), "resource name of 129 bytes is longer than the limit of 128"},
	} {
		_, err := ask(tc.name, 1)
		wantABIError(t, fmt.Sprintf("name %q", tc.name), err, tc.want)
	}
	// Ranges: the name's and the rate's 8 bytes.
	p.put(100, "api")
	for _, args := range [][]uint64{
		{memSize - 2, 3, 1, out},
		{0xffffffff, 3, 1, out},
		{100, 3, 1, memSize - 7},
		{100, 3, 1, 0xffffffff},
	} {
		_, err := p.call(abi.ImportGetLease, args...)
		wantABIError(t, fmt.Sprint("range ", args), err, "outside the guest's memory")
	}
	if held, err := p.call(abi.ImportGetLease, 100, 3, 1, memSize-8); err != nil || held != 1 {
		t.Errorf("the rate in the last 8 bytes: %d, %v", held, err)
	}
	if got := leases.asked(); !slices.Equal(got, []string{"api 1"}) {
		t.Errorf("asks %q: a call that traps must record no demand", got)
	}
}

// TestLeaseGuest runs a Go guest that asks through sdk/wrapper, in on_init and
// on_request, with and without Leases.
func TestLeaseGuest(t *testing.T) {
	h, logs := newTestHost(t)
	ctx := context.Background()
	leases := &fakeLeases{}
	leases.grant("api", 120.5)
	w := load(t, h, "lease", Options{Leases: leases})
	if got := leases.asked(); !slices.Equal(got, []string{"boot 0"}) {
		t.Errorf("asks in on_init: %q", got)
	}
	for _, tc := range []struct{ resource, demand, want string }{
		{"api", "7", "120.5 true"},
		{"payments.write", "1", "0 false"},
	} {
		v := w.OnRequest(ctx, newCall(map[string]string{"X-Resource": tc.resource, "X-Demand": tc.demand}))
		if v.Action != wrapper.Continue || v.Header["X-Lease"] != tc.want {
			t.Errorf("%s: %+v, want X-Lease %q", tc.resource, v, tc.want)
		}
	}
	if got, want := leases.asked(), []string{"api 7", "payments.write 1"}; !slices.Equal(got, want) {
		t.Errorf("asks %q, want %q", got, want)
	}

	// A bad name traps the guest: the call gets the on_trap verdict.
	v := w.OnRequest(ctx, newCall(map[string]string{"X-Resource": "api v2", "X-Demand": "1"}))
	if v.Action != wrapper.Continue || v.Header != nil {
		t.Errorf("a bad name, on_trap open: %+v", v)
	}
	if logs.find("wrapper guest failed", `bad call to micro.get_lease: resource name "api v2"`) == "" {
		t.Errorf("the trap was not logged: %q", logs.lines())
	}
	// The next call waits for the new instance, which asks in on_init.
	w.OnRequest(ctx, newCall(map[string]string{"X-Resource": "api", "X-Demand": "2"}))
	if got, want := leases.asked(), []string{"boot 0", "api 2"}; !slices.Equal(got, want) {
		t.Errorf("asks after the trap %q, want %q: a trapped call records no demand", got, want)
	}

	// Without Leases, no lease.
	none := load(t, h, "lease", Options{})
	v = none.OnRequest(ctx, newCall(map[string]string{"X-Resource": "api", "X-Demand": "1"}))
	if v.Header["X-Lease"] != "0 false" {
		t.Errorf("without Leases: %+v", v)
	}
}

// leaseGuest returns a hand-written guest whose on_request asks get_lease for name, with
// demand 1, and continues.
func leaseGuest(name string) []byte {
	base := &wasmModule{}
	minimalGuest(func(m *wasmModule) { *base = *m })
	m := &wasmModule{
		imports: []wasmImport{{abi.ModuleName, abi.ImportGetLease, funcType{
			params: []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI64, api.ValueTypeI32}, results: []api.ValueType{api.ValueTypeI32}}}},
		funcs: base.funcs,
		data:  []wasmData{{offset: 16, bytes: []byte(name)}},
	}
	m.funcs[3].body = concat(i32Const(16), i32Const(int32(len(name))), []byte{0x42}, sleb(1), i32Const(1024), call(0),
		[]byte{0x1a}, // drop
		i32Const(0))
	for _, e := range base.exports {
		if e.kind == 0 {
			e.index++ // after the import
		}
		m.exports = append(m.exports, e)
	}
	return m.bytes()
}

// TestGetLeaseNoAllocations checks that get_lease for a resource asked before allocates
// nothing: a call that asks costs as many allocations as one that does not.
func TestGetLeaseNoAllocations(t *testing.T) {
	h, _ := newTestHost(t)
	ctx := context.Background()
	leases := &steadyLeases{rate: 100}
	asking, err := h.Load(ctx, "asking", leaseGuest("api"), Options{Leases: leases})
	if err != nil {
		t.Fatal(err)
	}
	idle, err := h.Load(ctx, "idle", minimalGuest(nil), Options{Leases: leases})
	if err != nil {
		t.Fatal(err)
	}
	c := newCall(nil)
	base := testing.AllocsPerRun(1000, func() { idle.OnRequest(ctx, c) })
	if got := testing.AllocsPerRun(1000, func() { asking.OnRequest(ctx, c) }); got != base {
		t.Errorf("%v allocations per call that asks get_lease, %v per call that does not", got, base)
	}
	if leases.asks.Load() < 1000 || leases.demand.Load() != leases.asks.Load() {
		t.Errorf("%d asks with demand %d: the guest's asks did not all arrive", leases.asks.Load(), leases.demand.Load())
	}
}

// buildShipped builds the shipped wrapper plugins/name, or finds it built, into the test
// guests' cache.
func buildShipped(tb testing.TB, name string) []byte {
	tb.Helper()
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	path, err := BuildCached(context.Background(), filepath.Join("..", "..", "plugins", name),
		filepath.Join(base, "micro-test", "host-wasm", "guests"))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestRatelimitGlobal runs the shipped rate-limit wrapper in global scope on the host:
// it asks for its share, applies it, and falls back to its safe share without a lease.
func TestRatelimitGlobal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the rate-limit wrapper")
	}
	h, _ := newTestHost(t)
	ctx := context.Background()
	bin := buildShipped(t, "wrapper-ratelimit")
	leases := &fakeLeases{}
	leases.grant("api", 10) // burst: 2
	w, err := h.Load(ctx, "ratelimit", bin, Options{Leases: leases, Timeout: 5 * time.Second,
		Config: []byte(`{"scope": "global", "resource": "api", "fallback_rate": 0}`)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if v := w.OnRequest(ctx, newCall(nil)); v.Action != wrapper.Continue {
			t.Fatalf("call %d of the burst: %+v", i+1, v)
		}
	}
	v := w.OnRequest(ctx, newCall(nil))
	if want := `global rate limit on resource "api" exceeded (this micro's share: 10/s)`; v.Action != wrapper.Reject || v.Status != 429 ||
		v.Message != want || v.ReplyHeader["Retry-After"] != "1" {
		t.Errorf("past the burst: %+v, want 429 %q with Retry-After: 1", v, want)
	}
	if got := leases.asked(); !slices.Equal(got, []string{"api 1"}) {
		t.Errorf("asks %q, want one on the first call", got)
	}

	// Without Leases, the safe share: 0 fails closed.
	closed, err := h.Load(ctx, "ratelimit", bin, Options{Timeout: 5 * time.Second,
		Config: []byte(`{"scope": "global", "resource": "api", "fallback_rate": 0}`)})
	if err != nil {
		t.Fatal(err)
	}
	v = closed.OnRequest(ctx, newCall(nil))
	if want := `global rate limit on resource "api" exceeded (no lease; safe share: 0/s)`; v.Action != wrapper.Reject || v.Message != want {
		t.Errorf("no lease, fallback 0: %+v, want %q", v, want)
	}

	if _, err := h.Load(ctx, "ratelimit", bin, Options{Config: []byte(`{"scope": "global", "resource": "api", "fallback_rate": 5, "rate": 10}`)}); err == nil ||
		!strings.Contains(err.Error(), "rate:") {
		t.Errorf("rate in global scope: %v, want an error naming rate", err)
	}
}
