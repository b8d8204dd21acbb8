// Package registry defines how micro finds services: the Registry interface that every
// registry implements (the embedded default and the plugins alike), and the records it holds.
package registry

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by GetService when no live node of the service is registered.
var ErrNotFound = errors.New("service not found")

// Node is one instance of a service: the address where a micro inbound server accepts calls
// for it, and what the selector filters on.
type Node struct {
	// ID is unique across the registry, e.g. "greeter-host-4711-1".
	ID string `json:"id"`
	// Address is host:port of the inbound server that fronts this node.
	Address string `json:"address"`
	// Version of the service this node runs, e.g. "1.0.0".
	Version string `json:"version,omitempty"`
	// Metadata holds labels such as zone=a.
	Metadata map[string]string `json:"metadata,omitempty"`
	// Endpoints this node serves, e.g. "Greeter.Hello". Empty means any endpoint.
	Endpoints []string `json:"endpoints,omitempty"`
	// Idempotent lists the endpoints the service declares safe to repeat: a call to one of
	// them may be retried on another node even when it may have reached the app.
	Idempotent []string `json:"idempotent,omitempty"`
}

// Service is a named service and its live nodes.
type Service struct {
	Name  string  `json:"name"`
	Nodes []*Node `json:"nodes"`
}

// EventType says what happened to a node.
type EventType int

// The kinds of Event.
const (
	// EventUpdate means a node was registered or its record changed.
	EventUpdate EventType = iota + 1
	// EventDelete means a node was deregistered or expired.
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventUpdate:
		return "update"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event reports a change to one service. Consumers treat it as a hint: a cache refetches the
// named service rather than trusting the event alone.
type Event struct {
	Type    EventType
	Service string
	// Node is the node that changed, when the registry knows it.
	Node *Node
}

// Watcher delivers registry events until it is stopped or its context ends.
type Watcher interface {
	// Next blocks until the next event, or returns an error when the watch ends.
	Next() (Event, error)
	// Stop ends the watch; a blocked Next returns.
	Stop()
}

// Registry is where services announce their nodes and where callers find them.
// Implementations are safe for concurrent use.
type Registry interface {
	// Register adds or refreshes the nodes of s. Each node expires ttl after its last
	// Register unless it is registered again; callers heartbeat by calling Register
	// well within ttl.
	Register(ctx context.Context, s *Service, ttl time.Duration) error
	// Deregister removes the nodes of s at once.
	Deregister(ctx context.Context, s *Service) error
	// GetService returns the live nodes of the named service, or ErrNotFound.
	GetService(ctx context.Context, name string) (*Service, error)
	// ListServices returns every service with at least one live node.
	ListServices(ctx context.Context) ([]*Service, error)
	// Watch reports changes to any service until ctx ends or the Watcher is stopped.
	Watch(ctx context.Context) (Watcher, error)
	// Close releases the registry's resources. It does not deregister anything.
	Close() error
}

// ErrNoLeader is returned by Elector.Leader when no candidate leads the name.
var ErrNoLeader = errors.New("no leader elected")

// Elector is a registry that can elect one leader among the candidates for a name: Consul
// through a session's lock on a key, the embedded registry through a lock file. A leader
// that dies (its process, or its session's TTL) loses its leadership, so that another
// candidate takes over.
type Elector interface {
	// Campaign blocks until this candidate leads name, or ctx ends. value is what the
	// others read through Leader while it leads (e.g. the leader's node ID and address).
	Campaign(ctx context.Context, name, value string) (Leadership, error)
	// Leader returns the value of name's current leader, or ErrNoLeader.
	Leader(ctx context.Context, name string) (string, error)
}

// Leadership is a won Campaign.
type Leadership interface {
	// Lost is closed when the leadership ends: it was lost (the lock or session went
	// away) or given up with Resign.
	Lost() <-chan struct{}
	// Resign gives the leadership up, so that another candidate may take it.
	Resign(ctx context.Context) error
}
