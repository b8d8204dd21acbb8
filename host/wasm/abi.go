package wasm

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"net/textproto"
	"strings"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

// This file holds the host functions of abi.ModuleName: the guest's only way to reach the
// host. Each one finds its instance in the context of the guest call (instanceFrom), checks
// the phase, checks every guest pointer and length against the guest's memory and the abi
// limits, and traps the guest with an *abiError when something is wrong; it never lets the
// host panic otherwise.

// phase is what a guest call is doing.
type phase uint8

const (
	phaseIdle phase = iota
	phaseInit
	phaseRequest
	phaseResponse
)

func (p phase) String() string {
	switch p {
	case phaseInit:
		return abi.ExportOnInit
	case phaseRequest:
		return abi.ExportOnRequest
	case phaseResponse:
		return abi.ExportOnResponse
	}
	return "no call"
}

// callState is what the host functions read and write during one guest call. It lives in
// the instance, which is locked for the call.
type callState struct {
	phase  phase
	call   *wrapper.Call
	result *wrapper.Result

	// Set by on_request.
	header       map[string]string
	replyHeader  map[string]string
	rejectStatus int32
	rejectMsg    string

	// Set by on_init.
	phases   int32
	block    uint32 // the call block's address, when hasBlock
	hasBlock bool
}

// abiError is a guest's misuse of a host function; the host traps the guest with it.
type abiError struct {
	module string // the host module; "" is abi.ModuleName
	fn     string // the host function, e.g. "set_header"
	msg    string
}

func (e *abiError) Error() string {
	if e.fn == abi.ExportOnRequest {
		return e.fn + " " + e.msg
	}
	module := e.module
	if module == "" {
		module = abi.ModuleName
	}
	return fmt.Sprintf("bad call to %s.%s: %s", module, e.fn, e.msg)
}

// guestFailure is a guest's call of abi.ImportFail.
type guestFailure struct{ msg string }

func (e *guestFailure) Error() string { return e.msg }

// trap stops the guest with an abiError.
func trap(fn, format string, args ...any) {
	panic(&abiError{fn: fn, msg: fmt.Sprintf(format, args...)})
}

// instanceKey is the context key of the instance that a guest call runs on.
type instanceKey struct{}

func instanceFrom(ctx context.Context) *instance {
	inst, _ := ctx.Value(instanceKey{}).(*instance)
	if inst == nil {
		// Only a module instantiated outside an instance could get here.
		panic(&abiError{fn: "?", msg: "no micro instance in the call's context"})
	}
	return inst
}

// view returns the guest's memory [ptr, ptr+n), or traps.
func view(m api.Module, fn string, ptr, n uint32) []byte {
	mem := m.Memory()
	if mem == nil {
		trap(fn, "the guest exports no memory")
	}
	b, ok := mem.Read(ptr, n)
	if !ok {
		trap(fn, "range [%d, %d) lies outside the guest's memory of %d bytes", ptr, uint64(ptr)+uint64(n), mem.Size())
	}
	return b
}

// readString copies the guest's string at [ptr, ptr+n), which may be at most limit bytes
// long. A longer one traps, unless cut is set: then it is cut to limit, on a rune boundary.
func readString(m api.Module, fn, what string, ptr, n uint32, limit int, cut bool) string {
	b := view(m, fn, ptr, n)
	if len(b) > limit {
		if !cut {
			trap(fn, "%s of %d bytes is longer than the limit of %d", what, len(b), limit)
		}
		b = b[:limit] // a rune cut in two becomes U+FFFD below
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// writeValue implements the (buf_ptr, buf_cap) -> len protocol: it checks that the guest's
// buffer lies in its memory, copies v into it when it fits, and returns v's length.
func writeValue(m api.Module, fn string, v string, ptr, capacity uint32) uint64 {
	buf := view(m, fn, ptr, capacity)
	if len(v) <= len(buf) {
		copy(buf, v)
	}
	return uint64(uint32(len(v)))
}

// needCall traps unless the instance is in one of the call phases, and returns the call.
func (inst *instance) needCall(fn string) *wrapper.Call {
	if inst.st.call == nil || (inst.st.phase != phaseRequest && inst.st.phase != phaseResponse) {
		trap(fn, "no call in progress (phase: %s)", inst.st.phase)
	}
	return inst.st.call
}

func (inst *instance) needPhase(fn string, p phase) {
	if inst.st.phase != p {
		trap(fn, "valid only in %s, not in %s", p, inst.st.phase)
	}
}

// hostFunc is one host function and its Wasm signature.
type hostFunc struct {
	name    string
	params  []api.ValueType
	results []api.ValueType
	fn      api.GoModuleFunc
}

var (
	i32 = api.ValueTypeI32
	i64 = api.ValueTypeI64
)

// callField returns a get function for one string field of the call.
func callField(name string, get func(*wrapper.Call) string) api.GoModuleFunc {
	return func(ctx context.Context, m api.Module, stack []uint64) {
		inst := instanceFrom(ctx)
		c := inst.needCall(name)
		stack[0] = writeValue(m, name, get(c), uint32(stack[0]), uint32(stack[1]))
	}
}

// hostFuncs lists the host functions of abi version 1.
var hostFuncs = []hostFunc{
	{abi.ImportGetConfig, []api.ValueType{i32, i32}, []api.ValueType{i32},
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			stack[0] = writeValue(m, abi.ImportGetConfig, inst.w.config, uint32(stack[0]), uint32(stack[1]))
		}},
	{abi.ImportGetService, []api.ValueType{i32, i32}, []api.ValueType{i32},
		callField(abi.ImportGetService, func(c *wrapper.Call) string { return c.Service })},
	{abi.ImportGetEndpoint, []api.ValueType{i32, i32}, []api.ValueType{i32},
		callField(abi.ImportGetEndpoint, func(c *wrapper.Call) string { return c.Endpoint })},
	{abi.ImportGetNode, []api.ValueType{i32, i32}, []api.ValueType{i32},
		callField(abi.ImportGetNode, func(c *wrapper.Call) string { return c.Node })},
	{abi.ImportGetCaller, []api.ValueType{i32, i32}, []api.ValueType{i32},
		callField(abi.ImportGetCaller, func(c *wrapper.Call) string { return c.Caller })},
	{abi.ImportGetHeader, []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}, hostGetHeader},
	{abi.ImportGetBudget, nil, []api.ValueType{i64},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			c := instanceFrom(ctx).needCall(abi.ImportGetBudget)
			b := abi.BudgetNone
			if !c.Deadline.IsZero() {
				b = int64(time.Until(c.Deadline))
			}
			stack[0] = uint64(b)
		}},
	{abi.ImportSetHeader, []api.ValueType{i32, i32, i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			setHeader(inst, m, abi.ImportSetHeader, &inst.st.header, stack)
		}},
	{abi.ImportSetReplyHeader, []api.ValueType{i32, i32, i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			setHeader(inst, m, abi.ImportSetReplyHeader, &inst.st.replyHeader, stack)
		}},
	{abi.ImportSetReject, []api.ValueType{i32, i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			const fn = abi.ImportSetReject
			inst := instanceFrom(ctx)
			inst.needPhase(fn, phaseRequest)
			status := int32(uint32(stack[0]))
			if status != 0 && (status < abi.MinRejectStatus || status > abi.MaxRejectStatus) {
				trap(fn, "status %d is not 0 or in [%d, %d]", status, abi.MinRejectStatus, abi.MaxRejectStatus)
			}
			inst.st.rejectStatus = status
			inst.st.rejectMsg = readString(m, fn, "message", uint32(stack[1]), uint32(stack[2]), abi.MaxMessageLen, true)
		}},
	{abi.ImportGetStatus, nil, []api.ValueType{i32},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			inst.needPhase(abi.ImportGetStatus, phaseResponse)
			stack[0] = api.EncodeI32(int32(inst.st.result.Status))
		}},
	{abi.ImportGetError, []api.ValueType{i32, i32}, []api.ValueType{i32},
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			inst.needPhase(abi.ImportGetError, phaseResponse)
			stack[0] = writeValue(m, abi.ImportGetError, inst.st.result.Err, uint32(stack[0]), uint32(stack[1]))
		}},
	{abi.ImportGetLatency, nil, []api.ValueType{i64},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			inst.needPhase(abi.ImportGetLatency, phaseResponse)
			stack[0] = uint64(int64(inst.st.result.Latency))
		}},
	{abi.ImportGetFault, nil, []api.ValueType{i32},
		func(ctx context.Context, _ api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			inst.needPhase(abi.ImportGetFault, phaseResponse)
			stack[0] = 0
			if inst.st.result.Fault {
				stack[0] = 1
			}
		}},
	{abi.ImportGetLease, []api.ValueType{i32, i32, i64, i32}, []api.ValueType{i32}, hostGetLease},
	{abi.ImportSetState, []api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32}, nil, hostSetState},
	{abi.ImportSetPhases, []api.ValueType{i32}, nil,
		func(ctx context.Context, _ api.Module, stack []uint64) {
			const fn = abi.ImportSetPhases
			inst := instanceFrom(ctx)
			inst.needPhase(fn, phaseInit)
			mask := int32(uint32(stack[0]))
			if mask&^(abi.PhaseRequest|abi.PhaseResponse) != 0 {
				trap(fn, "unknown phase bits in %#x", mask)
			}
			inst.st.phases = mask
		}},
	{abi.ImportSetCallBlock, []api.ValueType{i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			const fn = abi.ImportSetCallBlock
			inst := instanceFrom(ctx)
			inst.needPhase(fn, phaseInit)
			ptr, n := uint32(stack[0]), uint32(stack[1])
			if n < abi.CallBlockLen {
				trap(fn, "block of %d bytes is smaller than %d", n, abi.CallBlockLen)
			}
			// A memory never shrinks, so the block stays inside it.
			view(m, fn, ptr, n)
			inst.st.block, inst.st.hasBlock = ptr, true
		}},
	{abi.ImportLog, []api.ValueType{i32, i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			inst := instanceFrom(ctx)
			level := slog.Level(int32(uint32(stack[0])))
			msg := readString(m, abi.ImportLog, "message", uint32(stack[1]), uint32(stack[2]), abi.MaxLogLen, true)
			inst.logger.Log(context.Background(), level, msg)
		}},
	{abi.ImportFail, []api.ValueType{i32, i32}, nil,
		func(ctx context.Context, m api.Module, stack []uint64) {
			instanceFrom(ctx)
			msg := readString(m, abi.ImportFail, "message", uint32(stack[0]), uint32(stack[1]), abi.MaxMessageLen, true)
			if msg == "" {
				msg = "the guest failed without a message"
			}
			panic(&guestFailure{msg: msg})
		}},
}

func hostGetHeader(ctx context.Context, m api.Module, stack []uint64) {
	const fn = abi.ImportGetHeader
	inst := instanceFrom(ctx)
	c := inst.needCall(fn)
	nameLen := uint32(stack[1])
	if nameLen > abi.MaxHeaderNameLen {
		trap(fn, "name of %d bytes is longer than the limit of %d", nameLen, abi.MaxHeaderNameLen)
	}
	name := view(m, fn, uint32(stack[0]), nameLen)
	v, ok := lookupHeader(c.Header, name)
	if !ok {
		// The buffer is still checked, so that a guest's bad pointer never goes unnoticed.
		view(m, fn, uint32(stack[2]), uint32(stack[3]))
		stack[0] = api.EncodeI32(abi.HeaderAbsent)
		return
	}
	stack[0] = writeValue(m, fn, v, uint32(stack[2]), uint32(stack[3]))
}

// hostGetLease implements abi.ImportGetLease. It checks all that the guest passed before
// it asks w.leases, so that a call that traps records no demand; and a guest that asks
// again for a resource it asked for lately costs it no allocation.
func hostGetLease(ctx context.Context, m api.Module, stack []uint64) {
	const fn = abi.ImportGetLease
	inst := instanceFrom(ctx)
	nameLen := uint32(stack[1])
	if nameLen > abi.MaxResourceNameLen {
		trap(fn, "resource name of %d bytes is longer than the limit of %d", nameLen, abi.MaxResourceNameLen)
	}
	name := view(m, fn, uint32(stack[0]), nameLen)
	out := view(m, fn, uint32(stack[3]), 8)
	resource := inst.resourceName(fn, name)
	rate, held := 0.0, false
	if l := inst.w.leases; l != nil {
		rate, held = l.Lease(resource, stack[2])
		// A rate that is not a finite number >= 0 is not one a guest could apply.
		if !held || !(rate >= 0 && rate <= math.MaxFloat64) {
			rate, held = 0, false
		}
	}
	binary.LittleEndian.PutUint64(out, math.Float64bits(rate))
	stack[0] = api.EncodeI32(abi.LeaseNone)
	if held {
		stack[0] = api.EncodeI32(abi.LeaseHeld)
	}
}

// resourceName returns a resource name that a guest gave get_lease as a string, or traps
// when it is not a name. A name the instance gave lately comes back as the string made
// for it then.
func (inst *instance) resourceName(fn string, name []byte) string {
	for _, r := range inst.resources {
		if r != "" && string(name) == r {
			return r
		}
	}
	if len(name) == 0 {
		trap(fn, "empty resource name")
	}
	for i, c := range name {
		if !isResourceByte(c) {
			trap(fn, "resource name %q has a byte at %d that is not allowed in a name (A-Z, a-z, 0-9, '.', '_', '-')", name, i)
		}
	}
	r := string(name)
	inst.resources[inst.nextResource] = r
	inst.nextResource = (inst.nextResource + 1) % len(inst.resources)
	return r
}

// isResourceByte reports whether c may appear in a resource name.
func isResourceByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		return true
	}
	return false
}

// lookupHeader finds name in h: the exact key first, then any key equal to it ignoring
// ASCII case. The exact lookup does not allocate.
func lookupHeader(h map[string]string, name []byte) (string, bool) {
	if v, ok := h[string(name)]; ok {
		return v, true
	}
	for k, v := range h {
		if equalFoldASCII(k, name) {
			return v, true
		}
	}
	return "", false
}

func equalFoldASCII(s string, b []byte) bool {
	if len(s) != len(b) {
		return false
	}
	for i := 0; i < len(s); i++ {
		x, y := s[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// setHeader implements set_header and set_reply_header.
func setHeader(inst *instance, m api.Module, fn string, into *map[string]string, stack []uint64) {
	inst.needPhase(fn, phaseRequest)
	name := readString(m, fn, "name", uint32(stack[0]), uint32(stack[1]), abi.MaxHeaderNameLen, false)
	value := readString(m, fn, "value", uint32(stack[2]), uint32(stack[3]), abi.MaxHeaderValueLen, false)
	if err := checkHeader(name, value); err != "" {
		trap(fn, "%s", err)
	}
	name = textproto.CanonicalMIMEHeaderKey(name)
	if *into == nil {
		*into = make(map[string]string, 2)
	}
	if _, ok := (*into)[name]; !ok && len(*into) >= abi.MaxHeaders {
		trap(fn, "more than %d headers", abi.MaxHeaders)
	}
	(*into)[name] = value
}

// checkHeader says what is wrong with a header a guest sets, or "".
func checkHeader(name, value string) string {
	if name == "" {
		return "empty header name"
	}
	for i := 0; i < len(name); i++ {
		if !isTokenByte(name[i]) {
			return fmt.Sprintf("header name %q has a character not allowed in a name", name)
		}
	}
	if len(name) >= len(abi.ReservedHeaderPrefix) && strings.EqualFold(name[:len(abi.ReservedHeaderPrefix)], abi.ReservedHeaderPrefix) {
		return fmt.Sprintf("header %q is micro's own (names starting with %q are reserved)", name, abi.ReservedHeaderPrefix)
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Sprintf("value of header %q has a control character at byte %d", name, i)
		}
	}
	return ""
}

// isTokenByte reports whether c may appear in an HTTP header name (RFC 9110 token).
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// instantiateHostModule adds the host module name, with the functions funcs, to r:
// abi.ModuleName with hostFuncs, or httpModule with httpHostFuncs.
func instantiateHostModule(ctx context.Context, r wazero.Runtime, name string, funcs []hostFunc) error {
	b := r.NewHostModuleBuilder(name)
	for _, f := range funcs {
		b.NewFunctionBuilder().WithGoModuleFunction(f.fn, f.params, f.results).WithName(f.name).Export(f.name)
	}
	_, err := b.Instantiate(ctx)
	return err
}
