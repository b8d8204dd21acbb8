// Package nativehost links sdk/wrapper, built for a native GOOS rather than as a wasm
// guest, to a host that plays micro's part: package wrappertest. sdk/wrapper sets [Call]
// when it is initialized; the host implements [Host] and runs the guest's exports through
// Call. It is internal because wrapper authors need neither side: they test with
// wrappertest.
package nativehost

// Host is micro's side of the wrapper ABI (abi/README.md), one method per host function
// that sdk/wrapper imports, with Go slices and strings for the guest's buffers. A method
// returns an error for a call on which micro would trap the guest; sdk/wrapper then ends
// the guest call with that error, as micro does. The methods are called on the goroutine
// of a guest call that [Call] runs.
type Host interface {
	// Begin is called by Call before each export, after the guest's state was set up for
	// it: micro writes the call block here (see SetCallBlock).
	Begin(e Export)
	// GetConfig, GetField and GetHeader implement the (buf_ptr, buf_cap) -> len protocol:
	// they write the value into buf when it fits and return its length. field is one of
	// abi's Field constants.
	GetConfig(buf []byte) int32
	GetField(field int32, buf []byte) (int32, error)
	GetHeader(name string, buf []byte) (int32, error)
	// GetLease implements get_lease: it records demand for resource and returns this
	// micro's share of resource's global rate limit, and whether it holds a lease.
	GetLease(resource string, demand uint64) (rate float64, held bool, err error)
	SetHeader(name, value string) error
	SetReplyHeader(name, value string) error
	SetReject(status int32, message string) error
	SetPhases(mask int32) error
	// SetCallBlock registers the guest's call block: block's bytes are the guest's, laid
	// out as abi's CallBlock offsets say, in the native byte order. The host writes it in
	// Begin; the guest reads it during the call.
	SetCallBlock(block []byte) error
	// SetState implements set_state: it publishes value for the scope of service,
	// endpoint and node, or deletes the scope's state when value is empty.
	SetState(service, endpoint, node, value string) error
	Log(level int32, message string)
}

// Export is one of a guest's exports.
type Export int

// The exports that Call runs.
const (
	OnInit Export = iota
	OnRequest
	OnResponse
)

// Call runs export e of the guest that sdk/wrapper makes of handler, a *wrapper.Handler,
// with host as micro. It returns the export's result (0 for OnResponse), or what ended
// the guest call early: the guest's own failure (a panic in the handler, wrapper's fail),
// or a Host method's error. Calls are serialized across the process, since the guest's
// state is sdk/wrapper's package state, as in a wasm instance; a host may be given
// another handler on each call. sdk/wrapper sets Call when it is initialized, and never
// changes it after.
var Call func(host Host, handler any, e Export) (int32, error)
