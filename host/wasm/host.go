// Package wasm runs micro's wrappers: WebAssembly guests, written against sdk/wrapper (or
// any language that speaks abi/wrapper), loaded with wazero. A *Wrapper implements
// runtime/wrapper.Wrapper.
//
// Each wrapper gets its own wazero runtime, with a memory page limit, and its module is
// compiled once (through the Host's compilation cache). It runs a fixed number of guest
// instances; calls to one instance are serialized, and a shard key (the call's service,
// node or caller) picks the instance, so a stateful guest is exact. A guest call that runs
// past its time limit is stopped. A guest that traps, fails, runs out of time or memory is
// logged, the call gets the wrapper's on_trap verdict, and the instance is replaced by a
// fresh one. Guests get a clock and random numbers, and nothing else of WASI: no files, no
// network, no arguments or environment; what they print goes to micro's log.
package wasm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/wrapper"
)

// Defaults of Options: micro.toml's (runtime/config), so that a wrapper loaded with zero
// options behaves as one configured with none.
const (
	DefaultMemoryLimit = uint64(config.DefaultWrapperMemoryLimit)
	DefaultTimeout     = config.DefaultWrapperTimeout
	// InitTimeout bounds the start of an instance: the guest's _initialize and on_init.
	InitTimeout = 10 * time.Second
)

// The values of Options.Shard: micro.toml's.
const (
	ShardService = config.ShardService
	ShardNode    = config.ShardNode
	ShardCaller  = config.ShardCaller
)

// The values of Options.OnTrap: micro.toml's.
const (
	OnTrapOpen   = config.OnTrapOpen
	OnTrapClosed = config.OnTrapClosed
)

// The values of Options.ABI: the contract a guest is built for.
const (
	// ABIMicro is micro's own wrapper ABI (abi/wrapper), which sdk/wrapper builds.
	ABIMicro = config.ABIMicro
	// ABIHTTPWasm is the http-wasm handler ABI (https://http-wasm.io); see httpwasm.go.
	ABIHTTPWasm = config.ABIHTTPWasm
)

// wasmPageSize is the size of a page of Wasm linear memory.
const wasmPageSize = 64 << 10

// HostOptions configures a Host.
type HostOptions struct {
	// CacheDir keeps compiled guests across runs of micro, so a guest is compiled once per
	// version of its .wasm. Empty keeps them in memory only, for the life of the Host.
	CacheDir string
	// Logger receives the host's and the guests' logs; nil discards them.
	Logger *slog.Logger
}

// Host loads wrappers. One Host serves every wrapper of a micro process, and its
// compilation cache lets a reload of an unchanged guest skip the compile.
type Host struct {
	logger *slog.Logger
	cache  wazero.CompilationCache

	// life is held for reading by each Load, and for writing by Close, so that Close
	// waits for the loads in progress before it closes the cache they use.
	life   sync.RWMutex
	closed bool // under life

	mu       sync.Mutex
	wrappers map[*Wrapper]struct{} // open wrappers, closed by Close
}

// NewHost returns a Host.
func NewHost(opts HostOptions) (*Host, error) {
	h := &Host{logger: opts.Logger, wrappers: make(map[*Wrapper]struct{})}
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	if opts.CacheDir == "" {
		h.cache = wazero.NewCompilationCache()
	} else {
		c, err := wazero.NewCompilationCacheWithDir(opts.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("wasm compilation cache %s: %w", opts.CacheDir, err)
		}
		h.cache = c
	}
	return h, nil
}

// Close closes the wrappers that are still open, then the compilation cache.
func (h *Host) Close(ctx context.Context) error {
	h.life.Lock()
	defer h.life.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	h.mu.Lock()
	ws := make([]*Wrapper, 0, len(h.wrappers))
	for w := range h.wrappers {
		ws = append(ws, w)
	}
	h.mu.Unlock()
	var errs []error
	for _, w := range ws {
		errs = append(errs, w.Close(ctx))
	}
	errs = append(errs, h.cache.Close(ctx))
	return errors.Join(errs...)
}

func (h *Host) track(w *Wrapper) {
	h.mu.Lock()
	h.wrappers[w] = struct{}{}
	h.mu.Unlock()
}

func (h *Host) forget(w *Wrapper) {
	h.mu.Lock()
	delete(h.wrappers, w)
	h.mu.Unlock()
}

// Options configures one wrapper. The zero value of each field means its default.
type Options struct {
	// ABI is the contract the guest is built for: ABIMicro (the default) or ABIHTTPWasm.
	ABI string
	// Instances is how many guest instances run; default 1.
	Instances int
	// Shard picks a call's instance when there are several: ShardService (the default),
	// ShardNode or ShardCaller. Calls with the same key always go to the same instance.
	Shard string
	// OnTrap is the verdict for a call whose guest trapped, failed, ran out of time or
	// memory, or has no working instance: OnTrapOpen (the default) lets the call through,
	// OnTrapClosed rejects it with 503. Availability wins by default: a broken limiter lets
	// traffic pass, and the failure is logged.
	OnTrap string
	// MemoryLimit caps each instance's linear memory, in bytes, rounded down to 64 KiB
	// pages; default DefaultMemoryLimit. A Go guest needs a few MiB.
	MemoryLimit uint64
	// Timeout bounds one guest call (on_request or on_response); default DefaultTimeout.
	// A call that runs longer is stopped and its instance replaced.
	Timeout time.Duration
	// Config is the wrapper's config table as a JSON object, given to the guest at init;
	// nil (or JSON null) means "{}".
	Config []byte
	// Leases gives the guest this micro's shares of global rate limits, through the host
	// function abi.ImportGetLease. nil means that this micro holds no leases: get_lease
	// answers "no lease" with the rate 0, and the guest applies its own safe share.
	Leases wrapper.Leases
}

// withDefaults checks o and fills in its defaults.
func (o Options) withDefaults() (Options, error) {
	switch o.ABI {
	case "":
		o.ABI = ABIMicro
	case ABIMicro, ABIHTTPWasm:
	default:
		return o, fmt.Errorf("abi must be %q or %q, got %q", ABIMicro, ABIHTTPWasm, o.ABI)
	}
	if o.Instances == 0 {
		o.Instances = 1
	}
	if o.Instances < 0 || o.Instances > config.MaxWrapperInstances {
		return o, fmt.Errorf("instances must be from 1 to %d, got %d", config.MaxWrapperInstances, o.Instances)
	}
	switch o.Shard {
	case "":
		o.Shard = ShardService
	case ShardService, ShardNode, ShardCaller:
	default:
		return o, fmt.Errorf("shard must be %q, %q or %q, got %q", ShardService, ShardNode, ShardCaller, o.Shard)
	}
	switch o.OnTrap {
	case "":
		o.OnTrap = OnTrapOpen
	case OnTrapOpen, OnTrapClosed:
	default:
		return o, fmt.Errorf("on_trap must be %q or %q, got %q", OnTrapOpen, OnTrapClosed, o.OnTrap)
	}
	if o.MemoryLimit == 0 {
		o.MemoryLimit = DefaultMemoryLimit
	}
	if lo, hi := uint64(config.MinWrapperMemoryLimit), uint64(config.MaxWrapperMemoryLimit); o.MemoryLimit < lo || o.MemoryLimit > hi {
		return o, fmt.Errorf("memory limit must be from %s to %s, got %d bytes", config.MinWrapperMemoryLimit, config.MaxWrapperMemoryLimit, o.MemoryLimit)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Timeout < 0 || o.Timeout > config.MaxWrapperTimeout {
		return o, fmt.Errorf("timeout must be positive and at most %v, got %v", config.MaxWrapperTimeout, o.Timeout)
	}
	if c := bytes.TrimSpace(o.Config); len(c) == 0 || string(c) == "null" {
		o.Config = []byte("{}") // json.Marshal of a nil map gives null
	}
	if len(o.Config) > abi.MaxConfigLen {
		return o, fmt.Errorf("config of %d bytes is larger than the limit of %d", len(o.Config), abi.MaxConfigLen)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(o.Config, &obj); err != nil {
		return o, fmt.Errorf("config is not a JSON object: %w", err)
	}
	return o, nil
}
