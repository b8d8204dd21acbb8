package plugin

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/embedded"
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
