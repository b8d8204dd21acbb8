// Package wrappers measures what the shipped wrappers add to a call: each as a wasm guest
// in host/wasm, against the same logic called natively, against no wrapper, in one run.
//
//	go test -run '^$' -bench . -benchmem -count 6 ./bench/wrappers
package wrappers

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/microhost/micro/host/wasm"
	"github.com/microhost/micro/plugins/wrapper-breaker/breaker"
	"github.com/microhost/micro/plugins/wrapper-ratelimit/limiter"
	"github.com/microhost/micro/runtime/wrapper"
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

// load builds the wrapper in src and loads it with cfg.
func load(b *testing.B, src, cfg string) wrapper.Wrapper {
	b.Helper()
	ctx := context.Background()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	path, err := wasm.BuildCached(ctx, src, filepath.Join(cache, "micro-bench", "wasm"))
	if err != nil {
		b.Fatal(err)
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	h, err := wasm.NewHost(wasm.HostOptions{CacheDir: filepath.Join(cache, "micro-bench", "compiled"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close(ctx) })
	w, err := h.Load(ctx, filepath.Base(src), bin, wasm.Options{Config: []byte(cfg)})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

func BenchmarkRateLimit(b *testing.B) {
	const cfg = `{"rate": 1e12, "burst": 1000000000, "key": "service"}`
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
			if !l.Check(c, time.Now()).Allowed {
				b.Fatal("limited")
			}
		}
	})
	b.Run("wasm", func(b *testing.B) {
		w := load(b, "../../plugins/wrapper-ratelimit", cfg)
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
			if !br.OnRequest(c, time.Now()).Allowed {
				b.Fatal("open")
			}
			br.OnResponse(o, time.Now())
		}
	})
	b.Run("wasm", func(b *testing.B) {
		w := load(b, "../../plugins/wrapper-breaker", `{}`) // the defaults, as native's
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
