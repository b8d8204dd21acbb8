// Package transport is what a transport plugin is written against: implement Transport, and
// call Serve from main. micro starts the plugin as a subprocess and carries its calls
// between micro processes through it (see abi/transportpb).
//
// A transport moves Messages. A client Conn from Dial carries one call at a time: Send the
// request, Recv the response; micro pools it for later calls. A server Conn from
// Listener.Accept carries one call: Recv the request, Send the response (once).
//
// A backend may deliver more than one reply to a request: on NATS, a client that
// subscribes to the listener's subject sees the request and can answer before the
// listener. A client Conn then returns every reply, in the order they came: Recv returns
// the first, and a further Recv before the next Send returns the next reply to the same
// request, waiting until its ctx ends. micro signs its requests with a fresh nonce and
// skips a reply that is not signed by a micro over it, so it must see the listener's
// reply as well as a forged one. A transport may bound how many replies it returns per
// request (a few, such as 8) and drop the rest. The next Send, and Close, retire the
// request: a reply to it that Recv has not returned, or that comes later, is never
// returned for a later request.
//
// A stream, opened by a first message carrying HeaderStream, sends any number of messages
// each way on one Conn until a side closes it; the other side's Recv then returns io.EOF.
package transport

import (
	"context"

	"github.com/microhost/micro/abi"
)

// HeaderStream marks the first message of a stream (value "1"; abi.HeaderStream). A
// transport that cannot carry streams refuses such a message.
const HeaderStream = abi.HeaderStream

// ValueSep joins the values of a header that has several (Set-Cookie, say) in a Message's
// Header (abi.ValueSep). A transport whose own headers cannot hold a line feed splits the
// value there and joins it back.
const ValueSep = abi.ValueSep

// Message is one request or response: a header map and a body. A header with several
// values has them joined by ValueSep.
type Message struct {
	Header map[string]string
	Body   []byte
}

// Conn is one connection between two micro processes.
type Conn interface {
	// Send writes m; it honours ctx. On a client Conn that carries calls, m is the
	// request of the next call, and the previous request's replies are no longer returned.
	Send(ctx context.Context, m *Message) error
	// Recv reads the next message; it honours ctx. On a client Conn that carries calls,
	// that is the next reply to the request Send sent last, which may follow other
	// replies to it (see the package comment); Recv before Send waits for the request.
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

// Config is the plugin's part of micro.toml's [transport] section. Secrets reach the
// plugin as the paths of files it reads, never as values. A plugin refuses a setting its
// backend has no use for, rather than ignoring it.
type Config struct {
	// URL of the backend, e.g. "nats://127.0.0.1:4222", or "" for the plugin's default.
	URL string

	// CredentialsFile is a NATS credentials file (.creds: a user JWT and its nkey seed);
	// "" for none. The plugin reads it, at every connect, and never logs what it holds.
	CredentialsFile string
	// NkeySeedFile holds a user nkey seed ("SU…"), for a server that lists the user's
	// public nkey; "" for none.
	NkeySeedFile string
	// TokenFile holds the backend's token; "" for none.
	TokenFile string
	// User names the backend user that PasswordFile authenticates; "" for none.
	User string
	// PasswordFile holds User's password; set with User, or neither.
	PasswordFile string
	// TLSCAFile is a PEM bundle of the CAs that verify the backend's certificate; ""
	// means the system's roots. Setting it requires TLS.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the PEM certificate and key the plugin shows the
	// backend (mutual TLS); both or neither. Setting them requires TLS.
	TLSCertFile, TLSKeyFile string
	// TLSRequired requires TLS even when URL does not ask for it (NATS: a nats:// URL; a
	// tls:// URL always requires it).
	TLSRequired bool
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
