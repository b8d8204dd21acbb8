package server

import (
	"errors"
	"io"
	"sync"
)

// errReplaced is what the body of an abandoned attempt reads once a later attempt took over.
var errReplaced = errors.New("request body taken over by a later attempt")

// replayBody is a streamed request body that a call may send more than once, to one node
// after another. Every attempt reads it from the start: first the bytes that earlier
// attempts read, which it keeps up to limit, then on from the caller. Once more than limit
// bytes were read, nothing is kept and the body cannot be sent again.
//
// An attempt's reader may still be read by the HTTP client after the attempt ended; it
// reads errReplaced once a later attempt has begun, and whatever it read from the caller
// meanwhile is kept for the later one.
type replayBody struct {
	src   io.Reader
	limit int64

	srcMu sync.Mutex // held while reading src, so that one reader at a time does

	mu       sync.Mutex
	kept     []byte
	overflow bool  // more than limit bytes were read: kept is gone
	srcErr   error // what src last returned, io.EOF at its end
	cur      *attemptBody
}

func newReplayBody(src io.Reader, limit int64) *replayBody {
	return &replayBody{src: src, limit: limit}
}

// replayable reports whether the body can be sent again from its start.
func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow
}

// attempt returns the reader of the body for a new attempt, and ends the one before.
func (b *replayBody) attempt() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		b.cur.dead = true
	}
	b.cur = &attemptBody{b: b}
	return b.cur
}

// attemptBody is one attempt's reader of a replayBody.
type attemptBody struct {
	b    *replayBody
	pos  int  // how much of b.kept this reader has returned
	dead bool // a later attempt took over; guarded by b.mu
}

// fromKept returns what r has not yet read of the kept bytes; done reports that r needs no
// read of src (it returned something, or must end).
func (r *attemptBody) fromKept(p []byte) (n int, done bool, err error) {
	b := r.b
	switch {
	case r.dead:
		return 0, true, errReplaced
	case r.pos < len(b.kept):
		n = copy(p, b.kept[r.pos:])
		r.pos += n
		return n, true, nil
	case b.srcErr != nil:
		return 0, true, b.srcErr
	}
	return 0, false, nil
}

// Read implements io.Reader.
func (r *attemptBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b := r.b
	b.mu.Lock()
	n, done, err := r.fromKept(p)
	b.mu.Unlock()
	if done {
		return n, err
	}
	b.srcMu.Lock()
	defer b.srcMu.Unlock()
	// Another reader may have read from src while this one waited.
	b.mu.Lock()
	n, done, err = r.fromKept(p)
	b.mu.Unlock()
	if done {
		return n, err
	}
	n, err = b.src.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > 0 && !b.overflow {
		if int64(len(b.kept)+n) <= b.limit {
			b.kept = append(b.kept, p[:n]...)
			r.pos += n
		} else {
			b.overflow, b.kept = true, nil
		}
	}
	if err != nil {
		b.srcErr = err
	}
	if r.dead {
		return 0, errReplaced
	}
	return n, err
}

// Close implements io.Closer: the caller's body stays open for later attempts.
func (r *attemptBody) Close() error { return nil }
