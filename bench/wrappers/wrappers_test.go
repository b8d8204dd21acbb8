// Package wrappers measures what the shipped wrappers add to a call: each as a wasm guest
// in host/wasm, against the same logic called natively, against no wrapper, in one run;
// and what the two of them add to a process's resident memory.
//
//	go test -run '^$' -bench . -benchmem -count 6 ./bench/wrappers
package wrappers

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/microhost/micro/host/wasm"
	"github.com/microhost/micro/plugins/wrapper-breaker/breaker"
	"github.com/microhost/micro/plugins/wrapper-ratelimit/limiter"
	"github.com/microhost/micro/runtime/wrapper"
	sdkwrapper "github.com/microhost/micro/sdk/wrapper"
)

// call is one call as both the native logic and the host see it.
type call struct{ wrapper.Call }

func (c call) Service() string  { return c.Call.Service }
func (c call) Endpoint() string { return c.Call.Endpoint }
func (c call) Caller() string   { return c.Call.Caller }
func (c call) Node() string     { return c.Call.Node }
func (c call) Budget() time.Duration {
	return time.Until(c.Deadline)
}
func (c call) Header(name string) (string, bool) {
	v, ok := c.Call.Header[name]
	return v, ok
}
func (c call) SetHeader(string, string) {}

// outcome is a call's answer for the native breaker: not the node's fault.
type outcome struct {
	call
	status  int
	latency time.Duration
}

func (o outcome) Status() int            { return o.status }
func (o outcome) Err() string            { return "" }
func (o outcome) Latency() time.Duration { return o.latency }
func (o outcome) Fault() bool            { return false }

func newCall() *wrapper.Call {
	return &wrapper.Call{
		Service: "greeter", Endpoint: "Greeter.Hello", Node: "greeter-1", Caller: "app",
		Header: map[string]string{"Content-Type": "application/json"}, Deadline: time.Now().Add(time.Hour),
	}
}

// The shipped wrappers, as the benchmarks load them: a config that never rejects.
const (
	rateLimitSrc = "../../plugins/wrapper-ratelimit"
	rateLimitCfg = `{"rate": 1e12, "burst": 1000000000, "key": "service"}`
	breakerSrc   = "../../plugins/wrapper-breaker"
	breakerCfg   = `{}` // the defaults, as native's
)

// cacheDir is where the benchmarks keep built and compiled guests across runs.
func cacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "micro-bench")
}

// build builds the wrapper in src, or finds it built, and returns its module.
func build(b *testing.B, src string) []byte {
	b.Helper()
	path, err := wasm.BuildCached(context.Background(), src, filepath.Join(cacheDir(), "wasm"))
	if err != nil {
		b.Fatal(err)
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return bin
}

// newHost returns a wasm host on the benchmarks' compilation cache.
func newHost(b *testing.B) *wasm.Host {
	b.Helper()
	h, err := wasm.NewHost(wasm.HostOptions{CacheDir: filepath.Join(cacheDir(), "compiled"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// load builds the wrapper in src and loads it with cfg, on a host of its own.
func load(b *testing.B, src, cfg string) wrapper.Wrapper {
	b.Helper()
	h := newHost(b)
	b.Cleanup(func() { h.Close(context.Background()) })
	w, err := h.Load(context.Background(), filepath.Base(src), build(b, src), wasm.Options{Config: []byte(cfg)})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

func BenchmarkRateLimit(b *testing.B) {
	b.Run("none", func(b *testing.B) {
		c := newCall()
		b.ReportAllocs()
		for b.Loop() {
			_ = c
		}
	})
	b.Run("native", func(b *testing.B) {
		l, err := limiter.New(limiter.Config{Rate: 1e12, Burst: 1e9, Key: "service"})
		if err != nil {
			b.Fatal(err)
		}
		c := call{*newCall()}
		b.ReportAllocs()
		for b.Loop() {
			if l.Check(c, time.Now()) != sdkwrapper.Continue() {
				b.Fatal("limited")
			}
		}
	})
	b.Run("wasm", func(b *testing.B) {
		w := load(b, rateLimitSrc, rateLimitCfg)
		c := newCall()
		ctx := context.Background()
		r := &wrapper.Result{Status: 200, Latency: time.Millisecond}
		b.ReportAllocs()
		for b.Loop() {
			if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
				b.Fatalf("verdict %+v", v)
			}
			w.OnResponse(ctx, c, r)
		}
	})
}

func BenchmarkBreaker(b *testing.B) {
	b.Run("native", func(b *testing.B) {
		br, err := breaker.New(breaker.DefaultConfig(), nil)
		if err != nil {
			b.Fatal(err)
		}
		c := call{*newCall()}
		o := outcome{call: c, status: 200, latency: time.Millisecond}
		b.ReportAllocs()
		for b.Loop() {
			if br.OnRequest(c, time.Now()) != sdkwrapper.Continue() {
				b.Fatal("open")
			}
			br.OnResponse(o, time.Now())
		}
	})
	b.Run("wasm", func(b *testing.B) {
		w := load(b, breakerSrc, breakerCfg)
		c := newCall()
		ctx := context.Background()
		r := &wrapper.Result{Status: 200, Latency: time.Millisecond}
		b.ReportAllocs()
		for b.Loop() {
			if v := w.OnRequest(ctx, c); v.Action != wrapper.Continue {
				b.Fatalf("verdict %+v", v)
			}
			w.OnResponse(ctx, c, r)
		}
	})
}

// BenchmarkResident measures what the two shipped wrappers cost a process in memory (on
// Linux): per iteration, a new host loads both, as micro does with micro.toml, and calls
// each 10,000 times; it reports how much the resident set (rss-MiB) and the Go heap in use
// (heap-MiB) grew, before the host is closed. The compilation cache is warm, as for a
// micro that has run before.
func BenchmarkResident(b *testing.B) {
	if _, err := residentBytes(); err != nil {
		b.Skipf("no resident set size here: %v", err)
	}
	ctx := context.Background()
	mods := map[string][]byte{rateLimitSrc: build(b, rateLimitSrc), breakerSrc: build(b, breakerSrc)}
	cfgs := map[string]string{rateLimitSrc: rateLimitCfg, breakerSrc: breakerCfg}
	c := newCall()
	r := &wrapper.Result{Status: 200, Latency: time.Millisecond}
	var rss, heap float64
	for b.Loop() {
		debug.FreeOSMemory()
		rss0, heap0 := resident(b)
		h := newHost(b)
		for src, bin := range mods {
			w, err := h.Load(ctx, filepath.Base(src), bin, wasm.Options{Config: []byte(cfgs[src])})
			if err != nil {
				b.Fatal(err)
			}
			for range 10000 {
				w.OnRequest(ctx, c)
				w.OnResponse(ctx, c, r)
			}
		}
		rss1, heap1 := resident(b)
		rss += float64(rss1 - rss0)
		heap += float64(heap1 - heap0)
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(rss/float64(b.N)/(1<<20), "rss-MiB")
	b.ReportMetric(heap/float64(b.N)/(1<<20), "heap-MiB")
}

// resident returns the process's resident set size and the bytes of Go heap in use.
func resident(b *testing.B) (rss, heap int64) {
	b.Helper()
	rss, err := residentBytes()
	if err != nil {
		b.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return rss, int64(ms.HeapInuse)
}

// residentBytes reads the process's resident set size from /proc.
func residentBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	var size, pages int64
	if _, err := fmt.Sscan(string(b), &size, &pages); err != nil {
		return 0, fmt.Errorf("/proc/self/statm: %w", err)
	}
	return pages * int64(os.Getpagesize()), nil
}
