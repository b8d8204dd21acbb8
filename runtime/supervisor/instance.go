package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	jitter "github.com/microhost/micro/runtime/backoff"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	// probeTimeout bounds one readiness probe.
	probeTimeout = time.Second
	// probeInterval is the first pause between readiness probes; it doubles up to
	// probeIntervalMax.
	probeInterval    = 10 * time.Millisecond
	probeIntervalMax = 250 * time.Millisecond
	// outputGrace is how long the app's output may still flow after its process group is
	// gone (from a process that left the group) before the pipes are closed.
	outputGrace = time.Second
	// maxLine is the longest line of app output logged as one record; longer lines are split.
	maxLine = 64 << 10
)

// slot is one instance index and the goroutine that keeps an instance running there.
type slot struct {
	index    int
	stop     chan struct{} // closed to stop the instance and end the slot
	kill     chan struct{} // closed to skip what is left of a graceful stop
	stopOnce sync.Once
	killOnce sync.Once
	done     chan struct{} // closed when the slot's goroutine has ended
	launched chan error    // the outcome of the first launch
	settled  chan error    // nil once the first process is ready, or its failure
}

// run keeps an instance running in s until s is stopped.
func (g *Group) run(s *slot) {
	defer g.wg.Done()
	defer close(s.done)

	var launched, settled bool
	report := func(ch chan error, sent *bool, err error) {
		if !*sent {
			*sent = true
			ch <- err
		}
	}
	failures := 0
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		pl := g.currentPlan()
		id := instanceID(pl.Service, s.index)
		inst, p, err := g.launch(pl, s.index)
		report(s.launched, &launched, err)
		var readyFor time.Duration
		if err != nil {
			err = fmt.Errorf("instance %s: %w", id, err)
			report(s.settled, &settled, err)
			if g.opts.OnFail != nil {
				g.opts.OnFail(inst, err)
			}
		} else {
			var stopped bool
			stopped, readyFor, err = g.supervise(s, pl, inst, p, func(err error) { report(s.settled, &settled, err) })
			if stopped {
				return
			}
		}

		if readyFor >= g.opts.ResetAfter {
			failures = 0
		}
		delay := backoff(g.opts.BackoffBase, g.opts.BackoffMax, failures)
		failures++
		g.log.Warn("instance failed; restarting", "instance", id, "error", err, "failures", failures, "restart_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return
		}
	}
}

// supervise runs the started process p of inst until it ends. It reports whether the slot
// was stopped, how long the instance was ready, and why it ended otherwise. settle is called
// once the instance is ready (nil) or has failed to start.
func (g *Group) supervise(s *slot, pl *plan, inst Instance, p *proc, settle func(error)) (stopped bool, readyFor time.Duration, err error) {
	defer g.finish(p)
	lg := g.log.With("instance", inst.ID, "pid", inst.PID)

	err = g.awaitReady(s, pl, inst, p)
	switch {
	case errors.Is(err, errStopping):
		g.terminate(s, p, lg)
		return true, 0, nil
	case err != nil:
		select {
		case <-p.exited:
		default:
			g.terminate(s, p, lg)
		}
		settle(err)
		if g.opts.OnFail != nil {
			g.opts.OnFail(inst, err)
		}
		return false, 0, err
	}

	lg.Info("instance ready", "addr", inst.Addr)
	g.setReady(inst)
	settle(nil)
	readyAt := time.Now()
	select {
	case <-p.exited:
		err = fmt.Errorf("instance %s (pid %d) exited: %w", inst.ID, inst.PID, exitError(p.err))
		g.setDown(inst, err)
		return false, time.Since(readyAt), err
	case <-s.stop:
		g.setDown(inst, nil)
		g.terminate(s, p, lg)
		return true, 0, nil
	}
}

// errStopping ends a wait for readiness because the slot is stopping.
var errStopping = errors.New("stopping")

// awaitReady polls inst until it is ready. It fails when p exits first, when the slot stops
// (errStopping) and after Options.ReadyTimeout.
func (g *Group) awaitReady(s *slot, pl *plan, inst Instance, p *proc) error {
	ctx, cancel := context.WithTimeout(context.Background(), g.opts.ReadyTimeout)
	defer cancel()
	go func() { // end a probe in progress as soon as waiting is pointless
		select {
		case <-s.stop:
		case <-p.exited:
		case <-ctx.Done():
		}
		cancel()
	}()

	interval := probeInterval
	t := time.NewTimer(0)
	defer t.Stop()
	var last error
	for {
		select {
		case <-p.exited:
		case <-s.stop:
		case <-ctx.Done():
		case <-t.C:
		}
		// ctx also ends on an exit or a stop, so look at those first.
		select {
		case <-p.exited:
			return fmt.Errorf("instance %s (pid %d) exited before it was ready: %w", inst.ID, inst.PID, exitError(p.err))
		case <-s.stop:
			return errStopping
		default:
		}
		if ctx.Err() != nil {
			return fmt.Errorf("instance %s (pid %d) not ready within %v: %w", inst.ID, inst.PID, g.opts.ReadyTimeout, last)
		}
		err := g.probeOnce(ctx, pl.Health, inst.Addr)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil { // keep the last answer over a cut-off probe
			last = err
		}
		t.Reset(interval)
		interval = min(2*interval, probeIntervalMax)
	}
}

// probeOnce probes addr once: GET health answers 2xx or, with no health path, addr accepts a
// connection.
func (g *Group) probeOnce(ctx context.Context, health, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if health == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	url := "http://" + addr + health
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := g.probe.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// terminate stops p gracefully: SIGTERM to its process group, then a wait for the whole group
// to end, and SIGKILL when that takes longer than Options.StopTimeout or s is killed.
func (g *Group) terminate(s *slot, p *proc, lg *slog.Logger) {
	if err := signalGroup(p.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		lg.Warn("sending SIGTERM", "error", err)
	}
	t := time.NewTimer(g.opts.StopTimeout)
	defer t.Stop()
	killed := false
	select {
	case <-p.exited:
	case <-t.C:
		killed = true
	case <-s.kill:
		killed = true
	}
	// With the leader gone, wait for the rest of its group, e.g. the app that `go run` ran.
	interval := 5 * time.Millisecond
	for !killed && groupAlive(p.pid) {
		wait := time.NewTimer(interval)
		select {
		case <-wait.C:
		case <-t.C:
			killed = true
		case <-s.kill:
			killed = true
		}
		wait.Stop()
		interval = min(2*interval, 100*time.Millisecond)
	}
	if killed {
		lg.Warn("instance did not stop in time; killing its process group", "stop_timeout", g.opts.StopTimeout)
		if err := signalGroup(p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			lg.Warn("sending SIGKILL", "error", err)
		}
		<-p.exited
	}
	lg.Info("instance stopped", "status", exitError(p.err))
}

// proc is a started process.
type proc struct {
	pid        int
	exited     chan struct{} // closed when the process has exited and been reaped
	err        error         // cmd.Wait's error; read after exited is closed
	outputDone chan struct{} // closed when the output readers have ended
	outputs    []*os.File    // read ends of the output pipes
	lifeline   *os.File      // the write end of the keeper's lifeline; nil without a keeper
}

// launch starts a process of pl as instance index, on a fresh port.
func (g *Group) launch(pl *plan, index int) (Instance, *proc, error) {
	inst := Instance{ID: instanceID(pl.Service, index), Index: index}
	port, err := freePort()
	if err != nil {
		return inst, nil, fmt.Errorf("picking a port: %w", err)
	}
	inst.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	env := append(pl.env[:len(pl.env):len(pl.env)],
		"PORT="+strconv.Itoa(port),
		"MICRO_APP_ADDR="+inst.Addr,
		"MICRO_INSTANCE="+inst.ID,
		"MICRO_SERVICE="+pl.Service,
	)
	outR, outW, err := os.Pipe()
	if err != nil {
		return inst, nil, fmt.Errorf("making a pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeFiles(outR, outW)
		return inst, nil, fmt.Errorf("making a pipe: %w", err)
	}
	cmd := &exec.Cmd{
		Path:        pl.path,
		Args:        pl.Command,
		Dir:         pl.Dir,
		Env:         env,
		Stdout:      outW,
		Stderr:      errW,
		SysProcAttr: sysProcAttr(),
	}
	// The keeper's lifeline. os.Pipe makes both ends close-on-exec, so micro alone holds the
	// write end, and the lifeline breaks as soon as micro is gone.
	var lifeR, lifeW *os.File
	if pl.keeper != nil {
		if lifeR, lifeW, err = os.Pipe(); err != nil {
			closeFiles(outR, outW, errR, errW)
			return inst, nil, fmt.Errorf("making a pipe: %w", err)
		}
		cmd.Path = pl.keeperPath
		cmd.Args = slices.Concat(pl.keeper, []string{pl.path}, pl.Command)
		cmd.ExtraFiles = []*os.File{lifeR} // fd lifelineFD in the keeper
		// No Pdeathsig: the keeper must outlive micro to kill its group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	err = cmd.Start()
	closeFiles(outW, errW, lifeR)
	if err != nil {
		closeFiles(outR, errR, lifeW)
		return inst, nil, fmt.Errorf("starting %q: %w", cmd.Args[0], err)
	}
	inst.PID = cmd.Process.Pid
	p := &proc{
		pid:        inst.PID,
		exited:     make(chan struct{}),
		outputDone: make(chan struct{}),
		outputs:    []*os.File{outR, errR},
		lifeline:   lifeW,
	}
	g.log.Info("instance started", "instance", inst.ID, "pid", inst.PID, "addr", inst.Addr)

	lg := g.log.With("instance", inst.ID)
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		p.err = cmd.Wait()
		close(p.exited)
	}()
	go func() {
		defer g.wg.Done()
		defer close(p.outputDone)
		var wg sync.WaitGroup
		wg.Go(func() { logLines(lg, outR, "stdout") })
		wg.Go(func() { logLines(lg, errR, "stderr") })
		wg.Wait()
	}()
	return inst, p, nil
}

// finish cleans up after p has exited: it kills what is left of its process group, drops the
// lifeline of its keeper, and ends the reading of its output.
func (g *Group) finish(p *proc) {
	<-p.exited
	_ = signalGroup(p.pid, syscall.SIGKILL)
	closeFiles(p.lifeline)
	t := time.NewTimer(outputGrace)
	select {
	case <-p.outputDone:
	case <-t.C:
	}
	t.Stop()
	for _, f := range p.outputs {
		f.Close() // ends a read that is still waiting
	}
	<-p.outputDone
}

// closeFiles closes each of fs that is not nil.
func closeFiles(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// logLines logs each line that r yields as one record at info level.
func logLines(lg *slog.Logger, r io.Reader, stream string) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, _, err := br.ReadLine()
		if len(line) > 0 {
			lg.Info(string(line), "stream", stream)
		}
		if err != nil {
			return
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// lookPath resolves a command as exec does, to an absolute path.
func lookPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(path)
}

// exitError describes how a process ended, from its Wait error.
func exitError(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// backoff is the jittered delay before restart number n+1 (n from 0): base doubled n times,
// capped at max, then drawn between half of it and all of it.
func backoff(base, maxDelay time.Duration, n int) time.Duration {
	return jitter.Jitter(jitter.Exp(base, maxDelay, n))
}
