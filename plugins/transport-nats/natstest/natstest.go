// Package natstest runs a real NATS server for tests, in the test's own process
// (github.com/nats-io/nats-server/v2), on a free loopback port. Stop and Restart bring it
// down and back up on the same port, so that clients reconnect to the same URL; the server
// is shut down when the test ends. WithJetStream turns JetStream on, with a store that
// survives Restart.
//
// By default anyone may connect, in clear text. WithTLS requires TLS (and, if asked,
// client certificates) from a CA that NewCA makes; WithNkeyUser, WithUser and WithToken
// admit only clients that authenticate so; WithOperator runs the server in operator (JWT)
// mode, whose users Creds issues as .creds files. Every setting survives Restart.
package natstest

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// readyTimeout is how long a server may take to accept connections after it starts.
const readyTimeout = 10 * time.Second

// Server is a running (or stopped) in-process NATS server.
type Server struct {
	// URL is the server's client URL, e.g. "nats://127.0.0.1:41234". It stays the same
	// across Stop and Restart.
	URL string
	// Port is the TCP port of URL.
	Port int

	t        testing.TB
	maxBytes int32
	storeDir string // JetStream's store; "" runs without JetStream

	tls        *CA  // nil: no TLS
	tlsVerify  bool // require client certificates from tls
	nkeyUsers  []*server.NkeyUser
	users      []*server.User
	token      string
	operator   nkeys.KeyPair // nil: not in operator mode
	account    nkeys.KeyPair // the operator's account for users
	accountJWT string
	system     nkeys.KeyPair // the operator's system account
	systemJWT  string

	mu  sync.Mutex
	srv *server.Server // nil while stopped
}

// Option changes how Start runs the server.
type Option func(*Server)

// WithMaxPayload sets the server's max_payload (the largest message it accepts, in bytes;
// NATS's default is 1 MiB).
func WithMaxPayload(n int32) Option {
	return func(s *Server) { s.maxBytes = n }
}

// WithJetStream runs the server with JetStream on, storing streams as files in storeDir
// (a t.TempDir(), say). The directory outlives Stop, so that Restart brings back every
// stream, consumer and message the server had stored.
func WithJetStream(storeDir string) Option {
	return func(s *Server) { s.storeDir = storeDir }
}

// Start runs a NATS server on a free port of 127.0.0.1 and registers its shutdown with
// t.Cleanup. It fails t if the server does not start.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{t: t}
	for _, o := range opts {
		o(s)
	}
	if s.operator != nil {
		if err := s.makeAccount(); err != nil {
			t.Fatalf("natstest: %v", err)
		}
	}
	srv, err := s.run(-1)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	addr, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		srv.Shutdown()
		t.Fatalf("natstest: server address %v is not TCP", srv.Addr())
	}
	s.Port = addr.Port
	s.URL = "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
	s.srv = srv
	t.Cleanup(s.Stop)
	return s
}

// run starts a server on port (-1 for a free one) and waits until it accepts connections.
func (s *Server) run(port int) (*server.Server, error) {
	o := &server.Options{
		Host:       "127.0.0.1",
		Port:       port,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: s.maxBytes,
		JetStream:  s.storeDir != "",
		StoreDir:   s.storeDir,
	}
	if err := s.secure(o); err != nil {
		return nil, err
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("new server on port %d: %w", port, err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("server on port %d not ready within %v", port, readyTimeout)
	}
	return srv, nil
}

// Stop shuts the server down and waits until it has stopped; its clients see the
// connection drop. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart starts the server again on the same port, after Stop (it calls Stop first if
// the server runs). It fails the test if the port cannot be bound again within a few
// seconds.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(readyTimeout)
	for {
		srv, err := s.run(s.Port)
		if err == nil {
			s.srv = srv
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("natstest: restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the old listener's port may linger briefly
	}
}
