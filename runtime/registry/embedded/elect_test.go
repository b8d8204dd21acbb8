package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/registrytest"
)

// lead runs Campaign, which must win at once (nobody else campaigns), and resigns the
// leadership when the test ends.
func lead(t *testing.T, r *Registry, name, value string) registry.Leadership {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	l, err := r.Campaign(ctx, name, value)
	if err != nil {
		t.Fatalf("Campaign(%q, %q): %v", name, value, err)
	}
	t.Cleanup(func() { l.Resign(context.Background()) })
	return l
}

// TestElectTwoCandidates: of two candidates, one leads and the other waits; Resign hands
// the leadership over. The candidates use two Registry values on one directory, as two
// micros would, and the election's files are not services.
func TestElectTwoCandidates(t *testing.T) {
	dir := t.TempDir()
	r1, logs := open(t, dir)
	r2, _ := open(t, dir)
	ctx := context.Background()
	w, err := r1.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	registrytest.WantLeader(t, r1, "quota", "")
	a := lead(t, r1, "quota", "node-a 127.0.0.1:9001")
	registrytest.WantLeader(t, r1, "quota", "node-a 127.0.0.1:9001")
	registrytest.WantLeader(t, r2, "quota", "node-a 127.0.0.1:9001")

	b := registrytest.Campaign(ctx, r2, "quota", "node-b")
	// A third candidate gives up when its context ends, while a leads.
	cctx, cancel := context.WithTimeout(ctx, 3*campaignPoll)
	_, err = r2.Campaign(cctx, "quota", "node-c")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"quota"`) {
		t.Fatalf("Campaign while another leads, until its context ends: %v", err)
	}
	registrytest.NotYet(t, "b", b)
	registrytest.StillLeads(t, "a", a)
	// Another name is another election.
	other := lead(t, r2, "other", "")
	if v, err := r1.Leader(ctx, "other"); err != nil || v != "" { // an empty value is a value...
		t.Fatalf("Leader(other) = %q, %v; want the empty value", v, err)
	}
	if err := other.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLeader(t, r1, "other", "") // ...and now there is none

	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "a after Resign", a, patience)
	lb := registrytest.Elected(t, "b after a resigned", b, patience)
	registrytest.WantLeader(t, r1, "quota", "node-b")
	if err := a.Resign(ctx); err != nil {
		t.Errorf("second Resign: %v", err)
	}
	registrytest.StillLeads(t, "b", lb)

	// Two candidates of one Registry contend too.
	c := registrytest.Campaign(ctx, r2, "quota", "node-c")
	if err := lb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	registrytest.Elected(t, "c after b resigned", c, patience)
	registrytest.WantLeader(t, r2, "quota", "node-c")

	// The election's files are neither services nor junk.
	if list, err := r1.ListServices(ctx); err != nil || len(list) != 0 {
		t.Errorf("ListServices = %v, %v; want none", list, err)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings:\n%s", logs)
	}
	if _, err := os.Stat(filepath.Join(r1.Dir(), electDir, "quota.lock")); err != nil {
		t.Errorf("no lock file: %v", err)
	}
}

// electHelperEnv tells the test binary, run again as a child process, to campaign in the
// registry directory it names, say "leading" once it leads, and wait to be killed.
const electHelperEnv = "EMBEDDED_ELECT_TEST_DIR"

func TestElectHelperProcess(t *testing.T) {
	dir := os.Getenv(electHelperEnv)
	if dir == "" {
		t.Skip("a child process of TestElectKilledLeader")
	}
	r, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := r.Campaign(context.Background(), "quota", "child")
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("leading\n")
	select {
	case <-l.Lost():
		os.Exit(4)
	case <-time.After(time.Minute): // outlive a lost parent by no more than this
	}
	os.Exit(3)
}

// TestElectKilledLeader: a leader in another process is killed with SIGKILL, and the
// candidate waiting here takes over.
func TestElectKilledLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	r, _ := open(t, t.TempDir())
	cmd := startChild(t, "TestElectHelperProcess", electHelperEnv, r.Dir(), "leading")
	registrytest.WantLeader(t, r, "quota", "child")

	ctx := context.Background()
	mine := registrytest.Campaign(ctx, r, "quota", "parent")
	cctx, cancel := context.WithTimeout(ctx, 3*campaignPoll)
	_, err := r.Campaign(cctx, "quota", "other")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Campaign while the child leads, until its context ends: %v", err)
	}
	registrytest.NotYet(t, "parent", mine)

	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	killed := time.Now()
	cmd.Wait()
	l := registrytest.Elected(t, "the parent after the child was killed", mine, patience)
	t.Logf("took over %v after the kill", time.Since(killed))
	registrytest.WantLeader(t, r, "quota", "parent")
	registrytest.StillLeads(t, "parent", l)
}

// TestElectBadInput: names and values that cannot be are refused, with errors that name
// them.
func TestElectBadInput(t *testing.T) {
	r, _ := open(t, t.TempDir())
	ctx := context.Background()
	long := strings.Repeat("n", abi.MaxElectionName+1)
	for _, name := range []string{"", long, "a/b", "../x", "a b", "quota\n", "é", "a\x00b", "a:b"} {
		want := fmt.Sprintf("%.40q", name)
		if name == "" {
			want = "empty"
		}
		if _, err := r.Campaign(ctx, name, "v"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Campaign(%q): err = %v, want one that names it", name, err)
		}
		if _, err := r.Leader(ctx, name); err == nil || errors.Is(err, registry.ErrNoLeader) || !strings.Contains(err.Error(), want) {
			t.Errorf("Leader(%q): err = %v, want one that names it", name, err)
		}
	}
	big := strings.Repeat("v", abi.MaxLeaderValue+1)
	if _, err := r.Campaign(ctx, "quota", big); err == nil || !strings.Contains(err.Error(), "4097 bytes") {
		t.Errorf("Campaign with a value of 4097 bytes: err = %v", err)
	}
	if _, err := r.Campaign(ctx, "quota", "\xff"); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("Campaign with a value that is not UTF-8: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.Dir(), electDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bad input made the election directory: %v", err)
	}
	// The extremes that are fine.
	for _, name := range []string{strings.Repeat("n", abi.MaxElectionName), ".", "..", "a.b-c_D9"} {
		l := lead(t, r, name, strings.Repeat("v", abi.MaxLeaderValue))
		registrytest.WantLeader(t, r, name, strings.Repeat("v", abi.MaxLeaderValue))
		l.Resign(ctx)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Campaign(cctx, "quota", "v"); !errors.Is(err, context.Canceled) {
		t.Errorf("Campaign with a canceled context: err = %v", err)
	}
}

// TestElectClose: Close ends the leaderships and the waiting Campaigns of a Registry, and
// another candidate takes over.
func TestElectClose(t *testing.T) {
	dir := t.TempDir()
	r1, _ := open(t, dir)
	r2, _ := open(t, dir)
	ctx := context.Background()
	a := lead(t, r1, "quota", "a")
	waiting := registrytest.Campaign(ctx, r1, "quota", "a2")
	b := registrytest.Campaign(ctx, r2, "quota", "b")
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "a after Close", a, patience)
	select {
	case w := <-waiting:
		if !errors.Is(w.Err, ErrClosed) {
			t.Errorf("a waiting Campaign at Close returned (%v, %v), want ErrClosed", w.Leadership, w.Err)
		}
	case <-time.After(patience):
		t.Fatal("a waiting Campaign did not return at Close")
	}
	registrytest.Elected(t, "b after Close", b, patience)
	registrytest.WantLeader(t, r2, "quota", "b")
	if _, err := r1.Campaign(ctx, "quota", "a"); !errors.Is(err, ErrClosed) {
		t.Errorf("Campaign after Close: err = %v", err)
	}
	if _, err := r1.Leader(ctx, "quota"); !errors.Is(err, ErrClosed) {
		t.Errorf("Leader after Close: err = %v", err)
	}
	if err := a.Resign(ctx); err != nil {
		t.Errorf("Resign after Close: %v", err)
	}
}

// TestElectLockFileGone: a leader whose lock file is removed, or replaced, loses its
// leadership, since it keeps nobody out anymore.
func TestElectLockFileGone(t *testing.T) {
	r, logs := open(t, t.TempDir())
	ctx := context.Background()
	lock := filepath.Join(r.Dir(), electDir, "quota.lock")

	a := lead(t, r, "quota", "a")
	b := registrytest.Campaign(ctx, r, "quota", "b")
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "a after its lock file was removed", a, patience)
	lb := registrytest.Elected(t, "b after a's lock file was removed", b, patience)
	registrytest.WantLeader(t, r, "quota", "b")
	// b may have made a new lock file before a checked its own.
	if !strings.Contains(logs.String(), "was removed") && !strings.Contains(logs.String(), "was replaced") {
		t.Errorf("no reason in the log:\n%s", logs)
	}

	tmp := filepath.Join(r.Dir(), electDir, "new")
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, lock); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "b after its lock file was replaced", lb, patience)
	lead(t, r, "quota", "c")

	// So does one whose election directory goes.
	d := lead(t, r, "other", "d")
	if err := os.RemoveAll(filepath.Join(r.Dir(), electDir)); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "d after the election directory was removed", d, patience)
	registrytest.WantLeader(t, r, "other", "")
}

// TestElectUntrusted: junk in place of the election's files (symbolic links, named pipes,
// huge files) makes Campaign and Leader fail, at once and naming the file, and nothing
// outside the directory is touched.
func TestElectUntrusted(t *testing.T) {
	outside := t.TempDir()
	target := filepath.Join(outside, "target")
	if err := os.WriteFile(target, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dirs := func(r *Registry) []string { return []string{r.Dir(), outside} }
	fails := func(t *testing.T, r *Registry, name, want string) {
		t.Helper()
		promptly(t, "Campaign", dirs(r), func() {
			cctx, cancel := context.WithTimeout(ctx, patience)
			defer cancel()
			l, err := r.Campaign(cctx, name, "v")
			if err == nil {
				l.Resign(ctx)
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Campaign(%q): err = %v, want one that says %q", name, err, want)
			}
		})
		promptly(t, "Leader", dirs(r), func() {
			if v, err := r.Leader(ctx, name); err == nil || errors.Is(err, registry.ErrNoLeader) || !strings.Contains(err.Error(), want) {
				t.Errorf("Leader(%q) = %q, %v; want an error that says %q", name, v, err, want)
			}
		})
	}

	t.Run("symlinked election directory", func(t *testing.T) {
		r, _ := open(t, t.TempDir())
		if err := os.Symlink(outside, filepath.Join(r.Dir(), electDir)); err != nil {
			t.Fatal(err)
		}
		fails(t, r, "quota", electDir+": symbolic link, not followed")
	})
	t.Run("symlinked lock file", func(t *testing.T) {
		r, _ := open(t, t.TempDir())
		mkdirMode(t, filepath.Join(r.Dir(), electDir), 0o700)
		if err := os.Symlink(target, filepath.Join(r.Dir(), electDir, "quota.lock")); err != nil {
			t.Fatal(err)
		}
		fails(t, r, "quota", "quota.lock: symbolic link, not followed")
		if f, err := os.Open(target); err == nil {
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				t.Errorf("the symbolic link's target is locked: %v", err)
			}
			f.Close()
		}
	})
	t.Run("named pipe as lock file", func(t *testing.T) {
		r, _ := open(t, t.TempDir())
		mkdirMode(t, filepath.Join(r.Dir(), electDir), 0o700)
		if err := unix.Mkfifo(filepath.Join(r.Dir(), electDir, "quota.lock"), 0o600); err != nil {
			t.Fatal(err)
		}
		fails(t, r, "quota", "quota.lock: named pipe, not a regular file")
	})
	t.Run("junk as value file", func(t *testing.T) {
		r, _ := open(t, t.TempDir())
		lead(t, r, "quota", "a")
		value := filepath.Join(r.Dir(), electDir, "quota.value")
		if err := os.Remove(value); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkfifo(value, 0o600); err != nil {
			t.Fatal(err)
		}
		promptly(t, "Leader", dirs(r), func() {
			if _, err := r.Leader(ctx, "quota"); err == nil || !strings.Contains(err.Error(), "quota.value: named pipe") {
				t.Errorf("Leader with a named pipe as value file: err = %v", err)
			}
		})
		if err := os.Remove(value); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(value, []byte(strings.Repeat("v", abi.MaxLeaderValue+1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Leader(ctx, "quota"); err == nil || !strings.Contains(err.Error(), "more than 4096") {
			t.Errorf("Leader with a huge value file: err = %v", err)
		}
		if err := os.Remove(value); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, value); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Leader(ctx, "quota"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("Leader with a symbolic link as value file: err = %v", err)
		}
	})
	t.Run("stale value file", func(t *testing.T) {
		// A value file that nobody holds locked is a dead leader's: no leader, even
		// while someone holds the lock file and has not written its value yet.
		r, _ := open(t, t.TempDir())
		mkdirMode(t, filepath.Join(r.Dir(), electDir), 0o700)
		if err := os.WriteFile(filepath.Join(r.Dir(), electDir, "quota.value"), []byte("dead"), 0o600); err != nil {
			t.Fatal(err)
		}
		registrytest.WantLeader(t, r, "quota", "")
		f, err := os.OpenFile(filepath.Join(r.Dir(), electDir, "quota.lock"), os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		registrytest.WantLeader(t, r, "quota", "")
	})
	if b, err := os.ReadFile(target); err != nil || string(b) != "outside" {
		t.Errorf("the file outside = %q, %v", b, err)
	}
	if ents, err := os.ReadDir(outside); err != nil || len(ents) != 1 {
		t.Errorf("outside holds %v, %v; want only the target", ents, err)
	}
}
