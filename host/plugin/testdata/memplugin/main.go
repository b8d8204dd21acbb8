// Command memplugin is a registry plugin for host/plugin's tests: an in-memory registry
// with TTLs, served with sdk/registry. Environment variables make it misbehave:
//
//	MEMPLUGIN_EXIT=N            exit with status N at once, before the handshake
//	MEMPLUGIN_EXIT_IF_FILE=F    the same with status 3, while the file F exists
//	MEMPLUGIN_HANG=1            never complete the handshake
//	MEMPLUGIN_PROTOCOL=N        speak registry protocol N instead of micro's
//	MEMPLUGIN_CRASH_ON_CALL=N   exit with status 2 during the Nth call after Init
//	MEMPLUGIN_INIT_FAIL=1       fail Init as if the backend were unreachable
//	MEMPLUGIN_WANT_TOKEN=T      fail Init unless the token is T
//	MEMPLUGIN_NO_ELECT=1        serve a registry that cannot elect leaders (no Elector)
//
// It elects leaders in memory. Registering a service named "depose" deposes the leaders of
// the elections named by its node IDs, as a backend that lost a session would.
//
// MEMPLUGIN_PIDFILE=F makes it write its process id to F first.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/registrypb"
	"github.com/microhost/micro/sdk/registry"
	"google.golang.org/grpc"
)

func main() {
	if f := os.Getenv("MEMPLUGIN_PIDFILE"); f != "" {
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "memplugin:", err)
			os.Exit(1)
		}
	}
	if s := os.Getenv("MEMPLUGIN_EXIT"); s != "" {
		code, _ := strconv.Atoi(s)
		fmt.Fprintln(os.Stderr, "memplugin: exiting at once as told")
		os.Exit(code)
	}
	if f := os.Getenv("MEMPLUGIN_EXIT_IF_FILE"); f != "" {
		if _, err := os.Stat(f); err == nil {
			fmt.Fprintln(os.Stderr, "memplugin: exiting at once, since", f, "exists")
			os.Exit(3)
		}
	}
	if os.Getenv("MEMPLUGIN_HANG") != "" {
		select {}
	}
	m := &mem{
		log:       registry.Logger(),
		services:  map[string]map[string]entry{},
		watchers:  map[chan registry.Event]bool{},
		elections: map[string]*election{},
	}
	m.crashOn, _ = strconv.ParseInt(os.Getenv("MEMPLUGIN_CRASH_ON_CALL"), 10, 64)
	if s := os.Getenv("MEMPLUGIN_PROTOCOL"); s != "" {
		v, _ := strconv.ParseUint(s, 10, 32)
		serveVersion(uint(v), m)
		return
	}
	if os.Getenv("MEMPLUGIN_NO_ELECT") != "" {
		registry.Serve(struct{ registry.Registry }{m}) // hides Campaign and Leader
		return
	}
	registry.Serve(m)
}

// serveVersion serves m as a plugin of another protocol version would.
func serveVersion(v uint, m *mem) {
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  v,
			MagicCookieKey:   abi.MagicCookieKey,
			MagicCookieValue: abi.MagicCookieValue,
		},
		Plugins:    goplugin.PluginSet{abi.RegistryPlugin: &grpcPlugin{srv: registry.NewServer(m)}},
		GRPCServer: goplugin.DefaultGRPCServer,
	})
}

type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	srv registrypb.RegistryServer
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	registrypb.RegisterRegistryServer(s, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("server only")
}

type entry struct {
	node    registry.Node
	expires time.Time
}

type mem struct {
	log     *slog.Logger
	calls   atomic.Int64
	crashOn int64

	mu        sync.Mutex
	services  map[string]map[string]entry
	watchers  map[chan registry.Event]bool
	elections map[string]*election
}

// election is the state of one election name.
type election struct {
	leader *leadership   // nil when nobody leads
	free   chan struct{} // closed, and replaced, when the leader goes
}

// leadership is a won Campaign of mem.
type leadership struct {
	m     *mem
	name  string
	value string
	lost  chan struct{}
}

func (l *leadership) Lost() <-chan struct{} { return l.lost }

func (l *leadership) Resign(context.Context) error {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	l.m.deposeLocked(l.name, l)
	return nil
}

// deposeLocked ends the leadership of name if l (or, when l is nil, anyone) holds it.
func (m *mem) deposeLocked(name string, l *leadership) {
	e := m.elections[name]
	if e == nil || e.leader == nil || (l != nil && e.leader != l) {
		return
	}
	close(e.leader.lost)
	e.leader = nil
	close(e.free)
	e.free = make(chan struct{})
}

func (m *mem) Campaign(ctx context.Context, name, value string) (registry.Leadership, error) {
	for {
		m.mu.Lock()
		e := m.elections[name]
		if e == nil {
			e = &election{free: make(chan struct{})}
			m.elections[name] = e
		}
		if e.leader == nil {
			l := &leadership{m: m, name: name, value: value, lost: make(chan struct{})}
			e.leader = l
			m.mu.Unlock()
			m.log.Info("elected", "election", name)
			return l, nil
		}
		free := e.free
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-free:
		}
	}
}

func (m *mem) Leader(_ context.Context, name string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.elections[name]; e != nil && e.leader != nil {
		return e.leader.value, nil
	}
	return "", registry.ErrNoLeader
}

// call counts a call and crashes on the Nth when told to.
func (m *mem) call() {
	if n := m.calls.Add(1); m.crashOn > 0 && n == m.crashOn {
		m.log.Error("crashing as told", "call", n)
		os.Exit(2)
	}
}

func (m *mem) Init(_ context.Context, c registry.Config) error {
	if os.Getenv("MEMPLUGIN_INIT_FAIL") != "" {
		return fmt.Errorf("backend at %q is unreachable", c.Address)
	}
	if want := os.Getenv("MEMPLUGIN_WANT_TOKEN"); want != "" && c.Token != want {
		return errors.New("wrong token")
	}
	m.log.Info("memplugin initialised", "address", c.Address, "datacenter", c.Datacenter,
		"token_set", c.Token != "")
	m.log.Warn("memplugin keeps everything in memory")
	return nil
}

func (m *mem) Register(_ context.Context, s *registry.Service, ttl time.Duration) error {
	m.call()
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.Name == "depose" {
		for _, n := range s.Nodes {
			m.deposeLocked(n.ID, nil)
		}
		return nil
	}
	nodes := m.services[s.Name]
	if nodes == nil {
		nodes = map[string]entry{}
		m.services[s.Name] = nodes
	}
	for _, n := range s.Nodes {
		nodes[n.ID] = entry{node: *n, expires: time.Now().Add(ttl)}
		m.emitLocked(registry.Event{Type: registry.EventUpdate, Service: s.Name, Node: n})
	}
	return nil
}

func (m *mem) Deregister(_ context.Context, s *registry.Service) error {
	m.call()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range s.Nodes {
		if _, ok := m.services[s.Name][n.ID]; ok {
			delete(m.services[s.Name], n.ID)
			m.emitLocked(registry.Event{Type: registry.EventDelete, Service: s.Name, Node: n})
		}
	}
	return nil
}

func (m *mem) liveLocked(name string) *registry.Service {
	now := time.Now()
	s := &registry.Service{Name: name}
	for _, e := range m.services[name] {
		if now.Before(e.expires) {
			n := e.node
			s.Nodes = append(s.Nodes, &n)
		}
	}
	if len(s.Nodes) == 0 {
		return nil
	}
	return s
}

func (m *mem) GetService(_ context.Context, name string) (*registry.Service, error) {
	m.call()
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.liveLocked(name); s != nil {
		return s, nil
	}
	return nil, registry.ErrNotFound
}

func (m *mem) ListServices(context.Context) ([]*registry.Service, error) {
	m.call()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*registry.Service
	for name := range m.services {
		if s := m.liveLocked(name); s != nil {
			out = append(out, s)
		}
	}
	return out, nil
}

func (m *mem) Watch(ctx context.Context, events chan<- registry.Event) error {
	m.call()
	ch := make(chan registry.Event, 64)
	m.mu.Lock()
	m.watchers[ch] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.watchers, ch)
		m.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-ch:
			select {
			case events <- ev:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

func (m *mem) emitLocked(ev registry.Event) {
	for ch := range m.watchers {
		select {
		case ch <- ev:
		default:
			m.log.Warn("watcher too slow; dropping an event", "service", ev.Service)
		}
	}
}
