package wasm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

// retryDelay is how long a slot whose instance could not be replaced waits before the
// next attempt; calls in between get the on_trap verdict.
const retryDelay = time.Second

// Wrapper is a loaded guest. It implements runtime/wrapper.Wrapper; its methods are safe
// for concurrent use.
type Wrapper struct {
	name     string
	host     *Host
	logger   *slog.Logger
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	config   string
	timeout  time.Duration
	shard    string
	failOpen bool
	httpWasm bool // the guest speaks the http-wasm handler ABI (httpwasm.go), not micro's
	slots    []*slot
	gen      atomic.Uint64 // numbers instances, for unique module names
	closed   atomic.Bool

	// leases answers abi.ImportGetLease; nil when this micro holds none.
	leases wrapper.Leases
	// states holds what the guests published with abi.ImportSetState.
	states stateStore

	// The watchdog: every tick it stops the calls that ran past their deadline.
	epoch     time.Time                  // its clock is time.Since(epoch), monotonic
	watched   []atomic.Pointer[instance] // per slot: the instance it watches
	stopWatch chan struct{}              // closed to stop it
	watchDone chan struct{}              // closed when it has stopped
	// wallOffset turns the watchdog's clock into the wall clock, in nanoseconds since the
	// Unix epoch, for the call block: a guest call reads one clock (the monotonic one)
	// rather than two. Each watchdog tick sets it again, so that the guests' wall clock
	// follows a step of the system's within a tick.
	wallOffset atomic.Int64
}

var (
	_ wrapper.Wrapper  = (*Wrapper)(nil)
	_ wrapper.Reporter = (*Wrapper)(nil)
)

// slot holds one of a wrapper's instances and serializes the calls to it. Its fields are
// guarded by its lock (lock and unlock), which a waiting call can give up on, and which a
// replacement can take over from the call that failed.
type slot struct {
	// The padding at both ends keeps what the slot's calls write (held, stats) off the
	// cache lines of the memory around it, such as another slot's.
	_   [64]byte
	idx int
	// held is 0 when the lock is free, and 1+n when it is held with n callers waiting.
	// An unlock with callers waiting hands the lock to one of them through handoff
	// (capacity 1), so that a new call never overtakes a waiting one. Without waiters,
	// lock and unlock are an atomic operation each.
	held    atomic.Int64
	handoff chan struct{}
	// stats counts the slot's guest calls, for Report.
	stats slotStats
	// phases is the phase mask of the last instance put in the slot; OnResponse reads it
	// without the lock, to skip a guest that wants no responses.
	phases  atomic.Int32
	inst    *instance // nil while there is no working instance
	retryAt time.Time // when inst is nil: the next attempt to make one
	lastErr string    // when inst is nil: why
	closed  bool
	// pending holds, for an http-wasm guest, the calls that handle_request let through,
	// until their handle_response.
	pending map[*wrapper.Call]httpPending
	_       [64]byte
}

func newSlot(idx int) *slot { return &slot{idx: idx, handoff: make(chan struct{}, 1)} }

// lock takes the slot's lock, or gives up when ctx ends first.
func (s *slot) lock(ctx context.Context) bool {
	if s.held.CompareAndSwap(0, 1) || s.held.Add(1) == 1 {
		return true
	}
	select {
	case <-s.handoff:
		return true
	case <-ctx.Done():
	}
	for {
		n := s.held.Load()
		if n > 1 {
			// Still waiting: count this caller out.
			if s.held.CompareAndSwap(n, n-1) {
				return false
			}
			continue
		}
		// The lock was handed to this caller as it gave up: pass it on.
		<-s.handoff
		s.unlock()
		return false
	}
}

// unlock releases the slot's lock, or hands it to a waiting caller.
func (s *slot) unlock() {
	for {
		n := s.held.Load()
		if n == 1 {
			if s.held.CompareAndSwap(1, 0) {
				return
			}
			continue
		}
		if s.held.CompareAndSwap(n, n-1) {
			s.handoff <- struct{}{}
			return
		}
	}
}

// setInstance puts inst, which may be nil, in the slot, which the caller has locked.
func (s *slot) setInstance(inst *instance) {
	s.inst = inst
	s.stats.up.Store(inst != nil)
	if inst != nil {
		s.phases.Store(inst.phases)
	}
}

// instance is one guest instance.
type instance struct {
	w          *Wrapper
	slot       int // the index of its slot
	name       string
	mod        api.Module
	mem        api.Memory
	onInit     api.Function
	onRequest  api.Function
	onResponse api.Function
	ctx        context.Context // carries the instance to the host functions
	logger     *slog.Logger
	stdout     *lineWriter
	stderr     *lineWriter
	stack      [2]uint64
	st         callState
	phases     int32
	// hw is the call state of an http-wasm guest (httpwasm.go).
	hw httpCall

	// The call block that on_init registered (abi.ImportSetCallBlock), if hasBlock; seen
	// and version are, per abi.Field, the value written last and its version.
	block    uint32
	hasBlock bool
	seen     [abi.FieldError + 1]string
	version  [abi.FieldError + 1]uint64

	// resources holds the resource names that get_lease was last given, checked, so that
	// a guest that asks for the same resource again costs no new string; nextResource is
	// the entry to replace.
	resources    [4]string
	nextResource int
	// stateKey is set_state's buffer for the key of a state (stateStore).
	stateKey []byte
	// started is when the last guest call started, on the watchdog's clock.
	started int64

	// stop is the global that instrument added: set to 1, it traps the guest within
	// fuelPerCheck loop iterations and function entries.
	stop api.MutableGlobal
	// deadline is when the running guest call must end, on the watchdog's clock; 0 when
	// no call runs; -1 once the watchdog (or a halt) has set stop.
	deadline atomic.Int64
	// stopped records that stop was set: the instance is done for.
	stopped bool
}

// Load compiles a guest and starts its instances. name is the wrapper's name in
// micro.toml; it appears in every error and log line. ctx bounds the compile and the start.
//
// Compiling a guest, or reading it from the compilation cache, leaves tens of MiB of
// garbage (the compiler's work, the cached code read from its file, copies of the module),
// which the Go runtime would give back to the OS only over minutes. Load gives it back at
// once (debug.FreeOSMemory), for a garbage collection of a few milliseconds.
func (h *Host) Load(ctx context.Context, name string, wasm []byte, opts Options) (*Wrapper, error) {
	w, err := h.load(ctx, name, wasm, opts)
	debug.FreeOSMemory()
	if err != nil {
		return nil, fmt.Errorf("wrapper %q: %w", name, err)
	}
	return w, nil
}

func (h *Host) load(ctx context.Context, name string, wasm []byte, opts Options) (*Wrapper, error) {
	h.life.RLock()
	defer h.life.RUnlock()
	if h.closed {
		return nil, errors.New("the wasm host is closed")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	// No WithCloseOnContextDone: instrument's checks stop guests (see there).
	rc := wazero.NewRuntimeConfig().
		WithCompilationCache(h.cache).
		WithMemoryLimitPages(uint32(o.MemoryLimit / wasmPageSize))
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	w := &Wrapper{
		name:      name,
		host:      h,
		logger:    h.logger.With("wrapper", name),
		rt:        rt,
		config:    string(o.Config),
		timeout:   o.Timeout,
		shard:     o.Shard,
		failOpen:  o.OnTrap == OnTrapOpen,
		httpWasm:  o.ABI == ABIHTTPWasm,
		leases:    o.Leases,
		epoch:     time.Now(),
		watched:   make([]atomic.Pointer[instance], o.Instances),
		stopWatch: make(chan struct{}),
		watchDone: make(chan struct{}),
	}
	w.syncWall()
	go w.watch(min(max(o.Timeout/4, time.Millisecond), 100*time.Millisecond))
	ok := false
	defer func() {
		if !ok {
			w.stopWatchdog()
			rt.Close(context.Background())
		}
	}()
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return nil, fmt.Errorf("wasi: %w", err)
	}
	hostModule, funcs, check := abi.ModuleName, hostFuncs, checkModule
	if w.httpWasm {
		hostModule, funcs, check = httpModule, httpHostFuncs, checkHTTPModule
	}
	if err := instantiateHostModule(ctx, rt, hostModule, funcs); err != nil {
		return nil, fmt.Errorf("host module: %w", err)
	}
	instrumented, err := instrument(wasm)
	if err != nil {
		// wazero's error says best what is wrong with a module that is not Wasm at all.
		if _, cerr := compile(ctx, rt, wasm); cerr != nil {
			return nil, fmt.Errorf("not a valid wasm module: %w", cerr)
		}
		return nil, fmt.Errorf("cannot instrument the module: %w", err)
	}
	if w.compiled, err = compile(ctx, rt, instrumented); err != nil {
		if strings.Contains(err.Error(), "section memory") && strings.Contains(err.Error(), "over limit") {
			return nil, fmt.Errorf("memory limit of %d bytes is below what the module needs: %w", o.MemoryLimit, err)
		}
		return nil, fmt.Errorf("not a valid wasm module: %w", err)
	}
	if err := check(w.compiled); err != nil {
		return nil, err
	}
	w.slots = make([]*slot, o.Instances)
	for i := range w.slots {
		s := newSlot(i)
		inst, err := w.instantiate(ctx, i)
		if err != nil {
			if o.Instances > 1 {
				return nil, fmt.Errorf("instance %d: %w", i, err)
			}
			return nil, err
		}
		s.setInstance(inst)
		w.slots[i] = s
	}
	h.track(w)
	ok = true
	return w, nil
}

// exportSig is a required export's signature.
type exportSig struct {
	name            string
	params, results []api.ValueType
}

var requiredExports = []exportSig{
	{abi.ExportABIVersion, nil, nil},
	{abi.ExportInitialize, nil, nil},
	{abi.ExportOnInit, nil, []api.ValueType{api.ValueTypeI32}},
	{abi.ExportOnRequest, nil, []api.ValueType{api.ValueTypeI32}},
	{abi.ExportOnResponse, nil, nil},
}

// checkModule says what keeps a compiled module from being a wrapper guest.
func checkModule(m wazero.CompiledModule) error {
	fns := m.ExportedFunctions()
	if _, ok := fns[abi.ExportABIVersion]; !ok {
		if _, ok := fns["_start"]; ok {
			return errors.New("the module is a WASI command (it exports _start): build it as a reactor, with -buildmode=c-shared")
		}
		return fmt.Errorf("not a micro wrapper: the module does not export %s (build it with sdk/wrapper, or see abi/README.md)", abi.ExportABIVersion)
	}
	problems := checkExports(m, requiredExports)
	if _, ok := m.ExportedMemories()[abi.ExportMemory]; !ok {
		problems = append(problems, "missing export "+abi.ExportMemory+" (the guest's memory)")
	}
	problems = append(problems, checkImports(m, abi.ModuleName, hostFuncs)...)
	if len(problems) > 0 {
		return errors.New("malformed wrapper module: " + strings.Join(problems, "; "))
	}
	return nil
}

// checkExports says how m's exports differ from the required ones.
func checkExports(m wazero.CompiledModule, required []exportSig) []string {
	fns := m.ExportedFunctions()
	var problems []string
	for _, e := range required {
		f, ok := fns[e.name]
		if !ok {
			problems = append(problems, fmt.Sprintf("missing export %s %s", e.name, sigString(e.params, e.results)))
			continue
		}
		if !slices.Equal(f.ParamTypes(), e.params) || !slices.Equal(f.ResultTypes(), e.results) {
			problems = append(problems, fmt.Sprintf("export %s is %s, want %s", e.name,
				sigString(f.ParamTypes(), f.ResultTypes()), sigString(e.params, e.results)))
		}
	}
	return problems
}

// checkImports says which of m's imported functions the host does not provide: it
// provides WASI, and the host module named module with the functions funcs.
func checkImports(m wazero.CompiledModule, module string, funcs []hostFunc) []string {
	var problems []string
	for _, f := range m.ImportedFunctions() {
		mod, name, _ := f.Import()
		switch mod {
		case wasi_snapshot_preview1.ModuleName:
		case module:
			if hf := findHostFunc(funcs, name); hf == nil {
				problems = append(problems, fmt.Sprintf("imports %s.%s, which micro does not provide", mod, name))
			} else if !slices.Equal(f.ParamTypes(), hf.params) || !slices.Equal(f.ResultTypes(), hf.results) {
				problems = append(problems, fmt.Sprintf("imports %s.%s as %s, but it is %s", mod, name,
					sigString(f.ParamTypes(), f.ResultTypes()), sigString(hf.params, hf.results)))
			}
		default:
			problems = append(problems, fmt.Sprintf("imports %s.%s: only %s and %s are provided", mod, name,
				module, wasi_snapshot_preview1.ModuleName))
		}
	}
	return problems
}

func findHostFunc(funcs []hostFunc, name string) *hostFunc {
	for i := range funcs {
		if funcs[i].name == name {
			return &funcs[i]
		}
	}
	return nil
}

func sigString(params, results []api.ValueType) string {
	name := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return "(" + strings.Join(s, ", ") + ")"
	}
	return name(params) + " -> " + name(results)
}

// instantiate starts instance idx: instantiates the module, runs _initialize, then
// on_init. InitTimeout and ctx bound it.
func (w *Wrapper) instantiate(ctx context.Context, idx int) (*instance, error) {
	inst := &instance{
		w:      w,
		slot:   idx,
		name:   fmt.Sprintf("%s#%d.%d", w.name, idx, w.gen.Add(1)),
		logger: w.logger.With("instance", idx),
	}
	inst.ctx = context.WithValue(context.Background(), instanceKey{}, inst)
	inst.stdout = &lineWriter{logger: inst.logger, level: slog.LevelInfo, stream: "stdout"}
	inst.stderr = &lineWriter{logger: inst.logger, level: slog.LevelWarn, stream: "stderr"}
	cfg := wazero.NewModuleConfig().
		WithName(inst.name).
		WithStartFunctions(). // a reactor: _initialize is called below
		WithStdout(inst.stdout).
		WithStderr(inst.stderr).
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader)
	mod, err := w.rt.InstantiateModule(withMemoryAllocator(ctx), w.compiled, cfg)
	if err != nil {
		return nil, fmt.Errorf("instantiate: %w", err)
	}
	inst.mod = mod
	inst.mem = mod.Memory()
	inst.onInit = mod.ExportedFunction(abi.ExportOnInit)
	inst.onRequest = mod.ExportedFunction(abi.ExportOnRequest)
	inst.onResponse = mod.ExportedFunction(abi.ExportOnResponse)
	inst.stop, _ = mod.ExportedGlobal(stopExport).(api.MutableGlobal)
	if inst.stop == nil {
		mod.Close(context.Background())
		return nil, errors.New("instantiate: the instrumented module lacks its stop global")
	}
	w.watched[idx].Store(inst)
	defer context.AfterFunc(ctx, inst.halt)()
	fail := func(what string, err error) (*instance, error) {
		mod.Close(context.Background())
		w.watched[idx].CompareAndSwap(inst, nil)
		w.states.dropOwned(idx) // those its on_init set
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if w.httpWasm {
		if err := inst.startHTTP(); err != nil {
			return fail("start", err)
		}
		return inst, nil
	}

	inst.st = callState{phase: phaseInit}
	if _, err := inst.call(mod.ExportedFunction(abi.ExportInitialize), InitTimeout); err != nil {
		return fail(abi.ExportInitialize, errors.New(inst.describe(err, InitTimeout)))
	}
	inst.st = callState{phase: phaseInit, phases: abi.PhaseRequest | abi.PhaseResponse}
	code, err := inst.call(inst.onInit, InitTimeout)
	if err != nil {
		var gf *guestFailure
		if errors.As(err, &gf) && !inst.stopped {
			return fail("init", errors.New(gf.msg))
		}
		return fail("init", errors.New(inst.describe(err, InitTimeout)))
	}
	if code := int32(uint32(code)); code != abi.InitOK {
		if line := inst.stderr.first; line != "" {
			return fail("init", fmt.Errorf("%s returned %d: %s", abi.ExportOnInit, code, line))
		}
		return fail("init", fmt.Errorf("%s returned %d", abi.ExportOnInit, code))
	}
	inst.phases = inst.st.phases
	inst.block, inst.hasBlock = inst.st.block, inst.st.hasBlock
	inst.st = callState{}
	return inst, nil
}

// errStopped is the error of a guest call that the watchdog stopped after it returned.
var errStopped = errors.New("stopped by the watchdog")

// call runs one guest export with a time limit and at most two parameters, after filling
// the call block for a call phase. The caller's context does not reach the guest: a caller
// that gives up must not kill an instance in the middle of a call.
func (inst *instance) call(f api.Function, limit time.Duration, params ...uint64) (uint64, error) {
	now := inst.w.now() // the one clock read of a guest call, but for a sample (record)
	inst.started = now
	deadline := now + int64(limit)
	if inst.hasBlock && inst.st.call != nil {
		inst.fillBlock(now)
	}
	inst.deadline.Store(deadline)
	inst.stdout.reset()
	inst.stderr.reset()
	inst.stack = [2]uint64{}
	copy(inst.stack[:], params)
	err := f.CallWithStack(inst.ctx, inst.stack[:])
	if !inst.deadline.CompareAndSwap(deadline, 0) {
		// The watchdog set stop, so the instance would trap at its next check.
		inst.stopped = true
		if err == nil {
			err = errStopped
		}
	}
	return inst.stack[0], err
}

// fillBlock writes the call block (abi.ImportSetCallBlock) for the guest call of inst.st
// that starts at now, on the watchdog's clock.
func (inst *instance) fillBlock(now int64) {
	b, ok := inst.mem.Read(inst.block, abi.CallBlockLen)
	if !ok {
		return // set_call_block checked the range, and a memory never shrinks
	}
	c, r := inst.st.call, inst.st.result
	budget := abi.BudgetNone
	if !c.Deadline.IsZero() {
		budget = int64(c.Deadline.Sub(inst.w.epoch)) - now
	}
	var (
		latency       int64
		status, fault uint32
		errMsg        string
	)
	if inst.st.phase == phaseResponse {
		latency, status, errMsg = int64(r.Latency), uint32(int32(r.Status)), r.Err
		if r.Fault {
			fault = 1
		}
	}
	le := binary.LittleEndian
	le.PutUint64(b[abi.CallBlockSize:], abi.CallBlockLen) // and 0 in the 4 reserved bytes
	le.PutUint64(b[abi.CallBlockNow:], uint64(now+inst.w.wallOffset.Load()))
	le.PutUint64(b[abi.CallBlockBudget:], uint64(budget))
	le.PutUint64(b[abi.CallBlockLatency:], uint64(latency))
	le.PutUint32(b[abi.CallBlockStatus:], status)
	le.PutUint32(b[abi.CallBlockFault:], fault)
	for f, v := range [...]string{c.Service, c.Endpoint, c.Node, c.Caller, errMsg} {
		if !sameString(v, inst.seen[f]) || inst.version[f] == 0 {
			inst.seen[f] = v
			inst.version[f]++
		}
		le.PutUint64(b[abi.CallBlockVersions+8*f:], inst.version[f])
	}
}

// sameString reports whether a and b are equal. A call's field is most often the very
// string of the last call, which it tells without a call to compare bytes.
func sameString(a, b string) bool {
	return len(a) == len(b) && (unsafe.StringData(a) == unsafe.StringData(b) || a == b)
}

// halt stops the instance's running guest call, if there is one.
func (inst *instance) halt() { inst.stopIfLate(math.MaxInt64) }

// stopIfLate stops the instance's running guest call if its deadline is before now.
func (inst *instance) stopIfLate(now int64) {
	for {
		d := inst.deadline.Load()
		if d <= 0 || d >= now {
			return
		}
		if inst.deadline.CompareAndSwap(d, -1) {
			inst.stop.Set(1)
			return
		}
	}
}

// now is the watchdog's clock: one read of the monotonic clock.
func (w *Wrapper) now() int64 { return int64(time.Since(w.epoch)) }

// syncWall sets wallOffset from a reading of both clocks.
func (w *Wrapper) syncWall() {
	t := time.Now()
	w.wallOffset.Store(t.UnixNano() - int64(t.Sub(w.epoch)))
}

// watch is the watchdog: every tick, it stops the guest calls that ran out of time.
func (w *Wrapper) watch(tick time.Duration) {
	defer close(w.watchDone)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-w.stopWatch:
			return
		case <-t.C:
		}
		w.syncWall()
		now := w.now()
		for i := range w.watched {
			if inst := w.watched[i].Load(); inst != nil {
				inst.stopIfLate(now)
			}
		}
	}
}

func (w *Wrapper) stopWatchdog() {
	close(w.stopWatch)
	<-w.watchDone
}

// describe turns the error of a guest call into one line for a log or a verdict.
func (inst *instance) describe(err error, limit time.Duration) string {
	var (
		gf *guestFailure
		ae *abiError
		ee *sys.ExitError
	)
	switch {
	case inst.stopped:
		return fmt.Sprintf("guest stopped: it ran longer than its time limit of %v", limit)
	case errors.As(err, &gf):
		return "guest failed: " + gf.msg
	case errors.As(err, &ae):
		return ae.Error()
	case errors.As(err, &ee):
		if line := inst.stderr.first; line != "" {
			return fmt.Sprintf("guest exited with code %d: %s", ee.ExitCode(), line)
		}
		return fmt.Sprintf("guest exited with code %d", ee.ExitCode())
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i] // drop wazero's wasm stack trace
	}
	if line := inst.stderr.first; line != "" {
		// A Go guest's runtime prints why it gives up ("fatal error: out of memory"),
		// then traps.
		return fmt.Sprintf("guest trapped: %s, after printing %q", msg, line)
	}
	return "guest trapped: " + msg
}

// Name implements wrapper.Wrapper.
func (w *Wrapper) Name() string { return w.name }

// pick returns the slot of a call.
func (w *Wrapper) pick(c *wrapper.Call) *slot {
	if len(w.slots) == 1 {
		return w.slots[0]
	}
	var key string
	switch w.shard {
	case ShardNode:
		key = c.Node
	case ShardCaller:
		key = c.Caller
	default:
		key = c.Service
	}
	// FNV-1a.
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return w.slots[h%uint32(len(w.slots))]
}

// failVerdict is a call's verdict when the guest could not decide.
func (w *Wrapper) failVerdict(reason string) wrapper.Verdict {
	if w.failOpen {
		return wrapper.Verdict{Action: wrapper.Continue}
	}
	return wrapper.Verdict{
		Action:  wrapper.Reject,
		Status:  503,
		Message: fmt.Sprintf("wrapper %s failed: %s", w.name, reason),
	}
}

// ready returns the slot's instance, making a new one when the last attempt is old
// enough. It is called with the slot locked.
func (w *Wrapper) ready(s *slot) (*instance, string) {
	if s.closed {
		return nil, "the wrapper is closed"
	}
	if s.inst != nil {
		return s.inst, ""
	}
	if time.Now().Before(s.retryAt) {
		return nil, "no working instance: " + s.lastErr
	}
	w.restart(s)
	if s.inst == nil {
		return nil, "no working instance: " + s.lastErr
	}
	return s.inst, ""
}

// OnRequest implements wrapper.Wrapper.
func (w *Wrapper) OnRequest(ctx context.Context, c *wrapper.Call) wrapper.Verdict {
	s := w.pick(c)
	if !s.lock(ctx) {
		return w.failVerdict("no instance was free before the call ended: " + ctx.Err().Error())
	}
	inst, why := w.ready(s)
	if inst == nil {
		s.unlock()
		return w.failVerdict(why)
	}
	if w.httpWasm {
		return w.httpRequest(s, inst, c)
	}
	if inst.phases&abi.PhaseRequest == 0 {
		s.unlock()
		return wrapper.Verdict{Action: wrapper.Continue}
	}
	inst.st = callState{phase: phaseRequest, call: c}
	code, err := inst.call(inst.onRequest, w.timeout)
	var (
		v  wrapper.Verdict
		ok bool
	)
	if err == nil {
		v, ok = w.verdict(int32(uint32(code)), &inst.st)
	}
	inst.st = callState{}
	s.record(w, phaseRequest, inst.started, ok && v.Action != wrapper.Continue, !ok)
	if ok {
		s.unlock()
		return v
	}
	if err == nil {
		err = &abiError{fn: abi.ExportOnRequest, msg: fmt.Sprintf("returned %d, which is not a result code", int32(uint32(code)))}
	}
	reason := w.fault(s, inst, phaseRequest, err)
	return w.failVerdict(reason)
}

// verdict turns on_request's result into a Verdict.
func (w *Wrapper) verdict(code int32, st *callState) (wrapper.Verdict, bool) {
	switch code {
	case abi.ResultContinue:
		return wrapper.Verdict{Action: wrapper.Continue, Header: st.header}, true
	case abi.ResultReject, abi.ResultRejectNode:
		v := wrapper.Verdict{Action: wrapper.Reject, Status: int(st.rejectStatus), Message: st.rejectMsg, ReplyHeader: st.replyHeader}
		if code == abi.ResultRejectNode {
			v.Action = wrapper.RejectNode
			v.Status = 503
		}
		if v.Status == 0 {
			v.Status = int(abi.DefaultRejectStatus)
		}
		if v.Message == "" {
			v.Message = "rejected by wrapper " + w.name
		}
		return v, true
	}
	return wrapper.Verdict{}, false
}

// OnResponse implements wrapper.Wrapper. It delivers the outcome even when ctx is done, as
// it is for a call that ran out of time.
func (w *Wrapper) OnResponse(_ context.Context, c *wrapper.Call, r *wrapper.Result) {
	s := w.pick(c)
	if s.phases.Load()&abi.PhaseResponse == 0 {
		return
	}
	s.lock(context.Background())
	if w.httpWasm {
		w.httpResponse(s, c, r)
		return
	}
	inst, _ := w.ready(s)
	if inst == nil || inst.phases&abi.PhaseResponse == 0 {
		s.unlock()
		return
	}
	inst.st = callState{phase: phaseResponse, call: c, result: r}
	_, err := inst.call(inst.onResponse, w.timeout)
	inst.st = callState{}
	s.record(w, phaseResponse, inst.started, false, err != nil)
	if err != nil {
		w.fault(s, inst, phaseResponse, err)
		return
	}
	s.unlock()
}

// fault handles a failed guest call on s, which the caller has locked: it logs the
// failure, and replaces the instance in the background, keeping the slot locked until the
// new instance is ready, so the next call on the slot waits for it while calls on other
// slots go on. It returns the failure's description, and takes over the lock.
func (w *Wrapper) fault(s *slot, inst *instance, ph phase, err error) string {
	reason := inst.describe(err, w.timeout)
	w.logger.Error("wrapper guest failed; replacing the instance", "instance", s.idx, "phase", ph.String(),
		"err", reason, "on_trap", map[bool]string{true: OnTrapOpen, false: OnTrapClosed}[w.failOpen])
	w.logger.Debug("wrapper guest failure in full", "instance", s.idx, "err", err)
	inst.mod.Close(context.Background())
	s.setInstance(nil)
	s.lastErr = reason
	// The states the instance published described what lived in its memory.
	w.states.dropOwned(s.idx)
	go func() {
		defer s.unlock()
		w.restart(s)
	}()
	return reason
}

// restart makes a new instance for s, which is locked and has none.
func (w *Wrapper) restart(s *slot) {
	if s.closed || w.closed.Load() {
		return
	}
	start := time.Now()
	inst, err := w.instantiate(context.Background(), s.idx)
	if err != nil {
		s.retryAt = time.Now().Add(retryDelay)
		s.lastErr = err.Error()
		w.logger.Error("wrapper instance could not be replaced; retrying on a later call", "instance", s.idx,
			"err", err, "retry_after", retryDelay)
		return
	}
	s.setInstance(inst)
	w.logger.Info("wrapper instance replaced", "instance", s.idx, "took", time.Since(start).Round(time.Microsecond))
}

// Close implements wrapper.Wrapper: it waits for the calls in flight (until ctx ends),
// then closes the instances and the wrapper's runtime.
func (w *Wrapper) Close(ctx context.Context) error {
	if !w.closed.CompareAndSwap(false, true) {
		return nil
	}
	defer w.host.forget(w)
	var err error
	for _, s := range w.slots {
		if !s.lock(ctx) {
			err = fmt.Errorf("wrapper %q: closed with calls in flight: %w", w.name, ctx.Err())
			break
		}
		s.closed = true
		if s.inst != nil {
			s.inst.mod.Close(context.Background())
			s.setInstance(nil)
		}
		s.unlock()
	}
	// Closing the runtime stops any guest call still running.
	if err != nil {
		for i := range w.watched {
			if inst := w.watched[i].Load(); inst != nil {
				inst.halt()
			}
		}
	}
	if cerr := w.rt.Close(context.Background()); cerr != nil && err == nil {
		err = fmt.Errorf("wrapper %q: close: %w", w.name, cerr)
	}
	w.stopWatchdog()
	w.logger.Info("wrapper closed")
	return err
}

// maxOutputLines bounds the lines of a guest's output logged per guest call, so that a
// chatty or broken guest (a Go runtime's fatal error prints every goroutine) cannot flood
// micro's log.
const maxOutputLines = 20

// lineWriter turns a guest's output into log lines, and remembers the first line written
// since the last reset, for the description of a failure.
type lineWriter struct {
	logger *slog.Logger
	level  slog.Level
	stream string
	buf    []byte
	first  string
	lines  int // logged since the last reset
}

// reset starts a new guest call.
func (lw *lineWriter) reset() {
	lw.first = ""
	lw.lines = 0
}

func (lw *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			lw.buf = append(lw.buf, p...)
			if len(lw.buf) >= abi.MaxLogLen {
				lw.emit()
			}
			break
		}
		lw.buf = append(lw.buf, p[:i]...)
		lw.emit()
		p = p[i+1:]
	}
	return n, nil
}

func (lw *lineWriter) emit() {
	line := strings.TrimRight(string(lw.buf), "\r")
	lw.buf = lw.buf[:0]
	if len(line) > abi.MaxLogLen {
		line = line[:abi.MaxLogLen]
	}
	if strings.TrimSpace(line) == "" {
		return
	}
	line = strings.ToValidUTF8(line, "\uFFFD")
	if lw.first == "" {
		lw.first = line
	}
	lw.lines++
	switch {
	case lw.lines <= maxOutputLines:
		lw.logger.Log(context.Background(), lw.level, line, "stream", lw.stream)
	case lw.lines == maxOutputLines+1:
		lw.logger.Log(context.Background(), lw.level, "(more output of this guest call is not logged)", "stream", lw.stream)
	}
}

// compile compiles a module with rt. wazero panics on some malformed modules (v1.12.0: a
// call to a function whose type index is out of range) rather than returning an error, and
// a broken .wasm must not crash micro: such a panic is an error too.
func compile(ctx context.Context, rt wazero.Runtime, bin []byte) (m wazero.CompiledModule, err error) {
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("the module is malformed (wazero: %v)", p)
		}
	}()
	return rt.CompileModule(ctx, bin)
}
