package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/registry"
)

// hangBound bounds a call that must not block: far longer than it takes, far shorter than
// forever.
const hangBound = 10 * time.Second

// promptly runs fn, failing the test if it does not return within hangBound. fn must not
// call t.Fatal. A call blocked on a named pipe is then released, and so is any other until
// the test ends (a watcher's, say), by opening every named pipe under dirs for writing, so
// that the test goes on to report everything else that is wrong, and ends.
func promptly(t *testing.T, what string, dirs []string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return
	case <-time.After(hangBound):
	}
	t.Errorf("%s did not return within %v", what, hangBound)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // after the cleanups registered later, which may block
	go func() {
		for {
			for _, d := range dirs {
				filepath.WalkDir(d, func(path string, e os.DirEntry, err error) error {
					if err == nil && e.Type()&os.ModeNamedPipe != 0 {
						if fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
							unix.Close(fd)
						}
					}
					return nil
				})
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(patience):
		t.Fatalf("%s is still blocked", what)
	}
}

// age makes path, and not what it links to, look last modified long ago: longer than
// staleGrace, after which the registry removes what it may remove.
func age(t *testing.T, path string) {
	t.Helper()
	old := unix.NsecToTimespec(time.Now().Add(-2 * staleGrace).UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{old, old}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// entryData returns the contents of a valid entry for a node of a service.
func entryData(t *testing.T, svc, id string, expires time.Time) []byte {
	t.Helper()
	data, err := encodeRecord(record{Service: svc, Node: node(id), TTL: time.Minute, Expires: expires.UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// junk is a file planted in the registry directory that is not an entry.
type junk struct {
	path   string
	reason string // what the warning about it says
}

// garden is a registry directory with junk in it, and a directory outside it that the junk
// points into, which must stay untouched.
type garden struct {
	r       *Registry
	logs    *syncBuffer
	junk    []junk
	outside string
	before  map[string]string // the files under outside and their contents, as planted
}

// plant opens a registry with one good node, greeter/good, and puts junk in it: in place of
// node entries of greeter and in place of service directories.
func plant(t *testing.T) *garden {
	t.Helper()
	g := &garden{outside: t.TempDir()}
	g.r, g.logs = open(t, t.TempDir())
	if err := g.r.Register(context.Background(), service("greeter", node("good")), time.Hour); err != nil {
		t.Fatal(err)
	}
	out := func(name string) string { return filepath.Join(g.outside, name) }
	write := func(path string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mkfifo := func(path string) {
		t.Helper()
		if err := unix.Mkfifo(path, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	symlink := func(target, path string) {
		t.Helper()
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(path string) {
		t.Helper()
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	// Outside: a valid entry of greeter, a named pipe, and a directory that would be a fine
	// service, with a valid entry and files that a reader there would remove.
	write(out("stolen.json"), entryData(t, "greeter", "stolen", time.Now().Add(time.Hour)))
	mkfifo(out("pipe"))
	mkdir(out("svc"))
	write(out("svc/n1.json"), entryData(t, "linksvc", "n1", time.Now().Add(time.Hour)))
	write(out("svc/dead.json"), entryData(t, "linksvc", "dead", time.Now().Add(-time.Hour)))
	write(out("svc/old.json"), []byte("{"))
	write(out("svc/.n1.json.123"), []byte("{"))
	for _, p := range []string{"svc/dead.json", "svc/old.json", "svc/.n1.json.123"} {
		age(t, out(p))
	}

	svc := func(name string) string { return filepath.Join(g.r.Dir(), "greeter", name) }
	root := func(name string) string { return filepath.Join(g.r.Dir(), name) }
	add := func(path, reason string) { g.junk = append(g.junk, junk{path, reason}) }

	mkfifo(svc("fifo.json"))
	add(svc("fifo.json"), "named pipe, not a regular file")
	for name, target := range map[string]string{
		"stolen.json":   out("stolen.json"), // not followed, so not found
		"topipe.json":   out("pipe"),
		"zero.json":     "/dev/zero",
		"todir.json":    g.outside,
		"dangling.json": out("nothing"),
	} {
		symlink(target, svc(name))
		add(svc(name), "symbolic link, not followed")
	}
	if err := unix.Mknod(svc("socket.json"), unix.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	add(svc("socket.json"), "socket, not a regular file")
	if err := mkdevZero(svc("device.json")); err == nil {
		add(svc("device.json"), "character device, not a regular file") // /dev/zero again
	} else {
		t.Logf("no device node in the test (%v)", err)
	}
	huge, err := os.Create(svc("huge.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := huge.Truncate(2 * maxRecordSize); err != nil {
		t.Fatal(err)
	}
	huge.Close()
	add(svc("huge.json"), fmt.Sprintf("%d bytes, more than %d", 2*maxRecordSize, maxRecordSize))
	write(svc("corrupt.json"), []byte(`{"v":1,"service":"gree`))
	add(svc("corrupt.json"), "unexpected end of JSON input")
	mkdir(svc("sub.json"))
	add(svc("sub.json"), "directory, not a regular file")
	// Hidden, and named like a temporary file of a writer, but not a regular file: neither
	// warned about nor removed.
	mkfifo(svc(".fifo.json.123"))

	mkfifo(root("fifosvc"))
	add(root("fifosvc"), "named pipe, not a directory")
	symlink(out("svc"), root("linksvc"))
	add(root("linksvc"), "symbolic link, not followed")
	symlink(out("pipe"), root("pipesvc"))
	add(root("pipesvc"), "symbolic link, not followed")
	write(root("filesvc"), entryData(t, "filesvc", "n1", time.Now().Add(time.Hour)))
	add(root("filesvc"), "regular file, not a directory")

	// Long unchanged, so that a reader would remove them if it removed what it did not write.
	// Not the regular files in greeter, which the registry may remove then.
	for _, j := range g.junk {
		if fi, err := os.Lstat(j.path); err != nil || !fi.Mode().IsRegular() || filepath.Dir(j.path) == root(".") {
			age(t, j.path)
		}
	}
	age(t, svc(".fifo.json.123"))
	g.before = g.snapshot(t)
	return g
}

// dirs returns the directories where the junk is.
func (g *garden) dirs() []string { return []string{g.r.Dir(), g.outside} }

// snapshot returns the files under g.outside and their contents.
func (g *garden) snapshot(t *testing.T) map[string]string {
	t.Helper()
	files := make(map[string]string)
	err := filepath.WalkDir(g.outside, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		files[path] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// check checks that the junk is all still there, that nothing outside changed, and that each
// junk file was warned about exactly once, saying why.
func (g *garden) check(t *testing.T) {
	t.Helper()
	for _, j := range g.junk {
		if _, err := os.Lstat(j.path); err != nil {
			t.Errorf("%s: %v; want it left alone", j.path, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(g.r.Dir(), "greeter", ".fifo.json.123")); err != nil {
		t.Errorf("a named pipe named like a temporary file: %v; want it left alone", err)
	}
	if after := g.snapshot(t); fmt.Sprint(after) != fmt.Sprint(g.before) {
		t.Errorf("files outside the registry changed:\nbefore %v\nafter  %v", g.before, after)
	}
	logs := g.logs.String()
	lines := strings.Split(logs, "\n")
	for _, j := range g.junk {
		var warns []string
		for _, l := range lines {
			if strings.Contains(l, "level=WARN") && logsFile(l, j.path) {
				warns = append(warns, l)
			}
		}
		if len(warns) != 1 {
			t.Errorf("%s: warned about %d times, want once:\n%s", j.path, len(warns), strings.Join(warns, "\n"))
			continue
		}
		if !strings.Contains(warns[0], j.reason) {
			t.Errorf("%s: the warning does not say %q:\n%s", j.path, j.reason, warns[0])
		}
	}
	if strings.Contains(logs, ".fifo.json.123") {
		t.Errorf("a hidden file is logged about:\n%s", logs)
	}
}

// logsFile reports whether log lines name path as their file.
func logsFile(lines, path string) bool {
	return strings.Contains(lines, "file="+path+" ") || strings.Contains(lines, "file="+strconv.Quote(path)+" ")
}

func TestUntrustedFilesSkipped(t *testing.T) {
	ctx := context.Background()
	g := plant(t)
	for range 3 { // warnings are not repeated
		var (
			got      *registry.Service
			list     []*registry.Service
			err      error
			listErr  error
			junkErrs = make(map[string]error)
		)
		promptly(t, "reading the registry", g.dirs(), func() {
			got, err = g.r.GetService(ctx, "greeter")
			list, listErr = g.r.ListServices(ctx)
			for _, name := range []string{"fifosvc", "linksvc", "pipesvc", "filesvc"} {
				_, junkErrs[name] = g.r.GetService(ctx, name)
			}
		})
		if err != nil || len(got.Nodes) != 1 || got.Nodes[0].ID != "good" {
			t.Errorf("GetService(greeter) = %+v, %v; want only the good node", got, err)
		}
		if listErr != nil || len(list) != 1 || list[0].Name != "greeter" || len(list[0].Nodes) != 1 {
			t.Errorf("ListServices = %+v, %v; want greeter with the good node only", list, listErr)
		}
		for name, err := range junkErrs {
			if !errors.Is(err, registry.ErrNotFound) {
				t.Errorf("GetService(%s) = %v, want ErrNotFound", name, err)
			}
		}
	}
	g.check(t)
}

func TestSymlinkedServiceNotWritten(t *testing.T) {
	ctx := context.Background()
	g := plant(t)
	var regErrs, deregErrs [2]error
	promptly(t, "writing to the registry", g.dirs(), func() {
		g.r.ListServices(ctx)
		regErrs[0] = g.r.Register(ctx, service("linksvc", node("n2")), time.Minute)
		regErrs[1] = g.r.Register(ctx, service("fifosvc", node("n1")), time.Minute)
		deregErrs[0] = g.r.Deregister(ctx, service("linksvc", node("n1"), node("dead")))
		deregErrs[1] = g.r.Deregister(ctx, service("fifosvc", node("n1")))
	})
	for i, want := range []string{"linksvc: symbolic link, not followed", "fifosvc: named pipe, not a directory"} {
		if regErrs[i] == nil || !strings.Contains(regErrs[i].Error(), want) {
			t.Errorf("Register = %v, want an error saying %q", regErrs[i], want)
		}
		// Nothing was registered there, so there is nothing to deregister.
		if deregErrs[i] != nil {
			t.Errorf("Deregister = %v", deregErrs[i])
		}
	}
	g.check(t)
}

func TestRemovesOnlyWhatItWrote(t *testing.T) {
	ctx := context.Background()
	r, _ := open(t, t.TempDir())
	if err := r.Register(ctx, service("greeter", node("good")), time.Hour); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(r.Dir(), "greeter")
	outside := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(outside, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	age(t, outside)
	files := map[string]bool{ // whether the registry may remove it
		".keep":                     false, // hidden, but not named like a temporary file
		".good.json":                false,
		".good.json.0123456789abcd": true, // a temporary file of a writer that crashed
		".good.json.x":              false,
		".link.json.123":            false, // a symbolic link
		"link.json":                 false,
		"fifo.json":                 false,
	}
	for name := range files {
		p := filepath.Join(dir, name)
		var err error
		switch {
		case strings.HasPrefix(name, "fifo"):
			err = unix.Mkfifo(p, 0o600)
		case strings.Contains(name, "link"):
			err = os.Symlink(outside, p)
		default:
			err = os.WriteFile(p, []byte("{"), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		age(t, p)
	}
	promptly(t, "reading the registry", []string{dir}, func() {
		r.ListServices(ctx)
	})
	for name, removable := range files {
		_, err := os.Lstat(filepath.Join(dir, name))
		if gone := errors.Is(err, os.ErrNotExist); gone != removable {
			t.Errorf("%s: removed = %v, want %v", name, gone, removable)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the file that a symbolic link points to: %v", err)
	}

	// Deregister does not remove what is not an entry the registry wrote.
	var err error
	promptly(t, "Deregister", []string{dir}, func() {
		err = r.Deregister(ctx, service("greeter", node("link"), node("fifo")))
	})
	for _, want := range []string{"link.json: not removing a symbolic link", "fifo.json: not removing a named pipe"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Deregister = %v, want an error saying %q", err, want)
		}
	}
	for _, name := range []string{"link.json", "fifo.json"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s after Deregister: %v", name, err)
		}
	}
}

func TestWatchUntrustedFiles(t *testing.T) {
	for _, polling := range []bool{false, true} {
		t.Run(map[bool]string{false: "events", true: "polling"}[polling], func(t *testing.T) {
			ctx := context.Background()
			g := plant(t)
			g.r.noEvents = polling
			var (
				w   registry.Watcher
				err error
			)
			promptly(t, "Watch", g.dirs(), func() { w, err = g.r.Watch(ctx) })
			if err != nil {
				t.Fatal(err)
			}
			e := stream(t, w)
			if err := g.r.Register(ctx, service("greeter", node("n1")), time.Hour); err != nil {
				t.Fatal(err)
			}
			e.want(t, registry.EventUpdate, "greeter", "n1")

			// More junk while the watch runs, to be found by file-system events or scans.
			root, svc := g.r.Dir(), filepath.Join(g.r.Dir(), "greeter")
			late := []junk{
				{filepath.Join(root, "latefifo"), "named pipe, not a directory"},
				{filepath.Join(root, "latelink"), "symbolic link, not followed"},
				{filepath.Join(svc, "late.json"), "named pipe, not a regular file"},
				{filepath.Join(svc, "late2.json"), "symbolic link, not followed"},
			}
			for _, j := range late {
				var err error
				switch {
				case strings.Contains(j.reason, "pipe"):
					err = unix.Mkfifo(j.path, 0o600)
				case strings.HasSuffix(j.path, "latelink"):
					err = os.Symlink(filepath.Join(g.outside, "svc"), j.path)
				default:
					err = os.Symlink(filepath.Join(g.outside, "stolen.json"), j.path)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			g.junk = append(g.junk, late...)
			waitFor(t, "warnings about the late junk", func() bool {
				for _, j := range late {
					if !logsFile(g.logs.String(), j.path) {
						return false
					}
				}
				return true
			})
			time.Sleep(5 * g.r.scan) // more scans, which must not warn again
			// Nothing was reported for the junk: the next event is the marker's.
			if err := g.r.Register(ctx, service("greeter", node("marker")), time.Hour); err != nil {
				t.Fatal(err)
			}
			e.want(t, registry.EventUpdate, "greeter", "marker")
			w.Stop()
			g.check(t)
		})
	}
}

func TestWatchBounded(t *testing.T) {
	ctx := context.Background()
	r, logs := open(t, t.TempDir())
	r.maxKnown, r.maxWatched = 3, 2
	wr, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := stream(t, wr)
	var reported []string
	for i := range 5 {
		if err := r.Register(ctx, service(fmt.Sprintf("svc%d", i), node("n")), time.Hour); err != nil {
			t.Fatal(err)
		}
		if i < 3 {
			reported = append(reported, e.next(t).Service)
		}
	}
	// The other two are not reported; a scan or two later, neither is anything else.
	time.Sleep(3 * r.scan)
	select {
	case ev := <-e.ch:
		t.Fatalf("event %v %s past the bound", ev.Type, ev.Service)
	default:
	}
	// Room made is used.
	if err := r.Deregister(ctx, service(reported[0], node("n"))); err != nil {
		t.Fatal(err)
	}
	e.want(t, registry.EventDelete, reported[0], "n")
	if ev := e.next(t); ev.Type != registry.EventUpdate || slices.Contains(reported, ev.Service) {
		t.Errorf("event %v %s, want an update of svc3 or svc4", ev.Type, ev.Service)
	}

	w := wr.(*watcher)
	w.Stop() // and run has returned, so its state can be read
	if w.nodes != 3 || len(w.known) != 3 {
		t.Errorf("the watcher keeps %d nodes of %d services, want 3 of 3", w.nodes, len(w.known))
	}
	if services := len(w.watched) - 1; services > 2 || !w.watched[""] {
		t.Errorf("the watcher watches the root (%v) and %d services, want it and at most 2", w.watched[""], services)
	}
	for _, msg := range []string{"watch: too many nodes to keep track of", "too many service directories to watch"} {
		if n := strings.Count(logs.String(), "level=WARN msg=\"embedded registry: "+msg); n != 1 {
			t.Errorf("warned %d times that %s, want once:\n%s", n, msg, logs)
		}
	}
}

func TestWarningsBounded(t *testing.T) {
	start := time.Now()
	mod := start.Add(-time.Hour)
	w := newWarnings(3)
	note := func(path string, mod, now time.Time, wantWarn, wantOverflow bool) {
		t.Helper()
		if warn, overflow := w.note(path, mod, now); warn != wantWarn || overflow != wantOverflow {
			t.Errorf("note(%s) = %v, %v; want %v, %v", path, warn, overflow, wantWarn, wantOverflow)
		}
	}
	note("a", mod, start, true, false)
	note("a", mod, start, false, false)  // unchanged
	note("a", start, start, true, false) // changed
	note("b", mod, start, true, false)
	note("c", mod, start, true, false)
	note("d", mod, start, false, true) // full: not remembered, and said once
	note("e", mod, start, false, false)
	note("c", mod, start, false, false) // still remembered
	// Much later, a, b and c have not been seen for long; c is seen again.
	later := start.Add(2 * staleGrace)
	note("c", mod, later, false, false)
	note("d", mod, later, true, false) // a and b are forgotten to make room
	note("e", mod, later, true, false)
	note("f", mod, later, false, true)
	if len(w.files) != 3 {
		t.Errorf("%d files remembered, want 3", len(w.files))
	}
	w.forget("c")
	note("c", mod, later, true, false)

	// A registry directory flooded with junk.
	ctx := context.Background()
	r, logs := open(t, t.TempDir())
	r.warned = newWarnings(4)
	if err := r.Register(ctx, service("greeter", node("good")), time.Hour); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(r.Dir(), "greeter", fmt.Sprintf("junk%d.json", i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if s, err := r.GetService(ctx, "greeter"); err != nil || len(s.Nodes) != 1 {
			t.Fatalf("GetService = %+v, %v", s, err)
		}
	}
	if n := len(r.warned.files); n != 4 {
		t.Errorf("%d files remembered, want 4", n)
	}
	warns := strings.Count(logs.String(), "level=WARN msg=\""+unreadableMsg)
	overflows := strings.Count(logs.String(), "level=WARN msg=\"embedded registry: too many bad files")
	if warns != 4 || overflows != 1 {
		t.Errorf("%d warnings about files and %d about too many, want 4 and 1:\n%s", warns, overflows, logs)
	}
	if debug := strings.Count(logs.String(), "level=DEBUG msg=\""+unreadableMsg); debug != 3*20-4 {
		t.Errorf("%d debug lines about files, want %d", debug, 3*20-4)
	}
}

// TestReadsDuringHeartbeats checks that a reader who meets an entry as a heartbeat renames a
// new one over it reads one or the other, and has nothing to warn about.
func TestReadsDuringHeartbeats(t *testing.T) {
	ctx := context.Background()
	r, logs := open(t, t.TempDir())
	s := service("greeter", node("n1"))
	if err := r.Register(ctx, s, time.Hour); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		var err error
		for deadline := time.Now().Add(300 * time.Millisecond); err == nil && time.Now().Before(deadline); {
			err = r.Register(ctx, s, time.Hour)
		}
		done <- err
	}()
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
		if got, err := r.GetService(ctx, "greeter"); err != nil || len(got.Nodes) != 1 {
			t.Fatalf("GetService during heartbeats = %+v, %v", got, err)
		}
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings:\n%s", logs)
	}
}

func TestUnreadableServiceDirectory(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may read any directory")
	}
	ctx := context.Background()
	r, logs := open(t, t.TempDir())
	for _, name := range []string{"greeter", "locked"} {
		if err := r.Register(ctx, service(name, node("n1")), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	locked := filepath.Join(r.Dir(), "locked")
	if err := os.Chmod(locked, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(locked, 0o700) })
	list, err := r.ListServices(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "greeter" {
		t.Errorf("ListServices = %+v, %v; want greeter only", list, err)
	}
	if !logsFile(logs.String(), locked) || !strings.Contains(logs.String(), "permission denied") {
		t.Errorf("no warning about %s:\n%s", locked, logs)
	}
}
