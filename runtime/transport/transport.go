// Package transport defines how micro processes carry calls to each other: a Transport dials
// and listens, and a Conn exchanges Messages (a header map and a body).
//
// A client Conn carries one call at a time: Send a request, then Recv its response; a pool
// above the transport reuses it for the next call. A server Conn, from Listener.Accept,
// carries one call: Recv the request, then Send the response.
//
// A stream is a Conn whose first request carries HeaderStream = "1". After that first
// message, both sides Send and Recv any number of messages in either direction, in any
// order, until one side closes the Conn; the other side's Recv then returns io.EOF. A side
// that ends the stream because of a failure sends a last message with HeaderStatus set
// (and a JSON error body) before it closes. A stream Conn is never pooled.
package transport

import (
	"context"
	"errors"
	"fmt"
	"github.com/microhost/micro/abi"
	"net"
	"net/url"
	"strings"
)

// Header keys that every transport carries, as abi defines and documents them. Other keys
// pass through as they are.
const (
	HeaderService    = abi.HeaderService
	HeaderEndpoint   = abi.HeaderEndpoint
	HeaderMethod     = abi.HeaderMethod
	HeaderPath       = abi.HeaderPath
	HeaderNode       = abi.HeaderNode
	HeaderTimeout    = abi.HeaderTimeout
	HeaderStatus     = abi.HeaderStatus
	HeaderCaller     = abi.HeaderCaller
	HeaderStream     = abi.HeaderStream
	HeaderBinary     = abi.HeaderBinary
	HeaderError      = abi.HeaderError
	HeaderIdempotent = abi.HeaderIdempotent
	HeaderAttempts   = abi.HeaderAttempts
)

// ValueSep joins the values of a header that has several (Set-Cookie, say) in a Message's
// Header (abi.ValueSep).
const ValueSep = abi.ValueSep

// AddValue adds value v to header k of h, after the values it has.
func AddValue(h map[string]string, k, v string) {
	if old, ok := h[k]; ok {
		h[k] = old + ValueSep + v
		return
	}
	h[k] = v
}

// The values of HeaderError.
const (
	// ErrorRefused: micro refused the call before any app saw it, for a reason of its own
	// (no capacity, a server wrapper refused the node, the budget was spent on arrival).
	// Another node may take it; the node is not at fault.
	ErrorRefused = "refused"
	// ErrorUnavailable: no app at the node could take the call (no ready instance, or the
	// app refused the connection), so none saw it. Another node may take it; the node is
	// at fault.
	ErrorUnavailable = "unavailable"
	// ErrorApp: the app failed the call after it may have begun it (it broke the
	// connection, or gave no usable answer). The node is at fault; only a call that is safe
	// to repeat may go to another node.
	ErrorApp = "app"
	// ErrorTimeout: the app gave no answer within the call's budget.
	ErrorTimeout = "timeout"
	// ErrorReply: the app answered, but micro could not pass the answer on (it exceeds
	// server.max_body). Only a call that is safe to repeat may go to another node; the
	// node is not at fault.
	ErrorReply = "reply"
	// ErrorCaller: the request itself is at fault (bad input, or a server wrapper refused
	// it with a 4xx), or its caller went away. No other node would do better, and the node
	// is not at fault.
	ErrorCaller = "caller"
	// ErrorInternal: micro at the node failed while serving the call (a bug, logged there).
	// The app may have seen the call; the node is not at fault.
	ErrorInternal = "internal"
)

// IsMicroHeader reports whether the header name k is one of micro's own, Micro-*, in any
// case. micro sets those itself and drops the ones that callers and apps send, but for the
// few a caller may set (HeaderTimeout, HeaderIdempotent).
func IsMicroHeader(k string) bool {
	return len(k) >= len(abi.HeaderPrefix) && strings.EqualFold(k[:len(abi.HeaderPrefix)], abi.HeaderPrefix)
}

// ErrClosed is returned by operations on a closed Conn or Listener.
var ErrClosed = errors.New("transport: closed")

// Message is one request or response. Header holds one entry per header name; a header
// with several values has them joined by ValueSep.
type Message struct {
	Header map[string]string
	Body   []byte
}

// Conn is a connection between two micro processes.
type Conn interface {
	// Send writes m. It honours ctx's deadline and cancellation.
	Send(ctx context.Context, m *Message) error
	// Recv reads the next message. It honours ctx's deadline and cancellation.
	Recv(ctx context.Context) (*Message, error)
	// Close releases the connection. A Send or Recv in progress returns an error.
	Close() error
}

// Listener accepts server Conns.
type Listener interface {
	// Accept waits for the next call. It returns ErrClosed after Close.
	Accept() (Conn, error)
	// Addr is the address the listener is bound to, as host:port.
	Addr() string
	// Close stops accepting; Conns already accepted stay usable.
	Close() error
}

// Transport dials and listens.
type Transport interface {
	// Dial connects to a Listener at addr.
	Dial(ctx context.Context, addr string) (Conn, error)
	// Listen binds addr (host:port; port 0 picks one) and accepts calls on it.
	Listen(ctx context.Context, addr string) (Listener, error)
	// Close releases what the transport holds. Conns it made may fail afterwards.
	Close() error
}

// IsConnectError reports whether err means the call never reached the peer, so that trying
// another node is always safe.
func IsConnectError(err error) bool {
	var ce *ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// MessageError is what Send returns for a message that cannot be sent because of what it
// holds (a bad header, a body over the limit). Nothing was sent and the Conn stays usable;
// any peer would refuse the message alike.
type MessageError struct{ Err error }

func (e *MessageError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *MessageError) Unwrap() error { return e.Err }

// ConnectError wraps a failure to reach a peer.
type ConnectError struct {
	Addr string
	Err  error
}

func (e *ConnectError) Error() string { return "connect " + e.Addr + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *ConnectError) Unwrap() error { return e.Err }

// ParseTarget splits the escaped path of a call, /{service}/{path...}, and its raw query
// into the service, the endpoint (the first segment of the path after the service, "" when
// there is none) and the target the app gets: the escaped path after the service (at
// least "/") and the query. Service and endpoint are unescaped, and refused when they hold
// a control character, which could not travel on as a header value.
func ParseTarget(escapedPath, rawQuery string) (service, endpoint, target string, err error) {
	rest, ok := strings.CutPrefix(escapedPath, "/")
	if !ok || strings.ContainsRune(escapedPath, '?') {
		return "", "", "", fmt.Errorf("path %.64q: want /{service}/{path}, escaped", escapedPath)
	}
	s, after, _ := strings.Cut(rest, "/")
	if s == "" {
		return "", "", "", fmt.Errorf("path %.64q: want /{service}/{path}", escapedPath)
	}
	if service, err = unescapeSegment(s); err != nil {
		return "", "", "", fmt.Errorf("path %.64q: service: %w", escapedPath, err)
	}
	e, _, _ := strings.Cut(after, "/")
	if endpoint, err = unescapeSegment(e); err != nil {
		return "", "", "", fmt.Errorf("path %.64q: endpoint: %w", escapedPath, err)
	}
	target = "/" + after
	if rawQuery != "" {
		target += "?" + rawQuery
	}
	if strings.IndexFunc(target, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
		return "", "", "", fmt.Errorf("path %.64q: control character", escapedPath)
	}
	if strings.ContainsAny(target, "# ") {
		return "", "", "", fmt.Errorf("target %.64q: a space or '#' must be escaped", target)
	}
	return service, endpoint, target, nil
}

// unescapeSegment unescapes one path segment and refuses control characters, which could
// not travel on as header values.
func unescapeSegment(s string) (string, error) {
	u, err := url.PathUnescape(s)
	if err != nil {
		return "", err
	}
	for i := 0; i < len(u); i++ {
		if c := u[i]; c < ' ' || c == 0x7f {
			return "", fmt.Errorf("control character %q", c)
		}
	}
	return u, nil
}
