package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/microhost/micro/sdk/registry"
)

const (
	// minDeregisterAfter is the shortest DeregisterCriticalServiceAfter Consul honours: its
	// reaper of critical services runs every 30s and the agent refuses less than a minute.
	minDeregisterAfter = time.Minute
	// deregisterAfterTTLs is how many TTLs a node's check stays critical before Consul
	// removes the node, when that is more than minDeregisterAfter.
	deregisterAfterTTLs = 3
	// consulService is the name Consul's servers register themselves under.
	consulService = "consul"
)

// consul is a registry.Registry on a Consul agent's HTTP API.
//
// A node is a Consul service instance whose ID is the node ID, registered with the local
// agent together with a TTL check (see Register). Lookups go through the health endpoint and
// return passing instances only, so a node whose process died drops out one TTL after its
// last heartbeat, and Consul removes it later through DeregisterCriticalServiceAfter.
type consul struct {
	log *slog.Logger

	mu     sync.Mutex
	client *api.Client
	addr   string          // the agent's address, for errors and logs
	tr     *http.Transport // client's transport, closed when Init replaces client
	// registered maps a node ID to the definition this process last registered for it,
	// so that a heartbeat with an unchanged definition costs one check update.
	registered map[string]string
}

// newConsul returns a registry that is usable once Init succeeds.
func newConsul(log *slog.Logger) *consul {
	return &consul{log: log, registered: make(map[string]string)}
}

// Init points the registry at the agent named by c, or by the standard CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN and related environment variables for what c leaves empty, and checks
// that the agent answers and its cluster has a leader.
func (r *consul) Init(ctx context.Context, c registry.Config) error {
	cfg := api.DefaultConfig() // reads CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...
	if c.Address != "" {
		cfg.Address = c.Address
	}
	if c.Datacenter != "" {
		cfg.Datacenter = c.Datacenter
	}
	if c.Token != "" {
		cfg.Token = c.Token
		cfg.TokenFile = ""
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("consul agent at %s: %w", cfg.Address, err)
	}
	leader, err := client.Status().LeaderWithQueryOptions(queryOpts(ctx))
	if err != nil {
		cfg.Transport.CloseIdleConnections()
		return fmt.Errorf("consul agent at %s: not reachable: %w", cfg.Address, err)
	}
	if leader == "" {
		cfg.Transport.CloseIdleConnections()
		return fmt.Errorf("consul agent at %s: its cluster has no leader", cfg.Address)
	}

	r.mu.Lock()
	old := r.tr
	r.client, r.addr, r.tr = client, cfg.Address, cfg.Transport
	clear(r.registered)
	r.mu.Unlock()
	if old != nil {
		old.CloseIdleConnections()
	}
	r.log.Info("consul registry ready", "address", cfg.Address, "datacenter", cfg.Datacenter,
		"leader", leader, "token_set", cfg.Token != "" || cfg.TokenFile != "")
	return nil
}

// conn returns the client and the agent's address, or an error before Init.
func (r *consul) conn() (*api.Client, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client == nil {
		return nil, "", errors.New("consul registry: not initialised (Init was not called or failed)")
	}
	return r.client, r.addr, nil
}

// Register registers each node of s with the agent as a service instance with ID = node ID
// and a TTL check of ttl that starts passing, or, when this process already registered the
// same definition, marks that check passing again. The check goes critical ttl after the
// last Register; Consul deregisters the instance after it stays critical for
// max(1m, 3×ttl). When the agent no longer knows the check (it restarted, or someone
// deregistered the node), the node is registered again in full.
func (r *consul) Register(ctx context.Context, s *registry.Service, ttl time.Duration) error {
	if s == nil || s.Name == "" {
		return errors.New("consul registry: register: service name is empty")
	}
	if ttl <= 0 {
		return fmt.Errorf("consul registry: register %s: ttl %v is not positive", s.Name, ttl)
	}
	client, addr, err := r.conn()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range s.Nodes {
		if err := r.registerNode(ctx, client, s.Name, n, ttl); err != nil {
			errs = append(errs, fmt.Errorf("consul agent at %s: register %s node %q: %w", addr, s.Name, nodeID(n), err))
		}
	}
	return errors.Join(errs...)
}

func (r *consul) registerNode(ctx context.Context, client *api.Client, service string, n *registry.Node, ttl time.Duration) error {
	reg, err := registration(service, n, ttl)
	if err != nil {
		return err
	}
	def, err := json.Marshal(reg) // map keys are sorted: equal definitions encode alike
	if err != nil {
		return err
	}
	key := string(def)

	r.mu.Lock()
	same := r.registered[n.ID] == key
	r.mu.Unlock()
	if same {
		err := client.Agent().UpdateTTLOpts(reg.Check.CheckID, "", api.HealthPassing, queryOpts(ctx))
		if err == nil {
			return nil
		}
		r.forget(n.ID, key)
		if !isNotFound(err) {
			return fmt.Errorf("heartbeat: %w", err)
		}
		r.log.Info("consul agent lost the node; registering it again", "service", service, "node", n.ID)
	}

	if err := client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		return err
	}
	r.mu.Lock()
	r.registered[n.ID] = key
	r.mu.Unlock()
	r.log.Debug("registered node", "service", service, "node", n.ID, "address", n.Address, "ttl", ttl.String())
	return nil
}

// forget drops the remembered definition of node id if it is still key.
func (r *consul) forget(id, key string) {
	r.mu.Lock()
	if r.registered[id] == key {
		delete(r.registered, id)
	}
	r.mu.Unlock()
}

// registration builds the agent service definition of node n of service.
func registration(service string, n *registry.Node, ttl time.Duration) (*api.AgentServiceRegistration, error) {
	if n == nil || n.ID == "" {
		return nil, errors.New("node ID is empty")
	}
	host, portStr, err := net.SplitHostPort(n.Address)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", n.Address, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("address %q: bad port: %w", n.Address, err)
	}
	meta, err := encodeMeta(n)
	if err != nil {
		return nil, err
	}
	return &api.AgentServiceRegistration{
		ID:      n.ID,
		Name:    service,
		Address: host,
		Port:    int(port),
		Meta:    meta,
		Check: &api.AgentServiceCheck{
			CheckID:                        checkID(n.ID),
			Name:                           "micro heartbeat",
			TTL:                            ttl.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: max(minDeregisterAfter, deregisterAfterTTLs*ttl).String(),
		},
	}, nil
}

// checkID is the ID of the TTL check of node id.
func checkID(id string) string { return "service:" + id }

// Deregister removes each node of s from the agent; a node the agent does not know is not
// an error.
func (r *consul) Deregister(ctx context.Context, s *registry.Service) error {
	if s == nil {
		return errors.New("consul registry: deregister: service is nil")
	}
	client, addr, err := r.conn()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range s.Nodes {
		id := nodeID(n)
		r.mu.Lock()
		delete(r.registered, id)
		r.mu.Unlock()
		if err := client.Agent().ServiceDeregisterOpts(id, queryOpts(ctx)); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("consul agent at %s: deregister %s node %q: %w", addr, s.Name, id, err))
		}
	}
	return errors.Join(errs...)
}

// GetService returns the passing instances of the service, sorted by node ID, or
// registry.ErrNotFound when there are none.
func (r *consul) GetService(ctx context.Context, name string) (*registry.Service, error) {
	client, addr, err := r.conn()
	if err != nil {
		return nil, err
	}
	s, err := getService(ctx, client, name)
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		return nil, fmt.Errorf("consul agent at %s: get service %q: %w", addr, name, err)
	}
	return s, err
}

func getService(ctx context.Context, client *api.Client, name string) (*registry.Service, error) {
	entries, _, err := client.Health().Service(name, "", true, queryOpts(ctx))
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, registry.ErrNotFound
	}
	s := &registry.Service{Name: name, Nodes: make([]*registry.Node, 0, len(entries))}
	for _, e := range entries {
		s.Nodes = append(s.Nodes, toNode(e))
	}
	slices.SortFunc(s.Nodes, func(a, b *registry.Node) int { return cmp.Compare(a.ID, b.ID) })
	return s, nil
}

// toNode converts a health entry to a node. An instance registered without an address
// (not by micro) is reached at its Consul node's address.
func toNode(e *api.ServiceEntry) *registry.Node {
	host := e.Service.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	n := &registry.Node{ID: e.Service.ID, Address: net.JoinHostPort(host, strconv.Itoa(e.Service.Port))}
	decodeMeta(e.Service.Meta, n)
	return n
}

// ListServices returns every service with a passing instance, sorted by name, except
// Consul's own.
func (r *consul) ListServices(ctx context.Context) ([]*registry.Service, error) {
	client, addr, err := r.conn()
	if err != nil {
		return nil, err
	}
	list, err := listServices(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("consul agent at %s: list services: %w", addr, err)
	}
	return list, nil
}

// listServices lists the services with a passing instance, sorted by name.
func listServices(ctx context.Context, client *api.Client) ([]*registry.Service, error) {
	names, _, err := client.Catalog().Services(queryOpts(ctx))
	if err != nil {
		return nil, err
	}
	sorted := make([]string, 0, len(names))
	for name := range names {
		if name != consulService {
			sorted = append(sorted, name)
		}
	}
	slices.Sort(sorted)
	var list []*registry.Service
	for _, name := range sorted {
		s, err := getService(ctx, client, name)
		if errors.Is(err, registry.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", name, err)
		}
		list = append(list, s)
	}
	return list, nil
}

// queryOpts returns query options bound to ctx.
func queryOpts(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

// isNotFound reports whether err is the agent's 404 for an unknown service or check.
func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

func nodeID(n *registry.Node) string {
	if n == nil {
		return ""
	}
	return n.ID
}
