package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
)

// Streams. A stream is a conn whose first message carries HeaderStream = "1". Each side
// has an inbox of its own, a fresh NATS subject it subscribes to:
//
//   - The client subscribes to its inbox and publishes the first message to the
//     listener's subject with Reply = the client inbox.
//   - The listener's accepted conn subscribes to its own inbox and at once publishes an
//     acknowledgement (header Micro-Nats-Stream: ack, empty body) to the client inbox with
//     Reply = the server inbox. Every later message of the server goes to the client inbox.
//   - The client's first Send waits for the acknowledgement, within that Send's ctx (the
//     caller's budget for opening the stream); a listener that is not there shows at once
//     as a connect error (NATS's "no responders"). After that the client sends to the
//     server inbox.
//   - Flow control: NATS drops messages for a subscriber that falls behind, so a sender
//     has at most streamWindow bytes (each message counting its body, headers and
//     msgOverhead) that the peer's Recv has not yet returned (plus one message of up to
//     the max payload). The receiver tells the
//     sender the number of the last message it consumed (header Micro-Nats-Stream:
//     credit, Micro-Nats-Credit: <seq>) each time another quarter of the window is
//     consumed; the sender maps it to the bytes it had sent up to it. A Send waits for
//     credit, within its ctx.
//   - Every message after the first carries its number (Micro-Nats-Seq: 1, 2, …). NATS
//     delivers at most once: a message lost on the way (the server restarted) shows as
//     a gap, and the receiver's Recv fails saying so instead of skipping it.
//   - Close publishes an end marker (header Micro-Nats-Stream: end, empty body) to the
//     peer's inbox and unsubscribes; the peer's Recv returns io.EOF once it has returned
//     every message sent before the marker.
//
// The control headers' keys start with headerEscape, which no Message header can have on
// the wire (escapeKey escapes such keys), so control messages are never taken for the
// caller's.
const (
	ctlHeader    = headerEscape + "Stream"
	creditHeader = headerEscape + "Credit"
	seqHeader    = headerEscape + "Seq"
	ctlAck       = "ack"
	ctlEnd       = "end"
	ctlCredit    = "credit"

	// streamWindow is how many bytes a sender may have in flight on one stream.
	streamWindow = 4 << 20
	// msgOverhead is what every message counts beyond its body and headers, so that a
	// flood of empty messages is held back too.
	msgOverhead = 64
)

// natsStatusHeader and noRespondersStatus are how NATS marks its "no responders" reply.
const (
	natsStatusHeader   = "Status"
	noRespondersStatus = "503"
)

// isNoResponders reports whether msg is NATS's reply to a message sent, with a reply
// subject, to a subject that nobody subscribes to.
func isNoResponders(msg *nats.Msg) bool {
	return len(msg.Data) == 0 && msg.Header.Get(natsStatusHeader) == noRespondersStatus
}

// ctlMsg returns a control message with value v to subject.
func ctlMsg(subject, reply, v string) *nats.Msg {
	return &nats.Msg{Subject: subject, Reply: reply, Header: nats.Header{ctlHeader: []string{v}}}
}

// msgCost is what msg counts against the stream window.
func msgCost(msg *nats.Msg) int64 {
	return int64(len(msg.Data)+headerSize(msg.Header)) + msgOverhead
}

// stream is one side of an open stream. Its subscription's handler queues the peer's
// messages for recv and applies the peer's control messages.
type stream struct {
	nc   *nats.Conn
	addr string // the listener's address, for errors
	sub  *nats.Subscription

	sendMu sync.Mutex // serialises send, so messages leave in the order of their credit

	mu       sync.Mutex
	wake     chan struct{} // closed (and replaced) whenever anything below changes
	peer     string        // the peer's inbox; "" until the client has the acknowledgement
	openErr  error         // the client's open failed (no responders)
	queue    []*nats.Msg   // the peer's messages that recv has not returned
	ended    bool          // no more messages come from the peer
	endErr   error         // why, when not the peer's end marker
	closed   bool          // Close was called
	seq      int64         // messages sent (under sendMu, not mu)
	recvSeq  int64         // messages received
	sent     int64         // bytes sent, as msgCost counts them
	credit   int64         // bytes sent in the messages the peer has consumed, as it last said
	inflight []sentMark    // messages sent that the peer has not said it consumed
	consumed int64         // bytes recv has returned, as msgCost counts them here
	told     int64         // consumed, when the peer was last told
	doneSeq  int64         // the number of the last message recv returned
}

// sentMark is a message sent: its number, and s.sent once it was sent.
type sentMark struct{ seq, sent int64 }

// newStream subscribes to a fresh inbox and returns the stream on it. peer is the peer's
// inbox, or "" for a client that waits for the acknowledgement.
func newStream(nc *nats.Conn, addr, peer string) (*stream, string, error) {
	s := &stream{nc: nc, addr: addr, peer: peer, wake: make(chan struct{})}
	inbox := nc.NewInbox()
	sub, err := nc.Subscribe(inbox, s.handle)
	if err != nil {
		return nil, "", err
	}
	s.sub = sub
	return s, inbox, nil
}

// changed wakes every waiter; s.mu is held.
func (s *stream) changed() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// handle takes one message from the peer (or NATS).
func (s *stream) handle(msg *nats.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.changed()
	switch msg.Header.Get(ctlHeader) {
	case ctlAck:
		if s.peer == "" && msg.Reply != "" {
			s.peer = msg.Reply
		}
		return
	case ctlCredit:
		// The peer has consumed every message up to number n.
		n, err := strconv.ParseInt(msg.Header.Get(creditHeader), 10, 64)
		if err != nil {
			return
		}
		i := 0
		for i < len(s.inflight) && s.inflight[i].seq <= n {
			s.credit = s.inflight[i].sent
			i++
		}
		s.inflight = s.inflight[i:]
		return
	case ctlEnd:
		s.ended = true
		return
	}
	if isNoResponders(msg) {
		if s.peer == "" { // the client's open found no listener
			s.openErr = &connectError{addr: s.addr, err: nats.ErrNoResponders}
			return
		}
		// The server's acknowledgement found no client: it has gone.
		if !s.ended {
			s.ended = true
			s.endErr = fmt.Errorf("transport-nats: stream %s: the peer has gone: %w", s.addr, nats.ErrNoResponders)
		}
		return
	}
	if s.ended || s.closed || s.peer == "" {
		return
	}
	if v := msg.Header.Get(seqHeader); v != "" {
		msg.Header.Del(seqHeader)
		if n, err := strconv.ParseInt(v, 10, 64); err != nil || n != s.recvSeq+1 {
			s.ended = true
			s.endErr = fmt.Errorf("transport-nats: stream receive from %s: message %s arrived after %d: messages were lost (did the NATS connection drop?)",
				s.addr, v, s.recvSeq)
			return
		}
		s.recvSeq++
	}
	s.queue = append(s.queue, msg)
}

// send publishes msg to the peer's inbox once the window lets it, until ctx ends.
func (s *stream) send(ctx context.Context, msg *nats.Msg) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if msg.Header == nil {
		msg.Header = make(nats.Header, 1)
	}
	cost := msgCost(msg)                                             // without the number, as the receiver counts it
	msg.Header[seqHeader] = []string{strconv.FormatInt(s.seq+1, 10)} // s.seq is ours under sendMu
	if err := checkSize(s.nc, msg); err != nil {
		return err
	}
	for {
		s.mu.Lock()
		closed, ended, endErr, wake := s.closed, s.ended, s.endErr, s.wake
		inFlight := s.sent - s.credit
		s.mu.Unlock()
		switch {
		case closed:
			return fmt.Errorf("transport-nats: stream send to %s: %w", s.addr, net.ErrClosed)
		case ended && endErr != nil:
			return endErr
		case ended:
			return fmt.Errorf("transport-nats: stream send to %s: the peer closed the stream: %w", s.addr, net.ErrClosed)
		}
		// Below a sixteenth of the window in flight, a message goes whatever its size:
		// a receiver that has consumed everything may not have said so for a
		// thirty-second, as it counts (see recv; its count can be a little below ours),
		// and a larger message must not wait for credit that never comes.
		if inFlight < streamWindow/16 || inFlight+cost <= streamWindow {
			break
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("transport-nats: stream send to %s: waiting for the receiver: %w", s.addr, ctx.Err())
		}
	}
	s.mu.Lock()
	msg.Subject = s.peer
	s.sent += cost
	s.inflight = append(s.inflight, sentMark{seq: s.seq + 1, sent: s.sent})
	s.mu.Unlock()
	if err := s.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("transport-nats: stream send to %s: %w", s.addr, err)
	}
	s.seq++
	return nil
}

// recv returns the next message from the peer; io.EOF once the peer has closed and every
// message before its end marker was returned; until ctx ends.
func (s *stream) recv(ctx context.Context) (*nats.Msg, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("transport-nats: stream receive from %s: %w", s.addr, net.ErrClosed)
		}
		if len(s.queue) > 0 {
			msg := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.consumed += msgCost(msg)
			s.doneSeq = s.recvSeq - int64(len(s.queue))
			// Credit (the number of the last message consumed) goes out for each quarter
			// of the window consumed, and, so that a sender never waits for it in vain,
			// when the queue runs dry with a thirty-second or more untold (send lets a
			// message go below a sixteenth).
			var credit *nats.Msg
			if s.consumed-s.told >= streamWindow/4 || len(s.queue) == 0 && s.consumed-s.told >= streamWindow/32 {
				s.told = s.consumed
				credit = ctlMsg(s.peer, "", ctlCredit)
				credit.Header.Set(creditHeader, strconv.FormatInt(s.doneSeq, 10))
			}
			s.mu.Unlock()
			if credit != nil {
				// A credit that does not go out (the connection is away) is sent again
				// with the next one; the peer's Send waits meanwhile.
				_ = s.nc.PublishMsg(credit)
			}
			return msg, nil
		}
		if s.ended {
			err := s.endErr
			s.mu.Unlock()
			if err == nil {
				err = io.EOF
			}
			return nil, err
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, fmt.Errorf("transport-nats: stream receive from %s: %w", s.addr, ctx.Err())
		}
	}
}

// close sends the end marker to the peer (if it is known and has not ended the stream
// itself: after a gap the peer may still be sending) and unsubscribes. It is safe to call more than once.
func (s *stream) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.queue = nil
	peer, peerEnded := s.peer, s.ended && s.endErr == nil
	s.changed()
	s.mu.Unlock()
	var err error
	if peer != "" && !peerEnded {
		if perr := s.nc.PublishMsg(ctlMsg(peer, "", ctlEnd)); perr != nil && !errors.Is(perr, nats.ErrConnectionClosed) {
			err = fmt.Errorf("transport-nats: close stream to %s: %w", s.addr, perr)
		}
	}
	if uerr := s.sub.Unsubscribe(); uerr != nil && err == nil &&
		!errors.Is(uerr, nats.ErrConnectionClosed) && !errors.Is(uerr, nats.ErrBadSubscription) {
		err = fmt.Errorf("transport-nats: close stream to %s: %w", s.addr, uerr)
	}
	return err
}

// acceptStream sets up the server side of the stream that req opens: it subscribes to a
// fresh inbox and acknowledges to the client's inbox, req.Reply, with Reply = that inbox.
func acceptStream(nc *nats.Conn, addr string, req *nats.Msg) (*stream, error) {
	s, inbox, err := newStream(nc, addr, req.Reply)
	if err != nil {
		return nil, fmt.Errorf("transport-nats: accept stream on %s: %w", addr, err)
	}
	if err := nc.PublishMsg(ctlMsg(req.Reply, inbox, ctlAck)); err != nil {
		_ = s.sub.Unsubscribe()
		return nil, fmt.Errorf("transport-nats: accept stream on %s: %w", addr, err)
	}
	return s, nil
}

// openStream opens a stream to first.Subject with first as its first message, and waits
// until ctx ends for the listener to acknowledge it.
func openStream(ctx context.Context, nc *nats.Conn, addr string, first *nats.Msg) (*stream, error) {
	if err := checkSize(nc, first); err != nil {
		return nil, err
	}
	s, inbox, err := newStream(nc, addr, "")
	if err != nil {
		return nil, &connectError{addr: addr, err: err}
	}
	first.Reply = inbox
	if err := nc.PublishMsg(first); err != nil {
		_ = s.sub.Unsubscribe()
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrReconnectBufExceeded) {
			return nil, &connectError{addr: addr, err: err}
		}
		return nil, fmt.Errorf("transport-nats: open stream to %s: %w", addr, err)
	}
	for {
		s.mu.Lock()
		peer, openErr, wake := s.peer, s.openErr, s.wake
		s.mu.Unlock()
		switch {
		case openErr != nil:
			_ = s.sub.Unsubscribe()
			return nil, openErr
		case peer != "":
			return s, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			_ = s.sub.Unsubscribe()
			return nil, fmt.Errorf("transport-nats: open stream to %s: no answer: %w", addr, ctx.Err())
		}
	}
}
