package wasm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// guests maps a test guest's name (a directory of testdata) to its .wasm.
var guests = map[string][]byte{}

// compileCacheDir keeps wazero's compiled guests across test runs: compiling a Go guest
// takes seconds under the race detector.
var compileCacheDir string

func TestMain(m *testing.M) {
	if err := buildGuests(); err != nil {
		fmt.Fprintln(os.Stderr, "building the test guests:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// buildGuests builds every guest in testdata with the real toolchain and sdk, through
// BuildCached, into the user's cache directory.
func buildGuests() error {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	base = filepath.Join(base, "micro-test", "host-wasm")
	compileCacheDir = filepath.Join(base, "wazero")
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "main.go"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, f := range dirs {
		dir := filepath.Dir(f)
		wg.Go(func() {
			path, err := BuildCached(ctx, dir, filepath.Join(base, "guests"))
			var b []byte
			if err == nil {
				b, err = os.ReadFile(path)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			guests[filepath.Base(dir)] = b
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// logRecorder is a slog.Handler that keeps what it is given.
type logRecorder struct {
	mu    *sync.Mutex
	recs  *[]string
	attrs []slog.Attr
}

func newLogRecorder() *logRecorder { return &logRecorder{mu: new(sync.Mutex), recs: new([]string)} }

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, b.String())
	h.mu.Unlock()
	return nil
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *logRecorder) WithGroup(string) slog.Handler { return h }

// lines returns the records so far.
func (h *logRecorder) lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), *h.recs...)
}

// find returns the first record that contains every one of parts, or "".
func (h *logRecorder) find(parts ...string) string {
next:
	for _, l := range h.lines() {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		return l
	}
	return ""
}

// newTestHost returns a Host on the shared compilation cache, and its log.
func newTestHost(t testing.TB) (*Host, *logRecorder) {
	t.Helper()
	rec := newLogRecorder()
	h, err := NewHost(HostOptions{CacheDir: compileCacheDir, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Close(context.Background()); err != nil {
			t.Errorf("Host.Close: %v", err)
		}
	})
	return h, rec
}

// load loads a test guest, failing the test on error. Its time limit is 5s unless opts
// says otherwise, so that a busy machine does not stop a healthy guest.
func load(t testing.TB, h *Host, guest string, opts Options) *Wrapper {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	b, ok := guests[guest]
	if !ok {
		t.Fatalf("no test guest %q", guest)
	}
	w, err := h.Load(context.Background(), guest, b, opts)
	if err != nil {
		t.Fatalf("Load(%s): %v", guest, err)
	}
	return w
}
