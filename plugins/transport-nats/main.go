// Command transport-nats is micro's NATS transport plugin: micro starts it as a go-plugin
// subprocess when micro.toml says
//
//	[transport]
//	plugin = "nats"
//	url = "nats://127.0.0.1:4222"
//
// It carries micro's calls between micro processes as NATS requests (github.com/nats-io/nats.go),
// so that the processes need no direct connection, only a shared NATS server. Each listener
// subscribes to a subject of its own, "micro.inbound.<NUID>", and micro registers its nodes
// at the address "nats:micro.inbound.<NUID>". A call publishes the request to that subject
// with the message's headers as NATS headers, its body as the payload and a fresh reply
// subject of the client conn's own; the reply carries the response the same way. The
// client conn hands micro every reply to the request (up to 8), not only the first, so
// that micro, which checks that a reply is signed by a micro, can skip one forged by a NATS
// client that answered first. A call to a subject nobody listens on fails at once with a
// connect error ("no responders"). The connection to NATS comes back by itself after the server
// restarts; calls made meanwhile wait in a reconnect buffer until their budget ends.
// Messages larger than the server's max_payload (1 MiB by default) are refused with an
// error that says so. A URL's password is never logged. Credentials (a .creds file, an
// nkey seed, a token or a password) and TLS (a CA bundle, a client certificate for mutual
// TLS, tls_required) come from files that micro.toml names; see plugins/internal/natsauth
// and the README, which also lists the NATS permissions a micro needs.
//
// A stream (a first message with Micro-Stream: 1) runs on two inboxes, one per side: the
// client publishes the first message with its inbox as the reply subject and waits, within
// that Send's ctx, for the accepted conn's acknowledgement, whose reply subject is the
// server's inbox; after that each side publishes to the other's inbox, with credit-based
// flow control (a 4 MiB window each way) so that NATS never drops a message for a slow
// reader, and Close publishes an end marker, on which the peer's Recv returns io.EOF. See
// stream.go and the README.
package main

import "github.com/microhost/micro/sdk/transport"

func main() { transport.Serve(newNATS(transport.Logger())) }
