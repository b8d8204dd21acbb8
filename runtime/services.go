package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/supervisor"
)

// services are the services this micro fronts: their app instances, and their nodes in
// the registry. Each ready app instance is one node, reached through the inbound server.
type services struct {
	r     *Runtime
	regMu sync.RWMutex // held for reading while registering; a registry switch writes reg
	reg   registry.Registry
	// sendMu orders registrations: each reads its nodes and sends them under it, so a
	// heartbeat that read the nodes before a change (a transport switch's new address)
	// cannot send them after the change's own registration.
	sendMu    sync.Mutex
	ttl       time.Duration // registry.ttl, fixed at start
	heartbeat time.Duration // registry.heartbeat, fixed at start

	mu       sync.RWMutex
	m        map[string]*fronted
	gen      int  // numbers generations of app groups, so restarted groups get new node IDs
	stopping bool // set by deregisterAll: no new registrations
	regErr   error
}

// fronted is one service that this micro fronts.
type fronted struct {
	name  string
	spec  config.Service
	gen   int
	group *supervisor.Group // nil when the app runs on its own at spec.Address
	nodes map[string]appNode
}

// appNode is a registered node and the base URL of the app instance behind it.
type appNode struct {
	node *registry.Node
	base string
	// registered is set once a registration that included the node succeeded; health
	// counts only such nodes, so "ready" means callers can find it.
	registered bool
}

func newServices(r *Runtime, reg config.Registry) *services {
	return &services{r: r, reg: r.reg, ttl: reg.TTL, heartbeat: reg.Heartbeat, m: make(map[string]*fronted)}
}

// apply makes the fronted services match specs: it stops removed ones, starts new ones,
// restarts those whose app changed, and re-registers those whose labels changed.
func (s *services) apply(ctx context.Context, specs map[string]config.Service) error {
	s.mu.Lock()
	var stop, start []*fronted
	for name, f := range s.m {
		spec, ok := specs[name]
		switch {
		case !ok:
			stop = append(stop, f)
			delete(s.m, name)
		case appChanged(f.spec, spec):
			stop = append(stop, f)
			delete(s.m, name)
		case !labelsEqual(f.spec, spec):
			f.spec = spec
			for id, n := range f.nodes {
				f.nodes[id] = appNode{node: s.nodeFor(f, id, n.node.Metadata["instance"]), base: n.base, registered: n.registered}
			}
			s.r.logger.Info("service labels changed", "service", name, "version", spec.Version)
		}
	}
	for name, spec := range specs {
		if _, ok := s.m[name]; ok {
			continue
		}
		s.gen++
		f := &fronted{name: name, spec: spec, gen: s.gen, nodes: make(map[string]appNode)}
		s.m[name] = f
		start = append(start, f)
	}
	s.mu.Unlock()

	var errs []error
	for _, f := range stop {
		s.deregister(ctx, f.name, slices.Collect(maps.Values(f.nodesSnapshot(&s.mu))))
		if f.group != nil {
			if err := f.group.Stop(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stopping service %q: %w", f.name, err))
			}
		}
		s.r.logger.Info("service stopped", "service", f.name)
	}
	for _, f := range start {
		if err := s.start(ctx, f); err != nil {
			errs = append(errs, err)
		}
	}
	s.registerAll(ctx)
	return errors.Join(errs...)
}

// start launches f's app instances, or registers f's external app.
func (s *services) start(ctx context.Context, f *fronted) error {
	if f.spec.Address != "" {
		id := fmt.Sprintf("%s-%s-%d-0", f.name, s.r.procID, f.gen)
		s.mu.Lock()
		f.nodes[id] = appNode{node: s.nodeFor(f, id, f.name), base: f.spec.Address}
		s.mu.Unlock()
		s.r.logger.Info("service fronted", "service", f.name, "app", f.spec.Address)
		return nil
	}
	env := maps.Clone(f.spec.Env)
	if env == nil {
		env = make(map[string]string)
	}
	env["MICRO_INGRESS"] = s.r.IngressAddr()
	g := supervisor.New(supervisor.Spec{
		Service:   f.name,
		Command:   f.spec.Command,
		Dir:       f.spec.Dir,
		Env:       env,
		Instances: f.spec.Instances,
		Health:    f.spec.Health,
	}, supervisor.Options{
		Logger:  s.r.logger,
		OnReady: func(inst supervisor.Instance) { s.instanceReady(f, inst) },
		OnDown:  func(inst supervisor.Instance, err error) { s.instanceDown(f, inst, err) },
		Keeper:  s.r.factories.Keeper,
	})
	f.group = g
	if err := g.Start(ctx); err != nil {
		return fmt.Errorf("starting service %q: %w", f.name, err)
	}
	s.r.logger.Info("service starting", "service", f.name, "instances", f.spec.Instances, "command", f.spec.Command)
	return nil
}

func (s *services) nodeID(f *fronted, index int) string {
	return fmt.Sprintf("%s-%s-%d-%d", f.name, s.r.procID, f.gen, index)
}

// nodeFor builds the registry record of node id of f.
func (s *services) nodeFor(f *fronted, id, instance string) *registry.Node {
	md := maps.Clone(f.spec.Metadata)
	if md == nil {
		md = make(map[string]string, 1)
	}
	md["instance"] = instance
	return &registry.Node{
		ID:         id,
		Address:    s.r.InboundAddr(),
		Version:    f.spec.Version,
		Metadata:   md,
		Endpoints:  slices.Clone(f.spec.Endpoints),
		Idempotent: slices.Clone(f.spec.Idempotent),
	}
}

func (s *services) instanceReady(f *fronted, inst supervisor.Instance) {
	id := s.nodeID(f, inst.Index)
	s.mu.Lock()
	if s.stopping || s.m[f.name] != f {
		s.mu.Unlock()
		return
	}
	n := s.nodeFor(f, id, inst.ID)
	f.nodes[id] = appNode{node: n, base: "http://" + inst.Addr}
	s.mu.Unlock()
	s.r.logger.Info("instance ready", "service", f.name, "instance", inst.ID, "addr", inst.Addr, "node", id)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.register(ctx, f.name)
}

func (s *services) instanceDown(f *fronted, inst supervisor.Instance, err error) {
	id := s.nodeID(f, inst.Index)
	s.mu.Lock()
	n, ok := f.nodes[id]
	delete(f.nodes, id)
	s.mu.Unlock()
	if err != nil {
		s.r.logger.Warn("instance down", "service", f.name, "instance", inst.ID, "err", err)
	} else {
		s.r.logger.Info("instance stopping", "service", f.name, "instance", inst.ID)
	}
	if ok {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.deregister(ctx, f.name, []appNode{n})
	}
}

func (f *fronted) nodesSnapshot(mu *sync.RWMutex) map[string]appNode {
	mu.RLock()
	defer mu.RUnlock()
	return maps.Clone(f.nodes)
}

// service returns the registry record of the named service's nodes, or nil.
func (s *services) service(name string) *registry.Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.m[name]
	if !ok || len(f.nodes) == 0 || s.stopping {
		return nil
	}
	svc := &registry.Service{Name: name}
	for _, n := range f.nodes {
		svc.Nodes = append(svc.Nodes, n.node)
	}
	sort.Slice(svc.Nodes, func(i, j int) bool { return svc.Nodes[i].ID < svc.Nodes[j].ID })
	return svc
}

// readvertise re-registers every node at micro's current inbound address, after a
// transport switch.
func (s *services) readvertise(ctx context.Context) {
	s.mu.Lock()
	for _, f := range s.m {
		for id, n := range f.nodes {
			f.nodes[id] = appNode{node: s.nodeFor(f, id, n.node.Metadata["instance"]), base: n.base, registered: n.registered}
		}
	}
	s.mu.Unlock()
	s.registerAll(ctx)
}

// setRegistry makes reg the registry of later registrations. A registration in progress
// on the old registry finishes first.
func (s *services) setRegistry(reg registry.Registry) {
	s.regMu.Lock()
	s.reg = reg
	s.regMu.Unlock()
}

// registerOn registers every fronted service's nodes with reg, which is not yet the
// registry in use.
func (s *services) registerOn(ctx context.Context, reg registry.Registry) error {
	for _, name := range s.names() {
		if svc := s.service(name); svc != nil {
			if err := reg.Register(ctx, svc, s.ttl); err != nil {
				return fmt.Errorf("service %q: %w", name, err)
			}
		}
	}
	return nil
}

// deregisterOn removes every fronted service's nodes from reg, which is no longer the
// registry in use.
func (s *services) deregisterOn(ctx context.Context, reg registry.Registry) {
	for _, name := range s.names() {
		if svc := s.service(name); svc != nil {
			if err := reg.Deregister(ctx, svc); err != nil {
				s.r.logger.Warn("deregistering from the old registry failed; its nodes will expire", "service", name, "err", err)
			}
		}
	}
}

// register (re)registers the named service's nodes.
func (s *services) register(ctx context.Context, name string) {
	s.sendMu.Lock()
	svc := s.service(name)
	if svc == nil {
		s.sendMu.Unlock()
		return
	}
	s.regMu.RLock()
	err := s.reg.Register(ctx, svc, s.ttl)
	s.regMu.RUnlock()
	s.sendMu.Unlock()
	s.mu.Lock()
	prev := s.regErr
	s.regErr = err
	if f := s.m[name]; err == nil && f != nil {
		for _, n := range svc.Nodes {
			if an, ok := f.nodes[n.ID]; ok && an.node == n {
				an.registered = true
				f.nodes[n.ID] = an
			}
		}
	}
	s.mu.Unlock()
	switch {
	case err != nil && prev == nil:
		s.r.logger.Error("registering failed; will retry at the next heartbeat", "service", name, "err", err)
	case err == nil && prev != nil:
		s.r.logger.Info("registering works again", "service", name)
	}
}

func (s *services) registerAll(ctx context.Context) {
	for _, name := range s.names() {
		s.register(ctx, name)
	}
}

func (s *services) deregister(ctx context.Context, name string, nodes []appNode) {
	if len(nodes) == 0 {
		return
	}
	svc := &registry.Service{Name: name}
	for _, n := range nodes {
		svc.Nodes = append(svc.Nodes, n.node)
	}
	s.regMu.RLock()
	err := s.reg.Deregister(ctx, svc)
	s.regMu.RUnlock()
	if err != nil {
		s.r.logger.Error("deregistering failed; the nodes will expire", "service", name, "err", err)
	}
}

// beat re-registers every node at the configured interval until ctx ends.
func (s *services) beat(ctx context.Context) {
	t := time.NewTicker(s.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			hctx, cancel := context.WithTimeout(ctx, s.heartbeat)
			s.registerAll(hctx)
			cancel()
		}
	}
}

// deregisterAll removes every node at once and stops further registration.
func (s *services) deregisterAll(ctx context.Context) {
	s.mu.Lock()
	s.stopping = true
	all := make(map[string][]appNode, len(s.m))
	for name, f := range s.m {
		all[name] = slices.Collect(maps.Values(f.nodes))
	}
	s.mu.Unlock()
	for name, nodes := range all {
		s.deregister(ctx, name, nodes)
	}
}

// stopAll stops every app group.
func (s *services) stopAll(ctx context.Context) error {
	s.mu.RLock()
	var groups []*supervisor.Group
	for _, f := range s.m {
		if f.group != nil {
			groups = append(groups, f.group)
		}
	}
	s.mu.RUnlock()
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Go(func() { errs[i] = g.Stop(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Resolve implements server.Apps.
func (s *services) Resolve(service, nodeID string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.m[service]
	if !ok {
		return "", false
	}
	if n, ok := f.nodes[nodeID]; ok {
		return n.base, true
	}
	for _, n := range f.nodes {
		return n.base, true
	}
	return "", false
}

// fronts reports whether this micro fronts the named service.
func (s *services) fronts(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.m[name]
	return ok
}

// Local implements server.Apps.
func (s *services) Local(service, nodeID string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f, ok := s.m[service]; ok {
		if n, ok := f.nodes[nodeID]; ok {
			return n.base, true
		}
	}
	return "", false
}

func (s *services) names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Sorted(maps.Keys(s.m))
}

// status returns the count of ready instances per service, and the last registry error.
func (s *services) status() (map[string]int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]int, len(s.m))
	for name, f := range s.m {
		out[name] = 0
		for _, n := range f.nodes {
			if n.registered {
				out[name]++
			}
		}
	}
	return out, s.regErr
}

// appChanged reports whether the app behind a service must restart.
func appChanged(a, b config.Service) bool {
	return a.Address != b.Address || !slices.Equal(a.Command, b.Command) || a.Dir != b.Dir ||
		!maps.Equal(a.Env, b.Env) || a.Instances != b.Instances || a.Health != b.Health
}

// labelsEqual reports whether two specs register the same labels.
func labelsEqual(a, b config.Service) bool {
	return a.Version == b.Version && maps.Equal(a.Metadata, b.Metadata) &&
		slices.Equal(a.Endpoints, b.Endpoints) && slices.Equal(a.Idempotent, b.Idempotent)
}
