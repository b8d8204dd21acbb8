package selector

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// The strategies a Policy or Route may name.
const (
	// StrategyP2CEWMA is the power of two choices on peak-EWMA latency times in-flight
	// requests (Finagle, Linkerd). It is the default.
	StrategyP2CEWMA = "p2c_ewma"
	// StrategyRoundRobin takes the candidates in turn, across all calls to a service.
	StrategyRoundRobin = "round_robin"
	// StrategyRandom picks a candidate uniformly at random.
	StrategyRandom = "random"
)

// Defaults for the zero values of Policy.
const (
	DefaultEWMADecay                   = 10 * time.Second
	DefaultEjectionConsecutiveFailures = 5
	DefaultEjectionBase                = 30 * time.Second
	DefaultEjectionMax                 = 300 * time.Second
	DefaultEjectionMaxPercent          = 50
)

// Policy says how nodes are chosen. Zero fields take the defaults above.
type Policy struct {
	// Strategy is StrategyP2CEWMA (when empty), StrategyRoundRobin or StrategyRandom.
	Strategy string
	// EWMADecay is the decay time of the peak-EWMA latency estimate.
	EWMADecay time.Duration
	// Ejection takes failing nodes out of selection for a while.
	Ejection Ejection
	// Routes narrows and weighs the nodes of called services, keyed by service name.
	Routes map[string]Route
}

// Ejection is outlier ejection: after ConsecutiveFailures failures in a row a node is out
// for Base × n, where n counts its ejections, capped at Max. Never more than MaxPercent of a
// service's nodes are out at once. A node's count n starts over once it has stayed in for
// Max after its last ejection.
type Ejection struct {
	ConsecutiveFailures int
	Base                time.Duration
	Max                 time.Duration
	MaxPercent          int
}

// Route narrows and weighs the nodes of one called service.
type Route struct {
	// Version keeps only nodes of this version.
	Version string
	// Metadata keeps only nodes whose metadata holds all of these labels.
	Metadata map[string]string
	// Weights splits calls between versions, e.g. {"1.0.0": 90, "1.1.0": 10}. When it is
	// not empty, versions it does not list, or lists with weight 0, get no calls. A call
	// whose chosen version has no available node (all ejected or tried) goes to the nodes
	// of the other weighted versions.
	Weights map[string]int
	// Strategy overrides Policy.Strategy for this service.
	Strategy string
}

// Validate reports the first problem with p, naming the bad field.
func (p Policy) Validate() error {
	_, err := compile(p)
	return err
}

type strategy uint8

const (
	inherit strategy = iota
	p2cEWMA
	roundRobin
	random
)

func parseStrategy(s string) (strategy, error) {
	switch s {
	case "":
		return inherit, nil
	case StrategyP2CEWMA:
		return p2cEWMA, nil
	case StrategyRoundRobin:
		return roundRobin, nil
	case StrategyRandom:
		return random, nil
	}
	return inherit, fmt.Errorf("unknown strategy %q (want %s, %s or %s)",
		s, StrategyP2CEWMA, StrategyRoundRobin, StrategyRandom)
}

// policy is a validated Policy with its defaults applied, shared read-only by all calls.
type policy struct {
	strategy strategy
	decay    float64 // EWMA decay time in nanoseconds
	ej       Ejection
	routes   map[string]*route
}

type route struct {
	version  string
	metadata map[string]string
	weights  map[string]int
	strategy strategy // inherit means the policy's
}

func compile(p Policy) (*policy, error) {
	st, err := parseStrategy(p.Strategy)
	if err != nil {
		return nil, fmt.Errorf("selector: strategy: %w", err)
	}
	if st == inherit {
		st = p2cEWMA
	}
	if p.EWMADecay < 0 {
		return nil, fmt.Errorf("selector: ewma decay %v is negative", p.EWMADecay)
	}
	decay := p.EWMADecay
	if decay == 0 {
		decay = DefaultEWMADecay
	}
	ej, err := ejection(p.Ejection)
	if err != nil {
		return nil, err
	}
	c := &policy{strategy: st, decay: float64(decay), ej: ej, routes: make(map[string]*route, len(p.Routes))}
	for _, name := range slices.Sorted(maps.Keys(p.Routes)) {
		r := p.Routes[name]
		st, err := parseStrategy(r.Strategy)
		if err != nil {
			return nil, fmt.Errorf("selector: route %q: strategy: %w", name, err)
		}
		sum := 0
		for _, v := range slices.Sorted(maps.Keys(r.Weights)) {
			w := r.Weights[v]
			if w < 0 {
				return nil, fmt.Errorf("selector: route %q: weight of version %q is negative (%d)", name, v, w)
			}
			sum += w
		}
		if len(r.Weights) > 0 && sum == 0 {
			return nil, fmt.Errorf("selector: route %q: weights are all 0, so no version would get calls", name)
		}
		c.routes[name] = &route{
			version:  r.Version,
			metadata: maps.Clone(r.Metadata),
			weights:  maps.Clone(r.Weights),
			strategy: st,
		}
	}
	return c, nil
}

func ejection(e Ejection) (Ejection, error) {
	switch {
	case e.ConsecutiveFailures < 0:
		return e, fmt.Errorf("selector: ejection consecutive failures %d is negative", e.ConsecutiveFailures)
	case e.Base < 0:
		return e, fmt.Errorf("selector: ejection base %v is negative", e.Base)
	case e.Max < 0:
		return e, fmt.Errorf("selector: ejection max %v is negative", e.Max)
	case e.MaxPercent < 0 || e.MaxPercent > 100:
		return e, fmt.Errorf("selector: ejection max percent %d is not within 0..100", e.MaxPercent)
	}
	if e.ConsecutiveFailures == 0 {
		e.ConsecutiveFailures = DefaultEjectionConsecutiveFailures
	}
	if e.Base == 0 {
		e.Base = DefaultEjectionBase
	}
	if e.Max == 0 {
		e.Max = DefaultEjectionMax
	}
	if e.MaxPercent == 0 {
		e.MaxPercent = DefaultEjectionMaxPercent
	}
	if e.Max < e.Base {
		return e, fmt.Errorf("selector: ejection max %v is less than base %v", e.Max, e.Base)
	}
	return e, nil
}
