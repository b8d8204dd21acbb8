package runtime

import (
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/status"
	"github.com/microhost/micro/runtime/tracing"
)

// observed is what the dashboard and `micro top` see of this micro that nothing else
// keeps: the plugins in use and their last switches, and the config's file and reloads.
type observed struct {
	mu         sync.Mutex
	active     map[string]string       // plugin name by role
	swaps      map[string]*status.Swap // last switch by role
	source     string
	loaded     time.Time
	lastReload *status.Reload
}

// The roles of plugins.
const (
	roleRegistry  = "registry"
	roleTransport = "transport"
	roleBroker    = "broker"
)

func newObserved(cfg *config.Config) *observed {
	return &observed{
		active: map[string]string{roleRegistry: cfg.Registry.Plugin, roleTransport: cfg.Transport.Plugin, roleBroker: cfg.Broker.Plugin},
		swaps:  map[string]*status.Swap{},
		loaded: time.Now(),
	}
}

// swapped records a live switch of role's plugin from one to another, failed when err is
// set.
func (o *observed) swapped(role, from, to string, err error) {
	s := &status.Swap{Time: time.Now(), From: from, To: to}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		s.Error = err.Error()
	} else {
		o.active[role] = to
	}
	o.swaps[role] = s
}

// ConfigFile tells the dashboard which file the config came from.
func (r *Runtime) ConfigFile(path string) {
	r.observed.mu.Lock()
	r.observed.source = path
	r.observed.mu.Unlock()
}

// Reloaded tells the dashboard how a reload of the config file went: one of the
// config.Reload results, and for a failure why. It suits config.Loader.OnReload.
func (r *Runtime) Reloaded(result string, err error) {
	rl := &status.Reload{Time: time.Now(), Result: result}
	if err != nil {
		rl.Error = err.Error()
	}
	r.observed.mu.Lock()
	r.observed.lastReload = rl
	if result == config.ReloadApplied {
		r.observed.loaded = rl.Time
	}
	r.observed.mu.Unlock()
}

// plugins reports the registry, transport and broker in use: their health is the part of
// errs, health's errors, that names their role.
func (r *Runtime) plugins(errs []string) []status.Plugin {
	o := r.observed
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]status.Plugin, 0, 3)
	for _, role := range []string{roleRegistry, roleTransport, roleBroker} {
		p := status.Plugin{Role: role, Name: o.active[role], Health: "ok"}
		var problems []string
		for _, e := range errs {
			if rest, ok := strings.CutPrefix(e, role+": "); ok {
				problems = append(problems, rest)
			}
		}
		if len(problems) > 0 {
			p.Health = strings.Join(problems, "; ")
		}
		if s := o.swaps[role]; s != nil {
			c := *s
			p.LastSwap = &c
		}
		out = append(out, p)
	}
	return out
}

// configStatus reports where the config came from and how its last reload went.
func (r *Runtime) configStatus() status.Config {
	o := r.observed
	o.mu.Lock()
	defer o.mu.Unlock()
	c := status.Config{Source: o.source, Loaded: o.loaded}
	if o.lastReload != nil {
		rl := *o.lastReload
		c.LastReload = &rl
	}
	return c
}

// newStatus returns the collector of the dashboard's snapshots.
func (r *Runtime) newStatus() *status.Collector {
	return status.New(status.Sources{
		Instance: processID(r.procID),
		Metrics:  r.metrics.Registry(),
		Selector: r.sel.Snapshot,
		Wrappers: func() []metrics.NamedReport { return r.wrappers.reports() }, // set up after the ingress
		Plugins:  r.plugins,
		Config:   r.configStatus,
		Health: func() (string, []string) {
			h := r.health()
			return h.Status, h.Errors
		},
		Failed: func(n int) []tracing.TraceData { return r.tracer.Store().Recent(n, true) },
	})
}
