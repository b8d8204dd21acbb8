package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/wrapper"
)

// wrapperPoll is how often micro looks for a rebuilt .wasm or edited wrapper sources.
const wrapperPoll = time.Second

// wrappers keeps the loaded wrappers and the client and server chains built from them.
type wrappers struct {
	r *Runtime

	mu     sync.Mutex // serializes apply
	cfg    *config.Config
	loaded map[string]*loadedWrapper
	// chains are the wrappers of the running chains, for their reports; apply replaces it.
	chains atomic.Pointer[[]chained]
}

// chained is a wrapper of a running chain, and the chain's side.
type chained struct {
	side string
	w    wrapper.Wrapper
}

// loadedWrapper is a wrapper as it was loaded: its config and the state of its files then.
type loadedWrapper struct {
	spec  config.Wrapper
	stamp string
	w     wrapper.Wrapper
}

func newWrappers(r *Runtime) *wrappers {
	return &wrappers{r: r, loaded: make(map[string]*loadedWrapper)}
}

// apply loads what cfg's wrapper lists need and publishes new chains. A wrapper whose
// config and files are unchanged is kept as it is, state included. When a wrapper fails to
// load, nothing changes: the running chains stay.
func (ws *wrappers) apply(ctx context.Context, cfg *config.Config) error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	next := make(map[string]*loadedWrapper)
	var fresh []wrapper.Wrapper
	abort := func(err error) error {
		for _, w := range fresh {
			_ = w.Close(ctx)
		}
		return err
	}
	for _, name := range slices.Concat(cfg.Client.Wrappers, cfg.Server.Wrappers) {
		if next[name] != nil {
			continue
		}
		spec, ok := cfg.Wrappers[name]
		if !ok {
			return abort(fmt.Errorf("wrapper %q is not in [wrappers]", name))
		}
		stamp := wrapperStamp(spec)
		if old := ws.loaded[name]; old != nil && old.stamp == stamp && reflect.DeepEqual(old.spec, spec) {
			next[name] = old
			continue
		}
		if ws.r.factories.Wrapper == nil {
			return abort(fmt.Errorf("wrapper %q: this micro has no wrapper host", name))
		}
		start := time.Now()
		w, err := ws.r.factories.Wrapper(ctx, name, spec, ws.r.quotas.client, ws.r.logger)
		if err != nil {
			return abort(fmt.Errorf("loading wrapper %q: %w", name, err))
		}
		fresh = append(fresh, w)
		next[name] = &loadedWrapper{spec: spec, stamp: stamp, w: w}
		ws.r.logger.Info("wrapper loaded", "wrapper", name, "took", time.Since(start).Round(time.Millisecond),
			"abi", spec.ABI, "instances", spec.Instances, "shard", spec.Shard, "on_trap", spec.OnTrap,
			"memory_limit", spec.MemoryLimit, "timeout", spec.Timeout)
	}

	chain := func(names []string) *wrapper.Chain {
		if len(names) == 0 {
			return nil
		}
		links := make([]wrapper.Link, len(names))
		for i, n := range names {
			links[i] = wrapper.Link{Wrapper: next[n].w, Services: cfg.Wrappers[n].Services}
		}
		return wrapper.NewChain(links)
	}
	client, server := chain(cfg.Client.Wrappers), chain(cfg.Server.Wrappers)
	oldClient := ws.r.client.SetChain(client)
	oldServer := ws.r.inbound.SetChain(server)
	ws.loaded, ws.cfg = next, cfg
	var now []chained
	for _, l := range client.Links() {
		now = append(now, chained{"client", l.Wrapper})
	}
	for _, l := range server.Links() {
		now = append(now, chained{"server", l.Wrapper})
	}
	ws.chains.Store(&now)

	// Calls in flight finish on the chains they hold; the wrappers no chain uses any more
	// are closed once those calls end.
	ws.r.goBackground(func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		keep := wrapper.NewChain(slices.Concat(client.Links(), server.Links()))
		err := errors.Join(oldClient.Retire(rctx, keep), oldServer.Retire(rctx, keep))
		for _, c := range []*wrapper.Chain{oldClient, oldServer} {
			for _, l := range c.Links() {
				if !slices.ContainsFunc(keep.Links(), func(k wrapper.Link) bool { return k.Wrapper == l.Wrapper }) {
					ws.r.logger.Info("wrapper unloaded", "wrapper", l.Wrapper.Name())
				}
			}
		}
		if err != nil {
			ws.r.logger.Warn("closing replaced wrappers", "err", err)
		}
	})
	return nil
}

// reports returns what the running chains' wrappers report, in chain order, client side
// first. A wrapper that reports nothing has a zero Report.
func (ws *wrappers) reports() []metrics.NamedReport {
	p := ws.chains.Load()
	if p == nil {
		return nil
	}
	out := make([]metrics.NamedReport, 0, len(*p))
	for _, c := range *p {
		nr := metrics.NamedReport{Name: c.w.Name(), Side: c.side}
		if rp, ok := c.w.(wrapper.Reporter); ok {
			nr.Report = rp.Report()
		}
		out = append(out, nr)
	}
	return out
}

// watch reloads wrappers whose .wasm file or Go sources change, until ctx ends.
func (ws *wrappers) watch(ctx context.Context) {
	t := time.NewTicker(wrapperPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ws.mu.Lock()
		cfg, changed := ws.cfg, ""
		for name, l := range ws.loaded {
			if wrapperStamp(l.spec) != l.stamp {
				changed = name
				break
			}
		}
		ws.mu.Unlock()
		if changed == "" || cfg == nil {
			continue
		}
		ws.r.logger.Info("wrapper files changed; reloading", "wrapper", changed)
		if err := ws.apply(ctx, cfg); err != nil {
			ws.r.logger.Error("wrapper reload failed; the running wrappers stay", "err", err)
			ws.mu.Lock()
			// Remember the new files so a broken build is not retried every poll.
			if l := ws.loaded[changed]; l != nil {
				l.stamp = wrapperStamp(l.spec)
			}
			ws.mu.Unlock()
		}
	}
}

// close closes every loaded wrapper.
func (ws *wrappers) close(ctx context.Context) error {
	if ws == nil {
		return nil
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	var errs []error
	for _, l := range ws.loaded {
		errs = append(errs, l.w.Close(ctx))
	}
	ws.loaded = nil
	return errors.Join(errs...)
}

// wrapperStamp describes the files a wrapper is loaded from (size and modification time),
// so that a rebuilt .wasm or an edited source is noticed.
func wrapperStamp(spec config.Wrapper) string {
	if spec.Path != "" {
		fi, err := os.Stat(spec.Path)
		if err != nil {
			return "missing"
		}
		return fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	}
	files, _ := filepath.Glob(filepath.Join(spec.Source, "*.go"))
	files = append(files, filepath.Join(spec.Source, "go.mod"))
	stamp := ""
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			stamp += fmt.Sprint(f, fi.Size(), fi.ModTime().UnixNano(), ";")
		}
	}
	return stamp
}
