//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package httptransport

import (
	"net"
	"syscall"
)

// peeker checks whether the peer of an idle connection has neither closed it nor sent
// anything, by peeking at the socket without blocking. It is not safe for concurrent use.
type peeker struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // p.peek, bound once so that alive does not allocate
	buf  [1]byte
	open bool
}

func newPeeker(nc net.Conn) *peeker {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &peeker{rc: rc}
	p.fn = p.peek
	return p
}

// alive reports whether the connection is open and quiet. A nil peeker cannot tell and
// says yes.
func (p *peeker) alive() bool {
	if p == nil {
		return true
	}
	p.open = false
	if err := p.rc.Read(p.fn); err != nil {
		return false
	}
	return p.open
}

func (p *peeker) peek(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	// Would-block means the peer is quiet and the connection open. EOF (no error, no
	// bytes), bytes nobody asked for, or an error all mean it must not carry a call.
	p.open = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR
	return true
}
