// Package transportpb is the transport plugin protocol: the gRPC service that micro calls
// on a transport plugin, generated from transport.proto, which describes the protocol.
// Plugins do not use it directly; they implement sdk/transport.Transport and call
// sdk/transport.Serve.
//
// The generated files are committed; abi/gen.sh (or go generate) regenerates them.
package transportpb

//go:generate ../gen.sh

import "fmt"

// MaxMessageSize is the largest Message either side accepts, in bytes: its body plus the
// lengths of its header keys and values.
const MaxMessageSize = 4 << 20

// MaxFrameSize is the largest gRPC message either side receives: MaxMessageSize with room
// for the framing, so that a Message slightly over the limit still arrives and is refused
// with a clear error rather than gRPC's.
const MaxFrameSize = MaxMessageSize + 1<<20

// Size returns m's size as MaxMessageSize counts it.
func Size(m *Message) int {
	n := len(m.GetBody())
	for k, v := range m.GetHeader() {
		n += len(k) + len(v)
	}
	return n
}

// SizeError is the error for a Message over MaxMessageSize.
type SizeError struct {
	Size, Limit int
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("message of %d bytes exceeds the limit of %d", e.Size, e.Limit)
}

// CheckSize returns a *SizeError when m is larger than MaxMessageSize.
func CheckSize(m *Message) error {
	if n := Size(m); n > MaxMessageSize {
		return &SizeError{Size: n, Limit: MaxMessageSize}
	}
	return nil
}
