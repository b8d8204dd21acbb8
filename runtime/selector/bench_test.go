package selector

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/cache"
)

// staticRegistry is a registry.Registry over a fixed set of services, for measuring the
// selector on the real cache's hit path.
type staticRegistry map[string]*registry.Service

func (r staticRegistry) Register(context.Context, *registry.Service, time.Duration) error {
	return errors.ErrUnsupported
}
func (r staticRegistry) Deregister(context.Context, *registry.Service) error {
	return errors.ErrUnsupported
}
func (r staticRegistry) GetService(_ context.Context, name string) (*registry.Service, error) {
	if s, ok := r[name]; ok {
		return s, nil
	}
	return nil, registry.ErrNotFound
}
func (r staticRegistry) ListServices(context.Context) ([]*registry.Service, error) {
	var out []*registry.Service
	for _, s := range r {
		out = append(out, s)
	}
	return out, nil
}
func (r staticRegistry) Watch(context.Context) (registry.Watcher, error) {
	return nil, errors.ErrUnsupported
}
func (r staticRegistry) Close() error { return nil }

type benchCase struct {
	name     string
	service  string
	endpoint string
	routes   map[string]Route
}

// benchSelector returns a selector over a warm cache holding the services of benchCases.
func benchSelector(tb testing.TB, strategy string, routes map[string]Route) *Selector {
	reg := staticRegistry{
		"three": {Name: "three", Nodes: mkNodes(3)},
		"ten":   {Name: "ten", Nodes: mkNodes(10)},
		"routed": {Name: "routed", Nodes: []*registry.Node{
			mkNode("s1", version("1.0.0"), zone("a"), endpoints("Greeter.Hello", "Greeter.Bye")),
			mkNode("s2", version("1.0.0"), zone("a"), endpoints("Greeter.Hello")),
			mkNode("s3", version("1.0.0"), zone("b"), endpoints("Greeter.Hello")),
			mkNode("s4", version("1.0.0"), zone("a")),
			mkNode("c1", version("1.1.0"), zone("a"), endpoints("Greeter.Hello")),
			mkNode("c2", version("1.1.0"), zone("b"), endpoints("Greeter.Hello")),
		}},
	}
	for i := range 50 { // other services in the cache, as in a real process
		name := fmt.Sprintf("other%d", i)
		reg[name] = &registry.Service{Name: name, Nodes: mkNodes(2)}
	}
	c := cache.New(reg, cache.Options{TTL: time.Hour})
	s := New(c, Policy{Strategy: strategy, Routes: routes}, Options{})
	for name := range reg {
		if _, err := c.Get(context.Background(), name); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

var benchCases = []benchCase{
	{name: "3nodes", service: "three", endpoint: "Greeter.Hello"},
	{name: "10nodes", service: "ten", endpoint: "Greeter.Hello"},
	{name: "route", service: "routed", endpoint: "Greeter.Hello", routes: map[string]Route{
		"routed": {
			Metadata: map[string]string{"zone": "a"},
			Weights:  map[string]int{"1.0.0": 90, "1.1.0": 10},
		},
	}},
}

var benchStrategies = []string{StrategyP2CEWMA, StrategyRoundRobin, StrategyRandom}

// BenchmarkSelect measures Select and Done on a cache hit: the selector's whole cost per
// attempt of a call.
func BenchmarkSelect(b *testing.B) {
	for _, strategy := range benchStrategies {
		for _, bc := range benchCases {
			b.Run(strategy+"/"+bc.name, func(b *testing.B) {
				s := benchSelector(b, strategy, bc.routes)
				ctx := context.Background()
				b.ReportAllocs()
				for b.Loop() {
					p, err := s.Select(ctx, bc.service, bc.endpoint, nil)
					if err != nil {
						b.Fatal(err)
					}
					p.Done(time.Millisecond, Success)
				}
			})
		}
	}
}

// BenchmarkSelectParallel is BenchmarkSelect from GOMAXPROCS goroutines at once.
func BenchmarkSelectParallel(b *testing.B) {
	for _, strategy := range benchStrategies {
		bc := benchCases[1]
		b.Run(strategy+"/"+bc.name, func(b *testing.B) {
			s := benchSelector(b, strategy, bc.routes)
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p, err := s.Select(ctx, bc.service, bc.endpoint, nil)
					if err != nil {
						b.Error(err)
						return
					}
					p.Done(time.Millisecond, Success)
				}
			})
		})
	}
}

// TestSelectDoesNotAllocate guards the 0-allocation hot path outside of benchmarks.
func TestSelectDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation changes allocation counts")
	}
	for _, strategy := range benchStrategies {
		for _, bc := range benchCases {
			s := benchSelector(t, strategy, bc.routes)
			ctx := context.Background()
			tried := []string{"n00", "s1"}
			allocs := testing.AllocsPerRun(1000, func() {
				p, err := s.Select(ctx, bc.service, bc.endpoint, tried)
				if err != nil {
					t.Fatal(err)
				}
				p.Done(time.Millisecond, Success)
			})
			if allocs != 0 {
				t.Errorf("%s/%s: Select+Done allocates %v times, want 0", strategy, bc.name, allocs)
			}
		}
	}
}
