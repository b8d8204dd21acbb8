package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
//   - The client's first Send waits for the acknowledgement (within that Send's ctx: the
//     caller's budget for opening the stream); a listener that is not there shows as a
//     connect error (NATS's "no responders"). After that the client sends to the server
//     inbox.
//   - Close publishes an end marker (header Micro-Nats-Stream: end, empty body) to the
//     peer's inbox and unsubscribes; the peer's Recv then returns io.EOF.
//
// The control header's key starts with headerEscape, which no Message header can have on
// the wire (escapeKey escapes such keys), so control messages are never confused with the
// caller's. NATS core has no flow control: a receiver that falls more than its
// subscription's pending limits behind loses messages, and its Recv then fails.
const (
	ctlHeader = headerEscape + "Stream"
	ctlAck    = "ack"
	ctlEnd    = "end"
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

// stream is one side of an open stream: where it receives (sub) and where it sends (peer).
type stream struct {
	nc   *nats.Conn
	addr string // the listener's address, for errors
	sub  *nats.Subscription

	mu     sync.Mutex
	peer   string // the peer's inbox
	ended  bool   // the peer's end marker was received
	closed bool
}

// send publishes msg to the peer's inbox.
func (s *stream) send(msg *nats.Msg) error {
	s.mu.Lock()
	peer, closed, ended := s.peer, s.closed, s.ended
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("transport-nats: stream send to %s: %w", s.addr, net.ErrClosed)
	}
	if ended {
		return fmt.Errorf("transport-nats: stream send to %s: the peer closed the stream: %w", s.addr, net.ErrClosed)
	}
	msg.Subject = peer
	if err := checkSize(s.nc, msg); err != nil {
		return err
	}
	if err := s.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("transport-nats: stream send to %s: %w", s.addr, err)
	}
	return nil
}

// recv returns the next message from the peer, io.EOF once the peer has closed, until ctx
// ends.
func (s *stream) recv(ctx context.Context) (*nats.Msg, error) {
	for {
		s.mu.Lock()
		ended, closed := s.ended, s.closed
		s.mu.Unlock()
		if ended {
			return nil, io.EOF
		}
		if closed {
			return nil, fmt.Errorf("transport-nats: stream receive from %s: %w", s.addr, net.ErrClosed)
		}
		msg, err := s.sub.NextMsgWithContext(ctx)
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			switch {
			case closed || errors.Is(err, nats.ErrBadSubscription):
				return nil, fmt.Errorf("transport-nats: stream receive from %s: %w", s.addr, net.ErrClosed)
			case ctx.Err() != nil:
				return nil, fmt.Errorf("transport-nats: stream receive from %s: %w", s.addr, ctx.Err())
			case errors.Is(err, nats.ErrSlowConsumer):
				return nil, fmt.Errorf("transport-nats: stream receive from %s: messages were lost (the receiver fell behind): %w", s.addr, err)
			}
			return nil, fmt.Errorf("transport-nats: stream receive from %s: %w", s.addr, err)
		}
		switch msg.Header.Get(ctlHeader) {
		case ctlEnd:
			s.mu.Lock()
			s.ended = true
			s.mu.Unlock()
			return nil, io.EOF
		case ctlAck:
			continue // a repeated acknowledgement carries nothing
		}
		if isNoResponders(msg) {
			// The server's acknowledgement found no client: it has gone.
			s.mu.Lock()
			s.ended = true
			s.mu.Unlock()
			return nil, fmt.Errorf("transport-nats: stream %s: the peer has gone: %w", s.addr, nats.ErrNoResponders)
		}
		return msg, nil
	}
}

// close sends the end marker to the peer (if it is known and has not ended the stream
// itself) and unsubscribes. It is safe to call more than once.
func (s *stream) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	peer, ended := s.peer, s.ended
	s.mu.Unlock()
	var err error
	if peer != "" && !ended {
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
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("transport-nats: accept stream on %s: %w", addr, err)
	}
	s := &stream{nc: nc, addr: addr, sub: sub, peer: req.Reply}
	if err := nc.PublishMsg(ctlMsg(req.Reply, inbox, ctlAck)); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("transport-nats: accept stream on %s: %w", addr, err)
	}
	return s, nil
}

// openStream opens a stream to subject with first as its first message, and waits until
// ctx ends for the listener to acknowledge it.
func openStream(ctx context.Context, nc *nats.Conn, addr string, first *nats.Msg) (*stream, error) {
	if err := checkSize(nc, first); err != nil {
		return nil, err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, &connectError{addr: addr, err: err}
	}
	first.Reply = inbox
	if err := nc.PublishMsg(first); err != nil {
		_ = sub.Unsubscribe()
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrReconnectBufExceeded) {
			return nil, &connectError{addr: addr, err: err}
		}
		return nil, fmt.Errorf("transport-nats: open stream to %s: %w", addr, err)
	}
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			_ = sub.Unsubscribe()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("transport-nats: open stream to %s: no answer: %w", addr, ctx.Err())
			}
			if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
				return nil, &connectError{addr: addr, err: err}
			}
			return nil, fmt.Errorf("transport-nats: open stream to %s: %w", addr, err)
		}
		if isNoResponders(msg) {
			_ = sub.Unsubscribe()
			return nil, &connectError{addr: addr, err: nats.ErrNoResponders}
		}
		if msg.Header.Get(ctlHeader) == ctlAck && msg.Reply != "" {
			return &stream{nc: nc, addr: addr, sub: sub, peer: msg.Reply}, nil
		}
		// Anything else before the acknowledgement is not ours: ignore it.
	}
}
