package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/microhost/micro/sdk/registry"
)

// watchWait is how long one blocking query waits for a change before it is asked again.
const watchWait = 30 * time.Second

// trigger is a blocking query whose index moves when something Watch reports may have
// changed. It returns the index of its answer.
type trigger struct {
	name  string
	query func(*api.QueryOptions) (uint64, error)
}

// Watch sends an event for every node that appears, changes or stops passing, until ctx
// ends.
//
// Two blocking queries wake it: the catalog's service list (its index moves when an
// instance is registered, changed or deregistered) and the health checks of the datacenter
// (their index moves when a check changes state, e.g. a TTL expires). On each wake-up Watch
// lists the passing instances of every service and diffs them against the previous list;
// wake-ups that arrive while it lists are coalesced. A heartbeat that keeps a check passing
// moves neither index, so a steady state costs one idle request per query per 30s.
//
// Watch returns an error when a query fails (e.g. the agent stopped); micro then calls it
// again.
func (r *consul) Watch(ctx context.Context, events chan<- registry.Event) error {
	client, addr, err := r.conn()
	if err != nil {
		return err
	}
	triggers := []trigger{
		{"catalog services", func(q *api.QueryOptions) (uint64, error) {
			_, meta, err := client.Catalog().Services(q)
			if err != nil {
				return 0, err
			}
			return meta.LastIndex, nil
		}},
		{"health checks", func(q *api.QueryOptions) (uint64, error) {
			_, meta, err := client.Health().State(api.HealthAny, q)
			if err != nil {
				return 0, err
			}
			return meta.LastIndex, nil
		}},
	}

	// Read the indexes before the first list: a change after an index was read wakes its
	// query, whether or not the list already saw it, so no change is lost.
	indexes := make([]uint64, len(triggers))
	for i, t := range triggers {
		idx, err := t.query(queryOpts(ctx))
		if err != nil {
			return watchErr(ctx, addr, t.name, err)
		}
		indexes[i] = idx
	}
	prev, err := snapshot(ctx, client)
	if err != nil {
		return watchErr(ctx, addr, "list services", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	changed := make(chan struct{}, 1)
	failed := make(chan error, len(triggers))
	for i, t := range triggers {
		wg.Go(func() {
			err := block(ctx, t, indexes[i], changed)
			if ctx.Err() == nil {
				failed <- watchErr(ctx, addr, t.name, err)
			}
		})
	}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return err
		case <-changed:
		}
		cur, err := snapshot(ctx, client)
		if err != nil {
			return watchErr(ctx, addr, "list services", err)
		}
		for _, ev := range diff(prev, cur) {
			select {
			case events <- ev:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		prev = cur
	}
}

// block runs t as a blocking query from index on, and signals changed (without waiting)
// each time the index moves. It returns the error of the first query that fails, which is
// ctx's error once ctx ends.
func block(ctx context.Context, t trigger, index uint64, changed chan<- struct{}) error {
	for {
		q := &api.QueryOptions{WaitIndex: index, WaitTime: watchWait}
		idx, err := t.query(q.WithContext(ctx))
		if err != nil {
			return err
		}
		if idx == index {
			continue // the wait ran out with no change
		}
		// An index that went backwards means the servers' state was reset (e.g. a
		// restored snapshot): start over from 0, as Consul's documentation says.
		if idx < index {
			idx = 0
		}
		index = max(idx, 1) // an index of 0 would not block
		select {
		case changed <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// snapshot maps each service name to its passing nodes by ID.
func snapshot(ctx context.Context, client *api.Client) (map[string]map[string]*registry.Node, error) {
	list, err := listServices(ctx, client)
	if err != nil {
		return nil, err
	}
	m := make(map[string]map[string]*registry.Node, len(list))
	for _, s := range list {
		nodes := make(map[string]*registry.Node, len(s.Nodes))
		for _, n := range s.Nodes {
			nodes[n.ID] = n
		}
		m[s.Name] = nodes
	}
	return m, nil
}

// diff returns the events that turn prev into cur, ordered by service and node ID: an
// update for each new or changed node, a delete for each node gone.
func diff(prev, cur map[string]map[string]*registry.Node) []registry.Event {
	names := make([]string, 0, len(prev)+len(cur))
	for name := range prev {
		names = append(names, name)
	}
	for name := range cur {
		if _, ok := prev[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var events []registry.Event
	for _, name := range names {
		p, c := prev[name], cur[name]
		ids := make([]string, 0, len(p)+len(c))
		for id := range p {
			ids = append(ids, id)
		}
		for id := range c {
			if _, ok := p[id]; !ok {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		for _, id := range ids {
			old, was := p[id]
			n, is := c[id]
			switch {
			case is && (!was || !equalNodes(old, n)):
				events = append(events, registry.Event{Type: registry.EventUpdate, Service: name, Node: n})
			case was && !is:
				events = append(events, registry.Event{Type: registry.EventDelete, Service: name, Node: old})
			}
		}
	}
	return events
}

// watchErr wraps a failure of a watch step, or returns ctx's error when ctx ended.
func watchErr(ctx context.Context, addr, step string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("consul agent at %s: watch: %s: %w", addr, step, err)
}
