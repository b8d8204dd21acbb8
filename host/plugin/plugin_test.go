package plugin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// memBin is the test plugin (testdata/memplugin), built by TestMain.
var memBin string

// childEnv makes the test binary a child process that opens the plugin at the path in
// it, prints the plugin's pid, and waits to be killed.
const childEnv = "MICRO_PLUGIN_TEST_CHILD"

func TestMain(m *testing.M) {
	if bin := os.Getenv(childEnv); bin != "" {
		runChild(bin)
		return
	}
	dir, err := os.MkdirTemp("", "micro-plugin-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	memBin = filepath.Join(dir, "memplugin")
	if out, err := exec.Command("go", "build", "-o", memBin, "./testdata/memplugin").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build testdata/memplugin: %v\n%s", err, out)
		os.Exit(1)
	}
	tcpBin = filepath.Join(dir, "tcpplugin")
	if out, err := exec.Command("go", "build", "-o", tcpBin, "./testdata/tcpplugin").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build testdata/tcpplugin: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runChild(bin string) {
	r, err := OpenRegistry(context.Background(), Config{Name: "mem", Path: bin}, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Printf("pid %d\n", r.pid())
	time.Sleep(time.Hour)
}

// logBuffer collects log output; it is safe for concurrent use.
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

// records returns the JSON log records written so far.
func (b *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, rec)
	}
	return out
}

// newLogger returns a logger that writes every level as JSON to the returned buffer.
func newLogger() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: levelTrace})), buf
}

// open opens the test plugin with cfg (Name and Path default to the test plugin) and
// closes it when the test ends.
func open(t *testing.T, cfg Config) (*Registry, *logBuffer) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "mem"
	}
	if cfg.Path == "" && cfg.SourceDir == "" {
		cfg.Path = memBin
	}
	log, buf := newLogger()
	r, err := OpenRegistry(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("OpenRegistry: %v\nlog:\n%s", err, buf)
	}
	t.Cleanup(func() { r.Close() })
	return r, buf
}

// openErr opens the test plugin expecting an error, and returns it.
func openErr(t *testing.T, cfg Config) error {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "mem"
	}
	if cfg.Path == "" && cfg.SourceDir == "" {
		cfg.Path = memBin
	}
	log, buf := newLogger()
	r, err := OpenRegistry(context.Background(), cfg, log)
	if err == nil {
		r.Close()
		t.Fatalf("OpenRegistry succeeded; want an error\nlog:\n%s", buf)
	}
	return err
}

// waitFor polls cond until it holds, and fails the test after 15s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processGone reports whether pid has exited (a zombie counts as exited).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	switch processState(pid) {
	case 0, 'Z', 'X':
		return true
	}
	return false
}

// processState returns pid's state letter from /proc (R, S, T, Z...), or 0 when there
// is no such process.
func processState(pid int) byte {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The state follows the command name in parentheses: "pid (comm) S ...".
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2]
	}
	return 0
}

// readPID waits for the test plugin to write its pid to file.
func readPID(t *testing.T, file string) int {
	t.Helper()
	var pid int
	waitFor(t, "the plugin's pid file", func() bool {
		b, err := os.ReadFile(file)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(string(b))
		return err == nil
	})
	return pid
}

func greeter() *registry.Service {
	return &registry.Service{Name: "greeter", Nodes: []*registry.Node{
		{
			ID: "greeter-1", Address: "127.0.0.1:9001", Version: "1.0.0",
			Metadata: map[string]string{"zone": "a"}, Endpoints: []string{"Greeter.Hello"},
		},
		{ID: "greeter-2", Address: "127.0.0.1:9002", Version: "2.0.0"},
	}}
}

func sortNodes(s *registry.Service) *registry.Service {
	slices.SortFunc(s.Nodes, func(a, b *registry.Node) int { return strings.Compare(a.ID, b.ID) })
	return s
}

func TestRoundTrip(t *testing.T) {
	r, _ := open(t, Config{})
	ctx := context.Background()

	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService before Register: err = %v, want ErrNotFound", err)
	}
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	got, err := r.GetService(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	if want := greeter(); !reflect.DeepEqual(sortNodes(got), want) {
		t.Errorf("GetService = %+v, want %+v", got, want)
	}
	other := &registry.Service{Name: "other", Nodes: []*registry.Node{{ID: "o-1", Address: "127.0.0.1:9003"}}}
	if err := r.Register(ctx, other, time.Minute); err != nil {
		t.Fatal(err)
	}
	list, err := r.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(list, func(a, b *registry.Service) int { return strings.Compare(a.Name, b.Name) })
	if len(list) != 2 || !reflect.DeepEqual(sortNodes(list[0]), greeter()) || !reflect.DeepEqual(list[1], other) {
		t.Errorf("ListServices = %+v", list)
	}

	one := greeter()
	one.Nodes = one.Nodes[:1]
	if err := r.Deregister(ctx, one); err != nil {
		t.Fatal(err)
	}
	got, err = r.GetService(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Nodes) != 1 || got.Nodes[0].ID != "greeter-2" {
		t.Errorf("after Deregister of greeter-1: %+v", got)
	}
	if err := r.Deregister(ctx, greeter()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService after Deregister: err = %v, want ErrNotFound", err)
	}

	// A node expires ttl after its last Register.
	if err := r.Register(ctx, greeter(), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the nodes to expire", func() bool {
		_, err := r.GetService(ctx, "greeter")
		return errors.Is(err, registry.ErrNotFound)
	})

	if err := r.Register(ctx, nil, time.Second); err == nil {
		t.Error("Register(nil) succeeded")
	}
	if err := r.Register(ctx, &registry.Service{}, time.Second); err == nil || !strings.Contains(err.Error(), "no service name") {
		t.Errorf("Register of a service without a name: err = %v", err)
	}
	if err := r.Register(ctx, other, 0); err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Errorf("Register with ttl 0: err = %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.GetService(cctx, "other"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetService with a canceled context: err = %v, want context.Canceled", err)
	}
}

// next returns the watcher's next event, failing the test if it errs.
func next(t *testing.T, w registry.Watcher) registry.Event {
	t.Helper()
	ev, err := w.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return ev
}

func TestWatch(t *testing.T) {
	r, _ := open(t, Config{})
	ctx := context.Background()
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svc := &registry.Service{Name: "greeter", Nodes: greeter().Nodes[:1]}
	if err := r.Register(ctx, svc, time.Minute); err != nil {
		t.Fatal(err)
	}
	ev := next(t, w)
	if ev.Type != registry.EventUpdate || ev.Service != "greeter" || ev.Node == nil || !reflect.DeepEqual(ev.Node, svc.Nodes[0]) {
		t.Errorf("event after Register = %+v (node %+v)", ev, ev.Node)
	}
	if err := r.Deregister(ctx, svc); err != nil {
		t.Fatal(err)
	}
	ev = next(t, w)
	if ev.Type != registry.EventDelete || ev.Service != "greeter" || ev.Node == nil || ev.Node.ID != "greeter-1" {
		t.Errorf("event after Deregister = %+v", ev)
	}
	w.Stop()
	if _, err := w.Next(); err == nil {
		t.Error("Next after Stop returned no error")
	}

	// A watch ends when its context does.
	cctx, cancel := context.WithCancel(ctx)
	w, err = r.Watch(cctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := w.Next(); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after the context ended: err = %v, want context.Canceled", err)
	}
	w.Stop()
}

func TestPluginLogsFlowIntoSlog(t *testing.T) {
	_, buf := open(t, Config{Address: "mem://here", Datacenter: "dc9"})
	find := func(msg string) map[string]any {
		for _, rec := range buf.records(t) {
			if rec["msg"] == msg {
				return rec
			}
		}
		return nil
	}
	waitFor(t, "the plugin's log lines", func() bool {
		return find("memplugin initialised") != nil && find("memplugin keeps everything in memory") != nil
	})
	info := find("memplugin initialised")
	if info["level"] != "INFO" || info["plugin"] != "mem" || info["address"] != "mem://here" || info["datacenter"] != "dc9" {
		t.Errorf("forwarded info record = %v", info)
	}
	if _, ok := info["timestamp"]; ok {
		t.Errorf("forwarded record keeps go-plugin's timestamp: %v", info)
	}
	if warn := find("memplugin keeps everything in memory"); warn["level"] != "WARN" || warn["plugin"] != "mem" {
		t.Errorf("forwarded warn record = %v", warn)
	}
	if find("registry plugin started") == nil {
		t.Errorf("no start record in\n%s", buf)
	}
}

func TestTokenNeverLogged(t *testing.T) {
	const token = "tok-5ecret-9b1f"
	cfg := Config{Token: token, Address: "mem://here", env: []string{"MEMPLUGIN_WANT_TOKEN=" + token},
		restartMin: 10 * time.Millisecond, restartMax: 50 * time.Millisecond}
	r, buf := open(t, cfg) // the plugin's Init fails unless it got the token
	ctx := context.Background()
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	// A restart sends the token again.
	pid := r.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a restart", func() bool { return r.Health() == nil && r.pid() != pid && r.pid() != 0 })
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	r.Close()

	failing := cfg
	failing.env = []string{"MEMPLUGIN_WANT_TOKEN=another"}
	err := openErr(t, failing)
	failing.env = []string{"MEMPLUGIN_INIT_FAIL=1"}
	err2 := openErr(t, failing)

	full := Config{Name: "consul", Path: "/bin/p", Token: token}
	printed := []string{
		buf.String(), err.Error(), err2.Error(),
		fmt.Sprint(full), fmt.Sprintf("%v|%+v|%#v|%s|%q", full, full, full, full, full),
		fmt.Sprintf("%v|%+v|%#v", &full, &full, &full),
		fmt.Sprintf("%+v", struct{ C Config }{full}),
		full.String(),
	}
	var js logBuffer
	slog.New(slog.NewJSONHandler(&js, nil)).Info("config", "cfg", full)
	var text logBuffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("config", "cfg", full, "ptr", &full)
	printed = append(printed, js.String(), text.String())
	for _, s := range printed {
		if strings.Contains(s, token) {
			t.Errorf("the token shows in %q", s)
		}
	}
	for _, s := range printed[3:] {
		if !strings.Contains(s, redacted) {
			t.Errorf("no %s in %q", redacted, s)
		}
	}
	if !strings.Contains(printed[3], "consul") {
		t.Errorf("%%v of a Config hides its name: %s", printed[3])
	}
}

func TestPluginKilledRestarts(t *testing.T) {
	down := filepath.Join(t.TempDir(), "down")
	r, buf := open(t, Config{
		env:        []string{"MEMPLUGIN_EXIT_IF_FILE=" + down},
		restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond,
	})
	ctx := context.Background()
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// Kill the plugin, and keep its restarts failing while the file exists.
	if err := os.WriteFile(down, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pid := r.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Next(); err == nil {
		t.Fatal("the watch did not end when the plugin died")
	}
	waitFor(t, "the plugin to be reported down", func() bool { return r.Health() != nil })
	if err := r.Health(); !strings.Contains(err.Error(), "exit") {
		t.Errorf("Health = %v, want the reason", err)
	}
	// While it is down, calls fail at once, without waiting for the plugin.
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, errDown) {
		t.Errorf("GetService while down: err = %v, want errDown", err)
	}
	if err := r.Register(ctx, greeter(), time.Minute); !errors.Is(err, errDown) {
		t.Errorf("Register while down: err = %v, want errDown", err)
	}
	if _, err := r.ListServices(ctx); !errors.Is(err, errDown) {
		t.Errorf("ListServices while down: err = %v, want errDown", err)
	}
	if _, err := r.Watch(ctx); !errors.Is(err, errDown) {
		t.Errorf("Watch while down: err = %v, want errDown", err)
	}
	// A failed restart is the reason given.
	waitFor(t, "a failed restart", func() bool {
		err := r.Health()
		return err != nil && strings.Contains(err.Error(), "exiting at once, since")
	})

	if err := os.Remove(down); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin to come back", func() bool { return r.Health() == nil })
	if r.pid() == pid || processGone(r.pid()) {
		t.Fatalf("pid after restart = %d (was %d)", r.pid(), pid)
	}
	if !processGone(pid) {
		t.Errorf("the killed plugin %d is still there", pid)
	}
	// The new process lost the registrations; micro's heartbeat restores them.
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService after restart: err = %v, want ErrNotFound", err)
	}
	w, err = r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, w); ev.Service != "greeter" || ev.Type != registry.EventUpdate {
		t.Errorf("event after restart = %+v", ev)
	}
	if _, err := r.GetService(ctx, "greeter"); err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"registry plugin failed; restarting it", "registry plugin restart failed", "registry plugin restarted"} {
		if !strings.Contains(buf.String(), msg) {
			t.Errorf("no %q in the log", msg)
		}
	}
}

func TestPluginCrashesDuringCall(t *testing.T) {
	r, _ := open(t, Config{
		env:        []string{"MEMPLUGIN_CRASH_ON_CALL=2"},
		restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond,
	})
	ctx := context.Background()
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	pid := r.pid()
	_, err := r.GetService(ctx, "greeter") // the plugin exits during this call
	if err == nil || errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService during a crash: err = %v", err)
	}
	waitFor(t, "a restart", func() bool { return r.Health() == nil && r.pid() != pid && r.pid() != 0 })
	if err := r.Register(ctx, greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestPluginHangsRestarts(t *testing.T) {
	r, buf := open(t, Config{StartTimeout: 500 * time.Millisecond,
		restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond})
	pid := r.pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin to stop", func() bool { return processState(pid) == 'T' })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetService of a hung plugin: err = %v, want DeadlineExceeded", err)
	}
	if _, err := r.Watch(context.Background()); err == nil || !strings.Contains(err.Error(), "no answer within 500ms") {
		t.Errorf("Watch of a hung plugin: err = %v", err)
	}
	waitFor(t, "a restart", func() bool { return r.Health() == nil && r.pid() != pid && r.pid() != 0 })
	if !processGone(pid) {
		t.Errorf("the hung plugin %d is still there", pid)
	}
	if !strings.Contains(buf.String(), "plugin does not answer") {
		t.Errorf("no reason in the log:\n%s", buf)
	}
	if err := r.Register(context.Background(), greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestProtocolMismatch(t *testing.T) {
	err := openErr(t, Config{env: []string{"MEMPLUGIN_PROTOCOL=2"}})
	if want := `registry plugin "mem" speaks protocol 2, micro speaks 1`; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v\nwant it to say %s", err, want)
	}
}

func TestExitsAtOnce(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	err := openErr(t, Config{env: []string{"MEMPLUGIN_EXIT=7", "MEMPLUGIN_PIDFILE=" + pidFile}})
	for _, want := range []string{`registry plugin "mem"`, memBin, "exited before its handshake", "memplugin: exiting at once as told"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to say %s", err, want)
		}
	}
	if pid := readPID(t, pidFile); !processGone(pid) {
		t.Errorf("plugin %d still runs", pid)
	}
}

func TestHangsAtHandshake(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	err := openErr(t, Config{StartTimeout: 300 * time.Millisecond,
		env: []string{"MEMPLUGIN_HANG=1", "MEMPLUGIN_PIDFILE=" + pidFile}})
	if want := "no handshake within 300ms"; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v\nwant it to say %s", err, want)
	}
	pid := readPID(t, pidFile)
	waitFor(t, "the hung plugin to be killed", func() bool { return processGone(pid) })
}

func TestOpenCanceled(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := OpenRegistry(ctx, Config{Name: "mem", Path: memBin, StartTimeout: time.Hour,
			env: []string{"MEMPLUGIN_HANG=1", "MEMPLUGIN_PIDFILE=" + pidFile}}, nil)
		errc <- err
	}()
	pid := readPID(t, pidFile)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	waitFor(t, "the plugin to be killed", func() bool { return processGone(pid) })
}

func TestInitFails(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	err := openErr(t, Config{Address: "10.0.0.1:1",
		env: []string{"MEMPLUGIN_INIT_FAIL=1", "MEMPLUGIN_PIDFILE=" + pidFile}})
	if want := `registry plugin "mem": init: backend at "10.0.0.1:1" is unreachable`; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	waitFor(t, "the plugin to be killed", func() bool { return processGone(readPID(t, pidFile)) })
}

func TestBadName(t *testing.T) {
	for _, name := range []string{"", "../x", "a/b", ".hidden"} {
		if _, err := OpenRegistry(context.Background(), Config{Name: name, Path: memBin}, nil); err == nil {
			t.Errorf("name %q: no error", name)
		}
	}
}

func TestNotAPlugin(t *testing.T) {
	err := openErr(t, Config{Path: "/bin/echo"})
	if !strings.Contains(err.Error(), `registry plugin "mem" (/bin/echo): not a micro registry plugin`) {
		t.Errorf("err = %v", err)
	}
	err = openErr(t, Config{Path: filepath.Join(t.TempDir(), "missing")})
	if !strings.Contains(err.Error(), "missing") {
		t.Errorf("err = %v", err)
	}
}

func TestSHA256Pin(t *testing.T) {
	b, err := os.ReadFile(memBin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	actual := hex.EncodeToString(sum[:])
	wrong := strings.Repeat("ab", 32)

	err = openErr(t, Config{SHA256: wrong})
	for _, want := range []string{memBin, "sha256 " + actual, "sha256 " + wrong + " is pinned", "refusing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to say %s", err, want)
		}
	}
	if err := openErr(t, Config{SHA256: "xyz"}); !strings.Contains(err.Error(), "not 64 hex digits") {
		t.Errorf("err = %v", err)
	}
	r, _ := open(t, Config{SHA256: strings.ToUpper(actual)})
	if err := r.Register(context.Background(), greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestBuildFromSource(t *testing.T) {
	src, err := filepath.Abs("testdata/memplugin")
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(t.TempDir(), "bin")
	bin := filepath.Join(cache, "registry-mem")
	cfg := Config{SourceDir: src, CacheDir: cache}

	r, buf := open(t, cfg)
	if !strings.Contains(buf.String(), "building registry plugin") {
		t.Errorf("no build in the log:\n%s", buf)
	}
	if err := r.Register(context.Background(), greeter(), time.Minute); err != nil {
		t.Fatal(err)
	}
	r.Close()
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}

	// Up to date: no build.
	r, buf = open(t, cfg)
	r.Close()
	if strings.Contains(buf.String(), "building registry plugin") {
		t.Errorf("rebuilt an up-to-date binary:\n%s", buf)
	}
	if st2, err := os.Stat(bin); err != nil || !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("binary changed: %v", err)
	}

	// Older than its sources: a build.
	old := time.Now().Add(-24 * time.Hour * 365 * 30)
	if err := os.Chtimes(bin, old, old); err != nil {
		t.Fatal(err)
	}
	r, buf = open(t, cfg)
	r.Close()
	if !strings.Contains(buf.String(), "is newer than the binary") {
		t.Errorf("no rebuild of a stale binary:\n%s", buf)
	}

	missing := filepath.Join(t.TempDir(), "nowhere")
	if err := openErr(t, Config{SourceDir: missing, CacheDir: cache}); !strings.Contains(err.Error(), missing) {
		t.Errorf("err = %v, want it to name %s", err, missing)
	}
	broken := t.TempDir() // outside any module: go build fails
	if err := os.WriteFile(filepath.Join(broken, "main.go"), []byte("package main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := openErr(t, Config{SourceDir: broken, CacheDir: cache}); !strings.Contains(err.Error(), "build "+broken) {
		t.Errorf("err = %v, want it to name %s", err, broken)
	}
	if _, err := OpenRegistry(context.Background(), Config{Name: "mem"}, nil); err == nil || !strings.Contains(err.Error(), "no executable") {
		t.Errorf("without Path and SourceDir: err = %v", err)
	}
}

// TestPluginDiesWithMicro SIGKILLs a process that runs a plugin, and checks that the
// plugin exits too.
func TestPluginDiesWithMicro(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux's")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+memBin)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var pid int
	if _, err := fmt.Sscanf(line, "pid %d", &pid); err != nil || pid == 0 {
		t.Fatalf("child said %q", line)
	}
	if processGone(pid) {
		t.Fatalf("plugin %d is not running", pid)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waitFor(t, fmt.Sprintf("plugin %d to exit", pid), func() bool { return processGone(pid) })
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	cycle := func() {
		r, _ := open(t, Config{})
		w, err := r.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pid := r.pid()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if !processGone(pid) {
			t.Errorf("plugin %d runs after Close", pid)
		}
		if _, err := w.Next(); err == nil {
			t.Error("a watch outlived Close")
		}
		w.Stop()
		if _, err := r.GetService(ctx, "x"); !errors.Is(err, errClosed) {
			t.Errorf("GetService after Close: err = %v", err)
		}
		if err := r.Health(); !errors.Is(err, errClosed) {
			t.Errorf("Health after Close = %v", err)
		}
		if err := r.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
	cycle() // starts whatever runs once per process
	before := runtime.NumGoroutine()
	cycle()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
