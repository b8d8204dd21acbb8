package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// greeterBin is the example greeter, built once by TestMain.
var greeterBin string

// As its first argument, keeperArg makes the test binary a keeper (see testKeeper), and
// slowAppArg an app that is slow to stop (see slowAppMain).
const (
	keeperArg  = "supervisor-test-keeper"
	slowAppArg = "supervisor-test-slow-app"
)

func TestMain(m *testing.M) {
	// Arguments before the helper's env, which the processes that the helper starts inherit.
	switch {
	case len(os.Args) > 1 && os.Args[1] == keeperArg:
		code, err := Keep(os.Args[2:])
		if err != nil {
			fmt.Fprintln(os.Stderr, "keeper:", err)
			os.Exit(1)
		}
		os.Exit(code)
	case len(os.Args) > 1 && os.Args[1] == slowAppArg:
		slowAppMain()
		return
	}
	if os.Getenv("SUPERVISOR_TEST_HELPER") != "" {
		helperMain()
		return
	}
	dir, err := os.MkdirTemp("", "supervisor-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	greeterBin = filepath.Join(dir, "greeter")
	out, err := exec.Command("go", "build", "-o", greeterBin, "github.com/microhost/micro/examples/greeter").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the greeter: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// helperMain plays micro for TestChildDiesWithParent and the TestKeeperDiesWithMicro tests: it
// runs one instance of the argv in HELPER_COMMAND (JSON), under a keeper with HELPER_KEEPER=1,
// prints the instance's PID and address, and waits to be killed. On SIGTERM it stops the
// instance, as micro does.
func helperMain() {
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	spec := Spec{Service: "app", Health: "/health"}
	if err := json.Unmarshal([]byte(os.Getenv("HELPER_COMMAND")), &spec.Command); err != nil {
		fail(err)
	}
	var opts Options
	if os.Getenv("HELPER_KEEPER") == "1" {
		var err error
		if opts.Keeper, err = testKeeper(); err != nil {
			fail(err)
		}
	}
	g := New(spec, opts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := g.Start(ctx); err != nil {
		fail(err)
	}
	if err := g.WaitReady(ctx); err != nil {
		fail(err)
	}
	term, stopTerm := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stopTerm()
	inst := g.Instances()[0]
	fmt.Println("pid", inst.PID, "addr", inst.Addr)
	<-term.Done()
	if ctx.Err() == nil {
		_ = g.Stop(ctx)
	}
}

// slowAppMain is an app that is slow to stop: it answers every request on $PORT with 200
// and ignores SIGTERM, until it is killed.
func slowAppMain() {
	signal.Ignore(syscall.SIGTERM)
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "slow app:", err)
		os.Exit(1)
	}
	err = http.Serve(ln, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	fmt.Fprintln(os.Stderr, "slow app:", err)
	os.Exit(1)
}

// events records a Group's callbacks.
type events struct {
	mu    sync.Mutex
	ready []Instance
	down  []downEvent
	fails []failEvent
	ch    chan struct{} // signalled on every event
}

type downEvent struct {
	inst   Instance
	err    error
	health error // a health check made inside OnDown
}

type failEvent struct {
	inst Instance
	err  error
	at   time.Time
}

func newEvents() *events { return &events{ch: make(chan struct{}, 1)} }

func (e *events) options(logger *slog.Logger) Options {
	return Options{
		Logger:      logger,
		BackoffBase: 10 * time.Millisecond,
		BackoffMax:  100 * time.Millisecond,
		StopTimeout: 5 * time.Second,
		OnReady: func(inst Instance) {
			e.mu.Lock()
			e.ready = append(e.ready, inst)
			e.mu.Unlock()
			e.signal()
		},
		OnDown: func(inst Instance, err error) {
			var health error
			if err == nil { // a stop: the instance must still serve
				health = get(inst.Addr, "/health")
			}
			e.mu.Lock()
			e.down = append(e.down, downEvent{inst, err, health})
			e.mu.Unlock()
			e.signal()
		},
		OnFail: func(inst Instance, err error) {
			e.mu.Lock()
			e.fails = append(e.fails, failEvent{inst, err, time.Now()})
			e.mu.Unlock()
			e.signal()
		},
	}
}

func (e *events) signal() {
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

// wait waits until cond, called with e locked, holds.
func (e *events) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		ok := cond()
		e.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-e.ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitLog waits until the log has a line containing all of parts.
func waitLog(t *testing.T, b *logBuffer, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for line := range strings.SplitSeq(b.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; log:\n%s", parts, b.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the log, with a deadline
	}
}

func get(addr, path string) error {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return nil
}

// hello calls Greeter.Hello on addr and returns the status and the replying instance.
func hello(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/Greeter.Hello", "application/json", strings.NewReader(`{"name":"Ada"}`))
	if err != nil {
		t.Fatalf("Hello on %s: %v", addr, err)
	}
	defer resp.Body.Close()
	var out struct{ Instance string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("Hello on %s: %v", addr, err)
	}
	return resp.StatusCode, out.Instance
}

// gone reports whether process pid has ended: it does not exist, or it is a zombie that an
// init which does not reap keeps around.
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond) // polling the kernel, with a deadline
	}
}

func stop(t *testing.T, g *Group) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// testKeeper is the keeper argv that runs the test binary as a keeper.
func testKeeper() ([]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return []string{self, keeperArg}, nil
}

// wrapped is a command that runs app (an argv) as a child of a shell, as `go run` runs the
// program it builds: in the same process group, with the shell as the process that micro
// started, and which SIGTERM ends at once.
func wrapped(app ...string) []string {
	return append([]string{"/bin/sh", "-c", `"$@" & wait`, "sh"}, app...)
}

func greeterSpec(n int) Spec {
	return Spec{Service: "greeter", Command: []string{greeterBin}, Instances: n, Health: "/health"}
}

func TestSuperviseGreeter(t *testing.T) {
	t.Run("direct", func(t *testing.T) { testSuperviseGreeter(t, nil) })
	t.Run("keeper", func(t *testing.T) { testSuperviseGreeter(t, mustKeeper(t)) })
}

// testSuperviseGreeter runs two greeters, kills one and stops them, with keeper as
// Options.Keeper. Under a keeper, it is the app that is killed, not its keeper.
func testSuperviseGreeter(t *testing.T, keeper []string) {
	var logs logBuffer
	ev := newEvents()
	opts := ev.options(logs.logger())
	opts.Keeper = keeper
	g := New(greeterSpec(2), opts)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "two instances ready", func() bool { return len(ev.ready) == 2 })
	if err := g.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}

	insts := g.Instances()
	if len(insts) != 2 || insts[0].ID != "greeter-1" || insts[1].ID != "greeter-2" || insts[0].Index != 1 || insts[1].Index != 2 {
		t.Fatalf("Instances() = %+v, want greeter-1 and greeter-2", insts)
	}
	if insts[0].Addr == insts[1].Addr {
		t.Fatalf("both instances listen on %s", insts[0].Addr)
	}
	for _, inst := range insts {
		if status, id := hello(t, inst.Addr); status != 200 || id != inst.ID {
			t.Errorf("Hello on %s: %d from %q, want 200 from %s (MICRO_INSTANCE)", inst.Addr, status, id, inst.ID)
		}
	}
	waitLog(t, &logs, "greeter listening", "service=greeter", "instance=greeter-1", "stream=stdout")

	// Kill one instance: it is reported down at once and comes back on a new process.
	victim := insts[0]
	app := victim.PID
	if keeper != nil {
		app = childOf(t, victim.PID)
	}
	if err := syscall.Kill(app, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "OnDown for the killed instance", func() bool { return len(ev.down) == 1 })
	ev.mu.Lock()
	d := ev.down[0]
	ev.mu.Unlock()
	if d.inst != victim || d.err == nil || !strings.Contains(d.err.Error(), "signal: killed") {
		t.Errorf("OnDown(%+v, %v), want %+v with an error saying it was killed", d.inst, d.err, victim)
	}
	ev.wait(t, "the killed instance ready again", func() bool { return len(ev.ready) == 3 })
	ev.mu.Lock()
	back := ev.ready[2]
	ev.mu.Unlock()
	if back.ID != victim.ID || back.PID == victim.PID {
		t.Errorf("restarted instance %+v, want %s on a new process", back, victim.ID)
	}
	if status, id := hello(t, back.Addr); status != 200 || id != victim.ID {
		t.Errorf("Hello on the restarted instance: %d from %q", status, id)
	}
	waitLog(t, &logs, "instance failed; restarting", "instance=greeter-1", "signal: killed", "restart_in=")

	// Stop: each instance is reported down while it still serves, then all processes are gone.
	insts = g.Instances()
	var apps []int
	if keeper != nil {
		for _, inst := range insts {
			apps = append(apps, childOf(t, inst.PID))
		}
	}
	stop(t, g)
	for _, inst := range insts {
		if !errors.Is(syscall.Kill(inst.PID, 0), syscall.ESRCH) {
			t.Errorf("instance %s (pid %d) still exists after Stop", inst.ID, inst.PID)
		}
	}
	for _, pid := range apps {
		if !gone(pid) {
			t.Errorf("app process %d still runs after Stop", pid)
		}
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.down) != 3 {
		t.Fatalf("%d OnDown calls, want 3 (one kill, two stops)", len(ev.down))
	}
	for _, d := range ev.down[1:] {
		if d.err != nil || d.health != nil {
			t.Errorf("OnDown at stop for %s: err %v, health %v; want nil and a still serving instance", d.inst.ID, d.err, d.health)
		}
	}
	if got := g.Instances(); len(got) != 0 {
		t.Errorf("Instances() after Stop = %+v", got)
	}
	if err := g.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop: %v, want ErrStopped", err)
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestExitAtOnceBacksOff(t *testing.T) {
	var logs logBuffer
	ev := newEvents()
	opts := ev.options(logs.logger())
	opts.BackoffBase = 20 * time.Millisecond
	opts.BackoffMax = 160 * time.Millisecond
	g := New(Spec{Service: "crasher", Command: []string{"/bin/sh", "-c", "echo boom >&2; exit 3"}}, opts)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	const n = 7
	ev.wait(t, "repeated failures", func() bool { return len(ev.fails) >= n })
	stop(t, g)

	ev.mu.Lock()
	defer ev.mu.Unlock()
	for i, f := range ev.fails[:n] {
		if f.inst.ID != "crasher-1" || f.err == nil || !strings.Contains(f.err.Error(), "exit status 3") {
			t.Errorf("failure %d: %+v %v, want crasher-1 exiting with status 3", i, f.inst, f.err)
		}
		if i == 0 {
			continue
		}
		// Restart i came after a delay of at least half of base·2^(i-1), capped at max.
		min := backoffFloor(opts.BackoffBase, opts.BackoffMax, i-1)
		if gap := f.at.Sub(ev.fails[i-1].at); gap < min {
			t.Errorf("restart %d came %v after the failure before it, want at least %v", i, gap, min)
		}
	}
	if len(ev.ready) != 0 || len(ev.down) != 0 {
		t.Errorf("OnReady/OnDown called for an instance that never was ready: %v %v", ev.ready, ev.down)
	}
	waitLog(t, &logs, "msg=boom", "instance=crasher-1", "stream=stderr")
	waitLog(t, &logs, "instance failed; restarting", "exited before it was ready: exit status 3")
}

func backoffFloor(base, maxDelay time.Duration, n int) time.Duration {
	d := base
	for range n {
		d = min(2*d, maxDelay)
	}
	return d / 2
}

func TestBackoff(t *testing.T) {
	base, maxDelay := 100*time.Millisecond, 10*time.Second
	for n := range 12 {
		floor := backoffFloor(base, maxDelay, n)
		for range 100 {
			if d := backoff(base, maxDelay, n); d < floor || d > 2*floor {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, floor, 2*floor)
			}
		}
	}
	if d := backoff(base, maxDelay, 1000); d > maxDelay {
		t.Errorf("backoff after many failures = %v, above the cap %v", d, maxDelay)
	}
}

func TestBadSpec(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		spec Spec
		want []string
	}{
		{"missing command", Spec{Service: "ghost", Command: []string{"no-such-app-xyz"}}, []string{`"ghost"`, `"no-such-app-xyz"`, "not found"}},
		{"missing file", Spec{Service: "ghost", Command: []string{"./no-such-app"}, Dir: dir}, []string{`"./no-such-app"`}},
		{"missing dir", Spec{Service: "ghost", Command: []string{greeterBin}, Dir: filepath.Join(dir, "nope")}, []string{"dir", "nope"}},
		{"no command", Spec{Service: "ghost"}, []string{"no command"}},
		{"bad health", Spec{Service: "ghost", Command: []string{greeterBin}, Health: "health"}, []string{`"health"`}},
		{"bad env", Spec{Service: "ghost", Command: []string{greeterBin}, Env: map[string]string{"A=B": "c"}}, []string{`"A=B"`}},
		{"negative instances", Spec{Service: "ghost", Command: []string{greeterBin}, Instances: -1}, []string{"-1"}},
	} {
		g := New(tc.spec, Options{})
		err := g.Start(context.Background())
		if err == nil {
			stop(t, g)
			t.Errorf("%s: Start succeeded", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Start: %v, want it to name %s", tc.name, err, w)
			}
		}
	}
}

// A relative command with a slash is found in Dir.
func TestRelativeCommand(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(greeterBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	g := New(Spec{Service: "rel", Command: []string{"./app"}, Dir: dir}, Options{})
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer stop(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNotReadyInTime(t *testing.T) {
	ev := newEvents()
	opts := ev.options(nil)
	opts.ReadyTimeout = 200 * time.Millisecond
	spec := greeterSpec(1)
	spec.Health = "/not-there" // the greeter answers 404: never ready
	g := New(spec, opts)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "a failed start", func() bool { return len(ev.fails) >= 1 })
	stop(t, g)
	ev.mu.Lock()
	defer ev.mu.Unlock()
	f := ev.fails[0]
	if !strings.Contains(f.err.Error(), "not ready within 200ms") || !strings.Contains(f.err.Error(), "/not-there") {
		t.Errorf("failure: %v, want not ready within 200ms with the last probe's error", f.err)
	}
	if !errors.Is(syscall.Kill(f.inst.PID, 0), syscall.ESRCH) {
		t.Errorf("the instance that was not ready (pid %d) still exists", f.inst.PID)
	}
}

// startReady starts a Group of spec and waits until its instances are ready.
func startReady(t *testing.T, spec Spec, opts Options) *Group {
	t.Helper()
	g := New(spec, opts)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	return g
}

// An instance that does not stop on SIGTERM in time is killed.
func TestStopKillsAfterTimeout(t *testing.T) {
	var logs logBuffer
	ev := newEvents()
	opts := ev.options(logs.logger())
	opts.StopTimeout = 200 * time.Millisecond
	g := startReady(t, greeterSpec(1), opts)
	inst := g.Instances()[0]

	// A long request in flight holds the greeter's graceful shutdown open.
	errc := make(chan error, 1)
	go func() {
		resp, err := http.Post("http://"+inst.Addr+"/Greeter.Sleep", "application/json", strings.NewReader(`{"ms":60000}`))
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitLog(t, &logs, "sleeping", "instance=greeter-1")
	stop(t, g)
	if !errors.Is(syscall.Kill(inst.PID, 0), syscall.ESRCH) {
		t.Errorf("pid %d still exists after Stop", inst.PID)
	}
	if err := <-errc; err == nil {
		t.Error("the sleeping request got a reply from an instance that was killed")
	}
	waitLog(t, &logs, "did not stop in time", "instance=greeter-1")
}

// Stop's context bounds the graceful stop too.
func TestStopContext(t *testing.T) {
	var logs logBuffer
	ev := newEvents()
	opts := ev.options(logs.logger())
	opts.StopTimeout = time.Hour
	g := startReady(t, greeterSpec(1), opts)
	inst := g.Instances()[0]
	go func() {
		resp, err := http.Post("http://"+inst.Addr+"/Greeter.Sleep", "application/json", strings.NewReader(`{"ms":60000}`))
		if err == nil {
			resp.Body.Close()
		}
	}()
	waitLog(t, &logs, "sleeping", "instance=greeter-1")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := g.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop with an ended context: %v, want it to wrap context.DeadlineExceeded", err)
	}
	if !errors.Is(syscall.Kill(inst.PID, 0), syscall.ESRCH) {
		t.Errorf("pid %d still exists after Stop", inst.PID)
	}
}

// A wrapper such as `go run` and the app it starts share the instance's process group: a
// stop reaches the app, and an app left behind by a dead wrapper is killed.
func TestWrapperProcessGroup(t *testing.T) {
	ev := newEvents()
	spec := Spec{Service: "wrapped", Command: wrapped(greeterBin), Health: "/health"}
	g := New(spec, ev.options(nil))
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "ready", func() bool { return len(ev.ready) == 1 })
	first := g.Instances()[0]

	// Kill the wrapper only: the greeter it started must not keep the old port.
	if err := syscall.Kill(first.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "down and ready again", func() bool { return len(ev.down) == 1 && len(ev.ready) == 2 })
	waitRefused(t, first.Addr)

	second := g.Instances()[0]
	stop(t, g)
	waitRefused(t, second.Addr)
}

func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections", addr)
		}
		time.Sleep(10 * time.Millisecond) // polling the port, with a deadline
	}
}

func TestUpdateAndScale(t *testing.T) {
	ev := newEvents()
	spec := greeterSpec(2)
	spec.Health = "" // TCP readiness
	g := New(spec, ev.options(nil))
	if err := g.Update(context.Background(), spec); err == nil {
		t.Error("Update before Start succeeded")
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer stop(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := g.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	before := g.Instances()

	// The same spec changes nothing.
	if err := g.Update(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := g.Instances(); len(got) != 2 || got[0] != before[0] || got[1] != before[1] {
		t.Fatalf("Update with the same spec changed the instances: %+v → %+v", before, got)
	}

	// A changed env restarts both, one by one, on new processes that see it.
	spec.Env = map[string]string{"GREETER_FAIL": "1"}
	if err := g.Update(ctx, spec); err != nil {
		t.Fatal(err)
	}
	after := g.Instances()
	if len(after) != 2 {
		t.Fatalf("after Update: %+v, want 2 instances", after)
	}
	for i, inst := range after {
		if inst.PID == before[i].PID {
			t.Errorf("%s kept pid %d across an env change", inst.ID, inst.PID)
		}
		if status, _ := hello(t, inst.Addr); status != 500 {
			t.Errorf("Hello on %s after GREETER_FAIL=1: %d, want 500", inst.ID, status)
		}
	}
	ev.mu.Lock()
	if len(ev.down) != 2 || ev.down[0].err != nil || ev.down[1].err != nil {
		t.Errorf("OnDown during the rolling restart: %+v, want two stops", ev.down)
	}
	ev.mu.Unlock()

	if err := g.Scale(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if got := g.Instances(); len(got) != 3 || got[2].ID != "greeter-3" {
		t.Fatalf("after Scale(3): %+v", got)
	}
	if err := g.Scale(ctx, 1); err != nil {
		t.Fatal(err)
	}
	got := g.Instances()
	if len(got) != 1 || got[0] != after[0] {
		t.Fatalf("after Scale(1): %+v, want only %+v", got, after[0])
	}
	if err := g.Scale(ctx, 0); err == nil {
		t.Error("Scale(0) succeeded")
	}
	other := spec
	other.Service = "other"
	if err := g.Update(ctx, other); err == nil {
		t.Error("Update to another service succeeded")
	}
}

// When micro dies, its instances die with it.
func TestChildDiesWithParent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the kernel kills children with their parent on Linux only (Pdeathsig)")
	}
	micro, pid, _ := startHelper(t, false, greeterBin)
	if err := micro.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
}

// When micro dies, even by SIGKILL, the keeper kills every process of its instance's group:
// the shell that micro's Pdeathsig alone would kill, and the greeter that it started too.
func TestKeeperDiesWithMicro(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("lists process groups through /proc")
	}
	micro, pid, addr := startHelper(t, true, wrapped(greeterBin)...)
	members := groupMembers(pid)
	t.Cleanup(func() { _ = signalGroup(pid, syscall.SIGKILL) })
	if len(members) < 3 {
		t.Fatalf("process group %d has %v, want the keeper, the shell and the greeter", pid, members)
	}
	if err := micro.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, p := range members {
		waitGone(t, p)
	}
	if groupAlive(pid) {
		t.Errorf("process group %d has live members: %v", pid, groupMembers(pid))
	}
	waitRefused(t, addr)
}

// When micro dies during a stop, the keeper still kills what is left of its group: here an
// app that ignores SIGTERM, started by a shell that SIGTERM ended, as `go run` is.
func TestKeeperDiesWithMicroWhileStopping(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the keeper waits for the rest of its group on Linux only")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	micro, pid, _ := startHelper(t, true, wrapped(self, slowAppArg)...)
	t.Cleanup(func() { _ = signalGroup(pid, syscall.SIGKILL) })
	shell := childOf(t, pid)
	members := groupMembers(pid)
	if len(members) < 3 {
		t.Fatalf("process group %d has %v, want the keeper, the shell and the app", pid, members)
	}
	if err := micro.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitGone(t, shell) // the stop is under way
	if gone(pid) {
		t.Fatalf("the keeper exited while the app it kept still ran")
	}
	if err := micro.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, p := range members {
		waitGone(t, p)
	}
}

// A stop under a keeper is as graceful as without: the app gets SIGTERM and exits 0, and so
// does its keeper.
func TestKeeperGracefulStop(t *testing.T) {
	var logs logBuffer
	ev := newEvents()
	opts := ev.options(logs.logger())
	opts.Keeper = mustKeeper(t)
	g := startReady(t, greeterSpec(1), opts)
	inst := g.Instances()[0]
	app := childOf(t, inst.PID)
	stop(t, g)
	waitLog(t, &logs, "greeter stopping", "instance=greeter-1", "stream=stdout")
	waitLog(t, &logs, "instance stopped", "instance=greeter-1", `status="exit status 0"`)
	if strings.Contains(logs.String(), "did not stop in time") {
		t.Errorf("the instance was killed:\n%s", logs.String())
	}
	if !gone(app) || !gone(inst.PID) {
		t.Errorf("app %d or keeper %d still runs after Stop", app, inst.PID)
	}
}

// A keeper exits as its app did, so failures are reported, logged and restarted as without.
func TestKeeperExitStatus(t *testing.T) {
	for _, tc := range []struct{ script, want string }{
		{"echo boom >&2; exit 3", "exit status 3"},
		{"kill -TERM $$", "signal: terminated"},
		{"kill -USR1 $$", "exit status 138"}, // 128 + SIGUSR1, which a Go keeper cannot die of
	} {
		t.Run(tc.want, func(t *testing.T) {
			var logs logBuffer
			ev := newEvents()
			opts := ev.options(logs.logger())
			opts.Keeper = mustKeeper(t)
			g := New(Spec{Service: "crasher", Command: []string{"/bin/sh", "-c", tc.script}}, opts)
			if err := g.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			ev.wait(t, "a failure and its restart's", func() bool { return len(ev.fails) >= 2 })
			stop(t, g)
			ev.mu.Lock()
			defer ev.mu.Unlock()
			for _, f := range ev.fails {
				if !strings.Contains(f.err.Error(), "exited before it was ready: "+tc.want) {
					t.Errorf("failure: %v, want %s", f.err, tc.want)
				}
			}
			if tc.want == "exit status 3" {
				waitLog(t, &logs, "msg=boom", "instance=crasher-1", "stream=stderr")
			}
		})
	}
}

// The keeper refuses to run by hand: without a lifeline, or outside a process group of its
// own, which it would kill.
func TestKeeperByHand(t *testing.T) {
	keeper := mustKeeper(t)
	cmd := exec.Command(keeper[0], keeper[1], "/bin/true", "true")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no lifeline on fd 3") || !strings.Contains(string(out), "not by hand") {
		t.Errorf("keeper without a lifeline: %v, %q; want a failure that says it has no lifeline", err, out)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd = exec.Command(keeper[0], keeper[1], "/bin/true", "true")
	cmd.ExtraFiles = []*os.File{r}
	out, err := cmd.CombinedOutput()
	r.Close()
	if err == nil || !strings.Contains(string(out), "not the leader of its own") {
		t.Errorf("keeper in micro's process group: %v, %q; want a failure that says so", err, out)
	}
}

// startHelper starts the test binary as micro (helperMain) running app, under a keeper when
// keeper is set, and returns it with the instance's PID and address once the instance is
// ready. The helper is killed at the end of the test.
func startHelper(t *testing.T, keeper bool, app ...string) (micro *exec.Cmd, pid int, addr string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	command, err := json.Marshal(app)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), "SUPERVISOR_TEST_HELPER=1", "HELPER_COMMAND="+string(command))
	if keeper {
		cmd.Env = append(cmd.Env, "HELPER_KEEPER=1")
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := readLine(out)
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	if _, err := fmt.Sscanf(line, "pid %d addr %s", &pid, &addr); err != nil {
		t.Fatalf("helper said %q", line)
	}
	return cmd, pid, addr
}

func mustKeeper(t *testing.T) []string {
	t.Helper()
	keeper, err := testKeeper()
	if err != nil {
		t.Fatal(err)
	}
	return keeper
}

// childOf returns the PID of the only child of process pid, as a keeper has.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, strings.Fields(string(b))...)
	}
	if len(kids) != 1 {
		t.Fatalf("process %d has children %v, want one", pid, kids)
	}
	child, err := strconv.Atoi(kids[0])
	if err != nil {
		t.Fatal(err)
	}
	return child
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	names, _ := filepath.Glob("/proc/[0-9]*/stat")
	var pids []int
	for _, name := range names {
		stat, err := os.ReadFile(name)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp …
		i := bytes.LastIndexByte(stat, ')')
		f := bytes.Fields(stat[i+1:])
		if len(f) < 3 || f[0][0] == 'Z' || f[0][0] == 'X' || string(f[2]) != strconv.Itoa(pgid) {
			continue
		}
		if pid, err := strconv.Atoi(string(bytes.Fields(stat)[0])); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := r.Read(one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}
