package plugin

import (
	"context"
	"errors"
	"fmt"
	jitter "github.com/microhost/micro/runtime/backoff"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errDown is wrapped by the errors of calls made while the plugin is not running.
var errDown = errors.New("down")

// errClosed is wrapped by the errors of calls made after Close.
var errClosed = errors.New("closed")

// supervisor runs one plugin process of any kind and restarts it when it exits or stops
// answering, with jittered exponential backoff, until close.
type supervisor struct {
	kind kind
	cfg  procConfig
	path string
	log  *slog.Logger
	init func(context.Context, *instance) error

	ctx    context.Context // ends at close
	cancel context.CancelFunc
	kick   chan struct{} // a call saw UNAVAILABLE: check the process
	wg     sync.WaitGroup

	mu      sync.Mutex
	cur     *instance // nil while down
	lastErr error     // why it is down
	closed  bool
	changed chan struct{} // closed, and replaced, whenever cur changes or at close
}

// openSupervisor validates cfg, finds or builds the executable, starts the plugin, calls
// init on it, and supervises it.
func openSupervisor(ctx context.Context, k kind, cfg procConfig, logger *slog.Logger, init func(context.Context, *instance) error) (*supervisor, error) {
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("%s plugin %q: a name is letters, digits, '.', '_' and '-', not starting with '.'", k.name, cfg.Name)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	log := logger.With("plugin", cfg.Name)
	path, err := executable(ctx, k, cfg, log)
	if err != nil {
		return nil, err
	}
	in, err := start(ctx, k, cfg, path, log, init)
	if err != nil {
		return nil, err
	}
	log.Info(k.name+" plugin started", "path", path, "pid", in.pid)
	s := &supervisor{
		kind:    k,
		cfg:     cfg,
		path:    path,
		log:     log,
		init:    init,
		kick:    make(chan struct{}, 1),
		cur:     in,
		changed: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.supervise(in)
	return s, nil
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

// close stops the plugin and its supervision; it reports whether this call closed it.
func (s *supervisor) close() bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait() // the supervisor installs no instance after this
	s.mu.Lock()
	in := s.cur
	s.cur = nil
	s.notifyLocked()
	s.mu.Unlock()
	if in != nil {
		in.kill()
	}
	s.log.Info(s.kind.name + " plugin stopped")
	return true
}

// notifyLocked wakes the waiters of changed; s.mu is held.
func (s *supervisor) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// current returns the running instance, or an error saying why there is none.
func (s *supervisor) current() (*instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentLocked()
}

func (s *supervisor) currentLocked() (*instance, error) {
	switch {
	case s.closed:
		return nil, fmt.Errorf("%s plugin %q: %w", s.kind.name, s.cfg.Name, errClosed)
	case s.cur == nil:
		return nil, fmt.Errorf("%s plugin %q: %w, restarting: %w", s.kind.name, s.cfg.Name, errDown, s.lastErr)
	}
	return s.cur, nil
}

// next waits until an instance other than prev runs, and returns it; it fails when ctx
// ends or at close.
func (s *supervisor) next(ctx context.Context, prev *instance) (*instance, error) {
	for {
		s.mu.Lock()
		in, err := s.currentLocked()
		changed := s.changed
		s.mu.Unlock()
		if errors.Is(err, errClosed) {
			return nil, err
		}
		if in != nil && in != prev {
			return in, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pid returns the process id of the running plugin, or 0.
func (s *supervisor) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return 0
	}
	return s.cur.pid
}

// check has the supervisor check the plugin, when err (from a call to it) says that the
// call could not reach it or timed out.
func (s *supervisor) check(err error) {
	// UNAVAILABLE: the connection is gone. DEADLINE_EXCEEDED: the plugin may hang. A
	// health check tells.
	if code := status.Code(err); code == codes.Unavailable || code == codes.DeadlineExceeded {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// supervise restarts the plugin whenever its process exits or stops answering, until
// close.
func (s *supervisor) supervise(in *instance) {
	defer s.wg.Done()
	backoff := s.cfg.restartMin
	for {
		why := s.watchInstance(in)
		if why == nil {
			return // closed
		}
		s.mu.Lock()
		s.cur = nil
		s.lastErr = why
		s.notifyLocked()
		s.mu.Unlock()
		s.log.Error(s.kind.name+" plugin failed; restarting it", "err", why, "pid", in.pid)
		in.kill()
		if time.Since(in.started) > s.cfg.restartMax {
			backoff = s.cfg.restartMin // it ran well for a while
		}
		for {
			d := jitter.Jitter(backoff)
			backoff = min(backoff*2, s.cfg.restartMax)
			t := time.NewTimer(d)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			next, err := start(s.ctx, s.kind, s.cfg, s.path, s.log, s.init)
			if err != nil {
				if s.ctx.Err() != nil {
					return
				}
				s.mu.Lock()
				s.lastErr = err
				s.mu.Unlock()
				s.log.Warn(s.kind.name+" plugin restart failed", "err", err, "retry_in", backoff)
				continue
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				next.kill()
				return
			}
			s.cur, s.lastErr = next, nil
			s.notifyLocked()
			s.mu.Unlock()
			s.log.Info(s.kind.name+" plugin restarted", "pid", next.pid)
			in = next
			break
		}
	}
}

// watchInstance waits until in fails, and returns why, or nil at close.
func (s *supervisor) watchInstance(in *instance) error {
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-in.exited:
			return errors.New("plugin process exited")
		case <-s.kick:
			if err := in.ping(s.ctx, s.cfg.StartTimeout); err != nil {
				if s.ctx.Err() != nil {
					return nil
				}
				// A process that is exiting fails pings before go-plugin reaps it: give it
				// a moment, for the better reason.
				t := time.NewTimer(time.Second)
				defer t.Stop()
				select {
				case <-in.exited:
					return errors.New("plugin process exited")
				case <-s.ctx.Done():
					return nil
				case <-t.C:
				}
				return fmt.Errorf("plugin does not answer: %w", rpcError(err))
			}
		}
	}
}
