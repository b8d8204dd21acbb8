package wasm

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/api"

	"github.com/microhost/micro/runtime/wrapper"
)

// nativePass is the pass guest's logic as native Go middleware.
type nativePass struct{}

func (nativePass) Name() string { return "native-pass" }
func (nativePass) OnRequest(context.Context, *wrapper.Call) wrapper.Verdict {
	return wrapper.Verdict{Action: wrapper.Continue}
}
func (nativePass) OnResponse(context.Context, *wrapper.Call, *wrapper.Result) {}
func (nativePass) Close(context.Context) error                                { return nil }

// nativeEcho is the echo guest's logic as native Go middleware.
type nativeEcho struct {
	requests, responses int
	last                string
}

func (*nativeEcho) Name() string { return "native-echo" }
func (e *nativeEcho) OnRequest(_ context.Context, c *wrapper.Call) wrapper.Verdict {
	e.requests++
	x := c.Header["X-Test"]
	budget := "none"
	if !c.Deadline.IsZero() {
		budget = "set"
		if time.Until(c.Deadline) <= 0 {
			budget = "spent"
		}
	}
	return wrapper.Verdict{Action: wrapper.Continue, Header: map[string]string{
		"X-Echo":  fmt.Sprintf("%s|%s|%s|%s|%s|%s|%s", "echo", c.Service, c.Endpoint, c.Node, c.Caller, x, budget),
		"X-Count": strconv.Itoa(e.requests),
		"X-Last":  e.last,
	}}
}
func (e *nativeEcho) OnResponse(_ context.Context, c *wrapper.Call, r *wrapper.Result) {
	e.responses++
	e.last = fmt.Sprintf("%d|%s|%t|%s|%s|%d", r.Status, r.Err, r.Fault, c.Service, c.Node, e.responses)
}
func (*nativeEcho) Close(context.Context) error { return nil }

// BenchmarkCall measures one OnRequest plus one OnResponse: with no wrapper, with native
// Go middleware, and with the same logic as a wasm guest, in the same run. "pass" does
// nothing; "echo" reads every field of the call, sets three headers and keeps state.
func BenchmarkCall(b *testing.B) {
	h, _ := newTestHost(b)
	ctx := context.Background()
	run := func(b *testing.B, w wrapper.Wrapper) {
		c := newCall(map[string]string{"X-Test": "x", "Micro-Timeout": "1m"})
		r := &wrapper.Result{Status: 200, Latency: time.Millisecond}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if w != nil {
				if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
					b.Fatalf("verdict %+v", v)
				}
				w.OnResponse(ctx, c, r)
			}
		}
	}
	b.Run("none", func(b *testing.B) { run(b, nil) })
	b.Run("native-pass", func(b *testing.B) { run(b, nativePass{}) })
	b.Run("wasm-pass", func(b *testing.B) { run(b, load(b, h, "pass", Options{})) })
	b.Run("native-echo", func(b *testing.B) { run(b, &nativeEcho{}) })
	b.Run("wasm-echo", func(b *testing.B) { run(b, load(b, h, "echo", Options{})) })
}

// BenchmarkCallParallel is BenchmarkCall's wasm-pass from every core at once, on one
// instance (calls serialized) and on one instance per core, sharded by caller.
func BenchmarkCallParallel(b *testing.B) {
	h, _ := newTestHost(b)
	for _, instances := range []int{1, 4} {
		b.Run(fmt.Sprintf("wasm-pass/instances=%d", instances), func(b *testing.B) {
			w := load(b, h, "pass", Options{Instances: instances, Shard: ShardCaller})
			b.ReportAllocs()
			b.ResetTimer()
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				c := newCall(nil)
				c.Caller = fmt.Sprint("caller-", n.Add(1))
				r := &wrapper.Result{Status: 200}
				for pb.Next() {
					w.OnRequest(context.Background(), c)
					w.OnResponse(context.Background(), c, r)
				}
			})
		})
	}
}

// BenchmarkHostCall measures the host's own cost: OnRequest on a hand-written guest (no Go
// runtime inside) whose on_request calls get_budget 0, 1 or 10 times.
func BenchmarkHostCall(b *testing.B) {
	h, _ := newTestHost(b)
	for _, calls := range []int{0, 1, 10} {
		m := &wasmModule{imports: []wasmImport{{"micro", "get_budget", funcType{results: []api.ValueType{api.ValueTypeI64}}}}}
		base := &wasmModule{}
		minimalGuest(func(mm *wasmModule) { *base = *mm })
		m.funcs = base.funcs
		var body []byte
		for range calls {
			body = append(body, call(0)...)
			body = append(body, 0x1a) // drop
		}
		m.funcs[3].body = append(body, i32Const(0)...)
		for _, e := range base.exports {
			if e.kind == 0 {
				e.index++
			}
			m.exports = append(m.exports, e)
		}
		w, err := h.Load(context.Background(), "hostcall", m.bytes(), Options{})
		if err != nil {
			b.Fatal(err)
		}
		c := newCall(nil)
		b.Run(fmt.Sprintf("calls=%d", calls), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w.OnRequest(context.Background(), c)
			}
		})
	}
}

// BenchmarkColdStart measures Load of the pass guest (compile, instantiate, _initialize,
// on_init): "compile" with an empty compilation cache directory each time, "cached" with
// a warm one in a new Host (as a restarted micro), "reload" on the same Host (as a
// reload of an unchanged wrapper). It reports the instance's memory after init.
func BenchmarkColdStart(b *testing.B) {
	wasm := guests["pass"]
	ctx := context.Background()
	loadOnce := func(b *testing.B, h *Host) {
		w, err := h.Load(ctx, "pass", wasm, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(w.slots[0].inst.mod.Memory().Size())/(1<<20), "MiB-memory/instance")
		w.Close(ctx)
	}
	b.Run("compile", func(b *testing.B) {
		for b.Loop() {
			h, err := NewHost(HostOptions{CacheDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			loadOnce(b, h)
			h.Close(ctx)
		}
	})
	dir := b.TempDir()
	warm, _ := NewHost(HostOptions{CacheDir: dir})
	loadOnce(b, warm)
	warm.Close(ctx)
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			h, err := NewHost(HostOptions{CacheDir: dir})
			if err != nil {
				b.Fatal(err)
			}
			loadOnce(b, h)
			h.Close(ctx)
		}
	})
	b.Run("reload", func(b *testing.B) {
		h, _ := NewHost(HostOptions{CacheDir: dir})
		defer h.Close(ctx)
		for b.Loop() {
			loadOnce(b, h)
		}
	})
}

// BenchmarkInstance measures the start of one more instance of a loaded guest, as a
// replacement after a trap does, and the instance's memory.
func BenchmarkInstance(b *testing.B) {
	h, _ := newTestHost(b)
	w := load(b, h, "echo", Options{})
	for b.Loop() {
		inst, err := w.instantiate(context.Background(), 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(inst.mod.Memory().Size())/(1<<20), "MiB-memory/instance")
		inst.mod.Close(context.Background())
	}
}

// BenchmarkRatelimitGlobal measures the shipped rate-limit wrapper per call in the wasm
// host (OnRequest and OnResponse, which it does not ask for), with configs that never
// reject: "local" is its default scope, a bucket per service; "global" is its share of a
// global limit, held as a lease, asked for every 100 ms of call time; "global-no-lease"
// the same on a micro without a quota service, at the safe share. It reports the asks
// (get_lease calls) per call.
//
//	go test -run '^$' -bench RatelimitGlobal -benchmem ./host/wasm
func BenchmarkRatelimitGlobal(b *testing.B) {
	h, _ := newTestHost(b)
	bin := buildShipped(b, "wrapper-ratelimit")
	ctx := context.Background()
	const global = `{"scope": "global", "resource": "api", "fallback_rate": 1e12, "burst": 1000000000}`
	for _, tc := range []struct {
		name, config string
		leases       *steadyLeases
	}{
		{"local", `{"rate": 1e12, "burst": 1000000000, "key": "service"}`, nil},
		{"global", global, &steadyLeases{rate: 1e12}},
		{"global-no-lease", global, nil},
	} {
		b.Run(tc.name, func(b *testing.B) {
			opts := Options{Config: []byte(tc.config)}
			if tc.leases != nil {
				opts.Leases = tc.leases
			}
			w, err := h.Load(ctx, "ratelimit", bin, opts)
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close(ctx)
			c := newCall(map[string]string{"Content-Type": "application/json"})
			r := &wrapper.Result{Status: 200, Latency: time.Millisecond}
			var asks0 uint64
			if tc.leases != nil {
				asks0 = tc.leases.asks.Load()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
					b.Fatalf("verdict %+v", v)
				}
				w.OnResponse(ctx, c, r)
			}
			if tc.leases != nil {
				b.ReportMetric(float64(tc.leases.asks.Load()-asks0)/float64(b.N), "asks/op")
			}
		})
	}
}

// BenchmarkGetLease measures one get_lease host call: OnRequest on a hand-written guest
// that asks once, against one that does not.
func BenchmarkGetLease(b *testing.B) {
	h, _ := newTestHost(b)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		wasm []byte
	}{{"none", minimalGuest(nil)}, {"get_lease", leaseGuest("api")}} {
		w, err := h.Load(ctx, tc.name, tc.wasm, Options{Leases: &steadyLeases{rate: 100}})
		if err != nil {
			b.Fatal(err)
		}
		c := newCall(nil)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w.OnRequest(ctx, c)
			}
		})
	}
}
