// Package runtime assembles a running micro: it binds the ingress and inbound servers,
// starts and registers the services micro.toml declares, routes calls through the client,
// and applies new configurations while it runs.
//
// The registry and the transport come from Factories, which cmd/micro supplies, so this
// package knows no plugin mechanism.
package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/metrics"
	"github.com/microhost/micro/runtime/pool"
	"github.com/microhost/micro/runtime/pubsub"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/cache"
	"github.com/microhost/micro/runtime/security"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/upstream"
	"github.com/microhost/micro/runtime/wrapper"
)

// Factories turn micro.toml sections into the pluggable parts.
type Factories struct {
	// Registry opens the registry that [registry] names.
	Registry func(ctx context.Context, c config.Registry, logger *slog.Logger) (registry.Registry, error)
	// Transport opens the transport that [transport] names.
	Transport func(ctx context.Context, c config.Transport, s config.Server, logger *slog.Logger) (transport.Transport, error)
	// Broker opens the broker that [broker] names.
	Broker func(ctx context.Context, c config.Broker, logger *slog.Logger) (broker.Broker, error)
	// Wrapper loads the wrapper that [wrappers.NAME] describes; leases are this micro's
	// shares of global rate limits, which the wrapper may read. It may be nil when no
	// wrapper is configured.
	Wrapper func(ctx context.Context, name string, c config.Wrapper, leases wrapper.Leases, logger *slog.Logger) (wrapper.Wrapper, error)
	// Keeper is the argv that runs a keeper around each app instance, so that no process
	// of an app outlives micro (see supervisor.Options.Keeper). Empty starts apps directly.
	Keeper []string
}

// Runtime is one running micro process.
type Runtime struct {
	factories Factories
	logger    *slog.Logger
	metrics   *metrics.Metrics
	procID    string

	mu  sync.Mutex // guards cfg and services against concurrent Apply and Stop
	cfg *config.Config

	regMu         sync.RWMutex // guards reg, cache and cacheCancel, which a registry switch replaces
	reg           registry.Registry
	cache         *cache.Cache
	cacheCancel   context.CancelFunc
	swapErr       error // the last failed registry switch, until one succeeds or is undone
	trSwapErr     error // the last failed transport switch, likewise
	brokerSwapErr error // the last failed broker switch, likewise

	sel      *selector.Selector
	wrappers *wrappers
	tr       transport.Transport
	pool     *pool.Pool
	client   *client.Client
	ingress  *server.Ingress
	inbound  *server.Inbound

	ingressLn   net.Listener
	ingressSrv  *http.Server     // upgrades (streams) and HTTP/2
	fastIngress *fasthttp.Server // plain HTTP/1.1
	appHTTP     *http.Client
	h2c         *http.Transport  // HTTP/2 without TLS, to apps (and other micros when security is off)
	upstream    *upstream.Client // apps (and other micros when security is off), from the HTTP/1.1 path
	security    *security.Source // nil when security.mode is off
	selfPeer    atomic.Pointer[selfPeer]
	peers       *upstream.Client // other micros over TLS, from the HTTP/1.1 path; nil when security is off
	h2Peers     *http.Transport  // other micros over HTTP/2 with TLS; nil when security is off

	mux       *transportMux      // dials every node with its address's transport
	trMu      sync.RWMutex       // guards tr, inboundLn and advertise, which a transport switch replaces
	inboundLn transport.Listener // where this micro accepts calls now
	advertise string             // inboundLn's address as registered

	services *services
	pubsub   *pubsub.PubSub
	quotas   *quotas
	tracer   *tracing.Tracer
	observed *observed

	bgctx  context.Context    // lives until Stop
	cancel context.CancelFunc // stops background loops
	bg     sync.WaitGroup
}

// New returns a Runtime for cfg; Start runs it.
func New(cfg *config.Config, f Factories, logger *slog.Logger) *Runtime {
	var id [3]byte
	_, _ = rand.Read(id[:])
	r := &Runtime{
		factories: f,
		logger:    logger,
		procID:    hex.EncodeToString(id[:]),
		cfg:       cfg,
		observed:  newObserved(cfg),
	}
	r.metrics = metrics.New(metrics.Options{KnownService: r.knownService})
	return r
}

// knownService reports whether name is a service that this micro fronts or that the
// registry listed when asked: a name that may be a metric label.
func (r *Runtime) knownService(name string) bool {
	if r.services != nil && r.services.fronts(name) {
		return true
	}
	r.regMu.RLock()
	c := r.cache
	r.regMu.RUnlock()
	return c != nil && c.Known(name)
}

// Start opens the registry and transport, binds the listeners, and starts the fronted
// services. It returns once micro serves; services register as their instances get ready.
func (r *Runtime) Start(ctx context.Context) (err error) {
	cfg := r.cfg
	bgctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.bgctx, r.cancel = bgctx, cancel
	defer func() {
		if err != nil {
			_ = r.wrappers.close(ctx)
			r.closeAll()
		}
	}()

	if r.security, err = r.openSecurity(ctx, cfg); err != nil {
		return err
	}
	if r.reg, err = r.factories.Registry(ctx, cfg.Registry, r.logger); err != nil {
		return fmt.Errorf("registry %q: %w", cfg.Registry.Plugin, err)
	}
	r.mux = newTransportMux(r.newHTTPTransport(cfg.Server))
	if r.tr, err = r.openTransport(ctx, cfg.Transport, cfg.Server); err != nil {
		return err
	}
	r.cache = cache.New(r.reg, cache.Options{TTL: cfg.Registry.CacheTTL, EmptyGrace: cfg.Registry.TTL, Logger: r.logger})
	cacheCtx, cacheCancel := context.WithCancel(bgctx)
	r.cacheCancel = cacheCancel
	r.sel = selector.New(r.cache, policy(cfg), selector.Options{
		Logger: r.logger,
		OnEject: func(service, node, endpoint string, d time.Duration) {
			r.metrics.Eject(service, endpoint, node) // the selector logs the ejection
		},
	})
	r.pool = pool.New(r.mux, poolOptions(cfg))
	r.client = client.New(r.sel, r.pool, r.metrics, clientOptions(cfg), r.logger)
	if r.tracer, err = tracing.New(tracing.Options{
		Service: "micro", Instance: processID(r.procID), OTLPEndpoint: cfg.Telemetry.OTLPEndpoint,
		SampleRatio: cfg.Telemetry.SampleRatio, KeepTraces: cfg.Telemetry.KeepTraces, Logger: r.logger,
	}); err != nil {
		return err
	}
	r.client.SetTracer(r.tracer)
	r.metrics.WatchTracer(r.tracer.Dropped)
	r.appHTTP = &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}}
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	r.h2c = &http.Transport{Proxy: nil, Protocols: &h2c, IdleConnTimeout: cfg.Client.Pool.IdleTTL}
	upOpts := upstream.Options{
		MaxIdle: poolOptions(cfg).MaxIdle, IdleTTL: cfg.Client.Pool.IdleTTL, MaxBody: int(cfg.Server.MaxBody),
		InMemory: server.InMemoryBody, BodyTimeout: cfg.Server.BodyTimeout,
	}
	r.upstream = upstream.New(upOpts)
	var h2Peers http.RoundTripper
	var peerScheme string
	r.peers, h2Peers, peerScheme = r.peerClients(upOpts, cfg.Client.Pool.IdleTTL)
	if h2Peers != nil {
		r.h2Peers = h2Peers.(*http.Transport)
	}

	if err := r.openPubSub(ctx, cfg); err != nil {
		return err
	}
	r.services = newServices(r, cfg.Registry)
	if r.quotas, err = newQuotas(r, cfg.Quota); err != nil {
		return err
	}
	r.inbound = server.NewInbound(server.InboundConfig{
		Apps: r.services, Recorder: r.metrics, Logger: r.logger, HTTP: r.appHTTP, Upstream: r.upstream, H2C: r.h2c,
		Settings: serverSettings(cfg), Self: r.self, Tracer: r.tracer,
	})
	if r.inboundLn, err = r.listenInbound(ctx, r.tr, cfg.Transport.Plugin, cfg.Server); err != nil {
		return fmt.Errorf("inbound listen on %s (server.inbound): %w", cfg.Server.Inbound, err)
	}
	r.advertise = r.inboundLn.Addr()
	if cfg.Transport.Plugin == "http" {
		r.advertise = advertiseAddr(cfg.Server.Advertise, r.advertise)
	}
	if r.ingressLn, err = net.Listen("tcp", cfg.Server.Ingress); err != nil {
		return fmt.Errorf("ingress listen on %s (server.ingress): %w", cfg.Server.Ingress, err)
	}

	r.ingress = server.NewIngress(server.IngressConfig{
		Caller:       r.client,
		Streamer:     r.client,
		Recorder:     r.metrics,
		Metrics:      r.metrics.Handler(),
		Services:     r.listServices,
		Health:       r.health,
		Logger:       r.logger,
		Tracer:       r.tracer,
		Settings:     serverSettings(cfg),
		BodyTimeout:  cfg.Server.BodyTimeout,
		WriteTimeout: cfg.Server.WriteTimeout,
		Inbound:      r.inbound,
		Publisher:    r.pubsub,
		Status:       r.newStatus().Snapshot,
		Fast: server.FastPath{
			Doer: r.client, Upstream: r.upstream, Pool: r.pool, HTTPNode: r.mux.httpNode,
			Peers: r.peers, H2Peers: h2Peers, PeerScheme: peerScheme,
		},
	})
	r.ingressSrv = r.h2Server(r.ingress, cfg.Server, true)
	r.fastIngress = r.fastServer(r.ingress.ServeFast, server.IngressID, cfg.Server)

	// Wrappers load before anything is served, so no call passes unwrapped.
	r.wrappers = newWrappers(r)
	r.metrics.WatchWrappers(r.wrappers.reports)
	if err := r.wrappers.apply(ctx, cfg); err != nil {
		return err
	}
	r.goBackground(func() { r.wrappers.watch(bgctx) })
	r.pubsub.SetSubscriptions(subscriptions(cfg.Services))

	firstCache := r.cache
	r.goBackground(func() { firstCache.Run(cacheCtx) })
	firstLn := r.inboundLn
	r.goBackground(func() {
		if err := r.inbound.Serve(bgctx, firstLn); err != nil {
			r.logger.Error("inbound server stopped", "err", err)
		}
	})
	r.serveIngress(r.ingressLn)
	r.goBackground(func() { r.services.beat(bgctx) })
	r.goBackground(func() { r.quotas.run(bgctx) })
	if err := r.quotas.apply(ctx, cfg.Quota); err != nil {
		return err
	}
	if err := r.services.apply(ctx, r.quotas.services(cfg.Services)); err != nil {
		return err
	}
	return nil
}

// registry returns the registry in use.
func (r *Runtime) registry() registry.Registry {
	r.regMu.RLock()
	defer r.regMu.RUnlock()
	return r.reg
}

func (r *Runtime) listServices(ctx context.Context) ([]*registry.Service, error) {
	return r.registry().ListServices(ctx)
}

// swapRegistry moves micro to the registry rc describes, while calls go on: it opens the
// new registry, registers the fronted services there, fills a new cache from it, switches
// discovery to that cache, deregisters from the old registry and closes it. When a step
// before the switch fails, the old registry stays in use.
func (r *Runtime) swapRegistry(ctx context.Context, from, to config.Registry) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	next, err := r.factories.Registry(ctx, to, r.logger)
	if err != nil {
		return fmt.Errorf("opening registry %q: %w", to.Plugin, err)
	}
	if err := r.services.registerOn(ctx, next); err != nil {
		_ = next.Close()
		return fmt.Errorf("registering with registry %q: %w", to.Plugin, err)
	}
	nextCache := cache.New(next, cache.Options{TTL: to.CacheTTL, EmptyGrace: to.TTL, Logger: r.logger})
	cacheCtx, cacheCancel := context.WithCancel(r.bgctx)
	r.goBackground(func() { nextCache.Run(cacheCtx) })
	r.regMu.RLock()
	known := r.cache.Services()
	r.regMu.RUnlock()
	for _, svc := range known {
		if _, err := nextCache.Get(ctx, svc.Name); err != nil {
			r.logger.Warn("registry switch: service not found in the new registry", "service", svc.Name, "registry", to.Plugin, "err", err)
		}
	}

	r.sel.SetSource(nextCache)
	r.regMu.Lock()
	prev, prevCancel := r.reg, r.cacheCancel
	r.reg, r.cache, r.cacheCancel = next, nextCache, cacheCancel
	r.regMu.Unlock()
	r.services.setRegistry(next)
	r.quotas.recampaign()
	switched := time.Since(start)

	r.services.deregisterOn(ctx, prev)
	prevCancel()
	if err := prev.Close(); err != nil {
		r.logger.Warn("registry switch: closing the old registry", "registry", from.Plugin, "err", err)
	}
	r.logger.Info("registry switched", "from", from.Plugin, "to", to.Plugin,
		"services", len(known), "switch_after", switched.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (r *Runtime) goBackground(f func()) {
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		f()
	}()
}

// IngressAddr is the address the ingress listens on.
func (r *Runtime) IngressAddr() string { return r.ingressLn.Addr().String() }

// InboundAddr is the address other micro processes reach this one at.
func (r *Runtime) InboundAddr() string {
	r.trMu.RLock()
	defer r.trMu.RUnlock()
	return r.advertise
}

// Services names the services this micro fronts, sorted.
func (r *Runtime) Services() []string { return r.services.names() }

// Apply makes cfg the running configuration. Client, route and service settings apply at
// once; settings that need a restart are logged and keep their running values.
func (r *Runtime) Apply(ctx context.Context, cfg *config.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.cfg
	for _, key := range restartKeys(old, cfg) {
		r.logger.Warn("config change needs a restart; the running value stays", "key", key)
	}
	next := *cfg
	next.Server, next.Registry, next.Transport, next.Telemetry = old.Server, old.Registry, old.Transport, old.Telemetry
	r.regMu.Lock()
	r.trSwapErr = nil
	r.regMu.Unlock()
	if cfg.Transport != old.Transport {
		err := r.swapTransport(ctx, old.Transport, cfg.Transport, old.Server)
		if err != nil {
			r.logger.Error("transport switch failed; the old transport stays in use", "from", old.Transport.Plugin, "to", cfg.Transport.Plugin, "err", err)
			r.regMu.Lock()
			r.trSwapErr = fmt.Errorf("switch to transport %q failed: %w", cfg.Transport.Plugin, err)
			r.regMu.Unlock()
		} else {
			next.Transport = cfg.Transport
		}
		r.observed.swapped(roleTransport, old.Transport.Plugin, cfg.Transport.Plugin, err)
	}
	next.Server = liveServer(old.Server, cfg.Server)

	r.regMu.Lock()
	r.swapErr = nil // a config whose registry matches the running one undoes a failed switch
	r.regMu.Unlock()
	if registryChanged(old.Registry, cfg.Registry) {
		err := r.swapRegistry(ctx, old.Registry, cfg.Registry)
		if err != nil {
			r.logger.Error("registry switch failed; the old registry stays in use", "from", old.Registry.Plugin, "to", cfg.Registry.Plugin, "err", err)
			r.regMu.Lock()
			r.swapErr = fmt.Errorf("switch to registry %q failed: %w", cfg.Registry.Plugin, err)
			r.regMu.Unlock()
		} else {
			next.Registry = cfg.Registry
			next.Registry = registryTimes(next.Registry, old.Registry)
		}
		r.observed.swapped(roleRegistry, old.Registry.Plugin, cfg.Registry.Plugin, err)
	}

	if err := r.sel.SetPolicy(policy(&next)); err != nil {
		r.logger.Error("config reload: selector policy refused; the running one stays", "err", err)
		next.Client, next.Routes = old.Client, old.Routes
	} else {
		r.client.SetOptions(clientOptions(&next))
		r.pool.SetOptions(poolOptions(&next))
	}
	r.ingress.Set(serverSettings(&next))
	r.inbound.Set(serverSettings(&next))
	r.upstream.SetMaxBody(int(next.Server.MaxBody))
	if err := r.quotas.apply(ctx, next.Quota); err != nil {
		r.logger.Error("config reload: quota", "err", err)
	}
	if err := r.services.apply(ctx, r.quotas.services(next.Services)); err != nil {
		r.logger.Error("config reload: services", "err", err)
	}
	if r.security != nil && !slices.Equal(slices.Sorted(maps.Keys(old.Services)), slices.Sorted(maps.Keys(next.Services))) {
		if err := r.security.SetServices(slices.Sorted(maps.Keys(next.Services))); err != nil {
			r.logger.Error("config reload: a certificate for the services fronted now", "err", err)
		}
	}
	next.Broker = r.applyBroker(ctx, old, cfg)
	if err := r.wrappers.apply(ctx, &next); err != nil {
		r.logger.Error("config reload: wrappers refused; the running ones stay", "err", err)
		next.Client.Wrappers, next.Server.Wrappers, next.Wrappers = old.Client.Wrappers, old.Server.Wrappers, old.Wrappers
	}
	r.cfg = &next
	r.logger.Info("config applied", "services", strings.Join(r.services.names(), ","), "strategy", next.Client.Strategy)
}

// Stop drains micro: it deregisters the fronted services so callers go elsewhere, stops
// accepting calls, waits for calls in flight (up to server.drain_timeout), stops the apps,
// and closes the registry and transport.
func (r *Runtime) Stop(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Server.DrainTimeout)
	defer cancel()

	var errs []error
	// Stop following the registry first: our own deregistration is not news to us.
	r.regMu.RLock()
	r.cacheCancel()
	r.regMu.RUnlock()
	r.services.deregisterAll(ctx)
	r.quotas.close(ctx)
	r.ingress.EndFeeds()
	if err := r.ingressSrv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, fmt.Errorf("ingress drain: %w", err))
	}
	if err := r.fastIngress.ShutdownWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("ingress drain: %w", err))
	}
	// Deliveries in flight finish while the inbound and the apps still serve; what is left
	// goes back to the broker.
	if err := r.pubsub.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("broker close: %w", err))
	}
	r.trMu.RLock()
	ln := r.inboundLn
	r.trMu.RUnlock()
	if err := ln.Close(); err != nil {
		errs = append(errs, fmt.Errorf("inbound close: %w", err))
	}
	if err := r.inbound.Wait(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := r.services.stopAll(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := r.wrappers.close(ctx); err != nil {
		errs = append(errs, err)
	}
	r.closeAll()
	return errors.Join(errs...)
}

// closeAll stops background work and releases what Start opened.
func (r *Runtime) closeAll() {
	if r.cancel != nil {
		r.cancel()
	}
	if r.tracer != nil {
		// What is queued for export gets a moment to go out.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = r.tracer.Shutdown(ctx)
		cancel()
	}
	if r.ingressLn != nil {
		_ = r.ingressLn.Close()
	}
	r.bg.Wait()
	if r.pool != nil {
		r.pool.Close()
	}
	if r.upstream != nil {
		r.upstream.Close()
	}
	if r.peers != nil {
		r.peers.Close()
	}
	if r.h2Peers != nil {
		r.h2Peers.CloseIdleConnections()
	}
	if r.h2c != nil {
		r.h2c.CloseIdleConnections()
	}
	if r.appHTTP != nil {
		r.appHTTP.CloseIdleConnections()
	}
	if r.mux != nil {
		_ = r.mux.Close()
	}
	if r.reg != nil {
		_ = r.reg.Close()
	}
	if r.pubsub != nil {
		_ = r.pubsub.Close(context.Background())
	}
	if r.security != nil {
		r.security.Close()
	}
}

// health reports the fronted services' ready instances.
func (r *Runtime) health() server.Status {
	counts, regErr := r.services.status()
	st := server.Status{Status: "ok", Services: counts}
	if regErr != nil {
		st.Errors = append(st.Errors, "registry: "+regErr.Error())
	}
	r.regMu.RLock()
	swapErr, trSwapErr, brokerSwapErr, reg := r.swapErr, r.trSwapErr, r.brokerSwapErr, r.reg
	r.regMu.RUnlock()
	if brokerSwapErr != nil {
		st.Errors = append(st.Errors, "broker: "+brokerSwapErr.Error())
	}
	if b, _ := r.pubsub.Broker(); b != nil {
		if h, ok := b.(interface{ Health() error }); ok {
			if err := h.Health(); err != nil {
				st.Errors = append(st.Errors, "broker: "+err.Error())
			}
		}
	}
	if swapErr != nil {
		st.Errors = append(st.Errors, "registry: "+swapErr.Error())
	}
	if trSwapErr != nil {
		st.Errors = append(st.Errors, "transport: "+trSwapErr.Error())
	}
	if r.security == nil {
		st.Security = "off: calls between micros are neither encrypted nor authenticated (security.mode)"
	} else {
		st.Security = "mtls"
		if err := r.security.Health(); err != nil {
			st.Errors = append(st.Errors, "security: "+err.Error())
		}
	}
	if h, ok := reg.(interface{ Health() error }); ok {
		if err := h.Health(); err != nil {
			st.Errors = append(st.Errors, "registry: "+err.Error())
		}
	}
	for name, n := range st.Services {
		if n == 0 {
			st.Errors = append(st.Errors, fmt.Sprintf("service %q has no ready instance", name))
		}
	}
	if len(st.Errors) > 0 {
		sort.Strings(st.Errors)
		st.Status = "degraded"
	}
	return st
}

func policy(cfg *config.Config) selector.Policy {
	p := selector.Policy{
		Strategy:  cfg.Client.Strategy,
		EWMADecay: cfg.Client.EWMADecay,
		Ejection: selector.Ejection{
			ConsecutiveFailures: cfg.Client.Ejection.ConsecutiveFailures,
			Base:                cfg.Client.Ejection.Base,
			Max:                 cfg.Client.Ejection.Max,
			MaxPercent:          cfg.Client.Ejection.MaxPercent,
		},
		Routes: make(map[string]selector.Route, len(cfg.Routes)),
	}
	for name, rt := range cfg.Routes {
		p.Routes[name] = selector.Route{Version: rt.Version, Metadata: rt.Metadata, Weights: rt.Weights, Strategy: rt.Strategy}
	}
	return p
}

// serverSettings are the settings of the ingress and inbound servers in cfg.
func serverSettings(cfg *config.Config) server.Settings {
	s := cfg.Server
	return server.Settings{
		MaxBody:        int64(s.MaxBody),
		MaxInflight:    s.MaxInflight,
		MaxBudget:      cfg.Client.MaxTimeout,
		RetryBuffer:    int64(cfg.Client.RetryBuffer),
		StreamIdle:     s.StreamIdleTimeout,
		CheckOrigin:    s.CheckOrigin,
		AllowedHosts:   s.AllowedHosts,
		AllowedOrigins: s.AllowedOrigins,
		Allow:          allowRules(cfg.Services),
	}
}

func clientOptions(cfg *config.Config) client.Options {
	c := cfg.Client
	o := client.Options{
		Timeout:           c.Timeout,
		AttemptTimeout:    c.AttemptTimeout,
		Attempts:          c.Attempts,
		Backoff:           c.Backoff,
		BackoffMax:        c.BackoffMax,
		RetryRatio:        c.RetryBudget.Ratio,
		RetryMinPerSecond: c.RetryBudget.MinPerSecond,
		MinSamples:        c.Adaptive.MinSamples,
	}
	if c.Adaptive.Enabled {
		o.Adaptive = client.Adaptive{Quantile: c.Adaptive.Quantile, Factor: c.Adaptive.Factor, Min: c.Adaptive.Min}
	}
	if c.Hedge.Enabled {
		o.Hedge = client.Hedge{Quantile: c.Hedge.Quantile, Min: c.Hedge.MinDelay}
	}
	for name, r := range cfg.Routes {
		if r.AttemptTimeout > 0 || !r.Hedge {
			if o.Routes == nil {
				o.Routes = make(map[string]client.Route)
			}
			o.Routes[name] = client.Route{AttemptTimeout: r.AttemptTimeout, NoHedge: !r.Hedge}
		}
	}
	return o
}

func poolOptions(cfg *config.Config) pool.Options {
	o := pool.Options{MaxIdle: cfg.Client.Pool.MaxIdle, IdleTTL: cfg.Client.Pool.IdleTTL}
	if o.MaxIdle == 0 {
		o.MaxIdle = -1 // max_idle = 0 turns pooling off; the pool reads 0 as its default
	}
	return o
}

// liveServer returns running with the [server] keys that apply while micro runs taken
// from next: the one list of them. The others (listeners and their timeouts) need a
// restart.
func liveServer(running, next config.Server) config.Server {
	running.MaxBody, running.DrainTimeout, running.Wrappers = next.MaxBody, next.DrainTimeout, next.Wrappers
	running.MaxInflight, running.StreamIdleTimeout = next.MaxInflight, next.StreamIdleTimeout
	running.CheckOrigin, running.AllowedHosts, running.AllowedOrigins = next.CheckOrigin, next.AllowedHosts, next.AllowedOrigins
	return running
}

// restartKeys lists the keys that differ between a and b but apply only at start, by
// their names in micro.toml.
func restartKeys(a, b *config.Config) []string {
	keys := changedKeys("server", liveServer(a.Server, b.Server), b.Server)
	// A registry's times need a restart; its other keys switch registries live.
	keys = append(keys, changedKeys("registry", a.Registry, registryTimes(a.Registry, b.Registry))...)
	keys = append(keys, changedKeys("log", a.Log, b.Log)...)
	keys = append(keys, changedKeys("telemetry", a.Telemetry, b.Telemetry)...)
	return append(keys, changedKeys("security", a.Security, b.Security)...)
}

// changedKeys names the fields that differ between a and b, two structs of one config
// section, as section.key.
func changedKeys(section string, a, b any) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var keys []string
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			keys = append(keys, section+"."+va.Type().Field(i).Tag.Get("koanf"))
		}
	}
	return keys
}

// registryTimes returns r with the keys of [registry] that need a restart (its times)
// taken from times: the one list of them.
func registryTimes(r, times config.Registry) config.Registry {
	r.TTL, r.Heartbeat, r.CacheTTL = times.TTL, times.Heartbeat, times.CacheTTL
	return r
}

// registryChanged reports whether b names another registry than a, so that micro must
// switch to it. TTLs are not part of that: they need a restart.
func registryChanged(a, b config.Registry) bool {
	return registryTimes(a, b) != b
}

// advertiseAddr is the address to register: the configured one, or the bound one with an
// unspecified host replaced by loopback.
func advertiseAddr(configured, bound string) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
