// Package plugin runs registry, transport and broker plugins: it starts a plugin executable
// as a go-plugin subprocess (gRPC, AutoMTLS, the handshake of abi) and implements
// runtime/registry's Registry (OpenRegistry), runtime/transport's Transport
// (OpenTransport) or runtime/broker's Broker (OpenBroker) over it. It builds the executable from source when asked, refuses a
// binary whose sha256 differs from its pin, forwards the plugin's logs into micro's log,
// restarts a plugin that crashed, and makes plugins die with micro.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/microhost/micro/abi/registrypb"
	"github.com/microhost/micro/runtime/registry"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Registry is a runtime/registry.Registry, and a registry.Elector, served by a plugin
// process.
//
// When the process exits, or stops answering, Registry restarts it in the background with
// jittered exponential backoff (100ms to 10s) and calls Init again. Meanwhile its methods
// fail at once, open Watchers end with an error, and Health reports the failure; micro's
// registry cache serves stale entries, reopens its watch, and its heartbeats restore the
// registrations of a plugin that lost them.
type Registry struct {
	cfg Config
	s   *supervisor
}

var _ registry.Registry = (*Registry)(nil)

// OpenRegistry starts the registry plugin that cfg names and initialises it with cfg's
// Address, Datacenter and Token. When cfg.Path is empty it first builds cfg.SourceDir into
// cfg.CacheDir, if the binary there is missing or stale. It fails when the binary cannot be
// built, its sha256 differs from cfg.SHA256, it does not complete the handshake within
// cfg.StartTimeout (or speaks another protocol version), or its Init fails (for instance,
// because its backend is unreachable); no process is left running then. The plugin's log
// lines go to logger with plugin=<cfg.Name>.
func OpenRegistry(ctx context.Context, cfg Config, logger *slog.Logger) (*Registry, error) {
	if logger != nil && validName(cfg.Name) {
		logger.With("plugin", cfg.Name).Debug("opening registry plugin", "config", cfg)
	}
	init := func(ctx context.Context, in *instance) error {
		_, err := in.registry.Init(ctx, &registrypb.InitRequest{
			Address:    cfg.Address,
			Datacenter: cfg.Datacenter,
			Token:      cfg.Token,
		})
		return err
	}
	s, err := openSupervisor(ctx, registryKind, cfg.proc(), logger, init)
	if err != nil {
		return nil, err
	}
	return &Registry{cfg: cfg, s: s}, nil
}

// Health returns nil while the plugin runs, and else why it does not.
func (r *Registry) Health() error {
	_, err := r.s.current()
	return err
}

// Close stops the plugin and its supervision. It does not deregister anything. Open
// Watchers end.
func (r *Registry) Close() error {
	r.s.close()
	return nil
}

// current returns the running instance, or an error saying why there is none.
func (r *Registry) current() (*instance, error) { return r.s.current() }

// pid returns the process id of the running plugin, or 0.
func (r *Registry) pid() int { return r.s.pid() }

// failed turns the error of a call to op into micro's, and has the supervisor check the
// plugin when the call could not reach it or timed out.
func (r *Registry) failed(op string, err error) error {
	r.s.check(err)
	return fmt.Errorf("registry plugin %q: %s: %w", r.cfg.Name, op, rpcError(err))
}

// Register implements registry.Registry.
func (r *Registry) Register(ctx context.Context, s *registry.Service, ttl time.Duration) error {
	if s == nil {
		return fmt.Errorf("registry plugin %q: register: nil service", r.cfg.Name)
	}
	in, err := r.current()
	if err != nil {
		return err
	}
	_, err = in.registry.Register(ctx, &registrypb.RegisterRequest{Service: serviceToProto(s), Ttl: durationpb.New(ttl)})
	if err != nil {
		return r.failed(fmt.Sprintf("register %q", s.Name), err)
	}
	return nil
}

// Deregister implements registry.Registry.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service) error {
	if s == nil {
		return fmt.Errorf("registry plugin %q: deregister: nil service", r.cfg.Name)
	}
	in, err := r.current()
	if err != nil {
		return err
	}
	_, err = in.registry.Deregister(ctx, &registrypb.DeregisterRequest{Service: serviceToProto(s)})
	if err != nil {
		return r.failed(fmt.Sprintf("deregister %q", s.Name), err)
	}
	return nil
}

// GetService implements registry.Registry. A service with no live node is
// registry.ErrNotFound.
func (r *Registry) GetService(ctx context.Context, name string) (*registry.Service, error) {
	in, err := r.current()
	if err != nil {
		return nil, err
	}
	resp, err := in.registry.GetService(ctx, &registrypb.GetServiceRequest{Name: name})
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("registry plugin %q: service %q: %w", r.cfg.Name, name, registry.ErrNotFound)
	}
	if err != nil {
		return nil, r.failed(fmt.Sprintf("get service %q", name), err)
	}
	if resp.GetService() == nil {
		return nil, fmt.Errorf("registry plugin %q: service %q: %w", r.cfg.Name, name, registry.ErrNotFound)
	}
	return serviceFromProto(resp.GetService()), nil
}

// ListServices implements registry.Registry.
func (r *Registry) ListServices(ctx context.Context) ([]*registry.Service, error) {
	in, err := r.current()
	if err != nil {
		return nil, err
	}
	resp, err := in.registry.ListServices(ctx, &registrypb.ListServicesRequest{})
	if err != nil {
		return nil, r.failed("list services", err)
	}
	out := make([]*registry.Service, 0, len(resp.GetServices()))
	for _, s := range resp.GetServices() {
		if s != nil {
			out = append(out, serviceFromProto(s))
		}
	}
	return out, nil
}

// Watch implements registry.Registry. It returns once the plugin runs the watch, so that
// every later change is reported. The Watcher ends with an error when the plugin fails,
// and at Close.
func (r *Registry) Watch(ctx context.Context) (registry.Watcher, error) {
	in, err := r.current()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.s.ctx, cancel)
	// The plugin sends its headers as it starts the watch; one that sends none in
	// StartTimeout hangs.
	var hung atomic.Bool
	timer := time.AfterFunc(r.s.cfg.StartTimeout, func() {
		hung.Store(true)
		cancel()
	})
	stream, err := in.registry.Watch(ctx, &registrypb.WatchRequest{})
	if err == nil {
		var md metadata.MD
		if md, err = stream.Header(); err == nil && md == nil {
			// The stream failed before its headers; Recv returns why.
			if _, err = stream.Recv(); err == nil {
				err = errors.New("event before the headers")
			}
		}
	}
	timer.Stop()
	if err != nil {
		stop()
		cancel()
		if hung.Load() {
			err = status.Errorf(codes.DeadlineExceeded, "no answer within %v", r.s.cfg.StartTimeout)
		}
		return nil, r.failed("watch", err)
	}
	return &watcher{r: r, stream: stream, cancel: cancel, stop: stop}, nil
}

// watcher is a registry.Watcher over a Watch stream.
type watcher struct {
	r      *Registry
	stream registrypb.Registry_WatchClient
	cancel context.CancelFunc
	stop   func() bool
}

// Next implements registry.Watcher.
func (w *watcher) Next() (registry.Event, error) {
	ev, err := w.stream.Recv()
	if err != nil {
		return registry.Event{}, w.r.failed("watch", err)
	}
	out := registry.Event{Type: registry.EventUpdate, Service: ev.GetService()}
	if ev.GetType() == registrypb.EventType_EVENT_TYPE_DELETE {
		out.Type = registry.EventDelete
	}
	if n := ev.GetNode(); n != nil {
		out.Node = nodeFromProto(n)
	}
	return out, nil
}

// Stop implements registry.Watcher.
func (w *watcher) Stop() {
	w.stop()
	w.cancel()
}

var _ registry.Elector = (*Registry)(nil)

// Campaign implements registry.Elector over the plugin's Campaign stream: it blocks until
// the plugin says that this candidate leads name, or ctx ends. When the plugin process dies
// or is restarted before that, it campaigns again on the restarted plugin. A plugin that
// cannot elect leaders (one built before election, or whose registry lacks it) makes it fail
// with an error wrapping errors.ErrUnsupported.
//
// The Leadership holds the stream open; ctx no longer matters once Campaign has returned.
// Lost is closed when the stream ends: the plugin lost the leadership, its process died or
// was restarted, or the Registry was closed. Resign cancels the stream and waits for it to
// end; the plugin gives the leadership up as it sees the cancellation, so Leader may report
// this candidate for a moment after Resign returns.
func (r *Registry) Campaign(ctx context.Context, name, value string) (registry.Leadership, error) {
	// gRPC carries strings as UTF-8 only.
	if !utf8.ValidString(name) {
		return nil, fmt.Errorf("registry plugin %q: campaign %q: the name is not valid UTF-8", r.cfg.Name, name)
	}
	if !utf8.ValidString(value) {
		return nil, fmt.Errorf("registry plugin %q: campaign %q: value %.40q is not valid UTF-8", r.cfg.Name, name, value)
	}
	backoff := campaignRetryMin
	for {
		in, err := r.current()
		if errors.Is(err, errClosed) {
			return nil, err
		}
		if err == nil {
			var (
				l     registry.Leadership
				retry bool
			)
			l, retry, err = r.campaign(ctx, in, name, value)
			if !retry {
				return l, err
			}
		}
		// The plugin is down, or went down during the campaign: wait for it to come back,
		// or a moment when this instance may still serve.
		wctx, cancel := context.WithTimeout(ctx, backoff)
		r.s.next(wctx, in)
		cancel()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("registry plugin %q: campaign %q: %w (while the plugin was failing: %w)",
				r.cfg.Name, name, ctx.Err(), err)
		}
		backoff = min(2*backoff, campaignRetryMax)
	}
}

// The bounds of the backoff between the tries of a Campaign while the plugin is down.
const (
	campaignRetryMin = 50 * time.Millisecond
	campaignRetryMax = time.Second
)

// gone reports whether the plugin instance in has exited or been replaced.
func (r *Registry) gone(in *instance) bool {
	select {
	case <-in.exited:
		return true
	default:
	}
	cur, _ := r.current()
	return cur != in
}

// campaign runs one Campaign stream on the plugin instance in. When it fails because the
// plugin went down, it says to retry once the plugin is back.
func (r *Registry) campaign(ctx context.Context, in *instance, name, value string) (l registry.Leadership, retry bool, err error) {
	// The stream outlives ctx once elected: its context ends only when the leadership is
	// given up, the Registry closed, or, until elected, when ctx ends.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopClose := context.AfterFunc(r.s.ctx, cancel)
	stopCaller := context.AfterFunc(ctx, cancel)
	fail := func(err error) (registry.Leadership, bool, error) {
		stopCaller()
		stopClose()
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil, false, fmt.Errorf("registry plugin %q: campaign %q: %w", r.cfg.Name, name, ctx.Err())
		case r.s.ctx.Err() != nil:
			return nil, false, fmt.Errorf("registry plugin %q: campaign %q: %w", r.cfg.Name, name, errClosed)
		case status.Code(err) == codes.Unimplemented:
			return nil, false, r.unsupported(err)
		}
		err = r.failed(fmt.Sprintf("campaign %q", name), err)
		return nil, status.Code(err) == codes.Unavailable || r.gone(in), err
	}
	stream, err := in.registry.Campaign(sctx, &registrypb.CampaignRequest{Name: name, Value: value})
	if err != nil {
		return fail(err)
	}
	ev, err := stream.Recv()
	switch {
	case errors.Is(err, io.EOF):
		return fail(status.Error(codes.Internal, "the campaign stream ended before an election"))
	case err != nil:
		return fail(err)
	case !ev.GetElected():
		return fail(status.Error(codes.Internal, "the campaign stream's first event is not an election"))
	}
	if (!stopCaller() && ctx.Err() != nil) || r.s.ctx.Err() != nil {
		// ctx ended, or the Registry was closed, as the election came: the stream is
		// canceled, the leadership given up.
		return fail(sctx.Err())
	}
	ld := &leadership{cancel: cancel, lost: make(chan struct{})}
	go func() {
		defer close(ld.lost)
		defer stopClose()
		defer cancel()
		for {
			if _, err := stream.Recv(); err != nil {
				if sctx.Err() == nil {
					r.s.check(err)
					r.s.log.Warn("registry plugin: leadership lost", "election", name, "err", rpcError(err))
				}
				return
			}
			// Later events of a leading candidate carry nothing for this version.
		}
	}()
	return ld, false, nil
}

// Leader implements registry.Elector with the plugin's Leader call. No leader is an error
// wrapping registry.ErrNoLeader; a plugin that cannot elect leaders, one wrapping
// errors.ErrUnsupported.
func (r *Registry) Leader(ctx context.Context, name string) (string, error) {
	if !utf8.ValidString(name) {
		return "", fmt.Errorf("registry plugin %q: leader of %q: the name is not valid UTF-8", r.cfg.Name, name)
	}
	in, err := r.current()
	if err != nil {
		return "", err
	}
	resp, err := in.registry.Leader(ctx, &registrypb.LeaderRequest{Name: name})
	switch {
	case status.Code(err) == codes.Unimplemented:
		return "", r.unsupported(err)
	case err != nil:
		return "", r.failed(fmt.Sprintf("leader of %q", name), err)
	case !resp.GetFound():
		return "", fmt.Errorf("registry plugin %q: election %q: %w", r.cfg.Name, name, registry.ErrNoLeader)
	}
	return resp.GetValue(), nil
}

// unsupported is the error of an election call that the plugin answered with
// UNIMPLEMENTED (err).
func (r *Registry) unsupported(err error) error {
	return fmt.Errorf("registry plugin %q cannot elect leaders: %w (the plugin says: %s)",
		r.cfg.Name, errors.ErrUnsupported, status.Convert(err).Message())
}

// leadership is a registry.Leadership held by an open Campaign stream.
type leadership struct {
	cancel context.CancelFunc // ends the stream
	lost   chan struct{}      // closed once the stream has ended
}

// Lost implements registry.Leadership.
func (l *leadership) Lost() <-chan struct{} { return l.lost }

// Resign implements registry.Leadership: it cancels the stream, and waits until it has
// ended, or ctx ends.
func (l *leadership) Resign(ctx context.Context) error {
	l.cancel()
	select {
	case <-l.lost:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("resign: %w", ctx.Err())
	}
}

// statusError is a gRPC error made readable: its text is the plugin's message, prefixed
// with the code unless UNKNOWN (the code of a plugin's own errors).
type statusError struct{ st *status.Status }

// rpcError makes err, returned by a call to the plugin, readable. It keeps the gRPC
// status (status.Code works on it) and wraps context.Canceled and
// context.DeadlineExceeded for those codes.
func rpcError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &statusError{st: st}
}

func (e *statusError) Error() string {
	if e.st.Code() == codes.Unknown {
		return e.st.Message()
	}
	return e.st.Code().String() + ": " + e.st.Message()
}

// GRPCStatus lets status.FromError and status.Code see the status.
func (e *statusError) GRPCStatus() *status.Status { return e.st }

func (e *statusError) Unwrap() error {
	switch e.st.Code() {
	case codes.Canceled:
		return context.Canceled
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	}
	return nil
}

func serviceToProto(s *registry.Service) *registrypb.Service {
	p := &registrypb.Service{Name: s.Name, Nodes: make([]*registrypb.Node, 0, len(s.Nodes))}
	for _, n := range s.Nodes {
		if n == nil {
			continue
		}
		p.Nodes = append(p.Nodes, &registrypb.Node{
			Id:         n.ID,
			Address:    n.Address,
			Version:    n.Version,
			Metadata:   n.Metadata,
			Endpoints:  n.Endpoints,
			Idempotent: n.Idempotent,
		})
	}
	return p
}

func serviceFromProto(p *registrypb.Service) *registry.Service {
	s := &registry.Service{Name: p.GetName(), Nodes: make([]*registry.Node, 0, len(p.GetNodes()))}
	for _, n := range p.GetNodes() {
		if n != nil {
			s.Nodes = append(s.Nodes, nodeFromProto(n))
		}
	}
	return s
}

func nodeFromProto(n *registrypb.Node) *registry.Node {
	return &registry.Node{
		ID:         n.GetId(),
		Address:    n.GetAddress(),
		Version:    n.GetVersion(),
		Metadata:   n.GetMetadata(),
		Endpoints:  n.GetEndpoints(),
		Idempotent: n.GetIdempotent(),
	}
}
