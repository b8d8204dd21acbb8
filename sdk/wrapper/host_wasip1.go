//go:build wasip1

package wrapper

import (
	"unsafe"

	abi "github.com/microhost/micro/abi/wrapper"
)

// The exports. Their names are abi's Export constants (a test checks that they match).

//go:wasmexport micro_wrapper_abi_v1
func exportABIVersion() {}

//go:wasmexport on_init
func exportOnInit() int32 { return onInit() }

//go:wasmexport on_request
func exportOnRequest() int32 { return onRequest() }

//go:wasmexport on_response
func exportOnResponse() { onResponse() }

// The imports, from abi.ModuleName. Their names are abi's Import constants.

//go:wasmimport micro get_config
func importGetConfig(buf *byte, bufCap uint32) int32

//go:wasmimport micro get_service
func importGetService(buf *byte, bufCap uint32) int32

//go:wasmimport micro get_endpoint
func importGetEndpoint(buf *byte, bufCap uint32) int32

//go:wasmimport micro get_node
func importGetNode(buf *byte, bufCap uint32) int32

//go:wasmimport micro get_caller
func importGetCaller(buf *byte, bufCap uint32) int32

//go:wasmimport micro get_error
func importGetError(buf *byte, bufCap uint32) int32

//go:wasmimport micro get_header
func importGetHeader(name string, buf *byte, bufCap uint32) int32

//go:wasmimport micro get_lease
func importGetLease(name string, demand uint64, rate *float64) int32

//go:wasmimport micro set_header
func importSetHeader(name, value string)

//go:wasmimport micro set_reply_header
func importSetReplyHeader(name, value string)

//go:wasmimport micro set_reject
func importSetReject(status int32, message string)

//go:wasmimport micro set_phases
func importSetPhases(mask int32)

//go:wasmimport micro set_call_block
func importSetCallBlock(b *callBlock, n uint32)

//go:wasmimport micro set_state
func importSetState(service, endpoint, node, value string)

//go:wasmimport micro log
func importLog(level int32, message string)

//go:wasmimport micro fail
func importFail(message string)

// bufArgs gives a buffer as an import's (pointer, capacity) pair; buf is never empty.
func bufArgs(buf []byte) (*byte, uint32) { return &buf[0], uint32(len(buf)) }

func hostGetConfig(buf []byte) int32 { return importGetConfig(bufArgs(buf)) }

func hostGetField(f field, buf []byte) int32 {
	p, n := bufArgs(buf)
	switch f {
	case fieldService:
		return importGetService(p, n)
	case fieldEndpoint:
		return importGetEndpoint(p, n)
	case fieldNode:
		return importGetNode(p, n)
	case fieldCaller:
		return importGetCaller(p, n)
	case fieldError:
		return importGetError(p, n)
	}
	return 0
}

func hostGetHeader(name string, buf []byte) int32 {
	p, n := bufArgs(buf)
	return importGetHeader(name, p, n)
}

func hostGetLease(name string, demand uint64) (float64, bool) {
	var rate float64
	held := importGetLease(name, demand, &rate)
	return rate, held == abi.LeaseHeld
}

func hostSetHeader(name, value string)           { importSetHeader(name, value) }
func hostSetReplyHeader(name, value string)      { importSetReplyHeader(name, value) }
func hostSetReject(status int32, message string) { importSetReject(status, message) }
func hostSetPhases(mask int32)                   { importSetPhases(mask) }
func hostSetCallBlock(b *callBlock)              { importSetCallBlock(b, uint32(unsafe.Sizeof(*b))) }
func hostLog(level int32, message string)        { importLog(level, message) }

func hostSetState(service, endpoint, node, value string) {
	importSetState(service, endpoint, node, value)
}

func hostFail(message string) {
	importFail(message)
	panic("micro.fail returned") // the host never returns from fail
}
