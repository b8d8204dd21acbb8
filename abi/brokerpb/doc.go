// Package brokerpb is the broker plugin protocol: the gRPC service that micro calls on a
// broker plugin, generated from broker.proto, which describes the protocol. Plugins do not
// use it directly; they implement sdk/broker.Broker and call sdk/broker.Serve.
//
// The generated files are committed; abi/gen.sh (or go generate) regenerates them.
package brokerpb

//go:generate ../gen.sh

import (
	"errors"
	"fmt"
)

// Limits of the protocol; broker.proto says where each applies.
const (
	// MaxMessageSize is the largest message either side accepts, in bytes: its body plus
	// the lengths of its header keys and values.
	MaxMessageSize = 4 << 20
	// MaxHeaders is the most headers a message may have.
	MaxHeaders = 1024
	// MaxNameLen is the longest topic or group name, in bytes.
	MaxNameLen = 200
	// MaxIDLen is the longest message id, in bytes.
	MaxIDLen = 256
	// MaxTokenLen is the longest delivery token, in bytes.
	MaxTokenLen = 1024
	// MaxInflight is the largest max_inflight of a subscription.
	MaxInflight = 1024
	// MaxOps is how many operations of one Subscribe stream a plugin runs at once.
	MaxOps = 64
	// MaxLimit is the largest limit of a Messages request.
	MaxLimit = 1000
	// MaxFrameSize is the largest gRPC message either side receives: MaxMessageSize with
	// room for a message's framing, its id, topic and headers' encoding, so that a
	// message slightly over the limit still arrives and is refused with a clear error
	// rather than gRPC's.
	MaxFrameSize = MaxMessageSize + 1<<20
)

// ValidName returns nil when name is a valid topic or group name, and else an error that
// says what is wrong with it: one or more segments of ASCII letters, digits, '_' and '-'
// joined by dots, at most MaxNameLen bytes. (micro's runtime/broker.ValidTopic applies the
// same rule.)
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("name is %d bytes long, longer than %d", len(name), MaxNameLen)
	}
	seg := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if seg == 0 {
				return fmt.Errorf("name %q has an empty segment", name)
			}
			seg = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			seg++
		default:
			return fmt.Errorf("name %q has %q at byte %d; a name is segments of letters, digits, '_' and '-' joined by dots", name, rune(c), i)
		}
	}
	if seg == 0 {
		return fmt.Errorf("name %q has an empty segment", name)
	}
	return nil
}

// Size returns m's size as MaxMessageSize counts it.
func Size(m *Message) int {
	n := len(m.GetBody())
	for k, v := range m.GetHeader() {
		n += len(k) + len(v)
	}
	return n
}

// ErrTooLarge is wrapped by CheckMessage's error for a message over MaxMessageSize or
// MaxHeaders: such a message is refused with OUT_OF_RANGE, other bad messages with
// INVALID_ARGUMENT.
var ErrTooLarge = errors.New("message too large")

// CheckMessage returns an error when m breaks the protocol's rules for a message: no id or
// one longer than MaxIDLen, a topic that is not a ValidName, or a size over MaxMessageSize
// or more than MaxHeaders headers (errors that wrap ErrTooLarge). It does not look at the
// time.
func CheckMessage(m *Message) error {
	if m == nil {
		return errors.New("no message")
	}
	switch id := m.GetId(); {
	case id == "":
		return errors.New("message has no id")
	case len(id) > MaxIDLen:
		return fmt.Errorf("message id is %d bytes long, longer than %d", len(id), MaxIDLen)
	}
	if err := ValidName(m.GetTopic()); err != nil {
		return fmt.Errorf("message %q: topic: %w", m.GetId(), err)
	}
	if n := len(m.GetHeader()); n > MaxHeaders {
		return fmt.Errorf("message %q has %d headers, more than %d: %w", m.GetId(), n, MaxHeaders, ErrTooLarge)
	}
	if n := Size(m); n > MaxMessageSize {
		return fmt.Errorf("message %q of %d bytes exceeds the limit of %d: %w", m.GetId(), n, MaxMessageSize, ErrTooLarge)
	}
	return nil
}

// CheckToken returns an error unless token is a valid delivery token: 1 to MaxTokenLen
// bytes.
func CheckToken(token string) error {
	switch {
	case token == "":
		return errors.New("empty delivery token")
	case len(token) > MaxTokenLen:
		return fmt.Errorf("delivery token is %d bytes long, longer than %d", len(token), MaxTokenLen)
	}
	return nil
}
