// Package plugin runs registry plugins: it starts a plugin executable as a go-plugin
// subprocess (gRPC, AutoMTLS, the handshake of abi) and implements runtime/registry's
// Registry over it. It builds the executable from source when asked, refuses a binary whose
// sha256 differs from its pin, forwards the plugin's logs into micro's log, restarts a
// plugin that crashed, and makes plugins die with micro.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/abi/registrypb"
	"github.com/microhost/micro/runtime/registry"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// errDown is wrapped by the errors of calls made while the plugin is not running.
var errDown = errors.New("down")

// errClosed is wrapped by the errors of calls made after Close.
var errClosed = errors.New("closed")

// Registry is a runtime/registry.Registry served by a plugin process.
//
// When the process exits, or stops answering, Registry restarts it in the background with
// jittered exponential backoff (100ms to 10s) and calls Init again. Meanwhile its methods
// fail at once, open Watchers end with an error, and Health reports the failure; micro's
// registry cache serves stale entries, reopens its watch, and its heartbeats restore the
// registrations of a plugin that lost them.
type Registry struct {
	cfg  Config
	path string
	log  *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	kick   chan struct{} // a call saw UNAVAILABLE: check the process
	wg     sync.WaitGroup

	mu      sync.Mutex
	cur     *instance // nil while down
	lastErr error     // why it is down
	closed  bool
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
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("registry plugin %q: a name is letters, digits, '.', '_' and '-', not starting with '.'", cfg.Name)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	log := logger.With("plugin", cfg.Name)
	log.Debug("opening registry plugin", "config", cfg)
	path, err := executable(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	in, err := start(ctx, cfg, path, log)
	if err != nil {
		return nil, err
	}
	log.Info("registry plugin started", "path", path, "pid", in.pid)
	r := &Registry{
		cfg:  cfg,
		path: path,
		log:  log,
		kick: make(chan struct{}, 1),
		cur:  in,
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.supervise(in)
	return r, nil
}

// validName reports whether name can name a plugin and its binary.
func validName(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	for _, c := range name {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// Health returns nil while the plugin runs, and else why it does not.
func (r *Registry) Health() error {
	_, err := r.current()
	return err
}

// Close stops the plugin and its supervision. It does not deregister anything. Open
// Watchers end.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait() // the supervisor installs no instance after this
	r.mu.Lock()
	in := r.cur
	r.cur = nil
	r.mu.Unlock()
	if in != nil {
		in.kill()
	}
	r.log.Info("registry plugin stopped")
	return nil
}

// current returns the running instance, or an error saying why there is none.
func (r *Registry) current() (*instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return nil, fmt.Errorf("registry plugin %q: %w", r.cfg.Name, errClosed)
	case r.cur == nil:
		return nil, fmt.Errorf("registry plugin %q: %w, restarting: %w", r.cfg.Name, errDown, r.lastErr)
	}
	return r.cur, nil
}

// pid returns the process id of the running plugin, or 0.
func (r *Registry) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return 0
	}
	return r.cur.pid
}

// supervise restarts the plugin whenever its process exits or stops answering, until
// Close.
func (r *Registry) supervise(in *instance) {
	defer r.wg.Done()
	backoff := r.cfg.restartMin
	for {
		why := r.watchInstance(in)
		if why == nil {
			return // closed
		}
		r.mu.Lock()
		r.cur = nil
		r.lastErr = why
		r.mu.Unlock()
		r.log.Error("registry plugin failed; restarting it", "err", why, "pid", in.pid)
		in.kill()
		if time.Since(in.started) > r.cfg.restartMax {
			backoff = r.cfg.restartMin // it ran well for a while
		}
		for {
			// Jitter over [backoff/2, backoff).
			d := backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, r.cfg.restartMax)
			t := time.NewTimer(d)
			select {
			case <-r.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			next, err := start(r.ctx, r.cfg, r.path, r.log)
			if err != nil {
				if r.ctx.Err() != nil {
					return
				}
				r.mu.Lock()
				r.lastErr = err
				r.mu.Unlock()
				r.log.Warn("registry plugin restart failed", "err", err, "retry_in", backoff)
				continue
			}
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				next.kill()
				return
			}
			r.cur, r.lastErr = next, nil
			r.mu.Unlock()
			r.log.Info("registry plugin restarted", "pid", next.pid)
			in = next
			break
		}
	}
}

// watchInstance waits until in fails, and returns why, or nil when the Registry closes.
func (r *Registry) watchInstance(in *instance) error {
	for {
		select {
		case <-r.ctx.Done():
			return nil
		case <-in.exited:
			return errors.New("plugin process exited")
		case <-r.kick:
			if err := in.ping(r.ctx, r.cfg.StartTimeout); err != nil {
				if r.ctx.Err() != nil {
					return nil
				}
				// A process that is exiting fails pings before go-plugin reaps it: give it
				// a moment, for the better reason.
				t := time.NewTimer(time.Second)
				defer t.Stop()
				select {
				case <-in.exited:
					return errors.New("plugin process exited")
				case <-r.ctx.Done():
					return nil
				case <-t.C:
				}
				return fmt.Errorf("plugin does not answer: %w", rpcError(err))
			}
		}
	}
}

// failed turns the error of a call to op into micro's, and has the supervisor check the
// plugin when the call could not reach it or timed out.
func (r *Registry) failed(op string, err error) error {
	// UNAVAILABLE: the connection is gone. DEADLINE_EXCEEDED: the plugin may hang. A
	// health check tells.
	if code := status.Code(err); code == codes.Unavailable || code == codes.DeadlineExceeded {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
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
	_, err = in.rpc.Register(ctx, &registrypb.RegisterRequest{Service: serviceToProto(s), Ttl: durationpb.New(ttl)})
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
	_, err = in.rpc.Deregister(ctx, &registrypb.DeregisterRequest{Service: serviceToProto(s)})
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
	resp, err := in.rpc.GetService(ctx, &registrypb.GetServiceRequest{Name: name})
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
	resp, err := in.rpc.ListServices(ctx, &registrypb.ListServicesRequest{})
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
	stop := context.AfterFunc(r.ctx, cancel)
	// The plugin sends its headers as it starts the watch; one that sends none in
	// StartTimeout hangs.
	var hung atomic.Bool
	timer := time.AfterFunc(r.cfg.StartTimeout, func() {
		hung.Store(true)
		cancel()
	})
	stream, err := in.rpc.Watch(ctx, &registrypb.WatchRequest{})
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
			err = status.Errorf(codes.DeadlineExceeded, "no answer within %v", r.cfg.StartTimeout)
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
			Id:        n.ID,
			Address:   n.Address,
			Version:   n.Version,
			Metadata:  n.Metadata,
			Endpoints: n.Endpoints,
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
		ID:        n.GetId(),
		Address:   n.GetAddress(),
		Version:   n.GetVersion(),
		Metadata:  n.GetMetadata(),
		Endpoints: n.GetEndpoints(),
	}
}
