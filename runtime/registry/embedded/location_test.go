package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// nobody is the user ID that the tests give files of another user.
const nobody = 65534

// useFallback makes DefaultDir fall back to the temporary directory, a fresh one, and returns
// the per-user directory there.
func useFallback(t *testing.T) string {
	tmp := t.TempDir()
	t.Setenv("HOME", "")
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("TMPDIR", tmp)
	return filepath.Join(tmp, fmt.Sprintf("micro-%d", os.Getuid()))
}

// wantOpenError checks that Open fails with an error that says each of wants.
func wantOpenError(t *testing.T, dir string, wants ...string) {
	t.Helper()
	r, err := Open(dir, Options{})
	if err == nil {
		r.Close()
		t.Fatalf("Open(%q) succeeded", dir)
	}
	for _, want := range wants {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v; want it to say %q", dir, err, want)
		}
	}
}

func mkdirMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func TestOpenFallback(t *testing.T) {
	private := useFallback(t)
	want := filepath.Join(private, "registry")
	if got := DefaultDir(); got != want {
		t.Fatalf("DefaultDir() = %s, want %s", got, want)
	}
	r, err := Open("", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Dir() != want {
		t.Errorf("Dir() = %s, want %s", r.Dir(), want)
	}
	for _, p := range []string{private, want} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s has mode %v, want a directory of mode 0700", p, fi.Mode())
		}
	}
	if err := r.Register(context.Background(), service("greeter", node("n1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Made again when it is removed, and checked again.
	r.Close()
	if err := os.RemoveAll(private); err != nil {
		t.Fatal(err)
	}
	r, err = Open("", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.RemoveAll(private); err != nil {
		t.Fatal(err)
	}
	mkdirMode(t, private, 0o777)
	err = r.Register(context.Background(), service("greeter", node("n1")), time.Minute)
	if err == nil || !strings.Contains(err.Error(), private+" has mode") {
		t.Errorf("Register in a recreated directory writable by others = %v, want an error naming it", err)
	}
}

func TestOpenRefusesUnsafeFallback(t *testing.T) {
	t.Run("writable by others", func(t *testing.T) {
		private := useFallback(t)
		mkdirMode(t, private, 0o777)
		wantOpenError(t, "", private+" has mode -rwxrwxrwx", "writable by its owner only")
	})
	t.Run("registry writable by others", func(t *testing.T) {
		private := useFallback(t)
		mkdirMode(t, private, 0o700)
		mkdirMode(t, filepath.Join(private, "registry"), 0o777)
		wantOpenError(t, "", filepath.Join(private, "registry")+" has mode -rwxrwxrwx")
	})
	t.Run("symbolic link", func(t *testing.T) {
		private := useFallback(t)
		mine := t.TempDir()
		if err := os.Symlink(mine, private); err != nil {
			t.Fatal(err)
		}
		wantOpenError(t, "", private+" is a symbolic link, not a directory")
		if _, err := os.Lstat(filepath.Join(mine, "registry")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open made the registry where the link points: %v", err)
		}
	})
}

// TestOpenConfiguredWritable documents that a directory chosen explicitly may be writable by
// other users: Open warns, and goes on.
func TestOpenConfiguredWritable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "registry")
	mkdirMode(t, dir, 0o777)
	logs := &syncBuffer{}
	r, err := Open(dir, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if !strings.Contains(logs.String(), "level=WARN msg=\"embedded registry: directory is writable by other users") {
		t.Errorf("no warning:\n%s", logs)
	}
}

func TestAnotherUsersFiles(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("giving a file to another user takes root")
	}
	ctx := context.Background()
	chown := func(path string) {
		t.Helper()
		if err := os.Lchown(path, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}

	// A registry directory of another user is refused, be it configured or the fallback.
	dir := filepath.Join(t.TempDir(), "registry")
	mkdirMode(t, dir, 0o700)
	chown(dir)
	wantOpenError(t, dir, dir+" is owned by uid 65534", "not by uid 0")
	private := useFallback(t)
	mkdirMode(t, private, 0o700)
	chown(private)
	wantOpenError(t, "", private+" is owned by uid 65534")
	if _, err := os.Lstat(filepath.Join(private, "registry")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open made the registry in another user's directory: %v", err)
	}

	// So is one that changed hands after Open.
	r, _ := open(t, t.TempDir())
	if err := r.Register(ctx, service("greeter", node("n1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	chown(r.Dir())
	if _, err := r.GetService(ctx, "greeter"); err == nil || errors.Is(err, registry.ErrNotFound) ||
		!strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("GetService in a directory of another user = %v, want an error saying so", err)
	}
	if err := r.Register(ctx, service("greeter", node("n1")), time.Minute); err == nil ||
		!strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("Register in a directory of another user = %v, want an error saying so", err)
	}

	// Files of another user are never removed, however stale.
	r, _ = open(t, t.TempDir())
	if err := r.Register(ctx, service("greeter", node("n1")), time.Minute); err != nil {
		t.Fatal(err)
	}
	sd := filepath.Join(r.Dir(), "greeter")
	expired := entryData(t, "greeter", "dead", time.Now().Add(-time.Hour))
	for name, data := range map[string]string{
		"theirs.json":           "{",
		"dead.json":             string(expired),
		".n1.json.0123456789ab": "{",
		"mine.json":             "{",
	} {
		p := filepath.Join(sd, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if name != "mine.json" {
			chown(p)
		}
		age(t, p)
	}
	if s, err := r.GetService(ctx, "greeter"); err != nil || len(s.Nodes) != 1 {
		t.Fatalf("GetService = %+v, %v", s, err)
	}
	for _, name := range []string{"theirs.json", "dead.json", ".n1.json.0123456789ab"} {
		if _, err := os.Lstat(filepath.Join(sd, name)); err != nil {
			t.Errorf("%s of another user: %v; want it left alone", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(sd, "mine.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a stale unreadable entry of this user is still there (%v); want it removed", err)
	}
	err := r.Deregister(ctx, service("greeter", node("theirs")))
	if err == nil || !strings.Contains(err.Error(), "not removing a regular file owned by uid 65534") {
		t.Errorf("Deregister of another user's entry = %v, want an error saying it is not removed", err)
	}
}
