package wasm

import (
	"github.com/tetratelabs/wazero/api"
)

// This file assembles small Wasm modules by hand, for guests that a Go compiler would not
// produce: malformed wrappers, and probes that call host functions with any arguments.

type funcType struct{ params, results []api.ValueType }

type wasmImport struct {
	module, name string
	typ          funcType
}

type wasmFunc struct {
	typ  funcType
	body []byte // instructions, without the locals vector and the final end
}

type wasmExport struct {
	name  string
	kind  byte // 0 func, 2 memory
	index uint32
}

// wasmData is an active data segment: bytes copied into the memory at offset when the
// module is instantiated.
type wasmData struct {
	offset uint32
	bytes  []byte
}

// wasmModule is a module with imported functions, defined functions, one memory (unless
// noMemory), exports and data segments. Function indices count the imports first.
type wasmModule struct {
	imports  []wasmImport
	funcs    []wasmFunc
	exports  []wasmExport
	data     []wasmData
	memPages uint32
	noMemory bool
}

func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func wasmName(s string) []byte { return append(uleb(uint64(len(s))), s...) }

func vec(items [][]byte) []byte {
	b := uleb(uint64(len(items)))
	for _, it := range items {
		b = append(b, it...)
	}
	return b
}

func section(id byte, content []byte) []byte {
	return append(append([]byte{id}, uleb(uint64(len(content)))...), content...)
}

func encodeType(t funcType) []byte {
	b := []byte{0x60, byte(len(t.params))}
	b = append(b, t.params...)
	b = append(b, byte(len(t.results)))
	return append(b, t.results...)
}

// Instructions.
func localGet(i uint32) []byte   { return append([]byte{0x20}, uleb(uint64(i))...) }
func call(i uint32) []byte       { return append([]byte{0x10}, uleb(uint64(i))...) }
func i32Const(v int32) []byte    { return append([]byte{0x41}, sleb(int64(v))...) }
func concat(bs ...[]byte) []byte { return bytesJoin(bs) }

func bytesJoin(bs [][]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func (m *wasmModule) bytes() []byte {
	var types [][]byte
	typeIndex := func(t funcType) uint64 {
		e := encodeType(t)
		for i, x := range types {
			if string(x) == string(e) {
				return uint64(i)
			}
		}
		types = append(types, e)
		return uint64(len(types) - 1)
	}
	var imports, funcIdx, codes, exports, data [][]byte
	for _, im := range m.imports {
		imports = append(imports, concat(wasmName(im.module), wasmName(im.name), []byte{0x00}, uleb(typeIndex(im.typ))))
	}
	for _, f := range m.funcs {
		funcIdx = append(funcIdx, uleb(typeIndex(f.typ)))
		body := concat([]byte{0x00}, f.body, []byte{0x0b}) // no locals
		codes = append(codes, concat(uleb(uint64(len(body))), body))
	}
	for _, e := range m.exports {
		exports = append(exports, concat(wasmName(e.name), []byte{e.kind}, uleb(uint64(e.index))))
	}
	for _, d := range m.data {
		// Active, memory 0, at i32.const offset.
		data = append(data, concat([]byte{0x00}, i32Const(int32(d.offset)), []byte{0x0b}, uleb(uint64(len(d.bytes))), d.bytes))
	}
	out := []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}
	out = append(out, section(1, vec(types))...)
	if len(imports) > 0 {
		out = append(out, section(2, vec(imports))...)
	}
	out = append(out, section(3, vec(funcIdx))...)
	if !m.noMemory {
		pages := m.memPages
		if pages == 0 {
			pages = 1
		}
		out = append(out, section(5, vec([][]byte{concat([]byte{0x00}, uleb(uint64(pages)))}))...)
	}
	if len(exports) > 0 {
		out = append(out, section(7, vec(exports))...)
	}
	out = append(out, section(10, vec(codes))...)
	if len(data) > 0 {
		out = append(out, section(11, vec(data))...)
	}
	return out
}

var (
	tVoid    = funcType{}
	tRetI32  = funcType{results: []api.ValueType{api.ValueTypeI32}}
	tI32RetI = funcType{params: []api.ValueType{api.ValueTypeI32}, results: []api.ValueType{api.ValueTypeI32}}
)

// minimalGuest returns a module that satisfies the wrapper ABI with no imports: on_init and
// on_request return 0. change, if set, edits it before it is assembled.
func minimalGuest(change func(m *wasmModule)) []byte {
	m := &wasmModule{
		funcs: []wasmFunc{
			{typ: tVoid},                       // 0 abi marker
			{typ: tVoid},                       // 1 _initialize
			{typ: tRetI32, body: i32Const(0)},  // 2 on_init
			{typ: tRetI32, body: i32Const(0)},  // 3 on_request
			{typ: tVoid},                       // 4 on_response
			{typ: tI32RetI, body: i32Const(0)}, // 5 spare: (i32) -> i32
		},
		exports: []wasmExport{
			{"micro_wrapper_abi_v1", 0, 0},
			{"_initialize", 0, 1},
			{"on_init", 0, 2},
			{"on_request", 0, 3},
			{"on_response", 0, 4},
			{"memory", 2, 0},
		},
	}
	if change != nil {
		change(m)
	}
	return m.bytes()
}

// setExport points the export name at function index i, adding it when missing.
func (m *wasmModule) setExport(name string, i uint32) {
	for j := range m.exports {
		if m.exports[j].name == name {
			m.exports[j].index = i
			return
		}
	}
	m.exports = append(m.exports, wasmExport{name, 0, i})
}

func (m *wasmModule) dropExport(name string) {
	for j := range m.exports {
		if m.exports[j].name == name {
			m.exports = append(m.exports[:j], m.exports[j+1:]...)
			return
		}
	}
}
