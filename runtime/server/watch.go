package server

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// watchAfter is how long a call runs before its caller's connection is watched: calls that
// end sooner pay for a timer only.
const watchAfter = 5 * time.Millisecond

// watcher watches the connection of a caller whose call is in flight (see watchCaller).
// Watchers are pooled, so that a call that ends before watchAfter allocates nothing.
type watcher struct {
	timer  *time.Timer
	conn   net.Conn
	cancel context.CancelFunc
	wg     sync.WaitGroup // the watch under way
}

var watchers = sync.Pool{New: func() any {
	w := &watcher{}
	w.timer = time.AfterFunc(time.Hour, w.watch)
	w.timer.Stop()
	return w
}}

// watchCaller calls cancel when the caller on conn goes away (closes its connection) while
// its call is in flight. The call stops the returned watcher when it ends, before the
// connection reads its next request. fasthttp does not tell a handler that its caller left,
// so once the call has run for watchAfter the watcher waits on the caller's socket without
// reading from it: a socket that turns readable with nothing to read has been closed by its
// peer.
func watchCaller(conn net.Conn, cancel context.CancelFunc) *watcher {
	w := watchers.Get().(*watcher)
	w.conn, w.cancel = conn, cancel
	w.wg.Add(1)
	w.timer.Reset(watchAfter)
	return w
}

func (w *watcher) watch() {
	defer w.wg.Done()
	if rc := rawConn(w.conn); rc != nil && callerGone(rc) {
		w.cancel()
	}
}

// stop ends the watch: when it is under way, it wakes the watcher, which waits for the
// socket to turn readable, and waits for it to be done with the socket before anyone else
// reads from it. The connection's server sets its own deadline before it reads the next
// request.
func (w *watcher) stop() {
	switch {
	case w.timer.Stop():
		w.wg.Done()
	case rawConn(w.conn) == nil: // no socket under it (a RequestCtx made by Init): the watch ended at once
		w.wg.Wait()
	default:
		_ = w.conn.SetReadDeadline(time.Unix(1, 0))
		w.wg.Wait()
		_ = w.conn.SetReadDeadline(time.Time{})
	}
	w.conn, w.cancel = nil, nil
	watchers.Put(w)
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
