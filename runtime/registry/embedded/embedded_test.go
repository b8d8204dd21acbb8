package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// patience bounds every wait in these tests. Waits end as soon as their condition holds, so
// this only matters when something is broken.
const patience = 15 * time.Second

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// open returns a Registry on dir that is closed when the test ends, and its log.
func open(t testing.TB, dir string) (*Registry, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	r, err := Open(dir, Options{
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ScanInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, logs
}

func node(id string) *registry.Node {
	return &registry.Node{
		ID:        id,
		Address:   "127.0.0.1:9000",
		Version:   "1.0.0",
		Metadata:  map[string]string{"zone": "a"},
		Endpoints: []string{"Greeter.Hello"},
	}
}

func service(name string, nodes ...*registry.Node) *registry.Service {
	return &registry.Service{Name: name, Nodes: nodes}
}

// expiresOf returns when the entry of a node expires, as written in its file.
func expiresOf(t *testing.T, r *Registry, service, id string) time.Time {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(r.Dir(), service, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(0, rec.Expires)
}

// lookup calls GetService and checks the result against the node's expiry: a call that starts
// before expires must find the node, and a call that finds it must have started before
// expires. It reports whether the node was found.
func lookup(t *testing.T, r *Registry, service, id string, expires time.Time) bool {
	t.Helper()
	start := time.Now()
	s, err := r.GetService(context.Background(), service)
	end := time.Now()
	found := false
	if err == nil {
		for _, n := range s.Nodes {
			found = found || n.ID == id
		}
	} else if !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService(%q): %v", service, err)
	}
	switch {
	case found && !start.Before(expires):
		t.Fatalf("GetService(%q) started %v after %s expired and still returned it", service, start.Sub(expires), id)
	case !found && end.Before(expires):
		t.Fatalf("GetService(%q) ended %v before %s expired and did not return it", service, expires.Sub(end), id)
	}
	return found
}

// waitFor polls cond until it holds, failing the test after patience.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", patience, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	b, a := node("greeter-b"), node("greeter-a")
	b.Metadata["zone"] = "b"
	if err := r.Register(ctx, service("greeter", b, a), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctx, service("billing", node("billing-1")), time.Minute); err != nil {
		t.Fatal(err)
	}

	got, err := r.GetService(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	want := service("greeter", a, b) // sorted by ID
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("GetService = %+v, want %+v", got, want)
	}

	list, err := r.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
	}
	if fmt.Sprint(names) != "[billing greeter]" || !reflect.DeepEqual(list[1], want) {
		t.Fatalf("ListServices = %v (%+v)", names, list)
	}

	if err := r.Deregister(ctx, service("greeter", a)); err != nil {
		t.Fatal(err)
	}
	got, err = r.GetService(ctx, "greeter")
	if err != nil || len(got.Nodes) != 1 || got.Nodes[0].ID != "greeter-b" {
		t.Fatalf("after deregistering greeter-a: %+v, %v", got, err)
	}
	// Deregistering what is not registered is no error.
	if err := r.Deregister(ctx, service("greeter", a, b)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService after deregistering all = %v, want ErrNotFound", err)
	}
	if _, err := r.GetService(ctx, "nobody"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService(nobody) = %v, want ErrNotFound", err)
	}
	list, err = r.ListServices(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "billing" {
		t.Fatalf("ListServices = %+v, %v; want billing only", list, err)
	}
}

func TestDirectoryIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "registry")
	r, _ := open(t, dir)
	if err := r.Register(context.Background(), service("greeter", node("n1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "greeter"), filepath.Join(dir, "greeter", "n1.json")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v, want no access for group and others", p, perm)
		}
	}
}

func TestTTLExpiry(t *testing.T) {
	r, _ := open(t, t.TempDir())
	if err := r.Register(context.Background(), service("greeter", node("n1")), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	expires := expiresOf(t, r, "greeter", "n1")
	waitFor(t, "n1 to expire", func() bool { return !lookup(t, r, "greeter", "n1", expires) })
	list, err := r.ListServices(context.Background())
	if err != nil || len(list) != 0 {
		t.Fatalf("ListServices after expiry = %+v, %v; want none", list, err)
	}
}

func TestHeartbeatKeepsNodeAlive(t *testing.T) {
	const ttl = 200 * time.Millisecond
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := stream(t, w)
	s := service("greeter", node("n1"))
	if err := r.Register(ctx, s, ttl); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventUpdate, "greeter", "n1")
	first := expiresOf(t, r, "greeter", "n1")
	last := first
	lapsed := false // whether a heartbeat came late, so that n1 expired in between
	// Heartbeat until a lookup after the first expiry has found the node, well past it.
	waitFor(t, "n1 found after its first TTL", func() bool {
		time.Sleep(ttl / 4) // the heartbeat interval
		lapsed = lapsed || !time.Now().Before(last)
		if err := r.Register(ctx, s, ttl); err != nil {
			t.Fatal(err)
		}
		last = expiresOf(t, r, "greeter", "n1")
		start := time.Now()
		found := lookup(t, r, "greeter", "n1", last)
		return found && start.After(first.Add(ttl))
	})
	// Heartbeats were not reported, nor was n1 deleted in between: the next event is a new node's.
	if err := r.Register(ctx, service("greeter", node("marker")), time.Minute); err != nil {
		t.Fatal(err)
	}
	if lapsed {
		t.Log("a heartbeat came after n1 expired, so the watch may report that; not checking it")
		return
	}
	e.want(t, registry.EventUpdate, "greeter", "marker")
}

// TestSharedDirectory stands for two micro processes on one machine.
func TestSharedDirectory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, _ := open(t, dir)
	b, _ := open(t, dir)
	wb, err := b.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events := stream(t, wb)

	if err := a.Register(ctx, service("greeter", node("from-a")), time.Minute); err != nil {
		t.Fatal(err)
	}
	events.want(t, registry.EventUpdate, "greeter", "from-a")
	if err := b.Register(ctx, service("greeter", node("from-b")), time.Minute); err != nil {
		t.Fatal(err)
	}
	events.want(t, registry.EventUpdate, "greeter", "from-b")
	for _, r := range []*Registry{a, b} {
		s, err := r.GetService(ctx, "greeter")
		if err != nil || len(s.Nodes) != 2 || s.Nodes[0].ID != "from-a" || s.Nodes[1].ID != "from-b" {
			t.Fatalf("GetService = %+v, %v; want from-a and from-b", s, err)
		}
	}
	if err := a.Deregister(ctx, service("greeter", node("from-a"))); err != nil {
		t.Fatal(err)
	}
	events.want(t, registry.EventDelete, "greeter", "from-a")
}

func TestCorruptEntriesSkipped(t *testing.T) {
	ctx := context.Background()
	r, logs := open(t, t.TempDir())
	if err := r.Register(ctx, service("greeter", node("good")), time.Minute); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(r.Dir(), "greeter")
	write := func(name, data string, age time.Duration) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if age > 0 {
			old := time.Now().Add(-age)
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	valid, err := os.ReadFile(filepath.Join(dir, "good.json"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	long := now.Add(-time.Hour).UnixNano()
	kept := []string{
		write("garbage.json", "not json at all", 0),
		write("empty.json", "", 0),
		write("torn.json", string(valid[:len(valid)/2]), 0),
		write("other.json", string(valid), 0), // names node "good", not "other"
		write("future.json", `{"v":99,"whatever":true}`, 2*staleGrace),
		write("notes.txt", "not an entry", 2*staleGrace),
		write(".good.json.123", string(valid), 0), // a writer's temporary file
	}
	removed := []string{
		write("old-garbage.json", "{", 2*staleGrace),
		write(".good.json.456", string(valid), 2*staleGrace), // left by a crashed writer
		write("dead.json", fmt.Sprintf(`{"v":1,"service":"greeter","ttl_ns":1000,"expires_unix_ns":%d,"node":{"id":"dead","address":"x"}}`, long), 0),
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.json"), 0o700); err != nil {
		t.Fatal(err)
	}

	s, err := r.GetService(ctx, "greeter")
	if err != nil || len(s.Nodes) != 1 || s.Nodes[0].ID != "good" {
		t.Fatalf("GetService = %+v, %v; want only the good node", s, err)
	}
	list, err := r.ListServices(ctx)
	if err != nil || len(list) != 1 || len(list[0].Nodes) != 1 {
		t.Fatalf("ListServices = %+v, %v; want greeter with the good node", list, err)
	}
	for _, p := range kept {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v; want it left alone", filepath.Base(p), err)
		}
	}
	for _, p := range removed {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there (%v); want it removed", filepath.Base(p), err)
		}
	}
	// Each unreadable entry is warned about once, however often it is read.
	for _, name := range []string{"garbage.json", "empty.json", "torn.json", "other.json", "old-garbage.json"} {
		if n := strings.Count(logs.String(), "level=WARN msg=\"embedded registry: skipping unreadable entry\" file="+filepath.Join(dir, name)); n != 1 {
			t.Errorf("log warns about %s %d times, want once:\n%s", name, n, logs)
		}
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	long := strings.Repeat("x", maxNameLen+1)
	for _, bad := range []string{"", ".", "..", ".hidden", "a/b", "../etc", `a\b`, "a\x00b", "a\nb", "tab\t", "del\x7f", "\xff\xfe", long} {
		err := r.Register(ctx, service(bad, node("n1")), time.Minute)
		checkBadName(t, "service name", bad, err)
		err = r.Register(ctx, service("greeter", node("n1"), node(bad)), time.Minute)
		checkBadName(t, "node ID", bad, err)
		err = r.Deregister(ctx, service("greeter", node(bad)))
		checkBadName(t, "node ID", bad, err)
		_, err = r.GetService(ctx, bad)
		checkBadName(t, "service name", bad, err)
		if !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("GetService(%q) = %v, want ErrNotFound", bad, err)
		}
	}
	// Nothing was written: a bad node fails the whole call before any write.
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService(greeter) = %v, want ErrNotFound", err)
	}
	for _, ttl := range []time.Duration{0, -time.Second} {
		err := r.Register(ctx, service("greeter", node("n1")), ttl)
		if err == nil || !strings.Contains(err.Error(), "ttl") {
			t.Errorf("Register with ttl %v = %v, want a ttl error", ttl, err)
		}
	}
	if err := r.Register(ctx, nil, time.Minute); err == nil {
		t.Error("Register(nil) succeeded")
	}
	if err := r.Register(ctx, service("greeter", nil), time.Minute); err == nil || !strings.Contains(err.Error(), "node 0 is nil") {
		t.Errorf("Register with a nil node = %v", err)
	}
	if _, err := Open(t.TempDir(), Options{ScanInterval: -1}); err == nil {
		t.Error("Open with a negative scan interval succeeded")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(file, Options{}); err == nil {
		t.Error("Open on a file succeeded")
	}
}

func checkBadName(t *testing.T, kind, bad string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s %q accepted", kind, bad)
		return
	}
	quoted := strconv.Quote(bad)
	if len(quoted) > 40 {
		quoted = quoted[:40]
	}
	if !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), quoted) {
		t.Errorf("error for %s %q does not name it: %v", kind, bad, err)
	}
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := r.Register(ctx, service("greeter", node("n1")), time.Minute); !errors.Is(err, ErrClosed) {
		t.Errorf("Register = %v", err)
	}
	if _, err := r.GetService(ctx, "greeter"); !errors.Is(err, ErrClosed) {
		t.Errorf("GetService = %v", err)
	}
	if _, err := r.Watch(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Watch = %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	r2, _ := open(t, t.TempDir())
	if _, err := r2.GetService(cancelled, "greeter"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetService with a cancelled context = %v", err)
	}
}

func BenchmarkGetService(b *testing.B) {
	for _, n := range []int{2, 20} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			r, _ := open(b, b.TempDir())
			s := service("greeter")
			for i := range n {
				s.Nodes = append(s.Nodes, node(fmt.Sprintf("greeter-host-%d", i)))
			}
			ctx := context.Background()
			if err := r.Register(ctx, s, time.Hour); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				got, err := r.GetService(ctx, "greeter")
				if err != nil || len(got.Nodes) != n {
					b.Fatal(got, err)
				}
			}
		})
	}
}

func BenchmarkRegister(b *testing.B) {
	r, _ := open(b, b.TempDir())
	s := service("greeter", node("greeter-host-1"))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Register(ctx, s, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}
