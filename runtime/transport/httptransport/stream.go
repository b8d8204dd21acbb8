package httptransport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// upgradeToken is the Upgrade header value that turns a call into a stream.
const upgradeToken = "micro-stream/1"

// ErrFrameTooLarge is wrapped by the errors of a stream Send or Recv whose frame exceeds the
// limits: a header block over Options.MaxHeaderBytes or a body over Options.MaxBody.
var ErrFrameTooLarge = errors.New("httptransport: stream frame too large")

// errRefused is returned by a Send on a stream that the server refused.
var errRefused = errors.New("the server refused the stream; its answer is the stream's only message")

// errMalformed is wrapped by the errors of a stream Recv that read a frame it cannot decode.
var errMalformed = errors.New("httptransport: malformed stream frame")

// frameLimit is the largest frame payload that limits allow.
func frameLimit(maxHeader int, maxBody int64) int64 { return int64(maxHeader) + maxBody }

// appendFrame appends m encoded as one frame to dst:
//
//	frame   = length payload        ; length: 4 bytes, big-endian, of payload
//	payload = count *(key value) body
//	count, and each key and value's length: unsigned varints; body: the rest of payload
//
// It refuses a header that could not travel over HTTP, a header block over maxHeader bytes
// and a body over maxBody bytes.
func appendFrame(dst []byte, m *transport.Message, maxHeader int, maxBody int64) ([]byte, error) {
	if m == nil {
		return dst, errors.New("nil message")
	}
	if n := int64(len(m.Body)); n > maxBody {
		return dst, fmt.Errorf("body of %d bytes exceeds the limit of %d: %w", n, maxBody, ErrFrameTooLarge)
	}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.AppendUvarint(dst, uint64(len(m.Header)))
	for k, v := range m.Header {
		if err := checkHeader(k, v); err != nil {
			return dst[:start], err
		}
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
		dst = binary.AppendUvarint(dst, uint64(len(v)))
		dst = append(dst, v...)
	}
	if n := len(dst) - start - 4; n > maxHeader {
		return dst[:start], fmt.Errorf("header block of %d bytes exceeds the limit of %d: %w", n, maxHeader, ErrFrameTooLarge)
	}
	dst = append(dst, m.Body...)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst, nil
}

// readFrame reads one frame from r and decodes it. A clean end of input before the frame's
// first byte is io.EOF; an end inside a frame is io.ErrUnexpectedEOF.
func readFrame(r io.Reader, maxHeader int, maxBody int64) (*transport.Message, error) {
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(lb[:]))
	if limit := frameLimit(maxHeader, maxBody); n > limit {
		return nil, fmt.Errorf("frame of %d bytes exceeds the limit of %d: %w", n, limit, ErrFrameTooLarge)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("frame of %d bytes: %w", n, err)
	}
	return decodeFrame(p, maxHeader, maxBody)
}

// decodeFrame decodes a frame payload (see appendFrame). The body aliases p.
func decodeFrame(p []byte, maxHeader int, maxBody int64) (*transport.Message, error) {
	rest := p
	uvarint := func(what string) (uint64, error) {
		v, k := binary.Uvarint(rest)
		if k <= 0 {
			return 0, fmt.Errorf("%s: bad varint: %w", what, errMalformed)
		}
		rest = rest[k:]
		return v, nil
	}
	str := func(what string) (string, error) {
		n, err := uvarint(what + " length")
		if err != nil {
			return "", err
		}
		if n > uint64(len(rest)) {
			return "", fmt.Errorf("%s of %d bytes overruns the frame: %w", what, n, errMalformed)
		}
		s := string(rest[:n])
		rest = rest[n:]
		return s, nil
	}
	count, err := uvarint("header count")
	if err != nil {
		return nil, err
	}
	// Each header takes at least two bytes, which bounds count by the frame's size.
	if count > uint64(len(rest))/2 {
		return nil, fmt.Errorf("header count %d overruns the frame: %w", count, errMalformed)
	}
	h := make(map[string]string, min(count, 64))
	for range count {
		k, err := str("header name")
		if err != nil {
			return nil, err
		}
		v, err := str("header " + k + " value")
		if err != nil {
			return nil, err
		}
		if err := checkHeader(k, v); err != nil {
			return nil, fmt.Errorf("%w: %w", err, errMalformed)
		}
		if _, dup := h[k]; dup {
			return nil, fmt.Errorf("header %q repeated: %w", k, errMalformed)
		}
		h[k] = v
	}
	if n := len(p) - len(rest); n > maxHeader {
		return nil, fmt.Errorf("header block of %d bytes exceeds the limit of %d: %w", n, maxHeader, ErrFrameTooLarge)
	}
	if n := int64(len(rest)); n > maxBody {
		return nil, fmt.Errorf("body of %d bytes exceeds the limit of %d: %w", n, maxBody, ErrFrameTooLarge)
	}
	var body []byte
	if len(rest) > 0 {
		body = rest
	}
	return &transport.Message{Header: h, Body: body}, nil
}

// stream carries frames both ways over a connection that left HTTP. One Send and one Recv
// may run at once; Sends serialize with Sends and Recvs with Recvs.
type stream struct {
	nc   net.Conn
	peer string
	opts *Options

	// handshake, when set, runs once under rmu before the first frame is read (the client
	// reads the 101 there). It returns a message to hand to the caller instead of a frame
	// when the peer refused the stream.
	handshake func() (*transport.Message, error)

	rmu  sync.Mutex
	br   *bufio.Reader
	rerr error // sticky: every later Recv returns it

	wmu  sync.Mutex
	bw   *bufio.Writer
	wbuf []byte
	werr error // sticky: every later Send returns it

	refused   atomic.Bool // the peer answered the upgrade with a plain response
	closed    atomic.Bool
	closeOnce sync.Once
}

func newStream(nc net.Conn, br *bufio.Reader, bw *bufio.Writer, peer string, opts *Options) *stream {
	return &stream{nc: nc, br: br, bw: bw, peer: peer, opts: opts}
}

// send writes m as one frame.
func (s *stream) send(ctx context.Context, m *transport.Message) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.usable(s.werr); err != nil {
		return fmt.Errorf("httptransport: stream send to %s: %w", s.peer, err)
	}
	if s.refused.Load() {
		return fmt.Errorf("httptransport: stream send to %s: %w", s.peer, errRefused)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("httptransport: stream send to %s: %w", s.peer, err)
	}
	buf, err := appendFrame(s.wbuf[:0], m, s.opts.MaxHeaderBytes, s.opts.MaxBody)
	if err != nil {
		return fmt.Errorf("httptransport: stream send to %s: %w", s.peer, err)
	}
	if cap(buf) <= 64<<10 {
		s.wbuf = buf
	}
	stop := armStream(ctx, s.nc.SetWriteDeadline)
	if s.closed.Load() { // Close may have moved the deadline before arm reset it
		stop()
		return fmt.Errorf("httptransport: stream send to %s: %w", s.peer, transport.ErrClosed)
	}
	_, err = s.bw.Write(buf)
	if err == nil {
		err = s.bw.Flush()
	}
	stop()
	if err != nil {
		// Part of the frame may be out: the write side cannot be trusted again.
		s.werr = s.ioError(ctx, err)
		return fmt.Errorf("httptransport: stream send to %s: %w", s.peer, s.werr)
	}
	return nil
}

// recv reads the next frame. A clean close by the peer, at a frame boundary, is io.EOF.
func (s *stream) recv(ctx context.Context) (*transport.Message, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if err := s.usable(s.rerr); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("httptransport: stream recv from %s: %w", s.peer, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("httptransport: stream recv from %s: %w", s.peer, err)
	}
	stop := armStream(ctx, s.nc.SetReadDeadline)
	defer stop()
	if s.closed.Load() { // Close may have moved the deadline before arm reset it
		return nil, fmt.Errorf("httptransport: stream recv from %s: %w", s.peer, transport.ErrClosed)
	}
	if hs := s.handshake; hs != nil {
		m, err := hs()
		if err != nil {
			s.rerr = s.ioError(ctx, err)
			return nil, fmt.Errorf("httptransport: stream open to %s: %w", s.peer, s.rerr)
		}
		s.handshake = nil
		if m != nil {
			// Refused: this answer is all the peer will say.
			s.rerr = io.EOF
			return m, nil
		}
	}
	// Wait for the frame's first byte apart, so that a deadline or cancellation before it
	// leaves the stream intact for another Recv.
	if _, err := s.br.Peek(1); err != nil {
		if s.closed.Load() {
			// Close half-closed the socket, and the peer may have closed its end before
			// Close moved the deadline: this is the Close, not the peer's end.
			return nil, fmt.Errorf("httptransport: stream recv from %s: %w", s.peer, transport.ErrClosed)
		}
		if err == io.EOF || errors.Is(err, syscall.ECONNRESET) {
			s.rerr = io.EOF
			return nil, io.EOF
		}
		err = s.ioError(ctx, err)
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			s.rerr = err
		}
		return nil, fmt.Errorf("httptransport: stream recv from %s: %w", s.peer, err)
	}
	m, err := readFrame(s.br, s.opts.MaxHeaderBytes, s.opts.MaxBody)
	if err != nil {
		s.rerr = s.ioError(ctx, err)
		return nil, fmt.Errorf("httptransport: stream recv from %s: %w", s.peer, s.rerr)
	}
	return m, nil
}

func (s *stream) usable(sticky error) error {
	if s.closed.Load() {
		return transport.ErrClosed
	}
	return sticky
}

// ioError makes a deadline or cancellation of ctx, or a Close, visible to errors.Is.
func (s *stream) ioError(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	if _, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	if s.closed.Load() {
		return fmt.Errorf("%w: %w", transport.ErrClosed, err)
	}
	return err
}

// close ends the stream. A Send or Recv in progress fails. The write side closes at once,
// so that the peer reads every frame sent and then a clean end. The socket itself closes
// in the background once the peer has closed its side too, or after streamLinger: closing
// it while the peer's bytes sit unread would reset the connection, and a reset can
// destroy frames the peer has not read yet.
func (s *stream) close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.refused.Load() {
			return // the socket is closed already
		}
		past := time.Unix(1, 0)
		_ = s.nc.SetWriteDeadline(past) // unblock a Send in progress
		s.wmu.Lock()
		cw, ok := s.nc.(interface{ CloseWrite() error })
		if ok {
			err = cw.CloseWrite()
		}
		s.wmu.Unlock()
		if !ok {
			err = s.nc.Close()
			return
		}
		_ = s.nc.SetReadDeadline(past) // unblock a Recv in progress
		go s.linger()
	})
	return err
}

// streamLinger bounds how long a closed stream waits for its peer to close too.
const streamLinger = 5 * time.Second

// linger discards what the peer still sends until it closes, then closes the socket.
func (s *stream) linger() {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	_ = s.nc.SetReadDeadline(time.Now().Add(streamLinger))
	_, _ = io.Copy(io.Discard, s.nc)
	_ = s.nc.Close()
}

// armStream applies ctx's deadline with set (no deadline clears it), and makes ctx's
// cancellation unblock the I/O by moving the deadline to the past. The returned stop waits
// for a cancellation in flight, so that the next operation's deadline is not overwritten.
func armStream(ctx context.Context, set func(time.Time) error) (stop func()) {
	d, _ := ctx.Deadline()
	_ = set(d) // an error here resurfaces as the I/O error
	if ctx.Done() == nil {
		return func() {}
	}
	fired := make(chan struct{})
	stopf := context.AfterFunc(ctx, func() {
		_ = set(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stopf() {
			<-fired
		}
	}
}
