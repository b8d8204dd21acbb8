// Package transport is what a transport plugin is written against: implement Transport, and
// call Serve from main. micro starts the plugin as a subprocess and carries its calls
// between micro processes through it (see abi/transportpb).
//
// A transport moves Messages. A client Conn from Dial carries one call at a time: Send the
// request, Recv the response; micro pools it for later calls. A server Conn from
// Listener.Accept carries one call: Recv the request, Send the response. A stream, opened
// by a first message carrying HeaderStream, sends any number of messages each way on one
// Conn until a side closes it; the other side's Recv then returns io.EOF.
package transport

import "context"

// HeaderStream marks the first message of a stream (value "1"), as runtime/transport
// defines it. A transport that cannot carry streams refuses such a message.
const HeaderStream = "Micro-Stream"

// ValueSep joins the values of a header that has several (Set-Cookie, say) in a Message's
// Header, as runtime/transport defines it. HTTP allows no line feed in a header value, so a
// transport whose own headers cannot hold one splits the value there and joins it back.
const ValueSep = "\n"

// Message is one request or response: a header map and a body. A header with several
// values has them joined by ValueSep.
type Message struct {
	Header map[string]string
	Body   []byte
}

// Conn is one connection between two micro processes.
type Conn interface {
	// Send writes m; it honours ctx.
	Send(ctx context.Context, m *Message) error
	// Recv reads the next message; it honours ctx.
	Recv(ctx context.Context) (*Message, error)
	// Close releases the connection.
	Close() error
}

// Listener accepts server Conns.
type Listener interface {
	// Accept waits for the next call, until ctx ends or the listener is closed.
	Accept(ctx context.Context) (Conn, error)
	// Addr is the address other micro processes dial to reach this listener; micro
	// registers it as its nodes' address.
	Addr() string
	// Close stops accepting.
	Close() error
}

// Config is the plugin's part of micro.toml's [transport] section.
type Config struct {
	// URL of the backend, e.g. "nats://127.0.0.1:4222", or "" for the plugin's default.
	URL string
}

// Transport is a transport backend. Methods are called concurrently.
type Transport interface {
	// Init configures the plugin and checks that its backend answers.
	Init(ctx context.Context, c Config) error
	// Dial connects to the listener at addr (an address a Listener's Addr returned).
	Dial(ctx context.Context, addr string) (Conn, error)
	// Listen starts accepting calls. addr is micro's server.inbound setting; a transport
	// that has no use for it (NATS picks a subject) may ignore it.
	Listen(ctx context.Context, addr string) (Listener, error)
}
