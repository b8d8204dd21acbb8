// Package embedded is micro's default registry. It runs inside micro, needs no server, and is
// shared by every micro process on one machine that opens the same directory.
//
// Each node is one file, <dir>/<service>/<node ID>.json, which holds the node and the
// wall-clock time at which it expires. Register writes the file atomically (a temporary file
// renamed over the old one), so readers never see a partial entry; calling Register again is
// the heartbeat. Deregister removes the files. Readers skip expired entries, so the nodes of
// a process that was killed leave when their TTL runs out, with nothing else to do; expired
// files are removed later, by whichever reader finds them. Watch follows the directory with
// file-system events and a periodic scan, and reports expiries as deletions.
//
// Service names and node IDs are path elements, so each must be one plain file name: not
// empty, at most 200 bytes of valid UTF-8, with no '/', '\' or control character, and not
// starting with '.' (which rules out "." and ".." and keeps temporary files apart).
//
// Expiry times are wall-clock times, which all processes on a machine share. A clock that
// jumps forward expires nodes early, until their next heartbeat; one that jumps back keeps
// the nodes of a killed process for longer.
//
// Every process that opens the directory must be trusted: an entry names where calls go.
// Open creates the directory readable by its owner only.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// DefaultScanInterval is how often a watcher rereads the whole directory when
// Options.ScanInterval is zero. Expiries are reported on time regardless; the scan catches
// what file-system events missed.
const DefaultScanInterval = time.Second

// staleGrace is how old a temporary or unreadable file must be before a reader removes it.
// Writers keep a temporary file for microseconds, and replace an entry only by renaming, so
// such a file is left over from a crash or written by someone else.
const staleGrace = time.Minute

// ErrClosed is returned by the methods of a Registry after Close, and by Watcher.Next when
// the Registry was closed.
var ErrClosed = errors.New("embedded registry: closed")

// ErrStopped is returned by Watcher.Next after Stop.
var ErrStopped = errors.New("embedded registry: watcher stopped")

// Options configures a Registry. The zero value is ready to use.
type Options struct {
	// Logger receives warnings about unreadable entries and file-system event failures.
	// Nil discards them.
	Logger *slog.Logger
	// ScanInterval is how often a watcher rereads the whole directory, to catch changes
	// that file-system events missed (an event queue overflow, a file system without
	// events). Zero means DefaultScanInterval.
	ScanInterval time.Duration
}

// Registry is a registry.Registry kept in a directory. It is safe for concurrent use, and any
// number of Registry values, in one process or many, may share a directory.
type Registry struct {
	dir  string
	log  *slog.Logger
	scan time.Duration

	// noEvents makes watchers poll instead of using file-system events, as they do when
	// those are unavailable. Tests set it to cover that path.
	noEvents bool

	mu       sync.Mutex
	closed   bool
	watchers map[*watcher]struct{}

	warnMu sync.Mutex
	warned map[string]time.Time // unreadable entries already logged, with their mod time
}

var _ registry.Registry = (*Registry)(nil)

// DefaultDir returns the directory that Open uses when given none: micro/registry under the
// user's cache directory, or under a per-user directory in the temporary directory when
// there is no cache directory.
func DefaultDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "micro", "registry")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("micro-%d", os.Getuid()), "registry")
}

// Open returns a Registry kept in dir, creating dir (mode 0700) if needed. An empty dir means
// DefaultDir.
func Open(dir string, opts Options) (*Registry, error) {
	if dir == "" {
		dir = DefaultDir()
	}
	if opts.ScanInterval < 0 {
		return nil, fmt.Errorf("embedded registry: scan interval %v is negative", opts.ScanInterval)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("embedded registry: directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("embedded registry: %s is not a directory", abs)
	}
	r := &Registry{
		dir:      abs,
		log:      opts.Logger,
		scan:     opts.ScanInterval,
		watchers: make(map[*watcher]struct{}),
		warned:   make(map[string]time.Time),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.scan == 0 {
		r.scan = DefaultScanInterval
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0 {
		r.log.Warn("embedded registry: directory is writable by other users, who can add nodes",
			"dir", abs, "mode", fi.Mode().Perm())
	}
	return r, nil
}

// Dir returns the directory that holds the registry, as an absolute path.
func (r *Registry) Dir() string { return r.dir }

// Register writes an entry for each node of s that expires ttl from now, replacing the
// node's previous entry. ttl must be positive. Service name and node IDs must be plain file
// names (see the package documentation); they are all checked before anything is written.
func (r *Registry) Register(ctx context.Context, s *registry.Service, ttl time.Duration) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return fmt.Errorf("embedded registry: register: %w", err)
	}
	if ttl <= 0 {
		return fmt.Errorf("embedded registry: register %q: ttl %v is not positive", s.Name, ttl)
	}
	if len(s.Nodes) == 0 {
		return nil
	}
	dir := filepath.Join(r.dir, s.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("embedded registry: register %q: %w", s.Name, err)
	}
	now := time.Now().UnixNano()
	expires := now + int64(ttl)
	if expires < now { // overflow: a ttl of centuries
		expires = math.MaxInt64
	}
	var errs []error
	for _, n := range s.Nodes {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("embedded registry: register %q: %w", s.Name, err))
			break
		}
		data, err := encodeRecord(record{Service: s.Name, Node: n, TTL: ttl, Expires: expires})
		if err == nil {
			err = writeEntry(dir, n.ID+".json", data)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("embedded registry: register %s/%s: %w", s.Name, n.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Deregister removes the entries of the nodes of s. Nodes that are not registered are
// ignored.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return fmt.Errorf("embedded registry: deregister: %w", err)
	}
	var errs []error
	for _, n := range s.Nodes {
		err := os.Remove(filepath.Join(r.dir, s.Name, n.ID+".json"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("embedded registry: deregister %s/%s: %w", s.Name, n.ID, err))
		}
	}
	return errors.Join(errs...)
}

// GetService returns the live nodes of the named service, sorted by ID, or an error wrapping
// registry.ErrNotFound when it has none. A name that cannot be a service name is not found
// either. Unreadable entries are logged and skipped.
func (r *Registry) GetService(ctx context.Context, name string) (*registry.Service, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	if err := checkName("service name", name); err != nil {
		return nil, fmt.Errorf("embedded registry: %w: %w", registry.ErrNotFound, err)
	}
	recs, err := r.readService(name, time.Now().UnixNano())
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("embedded registry: service %q: %w", name, registry.ErrNotFound)
	}
	return toService(name, recs), nil
}

// ListServices returns every service with at least one live node, sorted by name, each with
// its live nodes sorted by ID.
func (r *Registry) ListServices(ctx context.Context) ([]*registry.Service, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	names, err := r.serviceNames()
	if err != nil {
		return nil, err
	}
	now := time.Now().UnixNano()
	out := []*registry.Service{}
	for _, name := range names {
		recs, err := r.readService(name, now)
		if err != nil {
			return nil, err
		}
		if len(recs) > 0 {
			out = append(out, toService(name, recs))
		}
	}
	return out, nil
}

// Close stops the registry's watchers; their Next returns ErrClosed. It does not deregister
// anything and leaves the directory in place. Other methods return ErrClosed afterwards.
func (r *Registry) Close() error {
	r.mu.Lock()
	r.closed = true
	ws := make([]*watcher, 0, len(r.watchers))
	for w := range r.watchers {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.stop(ErrClosed)
	}
	return nil
}

// check returns why a call must not proceed, if it must not.
func (r *Registry) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("embedded registry: %w", err)
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return nil
}

// checkService checks the names in s before anything is written or removed.
func checkService(s *registry.Service) error {
	if s == nil {
		return errors.New("nil service")
	}
	if err := checkName("service name", s.Name); err != nil {
		return err
	}
	for i, n := range s.Nodes {
		if n == nil {
			return fmt.Errorf("service %q: node %d is nil", s.Name, i)
		}
		if err := checkName("node ID", n.ID); err != nil {
			return fmt.Errorf("service %q: %w", s.Name, err)
		}
	}
	return nil
}

// serviceNames lists the directories that may hold services, sorted.
func (r *Registry) serviceNames() ([]string, error) {
	ents, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if e.IsDir() && checkName("service name", e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// readService returns the entries of the named service that are live at now (Unix
// nanoseconds), sorted by node ID.
func (r *Registry) readService(name string, now int64) ([]record, error) {
	dir := filepath.Join(r.dir, name)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("embedded registry: service %q: %w", name, err)
	}
	recs := make([]record, 0, len(ents))
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		if strings.HasPrefix(e.Name(), ".") {
			r.tidyHidden(dir, e, now)
			continue
		}
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || checkName("node ID", id) != nil {
			continue
		}
		if rec, ok := r.readNode(name, id, now); ok {
			recs = append(recs, rec)
		}
	}
	slices.SortFunc(recs, func(a, b record) int { return strings.Compare(a.Node.ID, b.Node.ID) })
	return recs, nil
}

// readNode returns the entry of one node if it is live at now (Unix nanoseconds). Unreadable
// entries are logged and skipped, and removed once older than staleGrace. Expired entries
// are skipped, and removed once they have been expired for another TTL.
func (r *Registry) readNode(service, id string, now int64) (record, bool) {
	path := filepath.Join(r.dir, service, id+".json")
	data, fi, err := readEntry(path)
	if errors.Is(err, fs.ErrNotExist) {
		return record{}, false
	}
	var rec record
	if err == nil {
		rec, err = decodeRecord(data)
	}
	if err == nil && (rec.Service != service || rec.Node.ID != id) {
		err = fmt.Errorf("entry is for node %q of service %q", rec.Node.ID, rec.Service)
	}
	switch {
	case errors.Is(err, errForeignVersion):
		r.log.Debug("embedded registry: skipping entry of another format", "file", path, "err", err)
		return record{}, false
	case err != nil:
		r.unreadable(path, fi, err)
		if fi != nil && now-fi.ModTime().UnixNano() > int64(staleGrace) && removeIfSame(path, fi) {
			r.warnMu.Lock()
			delete(r.warned, path)
			r.warnMu.Unlock()
			r.log.Info("embedded registry: removed unreadable entry", "file", path)
		}
		return record{}, false
	case rec.Expires <= now:
		if now-rec.Expires > int64(rec.TTL) && removeIfSame(path, fi) {
			r.log.Debug("embedded registry: removed expired entry", "file", path)
		}
		return record{}, false
	}
	return rec, true
}

// unreadable logs an unreadable entry: as a warning the first time, and at debug level when
// the same file is read again, as watchers do every scan until the file is removed.
func (r *Registry) unreadable(path string, fi os.FileInfo, err error) {
	var mod time.Time
	if fi != nil {
		mod = fi.ModTime()
	}
	r.warnMu.Lock()
	last, seen := r.warned[path]
	r.warned[path] = mod
	r.warnMu.Unlock()
	level := slog.LevelWarn
	if seen && last.Equal(mod) {
		level = slog.LevelDebug
	}
	r.log.Log(context.Background(), level, "embedded registry: skipping unreadable entry", "file", path, "err", err)
}

// tidyHidden removes a temporary file that a writer left behind when it crashed.
func (r *Registry) tidyHidden(dir string, e fs.DirEntry, now int64) {
	fi, err := e.Info()
	if err != nil || !fi.Mode().IsRegular() || now-fi.ModTime().UnixNano() <= int64(staleGrace) {
		return
	}
	path := filepath.Join(dir, e.Name())
	if removeIfSame(path, fi) {
		r.log.Debug("embedded registry: removed stale temporary file", "file", path)
	}
}

func toService(name string, recs []record) *registry.Service {
	s := &registry.Service{Name: name, Nodes: make([]*registry.Node, len(recs))}
	for i, rec := range recs {
		s.Nodes[i] = rec.Node
	}
	return s
}
