package server

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"
)

// watchAfter is how long a call runs before its caller's connection is watched: calls that
// end sooner pay for a timer only.
const watchAfter = 5 * time.Millisecond

// watchCaller returns a context that ends when ctx does, or when the caller on conn goes
// away (closes its connection) while the call is in flight, and a stop func that the call
// must call when it ends, before the connection reads its next request. fasthttp does not
// tell a handler that its caller left, so once the call has run for watchAfter a watcher
// waits on the caller's socket without reading from it: a socket that turns readable with
// nothing to read has been closed by its peer.
func watchCaller(ctx context.Context, conn net.Conn) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	rc := rawConn(conn)
	if rc == nil {
		return ctx, cancel
	}
	done := make(chan struct{})
	started := make(chan struct{})
	timer := time.AfterFunc(watchAfter, func() {
		close(started)
		defer close(done)
		if callerGone(rc) {
			cancel()
		}
	})
	return ctx, func() {
		if timer.Stop() {
			cancel()
			return
		}
		<-started
		// Wake the watcher, which waits for the socket to turn readable, and wait for it
		// to be done with the socket before anyone else reads from it. The connection's
		// server sets its own deadline before it reads the next request.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = conn.SetReadDeadline(time.Time{})
		cancel()
	}
}

// rawConn returns the socket under conn, or nil when there is none.
func rawConn(conn net.Conn) syscall.RawConn {
	for {
		switch c := conn.(type) {
		case syscall.Conn:
			rc, err := c.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
}

// callerGone waits until the socket turns readable, and reports whether it did because
// its peer closed it. It returns false at once when the socket cannot be watched, and when
// the wait ends for another reason (the deadline that stops the watch, bytes of a next
// request).
func callerGone(rc syscall.RawConn) bool {
	var buf [1]byte
	gone := false
	err := rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
			return false // wait for the socket to turn readable
		case err == nil && n == 0:
			gone = true
		case err != nil:
			gone = !errors.Is(err, syscall.EWOULDBLOCK) // reset by the peer, and the like
		}
		return true
	})
	return err == nil && gone
}
