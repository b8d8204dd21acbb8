package wasm

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tetratelabs/wazero/api"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/runtime/wrapper"
)

// This file holds what a Wrapper reports (runtime/wrapper.Reporter): the counts of its
// guest calls, kept per slot so that instances on other cores never write the same cache
// line, and the states its guests publish with abi.ImportSetState.

// timeSample is how many of a slot's successful guest calls of one phase share one
// measurement of the time in the guest. A call already reads the clock when it starts (its
// time limit, the call block); measuring its time takes a second read, which costs about
// as much as four atomic adds (BenchmarkRecord), and the simplest guest call only a few
// times that. So one call in timeSample is measured, and its time counted timeSample
// times: an estimate whose error shrinks as calls add up, for a cost per call of a
// sixteenth of a clock read. A failed call is always measured, and counted once: it may
// have run for its whole time limit.
const timeSample = 16

// slotStats counts a slot's guest calls. Only the holder of the slot's lock writes them;
// Report reads them at any time.
type slotStats struct {
	calls   atomic.Uint64 // on_request calls: verdicts and failures
	rejects atomic.Uint64 // on_request calls that rejected the call
	faults  atomic.Uint64 // failed guest calls, either phase
	nanos   atomic.Int64  // time in the guest, measured or estimated (timeSample)
	up      atomic.Bool   // the slot has a working instance
	// skip holds, per phase, how many successful calls to go until the next measured one.
	// It is the lock holder's alone.
	skip [phaseResponse + 1]uint8
}

// record counts a guest call of phase ph (phaseRequest or phaseResponse) on s, which the
// caller has locked: it started at start, on the watchdog's clock, and rejected the call
// or failed as said.
func (s *slot) record(w *Wrapper, ph phase, start int64, rejected, failed bool) {
	st := &s.stats
	if ph == phaseRequest {
		st.calls.Add(1)
		if rejected {
			st.rejects.Add(1)
		}
	}
	switch {
	case failed:
		st.faults.Add(1)
		st.nanos.Add(w.now() - start)
	case st.skip[ph] == 0:
		st.skip[ph] = timeSample - 1
		st.nanos.Add((w.now() - start) * timeSample)
	default:
		st.skip[ph]--
	}
}

// Report implements runtime/wrapper.Reporter: the counts of the wrapper's guest calls
// since it was loaded, and the states its guests published. It locks no slot, so it never
// waits for a guest call.
func (w *Wrapper) Report() wrapper.Report {
	var r wrapper.Report
	for _, s := range w.slots {
		st := &s.stats
		if st.up.Load() {
			r.Instances++
		}
		r.Calls += st.calls.Load()
		r.Rejects += st.rejects.Load()
		r.Faults += st.faults.Load()
		r.Time += time.Duration(st.nanos.Load())
	}
	r.States, r.DroppedStates = w.states.report()
	return r
}

// stateStore holds the states that a wrapper's guests published (abi.ImportSetState), by
// scope, across the wrapper's instances. Guests of several instances write it and Report
// reads it, so a mutex guards it: a guest publishes a state when it changes, not per call.
// Its zero value is empty and ready.
type stateStore struct {
	mu sync.Mutex
	// entries is keyed by a scope's encoding (stateKey): it is looked up with the bytes
	// of a guest's call, which costs no allocation.
	entries map[string]*stateEntry
	dropped uint64 // states for new scopes that the bound turned away
	warned  bool   // the first of them was logged
}

// stateEntry is one published state.
type stateEntry struct {
	state wrapper.State
	owner int // the slot whose instance set it last
}

// appendStateKey appends the key of a scope to b: each field's length, as two bytes, then
// its bytes. The fields are at most abi.MaxStateFieldLen bytes long.
func appendStateKey(b []byte, fields [3][]byte) []byte {
	for _, f := range fields {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// set publishes value for the scope fields, for the instance inst: an empty value deletes
// the scope's state. The key of an existing scope is found without an allocation, and a
// value that did not change is not copied.
func (st *stateStore) set(inst *instance, fields [3][]byte, value []byte) {
	inst.stateKey = appendStateKey(inst.stateKey[:0], fields)
	key := inst.stateKey
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.entries[string(key)]
	switch {
	case len(value) == 0:
		if ok {
			delete(st.entries, string(key))
		}
	case ok:
		if e.state.Value != string(value) {
			e.state.Value = string(value)
		}
		e.owner = inst.slot
	case len(st.entries) >= abi.MaxStates:
		st.dropped++
		if !st.warned {
			st.warned = true
			inst.logger.Warn("wrapper states: the limit is reached; states for new scopes are dropped",
				"limit", abi.MaxStates, "service", string(fields[0]), "endpoint", string(fields[1]),
				"node", string(fields[2]), "state", string(value))
		}
	default:
		k := string(key)
		e := &stateEntry{owner: inst.slot, state: wrapper.State{Value: string(value)}}
		// The fields are k's substrings: one allocation for the key and all three.
		at := 0
		for i, to := range [3]*string{&e.state.Service, &e.state.Endpoint, &e.state.Node} {
			at += 2
			*to = k[at : at+len(fields[i])]
			at += len(fields[i])
		}
		if st.entries == nil {
			st.entries = make(map[string]*stateEntry)
		}
		st.entries[k] = e
	}
}

// dropOwned deletes the states that the instance of slot idx set last: it failed, and what
// they described lived in its memory.
func (st *stateStore) dropOwned(idx int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for k, e := range st.entries {
		if e.owner == idx {
			delete(st.entries, k)
		}
	}
}

// report returns the states, sorted by scope, and how many were dropped.
func (st *stateStore) report() ([]wrapper.State, uint64) {
	st.mu.Lock()
	var states []wrapper.State
	if len(st.entries) > 0 {
		states = make([]wrapper.State, 0, len(st.entries))
		for _, e := range st.entries {
			states = append(states, e.state)
		}
	}
	dropped := st.dropped
	st.mu.Unlock()
	slices.SortFunc(states, func(a, b wrapper.State) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Endpoint, b.Endpoint),
			strings.Compare(a.Node, b.Node))
	})
	return states, dropped
}

// stateParts names set_state's strings, in the order of its parameters.
var stateParts = [4]string{"service", "endpoint", "node", "value"}

// hostSetState implements abi.ImportSetState. It checks all that the guest passed before
// it changes anything, so that a call that traps publishes nothing.
func hostSetState(ctx context.Context, m api.Module, stack []uint64) {
	const fn = abi.ImportSetState
	inst := instanceFrom(ctx)
	var parts [4][]byte
	for i := range parts {
		limit := uint32(abi.MaxStateFieldLen)
		if i == 3 {
			limit = abi.MaxStateValueLen
		}
		n := uint32(stack[2*i+1])
		if n > limit {
			trap(fn, "%s of %d bytes is longer than the limit of %d", stateParts[i], n, limit)
		}
		parts[i] = view(m, fn, uint32(stack[2*i]), n)
		if err := checkStateText(parts[i]); err != "" {
			trap(fn, "%s %q %s", stateParts[i], parts[i], err)
		}
	}
	inst.w.states.set(inst, [3][]byte{parts[0], parts[1], parts[2]}, parts[3])
}

// checkStateText says what is wrong with one of set_state's strings, or "": each is valid
// UTF-8 without control characters, as it ends up in label values and on a page.
func checkStateText(b []byte) string {
	for i, c := range b {
		if c < ' ' || c == 0x7f {
			return fmt.Sprintf("has a control character at byte %d", i)
		}
	}
	if !utf8.Valid(b) {
		return "is not valid UTF-8"
	}
	return ""
}
