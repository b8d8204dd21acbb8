package embedded

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// events reads a Watcher from a goroutine, so that tests can wait for events with a deadline.
type events struct {
	ch   chan registry.Event
	errc chan error
}

func stream(t *testing.T, w registry.Watcher) *events {
	e := &events{ch: make(chan registry.Event), errc: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		for {
			ev, err := w.Next()
			if err != nil {
				e.errc <- err
				return
			}
			select {
			case e.ch <- ev:
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		w.Stop()
	})
	return e
}

// next returns the next event, failing the test if none comes within patience.
func (e *events) next(t *testing.T) registry.Event {
	t.Helper()
	select {
	case ev := <-e.ch:
		return ev
	case err := <-e.errc:
		t.Fatalf("watch ended: %v", err)
	case <-time.After(patience):
		t.Fatalf("no event within %v", patience)
	}
	panic("unreachable")
}

// want checks that the next event is of type typ for the node id of service, and returns it.
func (e *events) want(t *testing.T, typ registry.EventType, service, id string) registry.Event {
	t.Helper()
	ev := e.next(t)
	if ev.Type != typ || ev.Service != service || ev.Node == nil || ev.Node.ID != id {
		t.Fatalf("event = %v %s %+v, want %v %s %s", ev.Type, ev.Service, ev.Node, typ, service, id)
	}
	return ev
}

// end returns the error that ended the watch, failing the test if it goes on.
func (e *events) end(t *testing.T) error {
	t.Helper()
	select {
	case ev := <-e.ch:
		t.Fatalf("event %v %s after the watch should have ended", ev.Type, ev.Service)
	case err := <-e.errc:
		return err
	case <-time.After(patience):
		t.Fatalf("watch did not end within %v", patience)
	}
	return nil
}

func TestWatchEvents(t *testing.T) {
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	// A node registered before Watch is not reported.
	if err := r.Register(ctx, service("early", node("e1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := stream(t, w)

	n1 := node("n1")
	if err := r.Register(ctx, service("greeter", n1), time.Minute); err != nil {
		t.Fatal(err)
	}
	ev := e.want(t, registry.EventUpdate, "greeter", "n1")
	if ev.Node.Address != n1.Address || ev.Node.Metadata["zone"] != "a" {
		t.Errorf("event node = %+v, want %+v", ev.Node, n1)
	}

	// A heartbeat that changes nothing is not reported: the next event is n2's.
	if err := r.Register(ctx, service("greeter", n1), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctx, service("greeter", node("n2")), time.Minute); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventUpdate, "greeter", "n2")

	// A changed record is reported.
	n1v2 := node("n1")
	n1v2.Version = "2.0.0"
	if err := r.Register(ctx, service("greeter", n1v2), time.Minute); err != nil {
		t.Fatal(err)
	}
	if ev := e.want(t, registry.EventUpdate, "greeter", "n1"); ev.Node.Version != "2.0.0" {
		t.Errorf("update carries version %q, want 2.0.0", ev.Node.Version)
	}

	if err := r.Deregister(ctx, service("greeter", n1)); err != nil {
		t.Fatal(err)
	}
	if ev := e.want(t, registry.EventDelete, "greeter", "n1"); ev.Node.Version != "2.0.0" {
		t.Errorf("delete carries version %q, want the last known 2.0.0", ev.Node.Version)
	}

	// An expiry is reported although nobody removes the file. The node is registered for
	// long enough to be seen, then heartbeats once with a short TTL and stops.
	if err := r.Register(ctx, service("brief", node("b1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventUpdate, "brief", "b1")
	if err := r.Register(ctx, service("brief", node("b1")), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	expires := expiresOf(t, r, "brief", "b1")
	e.want(t, registry.EventDelete, "brief", "b1")
	if now := time.Now(); now.Before(expires) {
		t.Errorf("expiry reported %v before b1 expired", expires.Sub(now))
	}

	// Removing a service directory reports its nodes deleted.
	if err := os.RemoveAll(filepath.Join(r.Dir(), "greeter")); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventDelete, "greeter", "n2")

	w.Stop()
	if err := e.end(t); !errors.Is(err, ErrStopped) {
		t.Errorf("Next after Stop = %v, want ErrStopped", err)
	}
	if _, err := w.Next(); !errors.Is(err, ErrStopped) {
		t.Errorf("Next again = %v, want ErrStopped", err)
	}
	w.Stop() // idempotent
}

func TestWatchPolling(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, _ := open(t, dir)
	r.noEvents = true
	other, _ := open(t, dir)
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := stream(t, w)
	if err := other.Register(ctx, service("greeter", node("n1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventUpdate, "greeter", "n1")
	// A node is registered for long enough to be seen, then heartbeats once with a short
	// TTL and stops.
	if err := other.Register(ctx, service("greeter", node("n2")), time.Minute); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventUpdate, "greeter", "n2")
	if err := other.Register(ctx, service("greeter", node("n2")), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventDelete, "greeter", "n2") // expired
	if err := other.Deregister(ctx, service("greeter", node("n1"))); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventDelete, "greeter", "n1")
}

func TestWatchEnds(t *testing.T) {
	r, _ := open(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	wctx, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wclose, err := r.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ectx, eclose := stream(t, wctx), stream(t, wclose)

	cancel()
	if err := ectx.end(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after cancel = %v, want context.Canceled", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := eclose.end(t); !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
}

func TestConcurrentWatchers(t *testing.T) {
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	var all []*events
	for range 4 {
		w, err := r.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, stream(t, w))
	}
	if err := r.Register(ctx, service("greeter", node("n1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, e := range all {
		e.want(t, registry.EventUpdate, "greeter", "n1")
	}
	if err := r.Deregister(ctx, service("greeter", node("n1"))); err != nil {
		t.Fatal(err)
	}
	for _, e := range all {
		e.want(t, registry.EventDelete, "greeter", "n1")
	}
}

func TestWatchLeaksNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	r, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var ws []registry.Watcher
	for _, c := range []context.Context{ctx, context.Background(), context.Background()} {
		w, err := r.Watch(c)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	// A Next blocked when the watch ends returns.
	blocked := make(chan error)
	go func() {
		_, err := ws[1].Next()
		blocked <- err
	}()
	cancel()     // ends ws[0]
	ws[1].Stop() // ends ws[1]
	if err := <-blocked; !errors.Is(err, ErrStopped) {
		t.Errorf("blocked Next = %v, want ErrStopped", err)
	}
	r.Close() // ends ws[2]
	if _, err := ws[2].Next(); !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
	waitFor(t, "the watch goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}

// helperDirEnv tells the test binary, run again as a child process, to act as a micro process
// that registers a node in the directory it names and heartbeats until it is killed.
const helperDirEnv = "EMBEDDED_REGISTRY_TEST_DIR"

func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("a child process of TestKilledProcessExpires")
	}
	const ttl = 500 * time.Millisecond
	r, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := service("victim", node("victim-1"))
	if err := r.Register(context.Background(), s, ttl); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("registered\n")
	// Outlive a lost parent by no more than this.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		time.Sleep(ttl / 10) // a wide margin, so that a loaded machine rarely lapses
		if err := r.Register(context.Background(), s, ttl); err != nil {
			t.Fatal(err)
		}
	}
	os.Exit(3)
}

func TestKilledProcessExpires(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := stream(t, w)

	cmd := startChild(t, "TestHelperProcess", helperDirEnv, r.Dir(), "registered")
	e.want(t, registry.EventUpdate, "victim", "victim-1")

	if err := cmd.Process.Kill(); err != nil { // SIGKILL where there are signals
		t.Fatal(err)
	}
	cmd.Wait()
	// The last heartbeat is final now.
	if _, err := os.Stat(filepath.Join(r.Dir(), "victim", "victim-1.json")); errors.Is(err, os.ErrNotExist) {
		// Readers remove an entry once it has been expired for another TTL.
		t.Skip("the child stalled for two TTLs before the kill, and its entry is gone; the machine is too loaded for this test")
	}
	expires := expiresOf(t, r, "victim", "victim-1")

	// Wait for the delete of the expiry. Had a heartbeat of the child come late, the watch
	// may have reported the node deleted and back before the kill; skip those events.
	for {
		ev := e.next(t)
		now := time.Now()
		if ev.Service != "victim" || ev.Node == nil || ev.Node.ID != "victim-1" {
			t.Fatalf("event %v %s %+v, want victim-1's", ev.Type, ev.Service, ev.Node)
		}
		if ev.Type == registry.EventDelete && !now.Before(expires) {
			t.Logf("delete reported %v after the node expired", now.Sub(expires))
			break
		}
		t.Logf("%v of victim-1 reported %v before it expired, from before the kill", ev.Type, expires.Sub(now))
	}
	if _, err := r.GetService(ctx, "victim"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService after expiry = %v, want ErrNotFound", err)
	}
}

// startChild runs the test binary again as a child process that runs only test, with
// env set to dir, and waits until the child prints line on its own line. The child is
// killed when the test ends.
func startChild(t *testing.T, test, env, dir, line string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == line {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("the child process exited before it printed %q", line)
		}
	case <-time.After(patience):
		t.Fatalf("the child process did not print %q in time", line)
	}
	return cmd
}
