// Package supervisor starts and supervises the app instances of the services that micro
// fronts.
//
// A Group runs the instances of one service's app. Each instance is a process started from
// Spec.Command on a free loopback port, which it learns from the PORT and MICRO_APP_ADDR env
// variables. The Group reports an instance through Options.OnReady once it answers, and
// through Options.OnDown when it goes away, and it restarts an instance that exits with a
// jittered exponential backoff. Stop ends the instances gracefully: SIGTERM to each
// instance's process group, then SIGKILL after Options.StopTimeout.
//
// Instances run in their own process group, so that a wrapper such as `go run` and the app it
// starts get the same signals. With Options.Keeper set, the leader of that group is a keeper
// (see Keep) that starts the app and kills the whole group when micro dies, however it dies,
// so that no process an instance started outlives micro. Without a keeper the app leads its
// group itself, and on Linux the kernel kills it, but not its own children, when micro dies.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Spec describes the app of one service and how many instances of it run.
type Spec struct {
	// Service names the service; instance IDs are Service-1, Service-2, ….
	Service string
	// Command is the app's argv. A Command[0] without a slash is looked up in micro's PATH;
	// a relative path with a slash is taken from Dir.
	Command []string
	// Dir is the working directory of the app; empty means micro's.
	Dir string
	// Env adds variables to the app's environment, over micro's own. PORT, MICRO_APP_ADDR,
	// MICRO_INSTANCE and MICRO_SERVICE are set by the Group and cannot be overridden.
	Env map[string]string
	// Instances is how many copies of the app run; zero means one.
	Instances int
	// Health is the HTTP path polled to see that an instance is ready, e.g. "/health": a 2xx
	// answer means ready. Empty means ready once the instance's port accepts connections.
	Health string
}

// Instance is one running copy of a service's app.
type Instance struct {
	// ID names the instance, e.g. "greeter-1". It is stable across restarts.
	ID string
	// Index is the instance's number, from 1.
	Index int
	// Addr is the host:port the instance listens on. A restart picks a new port.
	Addr string
	// PID is the process ID of the leader of the instance's process group, which has the
	// same ID: the keeper when Options.Keeper is set, else the process of Command.
	PID int
}

// Options tunes a Group. The zero value is usable.
//
// The callbacks run on the goroutine that supervises the instance, so an instance waits for
// them: OnDown returns before a stopping instance gets SIGTERM. Calls for one instance come
// in order; calls for different instances may come at the same time. A callback may call
// Instances, but not Stop, Update or Scale, which wait for it.
type Options struct {
	// Logger receives the Group's log and the apps' output, line by line. Nil discards both.
	Logger *slog.Logger
	// OnReady is called when an instance is ready.
	OnReady func(Instance)
	// OnDown is called when an instance that was reported ready goes away: with the reason
	// when it exited on its own, at once, and with a nil error just before the Group stops
	// it (Stop, Update, Scale), so that it can be deregistered while it still serves.
	// Every OnReady is followed by exactly one OnDown.
	OnDown func(Instance, error)
	// OnFail is called when an instance fails to start: its process could not be started,
	// exited before it was ready, or was not ready within ReadyTimeout. It is then restarted
	// after a backoff.
	OnFail func(Instance, error)
	// StopTimeout is how long a stop waits after SIGTERM before it sends SIGKILL. Default 10s.
	StopTimeout time.Duration
	// ReadyTimeout is how long a new instance has to become ready. Default 60s, which leaves
	// time for `go run` to compile.
	ReadyTimeout time.Duration
	// BackoffBase is the first delay before a restart; each failure in a row doubles it, up
	// to BackoffMax. Delays are jittered between half and all of their value.
	// Defaults 100ms and 10s.
	BackoffBase, BackoffMax time.Duration
	// ResetAfter is how long an instance must stay ready for its next restart to start
	// again from BackoffBase. Default 10s.
	ResetAfter time.Duration
	// Keeper is the argv of a program that calls Keep with the rest of its arguments, e.g.
	// micro's own executable and its hidden keeper command. When it is set, each instance
	// runs under a keeper, which kills the instance's whole process group when micro dies.
	// Keeper[0] is looked up in PATH when it has no slash, and a relative path is taken from
	// micro's working directory. Empty starts apps directly.
	Keeper []string
}

// ErrStopped is returned by the methods of a Group that has been stopped.
var ErrStopped = errors.New("supervisor: group stopped")

// Defaults of Options.
const (
	defaultStopTimeout  = 10 * time.Second
	defaultReadyTimeout = 60 * time.Second
	defaultBackoffBase  = 100 * time.Millisecond
	defaultBackoffMax   = 10 * time.Second
	defaultResetAfter   = 10 * time.Second
)

// Group states.
const (
	idle = iota
	running
	stopped
)

// A Group runs and supervises the instances of one service's app. Its methods are safe for
// concurrent use. A Group runs once: after Stop it cannot be started again.
type Group struct {
	opts  Options
	log   *slog.Logger
	probe *http.Client
	ops   sync.Mutex // serializes Start, Update and Scale

	mu      sync.Mutex
	spec    Spec  // as given to New, until Start
	plan    *plan // what new processes run
	state   int
	slots   map[int]*slot
	ready   map[int]Instance
	changed chan struct{} // closed and replaced when slots or ready change
	quit    chan struct{} // closed by Stop

	wg sync.WaitGroup // every goroutine of the Group
}

// New returns a Group that runs spec once started.
func New(spec Spec, opts Options) *Group {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&opts.StopTimeout, defaultStopTimeout)
	setDefault(&opts.ReadyTimeout, defaultReadyTimeout)
	setDefault(&opts.BackoffBase, defaultBackoffBase)
	setDefault(&opts.BackoffMax, defaultBackoffMax)
	setDefault(&opts.ResetAfter, defaultResetAfter)
	opts.BackoffMax = max(opts.BackoffMax, opts.BackoffBase)
	return &Group{
		opts: opts,
		log:  opts.Logger.With("service", spec.Service),
		probe: &http.Client{
			Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		spec:    spec,
		slots:   make(map[int]*slot),
		ready:   make(map[int]Instance),
		changed: make(chan struct{}),
		quit:    make(chan struct{}),
	}
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Start checks the spec and launches every instance. It returns once their processes have
// started; readiness is reported later through Options.OnReady (see also WaitReady). ctx
// bounds the launch only: the instances run until Stop. When an instance cannot be
// launched, Start stops the others and returns an error that names the cause, e.g. a
// command that is not found.
func (g *Group) Start(ctx context.Context) error {
	g.ops.Lock()
	defer g.ops.Unlock()

	g.mu.Lock()
	spec, state := g.spec, g.state
	g.mu.Unlock()
	switch state {
	case running:
		return fmt.Errorf("supervisor: service %q: already started", spec.Service)
	case stopped:
		return ErrStopped
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	pl, err := resolve(spec, g.opts.Keeper)
	if err != nil {
		return err
	}

	g.mu.Lock()
	if g.state == stopped {
		g.mu.Unlock()
		return ErrStopped
	}
	g.plan = pl
	g.state = running
	slots := make([]*slot, 0, pl.Instances)
	for i := 1; i <= pl.Instances; i++ {
		slots = append(slots, g.addSlotLocked(i))
	}
	g.mu.Unlock()
	g.log.Info("starting app", "command", strings.Join(pl.Command, " "), "instances", pl.Instances)

	var errs []error
	for _, s := range slots {
		select {
		case err := <-s.launched:
			if err != nil {
				errs = append(errs, err)
			}
		case <-ctx.Done():
			errs = append(errs, ctx.Err())
		case <-g.quit:
			return ErrStopped
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), g.opts.StopTimeout)
	defer cancel()
	_ = g.Stop(stopCtx)
	return fmt.Errorf("supervisor: service %q: %w", pl.Service, errors.Join(errs...))
}

// Stop stops every instance and waits until they and all of the Group's goroutines are gone.
// Each instance is reported through OnDown, then gets SIGTERM to its process group, and
// SIGKILL once Options.StopTimeout has passed or ctx ends. Stop returns ctx's error when it
// had to kill instances because ctx ended. Calling Stop again waits the same way.
func (g *Group) Stop(ctx context.Context) error {
	g.mu.Lock()
	var slots []*slot
	if g.state != stopped {
		g.state = stopped
		close(g.quit)
		slots = slices.Collect(maps.Values(g.slots))
		g.notifyLocked()
	}
	g.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(slots))
	for i, s := range slots {
		wg.Go(func() { errs[i] = g.stopSlot(ctx, s) })
	}
	wg.Wait()
	g.wg.Wait()
	g.probe.CloseIdleConnections()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("supervisor: service %q: stop: instances killed: %w", g.spec.Service, ctx.Err())
	}
	return nil
}

// Update changes the running spec. A changed Command, Dir or Env restarts the instances one
// by one, each after the one before it is ready again; a changed Instances count adds or
// stops instances. Update returns once the restarted and added instances are ready, or with
// an error when one of them fails to start (it keeps being restarted with a backoff, and the
// instances not yet restarted keep the old spec until they restart) or ctx ends. Service
// cannot change.
func (g *Group) Update(ctx context.Context, spec Spec) error {
	g.ops.Lock()
	defer g.ops.Unlock()
	return g.update(ctx, spec)
}

// Scale sets the number of instances to n, which must be at least 1. See Update.
func (g *Group) Scale(ctx context.Context, n int) error {
	g.ops.Lock()
	defer g.ops.Unlock()
	g.mu.Lock()
	pl, state := g.plan, g.state
	g.mu.Unlock()
	if err := g.checkRunning(state); err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("supervisor: service %q: scale to %d instances: want at least 1", pl.Service, n)
	}
	spec := pl.Spec
	spec.Instances = n
	return g.update(ctx, spec)
}

func (g *Group) checkRunning(state int) error {
	switch state {
	case idle:
		return fmt.Errorf("supervisor: service %q: not started", g.spec.Service)
	case stopped:
		return ErrStopped
	}
	return nil
}

func (g *Group) update(ctx context.Context, spec Spec) error {
	g.mu.Lock()
	old, state := g.plan, g.state
	g.mu.Unlock()
	if err := g.checkRunning(state); err != nil {
		return err
	}
	if spec.Service != old.Service {
		return fmt.Errorf("supervisor: service %q: update names service %q: a Group cannot change its service", old.Service, spec.Service)
	}
	pl, err := resolve(spec, g.opts.Keeper)
	if err != nil {
		return err
	}

	// Scale down, from the highest index.
	g.mu.Lock()
	if g.state != running {
		g.mu.Unlock()
		return ErrStopped
	}
	g.plan = pl
	cur := len(g.slots)
	var removed []*slot
	for i := cur; i > pl.Instances; i-- {
		removed = append(removed, g.slots[i])
		delete(g.slots, i)
	}
	g.notifyLocked()
	g.mu.Unlock()
	if len(removed) > 0 {
		g.log.Info("scaling down", "from", cur, "to", pl.Instances)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(removed))
	for i, s := range removed {
		wg.Go(func() { errs[i] = g.stopSlot(ctx, s) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("supervisor: service %q: update: %w", pl.Service, err)
	}

	// Restart the remaining instances one by one when what they run changed.
	if !old.sameProcess(pl) {
		g.log.Info("restarting instances for a changed spec", "command", strings.Join(pl.Command, " "))
		for i := 1; i <= min(cur, pl.Instances); i++ {
			if err := g.replace(ctx, i); err != nil {
				return fmt.Errorf("supervisor: service %q: update: restarting %s: %w; later instances keep their old spec until they restart",
					pl.Service, instanceID(pl.Service, i), err)
			}
		}
	}

	// Scale up.
	g.mu.Lock()
	if g.state != running {
		g.mu.Unlock()
		return ErrStopped
	}
	var added []*slot
	for i := cur + 1; i <= pl.Instances; i++ {
		added = append(added, g.addSlotLocked(i))
	}
	g.mu.Unlock()
	if len(added) > 0 {
		g.log.Info("scaling up", "from", cur, "to", pl.Instances)
	}
	errs = errs[:0]
	for _, s := range added {
		if err := g.awaitSettled(ctx, s); err != nil {
			errs = append(errs, fmt.Errorf("starting %s: %w", instanceID(pl.Service, s.index), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("supervisor: service %q: update: %w", pl.Service, err)
	}
	return nil
}

// replace stops the instance at index and starts a new one from the current plan, then waits
// until the new one is ready or has failed once.
func (g *Group) replace(ctx context.Context, index int) error {
	g.mu.Lock()
	if g.state != running {
		g.mu.Unlock()
		return ErrStopped
	}
	old := g.slots[index]
	delete(g.slots, index)
	g.mu.Unlock()

	stopErr := g.stopSlot(ctx, old)

	g.mu.Lock()
	if g.state != running {
		g.mu.Unlock()
		return ErrStopped
	}
	s := g.addSlotLocked(index)
	g.mu.Unlock()
	if stopErr != nil {
		return stopErr
	}
	return g.awaitSettled(ctx, s)
}

// awaitSettled waits until s's first process is ready (nil) or has failed (its error).
func (g *Group) awaitSettled(ctx context.Context, s *slot) error {
	select {
	case err := <-s.settled:
		return err
	case <-s.done:
		return ErrStopped
	case <-g.quit:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Instances returns the instances that are ready, by index.
func (g *Group) Instances() []Instance {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := slices.Collect(maps.Values(g.ready))
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// WaitReady waits until every instance is ready at the same time. It returns ctx's error when
// ctx ends first, and ErrStopped when the Group is stopped.
func (g *Group) WaitReady(ctx context.Context) error {
	for {
		g.mu.Lock()
		state, ch := g.state, g.changed
		all := state == running
		for i := range g.slots {
			if _, ok := g.ready[i]; !ok {
				all = false
			}
		}
		g.mu.Unlock()
		if state == stopped {
			return ErrStopped
		}
		if all {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// addSlotLocked starts supervising instance index. g.mu must be held.
func (g *Group) addSlotLocked(index int) *slot {
	s := &slot{
		index:    index,
		stop:     make(chan struct{}),
		kill:     make(chan struct{}),
		done:     make(chan struct{}),
		launched: make(chan error, 1),
		settled:  make(chan error, 1),
	}
	g.slots[index] = s
	g.notifyLocked()
	g.wg.Add(1)
	go g.run(s)
	return s
}

// stopSlot asks s to stop its instance and waits until it has. When ctx ends first, the
// instance is killed and ctx's error returned.
func (g *Group) stopSlot(ctx context.Context, s *slot) error {
	s.stopOnce.Do(func() { close(s.stop) })
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.killOnce.Do(func() { close(s.kill) })
		<-s.done
		return ctx.Err()
	}
}

func (g *Group) currentPlan() *plan {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.plan
}

func (g *Group) setReady(inst Instance) {
	g.mu.Lock()
	g.ready[inst.Index] = inst
	g.notifyLocked()
	g.mu.Unlock()
	if g.opts.OnReady != nil {
		g.opts.OnReady(inst)
	}
}

func (g *Group) setDown(inst Instance, err error) {
	g.mu.Lock()
	if cur, ok := g.ready[inst.Index]; ok && cur.PID == inst.PID {
		delete(g.ready, inst.Index)
	}
	g.notifyLocked()
	g.mu.Unlock()
	if g.opts.OnDown != nil {
		g.opts.OnDown(inst, err)
	}
}

func (g *Group) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// plan is a checked Spec with its command resolved.
type plan struct {
	Spec
	path       string   // Command[0], resolved
	env        []string // micro's environment with Spec.Env over it
	keeper     []string // Options.Keeper; nil starts the app directly
	keeperPath string   // keeper[0], resolved
}

// resolve checks spec and resolves its command and, when there is one, the keeper that runs
// it. Errors name the bad input.
func resolve(spec Spec, keeper []string) (*plan, error) {
	fail := func(format string, args ...any) (*plan, error) {
		return nil, fmt.Errorf("supervisor: service %q: "+format, append([]any{spec.Service}, args...)...)
	}
	switch {
	case spec.Service == "":
		return nil, errors.New("supervisor: spec has no service name")
	case len(spec.Command) == 0 || spec.Command[0] == "":
		return fail("no command")
	case spec.Instances < 0:
		return fail("instances is %d: want 1 or more", spec.Instances)
	case spec.Health != "" && !strings.HasPrefix(spec.Health, "/"):
		return fail("health path %q: want a path starting with /", spec.Health)
	}
	if spec.Dir != "" {
		fi, err := os.Stat(spec.Dir)
		if err != nil {
			return fail("dir %q: %w", spec.Dir, err)
		}
		if !fi.IsDir() {
			return fail("dir %q is not a directory", spec.Dir)
		}
	}
	name := spec.Command[0]
	path := name
	if strings.ContainsRune(name, filepath.Separator) && !filepath.IsAbs(name) && spec.Dir != "" {
		path = filepath.Join(spec.Dir, name)
	}
	path, err := lookPath(path)
	if err != nil {
		return fail("command %q: %w", name, err)
	}

	env := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		v := spec.Env[k]
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return fail("env %q: want a name without = or NUL and a value without NUL", k)
		}
		env = append(env, k+"="+v)
	}

	spec.Command = slices.Clone(spec.Command)
	spec.Env = maps.Clone(spec.Env)
	spec.Instances = max(spec.Instances, 1)
	pl := &plan{Spec: spec, path: path, env: env}
	if len(keeper) > 0 {
		if pl.keeperPath, err = lookPath(keeper[0]); err != nil {
			return fail("keeper %q: %w", keeper[0], err)
		}
		pl.keeper = keeper
	}
	return pl, nil
}

// sameProcess reports whether instances of p and q run the same thing, so that a change
// from p to q needs no restart.
func (p *plan) sameProcess(q *plan) bool {
	return p.path == q.path && slices.Equal(p.Command, q.Command) && p.Dir == q.Dir && maps.Equal(p.Env, q.Env)
}

func instanceID(service string, index int) string {
	return fmt.Sprintf("%s-%d", service, index)
}
