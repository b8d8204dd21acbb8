package plugin

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/embedded"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/transport/httptransport"
)

// mapRegistry is the floor: a service looked up in an in-process map and copied.
type mapRegistry struct {
	mu       sync.RWMutex
	services map[string]*registry.Service
}

func (m *mapRegistry) GetService(_ context.Context, name string) (*registry.Service, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	s, ok := m.services[name]
	if !ok {
		return nil, registry.ErrNotFound
	}
	out := &registry.Service{Name: s.Name, Nodes: make([]*registry.Node, len(s.Nodes))}
	for i, n := range s.Nodes {
		c := *n
		out.Nodes[i] = &c
	}
	return out, nil
}

// BenchmarkGetService compares a GetService round trip through the test plugin (gRPC over
// go-plugin's mTLS unix socket) with an in-process map and with the embedded registry.
func BenchmarkGetService(b *testing.B) {
	ctx := context.Background()
	svc := greeter()
	get := func(b *testing.B, g interface {
		GetService(context.Context, string) (*registry.Service, error)
	}) {
		b.ReportAllocs()
		for b.Loop() {
			s, err := g.GetService(ctx, "greeter")
			if err != nil || len(s.Nodes) != 2 {
				b.Fatal(s, err)
			}
		}
	}
	b.Run("plugin", func(b *testing.B) {
		r, err := OpenRegistry(ctx, Config{Name: "mem", Path: memBin}, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		if err := r.Register(ctx, svc, time.Hour); err != nil {
			b.Fatal(err)
		}
		get(b, r)
	})
	b.Run("map", func(b *testing.B) {
		get(b, &mapRegistry{services: map[string]*registry.Service{"greeter": svc}})
	})
	b.Run("embedded", func(b *testing.B) {
		r, err := embedded.Open(b.TempDir(), embedded.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		if err := r.Register(ctx, svc, time.Hour); err != nil {
			b.Fatal(err)
		}
		get(b, r)
	})
}

// BenchmarkTransportRoundTrip compares a request and its response through two transport
// plugin processes (the test plugin: gRPC to the plugin, TCP between the plugins, gRPC to
// the other micro) with the in-process HTTP transport, in the same run. "plugin" reuses
// one conn for every call; "plugin-dial" dials a conn per call, as a pool that found no
// idle conn would.
func BenchmarkTransportRoundTrip(b *testing.B) {
	ctx := context.Background()
	req := &transport.Message{
		Header: map[string]string{transport.HeaderService: "greeter", transport.HeaderEndpoint: "Greeter.Hello"},
		Body:   []byte(`{"name":"bench","padding":"0123456789012345678901234567890123456789"}`),
	}
	// serve answers every call on l with its request's body, one conn per call or several
	// calls per conn.
	serve := func(b *testing.B, l transport.Listener, perConn bool) {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					for {
						m, err := c.Recv(ctx)
						if err != nil {
							return
						}
						resp := &transport.Message{Header: map[string]string{transport.HeaderStatus: "200"}, Body: m.Body}
						if c.Send(ctx, resp) != nil || perConn {
							return
						}
					}
				}()
			}
		}()
	}
	roundTrip := func(b *testing.B, c transport.Conn) {
		if err := c.Send(ctx, req); err != nil {
			b.Fatal(err)
		}
		m, err := c.Recv(ctx)
		if err != nil || len(m.Body) != len(req.Body) {
			b.Fatal(m, err)
		}
	}
	plugins := func(b *testing.B) (client *Transport, l transport.Listener) {
		log := slog.New(slog.DiscardHandler)
		client, err := OpenTransport(ctx, TransportConfig{Name: "tcp", Path: tcpBin}, log)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { client.Close() })
		server, err := OpenTransport(ctx, TransportConfig{Name: "tcp", Path: tcpBin}, log)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { server.Close() })
		l, err = server.Listen(ctx, "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		return client, l
	}
	b.Run("plugin", func(b *testing.B) {
		client, l := plugins(b)
		serve(b, l, false)
		c, err := client.Dial(ctx, l.Addr())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.ReportAllocs()
		for b.Loop() {
			roundTrip(b, c)
		}
	})
	b.Run("plugin-dial", func(b *testing.B) {
		client, l := plugins(b)
		serve(b, l, true)
		b.ReportAllocs()
		for b.Loop() {
			c, err := client.Dial(ctx, l.Addr())
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
			c.Close()
		}
	})
	b.Run("http", func(b *testing.B) {
		tr := httptransport.New(httptransport.Options{})
		defer tr.Close()
		l, err := tr.Listen(ctx, "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		serve(b, l, true)
		c, err := tr.Dial(ctx, l.Addr())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.ReportAllocs()
		for b.Loop() {
			roundTrip(b, c)
		}
	})
}
