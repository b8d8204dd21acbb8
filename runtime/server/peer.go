package server

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/transport"
)

// Peer is who made an inbound call, as its connection proved it: the client certificate
// of a mutual TLS connection. A caller's own claims (a Micro-Caller header) are never
// believed.
type Peer struct {
	// ID is the caller's identity, e.g. "spiffe://micro.local/micro/host-4711"; "" when
	// the connection proved none (security is off).
	ID string
	// Services names the services the caller fronts, from its certificate.
	Services []string
}

// Name is how the app and the wrappers learn the caller (Micro-Caller, wrapper.Call's
// Caller): its services joined by commas, or its ID when it fronts none, or "".
func (p Peer) Name() string {
	if len(p.Services) > 0 {
		return strings.Join(p.Services, ",")
	}
	return p.ID
}

// Identify turns the state of a verified TLS connection into its Peer.
type Identify func(tls.ConnectionState) (Peer, error)

// peerConn is what a connection proved about its caller; prefixConn carries one.
type peerConn interface{ peer() Peer }

func (c *prefixConn) peer() Peer { return c.who }

// PeerOf returns the Peer that conn, or a connection under it, proved; the zero Peer when
// none did.
func PeerOf(conn net.Conn) Peer {
	for conn != nil {
		if pc, ok := conn.(peerConn); ok {
			return pc.peer()
		}
		nc, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		conn = nc.NetConn()
	}
	return Peer{}
}

type peerKey struct{}

// WithPeer returns ctx carrying p, for PeerFrom: how a transport that proves its callers
// its own way (message signatures) tells the inbound who called.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// ConnContext is an http.Server's ConnContext for the inbound's net/http servers: it puts
// the Peer that conn proved in the context of its requests, for PeerFrom.
func ConnContext(ctx context.Context, conn net.Conn) context.Context {
	return WithPeer(ctx, PeerOf(conn))
}

// PeerFrom returns the Peer that ConnContext put in ctx.
func PeerFrom(ctx context.Context) Peer {
	p, _ := ctx.Value(peerKey{}).(Peer)
	return p
}

// peerOfConn returns the Peer of a transport connection: the one its context carries,
// when it has one.
func peerOfConn(conn transport.Conn) Peer {
	if cc, ok := conn.(interface{ Context() context.Context }); ok {
		return PeerFrom(cc.Context())
	}
	return Peer{}
}

// admit checks the access rules of service (Settings.Allow) for caller; it returns the
// 403 to answer when caller may not call service.
func admit(st *Settings, service string, caller Peer) *callerr.Error {
	allow, ok := st.Allow[service]
	if !ok {
		return nil
	}
	for _, s := range caller.Services {
		if slices.Contains(allow, s) {
			return nil
		}
	}
	who := caller.Name()
	if who == "" {
		who = "an unidentified caller (security.mode is off)"
	}
	return callerr.New(InboundID, http.StatusForbidden, "%s may not call service %q: services.%s.allow admits %s", who, service, service, strings.Join(allow, ", "))
}
