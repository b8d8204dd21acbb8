//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

// Package peek looks at a connection's socket without reading from it: whether an idle
// connection is still open and quiet, and, waiting, whether its peer has gone.
package peek

import "net"

// Peeker cannot look at a socket without blocking on this platform: a connection the peer
// closed while idle shows up as an error on its next call instead.
type Peeker struct{}

// New returns nil: there is nothing to peek with here.
func New(net.Conn) *Peeker { return nil }

// Alive reports yes: a nil Peeker cannot tell.
func (*Peeker) Alive() bool { return true }
