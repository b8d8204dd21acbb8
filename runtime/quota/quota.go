// Package quota splits global rate limits among the micros that share them, as YouTube's
// Doorman does: a quota server holds each resource's capacity (calls per second, across all
// micros) and hands each micro a lease, a share of that capacity for a limited time. Micros
// ask for what they need (wants), report what they hold (has), renew before their lease
// ends, and give back what they no longer use.
//
// Shares are fair: while the wants of a resource's clients fit its capacity, each gets what
// it asks; when they do not, the capacity is split max-min fairly (water-filling). A grant
// never makes the sum of outstanding grants exceed the capacity, even while other clients
// still hold more than their new fair share: it waits for them to give it back.
//
// The parts:
//   - the wire protocol (Request, Response, Refusal): JSON, the body of a call to the quota
//     service's "lease" endpoint;
//   - Server: the pure logic of one master, with an injectable clock;
//   - Service: what a micro that serves quota runs; its instances elect one master through
//     the registry, and the others redirect clients to it. A new master learns what the
//     clients hold from their renewals (learning mode) before it hands out more, so that a
//     change of master never lets the total exceed a capacity;
//   - Client: one per micro, the wrapper.Leases that rate-limit wrappers ask; it renews
//     leases in the background and never blocks them.
package quota

import "time"

// ID names the quota service in the errors it answers with.
const ID = "micro.quota"

// Endpoint is the endpoint of the quota service that serves leases.
const Endpoint = "lease"

// Bounds of the wire protocol. A request beyond them is refused with a 400.
const (
	// MaxResources bounds the resources of one request, and the resources one Client
	// asks about.
	MaxResources = 256
	// MaxNameLen bounds the length of a resource name or a client ID, in bytes.
	MaxNameLen = 128
	// MaxRate bounds wants, has, grants and capacities, in calls per second.
	MaxRate = 1e12
	// MaxRequestBytes bounds the body of a request.
	MaxRequestBytes = 128 << 10
	// MaxAnswerBytes bounds the body of an answer that a Client accepts.
	MaxAnswerBytes = 512 << 10
)

// Defaults of ServerOptions.
const (
	// DefaultLease is how long a grant holds.
	DefaultLease = 10 * time.Second
	// DefaultRefresh is how often clients are asked to renew.
	DefaultRefresh = 2 * time.Second
	// DefaultMaxClients bounds the clients of one resource.
	DefaultMaxClients = 10000
)

// validName reports whether s is a valid resource name or client ID: 1 to MaxNameLen bytes
// of [A-Za-z0-9._-].
func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
