package registry_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/microhost/micro/abi/registrypb"
	"github.com/microhost/micro/sdk/registry"
)

// memory is a registry plugin's backend kept in memory: a map of services. A real plugin
// talks to its backend (Consul, etcd, ...) in these methods.
type memory struct {
	mu       sync.Mutex
	services map[string]*registry.Service
}

func (m *memory) Init(ctx context.Context, c registry.Config) error { return nil }

func (m *memory) Register(ctx context.Context, s *registry.Service, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.services[s.Name] = s
	return nil
}

func (m *memory) Deregister(ctx context.Context, s *registry.Service) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.services, s.Name)
	return nil
}

func (m *memory) GetService(ctx context.Context, name string) (*registry.Service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.services[name]
	if !ok {
		return nil, registry.ErrNotFound
	}
	return s, nil
}

func (m *memory) ListServices(ctx context.Context) ([]*registry.Service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*registry.Service
	for _, s := range m.services {
		out = append(out, s)
	}
	return out, nil
}

func (m *memory) Watch(ctx context.Context, events chan<- registry.Event) error {
	<-ctx.Done()
	return ctx.Err()
}

// A registry plugin implements registry.Registry and serves it from main with
// registry.Serve(&memory{...}). Here the server half that Serve runs is called directly,
// as micro calls it over go-plugin's gRPC channel.
func Example() {
	srv := registry.NewServer(&memory{services: map[string]*registry.Service{}})
	ctx := context.Background()
	_, err := srv.Register(ctx, &registrypb.RegisterRequest{
		Service: &registrypb.Service{Name: "greeter", Nodes: []*registrypb.Node{{Id: "greeter-1", Address: "127.0.0.1:9000"}}},
		Ttl:     durationpb.New(10 * time.Second),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	resp, err := srv.GetService(ctx, &registrypb.GetServiceRequest{Name: "greeter"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(resp.GetService().GetNodes()[0].GetAddress())
	// Output: 127.0.0.1:9000
}
