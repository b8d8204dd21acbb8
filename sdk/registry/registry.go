// Package registry is what a registry plugin is written against: implement Registry (and
// Elector, for leader election), and call Serve from main. micro starts the plugin as a subprocess and talks to it over
// go-plugin's gRPC channel (see abi/registrypb).
package registry

import (
	"context"
	"time"
)

// Node is one instance of a service.
type Node struct {
	ID        string
	Address   string
	Version   string
	Metadata  map[string]string
	Endpoints []string
	// Idempotent lists the endpoints that are safe to repeat on another node.
	Idempotent []string
}

// Service is a named service and its live nodes.
type Service struct {
	Name  string
	Nodes []*Node
}

// EventType says what happened to a node.
type EventType int

// The kinds of Event; they match runtime/registry's.
const (
	EventUpdate EventType = iota + 1
	EventDelete
)

// Event reports a change to one service. micro treats it as a hint and refetches the
// service.
type Event struct {
	Type    EventType
	Service string
	// Node is the changed node, when known.
	Node *Node
}

// Config is the plugin's part of micro.toml's [registry] section.
type Config struct {
	// Address of the backend, or "" for the plugin's default.
	Address string
	// Datacenter, or "".
	Datacenter string
	// Token for the backend, or "" for the plugin's default. Never log it.
	Token string
}

// Registry is a registry backend. Methods are called concurrently.
type Registry interface {
	// Init configures the plugin and checks that its backend answers. micro keeps using
	// its old registry when Init fails.
	Init(ctx context.Context, c Config) error
	// Register adds or refreshes the nodes of s; each expires ttl after its last Register.
	Register(ctx context.Context, s *Service, ttl time.Duration) error
	// Deregister removes the nodes of s.
	Deregister(ctx context.Context, s *Service) error
	// GetService returns the live nodes of a service, or ErrNotFound.
	GetService(ctx context.Context, name string) (*Service, error)
	// ListServices returns every service with a live node.
	ListServices(ctx context.Context) ([]*Service, error)
	// Watch sends changes on events until ctx ends, then returns ctx's error; it returns
	// another error when the backend fails, and micro calls it again.
	Watch(ctx context.Context, events chan<- Event) error
}

// ErrNotFound is returned by GetService for a service with no live node.
var ErrNotFound = errNotFound{}

type errNotFound struct{}

func (errNotFound) Error() string { return "service not found" }

// Elector is what a Registry implements, besides Registry, to elect leaders: one candidate
// leads a name at a time, e.g. one master among the instances of a service. It mirrors
// micro's runtime/registry.Elector. A Registry without it answers micro's Campaign and
// Leader with UNIMPLEMENTED, and micro reports that the plugin cannot elect leaders.
//
// micro calls Campaign for each candidate and keeps the call's gRPC stream open while the
// candidate leads: the stream ends when Lost is closed, and micro cancels it to resign, at
// which the server calls Resign. A leader whose plugin process dies must lose its
// leadership to another candidate without help, e.g. when a session's TTL runs out.
type Elector interface {
	// Campaign blocks until this candidate leads name, or ctx ends. value is what Leader
	// returns while it leads. Names of 1 to 128 bytes of [A-Za-z0-9._-], and values of up
	// to 4 KiB of UTF-8, should work; an error for a name or value that the backend cannot
	// hold should name it.
	Campaign(ctx context.Context, name, value string) (Leadership, error)
	// Leader returns the value of name's current leader, or ErrNoLeader.
	Leader(ctx context.Context, name string) (string, error)
}

// Leadership is a won Campaign.
type Leadership interface {
	// Lost is closed when the leadership ends: it was lost (the backend's lock or session
	// went away) or given up with Resign.
	Lost() <-chan struct{}
	// Resign gives the leadership up, so that another candidate may take it.
	Resign(ctx context.Context) error
}

// ErrNoLeader is returned by Elector.Leader when no candidate leads the name.
var ErrNoLeader = errNoLeader{}

type errNoLeader struct{}

func (errNoLeader) Error() string { return "no leader elected" }
