//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

// Package peek looks at a connection's socket without reading from it: whether an idle
// connection is still open and quiet, and, waiting, whether its peer has gone.
package peek

import (
	"net"
	"syscall"
)

// Peeker checks whether the peer of an idle connection has neither closed it nor sent
// anything, by peeking at the socket without blocking. It is not safe for concurrent use.
type Peeker struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // p.peek, bound once so that Alive does not allocate
	buf  [1]byte
	open bool
}

// New returns a Peeker for nc, or nil when nc has no socket to peek at.
func New(nc net.Conn) *Peeker {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &Peeker{rc: rc}
	p.fn = p.peek
	return p
}

// Alive reports whether the connection is open and quiet. A nil Peeker cannot tell and
// says yes.
func (p *Peeker) Alive() bool {
	if p == nil {
		return true
	}
	p.open = false
	if err := p.rc.Read(p.fn); err != nil {
		return false
	}
	return p.open
}

func (p *Peeker) peek(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	// Would-block means the peer is quiet and the connection open. EOF (no error, no
	// bytes), bytes nobody asked for, or an error all mean it must not carry a call.
	p.open = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR
	return true
}
