package wasm

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A guest call that runs past its time limit must be stopped, and wazero's own way
// (RuntimeConfig.WithCloseOnContextDone) is too slow for a call path measured in
// nanoseconds: it starts a goroutine for every call (about 1µs), and it leaves native code
// for Go at the head of every loop iteration (about 30ns each), which makes loop-heavy Go
// guests about five times slower. It would not stop a guest that recurses without a loop
// either. So the host instruments the guest instead. instrument adds two mutable i32
// globals, $stop (exported as stopExport) and $fuel, and this check at the head of every
// loop and at the entry of every function (after its locals):
//
//	global.get $fuel        ;; fuel -= 1
//	i32.const 1
//	i32.sub
//	global.set $fuel
//	global.get $fuel
//	i32.eqz
//	if                      ;; every fuelPerCheck loop iterations and function entries:
//	  i32.const fuelPerCheck
//	  global.set $fuel
//	  i32.const 0           ;;   memory.grow 0, which leaves native code for Go
//	  memory.grow 0
//	  drop
//	  global.get $stop      ;;   and stop when told to
//	  if
//	    unreachable
//	  end
//	end
//
// Wasm code can run for long in two ways only: by jumping backwards, which it can do only
// to the head of a loop, and by calling functions, recursively (with call, call_indirect,
// or a tail call, which does not even grow the stack). The checks at loop heads and at
// function entries catch both: between two checks a guest runs at most the straight-line
// code of one function body (and host functions, which return). The host's watchdog sets
// $stop of an instance whose call ran out of time; the guest traps at most fuelPerCheck
// loop iterations and function entries later, and the instance is replaced.
//
// A function whose body starts with a loop, after blocks and a few instructions that can
// neither branch nor call (as most functions of a Go guest do: the Go compiler caches its
// stack pointer in a local, then wraps the function in a loop to jump between its basic
// blocks), gets no entry check, since the loop's check runs on every entry already.
//
// The memory.grow matters as much as $stop: native code cannot be preempted, so a Go
// garbage collection that stops the world waits for every goroutine that runs a guest to
// come back to Go. Without the periodic trip to Go (where wazero calls the memory's Grow
// method, a preemption point), a looping or recursing guest would block the collection,
// the collection would block the watchdog, and the process would hang.
//
// Per loop iteration or function entry this costs about as much as an add and a branch:
// about 0.2ns on a function call (BenchmarkEntryChecks), which takes 1.4ns unchecked.
//
// instrument also merges the module's data segments (mergeData): the Go linker writes the
// data of a guest as some 40,000 segments separated by short runs of zeros, and wazero
// keeps each segment as an object of its own, in the compiled module and again in each
// instance: about 5 MiB of Go heap per guest for 1 MiB of data.

// fuelPerCheck is how many loop iterations and function entries a guest runs between two
// checks of $stop.
const fuelPerCheck = 1 << 14

// stopExport is the name of the global that instrument adds.
const stopExport = "micro.stop"

// Section ids.
const (
	secCustom    = 0
	secImport    = 2
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionRank orders the known sections as the binary format requires.
var sectionRank = map[byte]int{1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}

// instrument returns a copy of the module with checks of stopExport at loop heads and
// function entries, and with its data segments merged. It returns an error for a module
// it cannot read, which includes instructions of proposals that it does not know (GC).
func instrument(module []byte) ([]byte, error) {
	if len(module) < 8 || string(module[:4]) != "\x00asm" {
		return nil, errors.New("not a wasm binary (no \\0asm magic)")
	}
	if string(module[4:8]) != "\x01\x00\x00\x00" {
		return nil, fmt.Errorf("unsupported wasm binary version % x", module[4:8])
	}
	type section struct {
		id      byte
		payload []byte
	}
	var sections []section
	r := &reader{b: module, pos: 8}
	for r.pos < len(r.b) {
		id := r.byte()
		size := r.u32()
		payload := r.bytes(int(size))
		if r.err != nil {
			return nil, fmt.Errorf("section %d: %w", id, r.err)
		}
		if id == secStart {
			return nil, errors.New("the module has a start function: a wrapper guest must be a reactor, started by _initialize")
		}
		if id == secCustom {
			name := (&reader{b: payload}).name()
			if strings.HasPrefix(name, ".debug_") {
				continue // DWARF: its code offsets would be wrong after instrumenting
			}
		}
		sections = append(sections, section{id, payload})
	}

	// The indices of the new globals: after the imported and the defined ones.
	var importedGlobals, definedGlobals uint32
	hasMemory, hasDataCount := false, false
	for _, s := range sections {
		switch s.id {
		case secDataCount:
			hasDataCount = true
		case secImport:
			n, mems, err := countImports(s.payload)
			if err != nil {
				return nil, fmt.Errorf("import section: %w", err)
			}
			importedGlobals = n
			hasMemory = hasMemory || mems > 0
		case secMemory:
			r := &reader{b: s.payload}
			hasMemory = hasMemory || r.u32() > 0
		case secGlobal:
			r := &reader{b: s.payload}
			definedGlobals = r.u32()
			if r.err != nil {
				return nil, fmt.Errorf("global section: %w", r.err)
			}
		}
	}
	stop := importedGlobals + definedGlobals

	out := append([]byte(nil), module[:8]...)
	emit := func(id byte, payload []byte) {
		out = append(out, id)
		out = appendU32(out, uint32(len(payload)))
		out = append(out, payload...)
	}
	// The new globals: $stop, (mut i32) 0, and $fuel, (mut i32) fuelPerCheck.
	newGlobals := []byte{0x7f, 0x01, 0x41, 0x00, 0x0b, 0x7f, 0x01}
	newGlobals = append(newGlobals, i32ConstBytes(fuelPerCheck)...)
	newGlobals = append(newGlobals, 0x0b)
	newExport := appendName(nil, stopExport)
	newExport = append(newExport, 0x03) // global
	newExport = appendU32(newExport, stop)

	haveGlobal, haveExport := false, false
	for _, s := range sections {
		// Sections that the module lacks go before the first section ranked after them.
		if rank, ok := sectionRank[s.id]; ok && s.id != secCustom {
			if !haveGlobal && rank > sectionRank[secGlobal] {
				emit(secGlobal, append(appendU32(nil, 2), newGlobals...))
				haveGlobal = true
			}
			if !haveExport && rank > sectionRank[secExport] {
				emit(secExport, append(appendU32(nil, 1), newExport...))
				haveExport = true
			}
		}
		switch s.id {
		case secGlobal:
			r := &reader{b: s.payload}
			n := r.u32()
			p := appendU32(nil, n+2)
			p = append(p, s.payload[r.pos:]...)
			emit(secGlobal, append(p, newGlobals...))
			haveGlobal = true
		case secExport:
			p, err := addExport(s.payload, newExport)
			if err != nil {
				return nil, fmt.Errorf("export section: %w", err)
			}
			emit(secExport, p)
			haveExport = true
		case secCode:
			p, err := instrumentCode(s.payload, stop, hasMemory)
			if err != nil {
				return nil, fmt.Errorf("code section: %w", err)
			}
			emit(secCode, p)
		case secData:
			if hasDataCount {
				// memory.init and data.drop may name segments by their index.
				emit(secData, s.payload)
				break
			}
			emit(secData, mergeData(s.payload))
		default:
			emit(s.id, s.payload)
		}
	}
	if !haveGlobal {
		emit(secGlobal, append(appendU32(nil, 2), newGlobals...))
	}
	if !haveExport {
		emit(secExport, append(appendU32(nil, 1), newExport...))
	}
	return out, nil
}

// countImports reads an import section, and returns how many globals and memories it
// imports.
func countImports(payload []byte) (globals, memories uint32, err error) {
	r := &reader{b: payload}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.name()
		r.name()
		switch kind := r.byte(); kind {
		case 0x00: // func: type index
			r.u32()
		case 0x01: // table: reftype, limits
			r.byte()
			r.limits()
		case 0x02: // memory: limits
			r.limits()
			memories++
		case 0x03: // global: valtype, mutability
			r.byte()
			r.byte()
			globals++
		case 0x04: // tag: attribute, type index
			r.byte()
			r.u32()
		default:
			return 0, 0, fmt.Errorf("import %d: unknown kind %#x", i, kind)
		}
	}
	return globals, memories, r.err
}

// addExport appends an export to an export section, refusing a module that already
// exports the name.
func addExport(payload, export []byte) ([]byte, error) {
	r := &reader{b: payload}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		if r.name() == stopExport {
			return nil, fmt.Errorf("the module exports %q, a name micro reserves", stopExport)
		}
		r.byte()
		r.u32()
	}
	if r.err != nil {
		return nil, r.err
	}
	rest := &reader{b: payload}
	rest.u32()
	p := appendU32(nil, n+1)
	p = append(p, payload[rest.pos:]...)
	return append(p, export...), nil
}

// instrumentCode adds the checks to every function body of a code section. A module
// without a memory gets no memory.grow: it is no wrapper, and checkModule says so.
func instrumentCode(payload []byte, stop uint32, hasMemory bool) ([]byte, error) {
	r := &reader{b: payload}
	n := r.u32()
	out := appendU32(make([]byte, 0, len(payload)+len(payload)/4), n)
	check := fuelCheck(stop, stop+1, hasMemory)
	var body []byte
	for i := uint32(0); i < n; i++ {
		size := r.u32()
		code := r.bytes(int(size))
		if r.err != nil {
			return nil, fmt.Errorf("function body %d: %w", i, r.err)
		}
		var err error
		body, err = instrumentBody(body[:0], code, stop, check)
		if err != nil {
			return nil, fmt.Errorf("function body %d: %w", i, err)
		}
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	return out, nil
}

// instrumentBody appends code, a function body, to out with a check after its locals,
// unless the body starts with a loop, and after the block type of every loop. It reads
// every instruction, to find the loops and to refuse any use of the global stop, which
// the guest could otherwise reset.
func instrumentBody(out, code []byte, stop uint32, check []byte) ([]byte, error) {
	r := &reader{b: code}
	// Locals: a vector of (count, type).
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		r.u32()
		r.valType()
	}
	copied := 0
	if r.err == nil && !startsWithLoop(code[r.pos:]) {
		out = append(out, code[:r.pos]...)
		out = append(out, check...)
		copied = r.pos
	}
	for r.pos < len(r.b) && r.err == nil {
		at := r.pos
		op := r.byte()
		switch {
		case op == 0x03: // loop
			r.blockType()
			out = append(out, code[copied:r.pos]...)
			out = append(out, check...)
			copied = r.pos
		case op == 0x02, op == 0x04, op == 0x06: // block, if, try
			r.blockType()
		case op <= 0x01, op == 0x05, op == 0x0a, op == 0x0b, op == 0x0f, op == 0x19,
			op == 0x1a, op == 0x1b, 0x45 <= op && op <= 0xc4, op == 0xd1, op == 0xd3:
			// No immediates.
		case op == 0x07, op == 0x08, op == 0x09, op == 0x0c, op == 0x0d, op == 0x10, op == 0x12,
			op == 0x14, op == 0x15, op == 0x18, op == 0xd2, op == 0xd4, op == 0xd6,
			0x20 <= op && op <= 0x22, op == 0x25, op == 0x26, op == 0x3f, op == 0x40:
			// One index.
			r.u32()
		case op == 0x0e: // br_table
			for n := r.u32(); n > 0 && r.err == nil; n-- {
				r.u32()
			}
			r.u32()
		case op == 0x11, op == 0x13: // call_indirect, return_call_indirect
			r.u32()
			r.u32()
		case op == 0x1c: // select t*
			for n := r.u32(); n > 0 && r.err == nil; n-- {
				r.valType()
			}
		case op == 0x1f: // try_table
			r.blockType()
			for n := r.u32(); n > 0 && r.err == nil; n-- {
				switch kind := r.byte(); kind {
				case 0x00, 0x01:
					r.u32()
					r.u32()
				case 0x02, 0x03:
					r.u32()
				default:
					return nil, fmt.Errorf("offset %d: unknown catch kind %#x", at, kind)
				}
			}
		case op == 0x23, op == 0x24: // global.get, global.set
			if g := r.u32(); g >= stop && r.err == nil {
				return nil, fmt.Errorf("offset %d: global index %d out of range", at, g)
			}
		case 0x28 <= op && op <= 0x3e: // loads and stores
			r.memArg()
		case op == 0x41:
			r.leb(32)
		case op == 0x42:
			r.leb(64)
		case op == 0x43:
			r.bytes(4)
		case op == 0x44:
			r.bytes(8)
		case op == 0xd0: // ref.null heaptype
			r.leb(33)
		case op == 0xfc:
			if err := r.prefixFC(); err != nil {
				return nil, fmt.Errorf("offset %d: %w", at, err)
			}
		case op == 0xfd:
			r.prefixFD()
		case op == 0xfe:
			if sub := r.u32(); sub == 0x03 { // atomic.fence
				r.byte()
			} else {
				r.memArg()
			}
		default:
			return nil, fmt.Errorf("offset %d: unsupported opcode %#x", at, op)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(code) == 0 || code[len(code)-1] != 0x0b {
		return nil, errors.New("body does not end with end")
	}
	return append(out, code[copied:]...), nil
}

// mergeDataGap is the longest run of zeros between two data segments that mergeData
// writes out rather than leave as a gap: in a Go guest nearly all are shorter than 64
// bytes, and a page of zeros costs less than a segment object.
const mergeDataGap = 4096

// mergeData returns a data section whose segments write the same bytes as those of
// payload, in as few segments as it can: the segments sorted by address, and each run of
// segments separated by less than mergeDataGap bytes made one, the gaps filled with zeros
// (the memory holds zeros there anyway). It merges only a section whose segments are all
// active, in memory 0, at constant addresses, and do not overlap (so that the order in
// which they are written does not matter); any other it returns as it is.
func mergeData(payload []byte) []byte {
	type segment struct {
		addr uint32
		data []byte
	}
	r := &reader{b: payload}
	count := r.u32()
	if count > uint32(len(payload)/5) { // a segment takes 5 bytes at least: a bad count
		return payload
	}
	segs := make([]segment, count)
	for i := range segs {
		// Flag 0, i32.const addr, end, the bytes.
		if r.u32() != 0 || r.byte() != 0x41 {
			return payload
		}
		addr := uint32(r.s32())
		if r.byte() != 0x0b {
			return payload
		}
		segs[i] = segment{addr, r.bytes(int(r.u32()))}
	}
	if r.err != nil || r.pos != len(payload) || len(segs) < 2 {
		return payload
	}
	slices.SortStableFunc(segs, func(a, b segment) int { return cmp.Compare(a.addr, b.addr) })
	for i := 1; i < len(segs); i++ {
		if uint64(segs[i-1].addr)+uint64(len(segs[i-1].data)) > uint64(segs[i].addr) {
			return payload // overlapping segments
		}
	}
	// Runs of segments less than mergeDataGap apart, each to be one segment.
	type run struct {
		segs       []segment
		start, end uint64
	}
	var runs []run
	size := uint64(0)
	for i := 0; i < len(segs); {
		start, end := uint64(segs[i].addr), uint64(segs[i].addr)
		j := i
		for ; j < len(segs) && uint64(segs[j].addr)-end < mergeDataGap; j++ {
			end = uint64(segs[j].addr) + uint64(len(segs[j].data))
		}
		runs = append(runs, run{segs[i:j], start, end})
		size += end - start
		i = j
	}
	// The zeros written into gaps may not make the section more than twice its size (and
	// a page): a section of many small segments far apart stays as it is.
	if size > 2*uint64(len(payload))+wasmPageSize {
		return payload
	}
	var out []byte
	for _, rn := range runs {
		data := make([]byte, rn.end-rn.start)
		for _, s := range rn.segs {
			copy(data[uint64(s.addr)-rn.start:], s.data)
		}
		out = append(out, 0x00)
		out = append(out, i32ConstBytes(int32(rn.start))...)
		out = append(out, 0x0b)
		out = appendU32(out, uint32(len(data)))
		out = append(out, data...)
	}
	n := uint32(len(runs))
	return append(appendU32(make([]byte, 0, len(out)+5), n), out...)
}

// reader reads the Wasm binary format. The first error sticks; reads after it return
// zeros.
type reader struct {
	b   []byte
	pos int
	err error
}

var errShort = errors.New("unexpected end of data")

func (r *reader) byte() byte {
	if r.err != nil || r.pos >= len(r.b) {
		r.fail(errShort)
		return 0
	}
	c := r.b[r.pos]
	r.pos++
	return c
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b)-r.pos {
		r.fail(errShort)
		return nil
	}
	b := r.b[r.pos : r.pos+n]
	r.pos += n
	return b
}

// leb reads a LEB128 number of at most bits bits and returns its low 64 bits, unsigned.
func (r *reader) leb(bits int) uint64 {
	var v uint64
	for shift := 0; ; shift += 7 {
		if shift >= bits+7 {
			r.fail(errors.New("LEB128 number too long"))
			return 0
		}
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if shift < 64 {
			v |= uint64(c&0x7f) << shift
		}
		if c&0x80 == 0 {
			return v
		}
	}
}

func (r *reader) u32() uint32 {
	v := r.leb(32)
	if v > 1<<32-1 {
		r.fail(errors.New("u32 out of range"))
	}
	return uint32(v)
}

// s32 reads a signed LEB128 number of 32 bits, as i32.const has.
func (r *reader) s32() int32 {
	start := r.pos
	v := r.leb(32)
	if r.err != nil {
		return 0
	}
	if shift := 7 * (r.pos - start); shift < 64 && r.b[r.pos-1]&0x40 != 0 {
		v |= ^uint64(0) << shift // the sign
	}
	return int32(v)
}

func (r *reader) name() string { return string(r.bytes(int(r.u32()))) }

func (r *reader) limits() {
	flags := r.byte()
	r.leb(64)
	if flags&0x01 != 0 {
		r.leb(64)
	}
}

// valType reads a value type: one byte, or a reference type with a heap type.
func (r *reader) valType() {
	switch t := r.byte(); t {
	case 0x63, 0x64: // (ref null? ht)
		r.leb(33)
	}
}

// blockType reads a block type: empty, a value type, or a type index (s33).
func (r *reader) blockType() {
	if r.pos < len(r.b) {
		switch r.b[r.pos] {
		case 0x40, 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
			r.pos++
			return
		case 0x63, 0x64:
			r.valType()
			return
		}
	}
	r.leb(33)
}

// memArg reads a memory argument: alignment (with a memory index when bit 6 is set) and
// offset.
func (r *reader) memArg() {
	if align := r.u32(); align&0x40 != 0 {
		r.u32()
	}
	r.leb(64)
}

func (r *reader) prefixFC() error {
	switch sub := r.u32(); {
	case sub <= 7: // saturating truncations
	case sub == 8: // memory.init data, memory
		r.u32()
		r.u32()
	case sub == 9, sub == 11, sub == 13, sub == 15, sub == 16, sub == 17:
		r.u32()
	case sub == 10, sub == 12, sub == 14: // memory.copy, table.init, table.copy
		r.u32()
		r.u32()
	default:
		return fmt.Errorf("unsupported opcode 0xfc %d", sub)
	}
	return nil
}

func (r *reader) prefixFD() {
	switch sub := r.u32(); {
	case sub <= 11, sub == 92, sub == 93: // loads and stores
		r.memArg()
	case sub == 12, sub == 13: // v128.const, i8x16.shuffle
		r.bytes(16)
	case 21 <= sub && sub <= 34: // lane extracts and replaces
		r.byte()
	case 84 <= sub && sub <= 91: // lane loads and stores
		r.memArg()
		r.byte()
	}
}

// startsWithLoop reports whether code, the instructions of a function body, reaches a
// loop before it can branch or call: it starts with blocks and simple instructions (reads
// and writes of locals, reads of globals, constants), then a loop. The loop's check then
// runs on every entry to the function.
func startsWithLoop(code []byte) bool {
	r := &reader{b: code}
	for {
		switch r.byte() {
		case 0x01: // nop
		case 0x02: // block
			r.blockType()
		case 0x03: // loop
			return r.err == nil
		case 0x20, 0x21, 0x22, 0x23: // local.get, local.set, local.tee, global.get
			r.u32()
		case 0x41: // i32.const
			r.leb(32)
		case 0x42: // i64.const
			r.leb(64)
		default:
			return false
		}
	}
}

// fuelCheck is the code added at the head of every loop and the entry of every function;
// see the top of this file.
func fuelCheck(stop, fuel uint32, hasMemory bool) []byte {
	getFuel := appendU32([]byte{0x23}, fuel)
	setFuel := appendU32([]byte{0x24}, fuel)
	c := append([]byte(nil), getFuel...)
	c = append(c, 0x41, 0x01, 0x6b) // i32.const 1, i32.sub
	c = append(c, setFuel...)
	c = append(c, getFuel...)
	c = append(c, 0x45, 0x04, 0x40) // i32.eqz, if (empty)
	c = append(c, i32ConstBytes(fuelPerCheck)...)
	c = append(c, setFuel...)
	if hasMemory {
		c = append(c, 0x41, 0x00, 0x40, 0x00, 0x1a) // i32.const 0, memory.grow 0, drop
	}
	c = append(c, appendU32([]byte{0x23}, stop)...)
	c = append(c, 0x04, 0x40, 0x00, 0x0b) // if (empty) unreachable end
	return append(c, 0x0b)                // end
}

// i32ConstBytes is the instruction i32.const v.
func i32ConstBytes(v int32) []byte {
	b := []byte{0x41}
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, s string) []byte {
	b = appendU32(b, uint32(len(s)))
	return append(b, s...)
}
