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
// Open therefore refuses a directory owned by another user. It creates missing directories
// readable by their owner only, and it warns when the directory is writable by other users,
// who could then add nodes; that is a warning only, for a directory that was chosen
// explicitly. The fallback location in the shared temporary directory (see DefaultDir) is
// another matter, since any user may create it first: there, a directory that is writable by
// other users, or a symbolic link, is refused too.
//
// The registry also elects leaders (registry.Elector: Campaign and Leader), with a lock file
// per election name in the directory .elect, held with flock, so that the kernel frees it
// when its holder dies; see Campaign.
//
// Whatever is in the directory is still treated as untrusted input: a file that is not an
// entry (a symbolic link, which is never followed, a named pipe, a device, a socket, a file
// too large, corrupt or truncated, in place of a node entry or of a service directory) is
// skipped, with one warning that names it and says why, and never blocks or crashes a
// reader. The registry removes only regular files that its own user owns: its own temporary
// files left over from a crash, and entries long expired or unreadable.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/internal/statedir"
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

// unreadableMsg is the message of the log line about a file that is skipped.
const unreadableMsg = "embedded registry: skipping unreadable entry"

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

// Registry is a registry.Registry, and a registry.Elector, kept in a directory. It is safe
// for concurrent use, and any number of Registry values, in one process or many, may share a
// directory.
type Registry struct {
	// loc is the registry directory, and how strictly it is checked.
	loc  statedir.Location
	log  *slog.Logger
	scan time.Duration

	// noEvents makes watchers poll instead of using file-system events, as they do when
	// those are unavailable. Tests set it to cover that path.
	noEvents bool
	// maxWatched and maxKnown bound what each watcher keeps (see the constants of the same
	// names). Tests lower them.
	maxWatched, maxKnown int

	mu       sync.Mutex
	closed   bool
	done     chan struct{} // closed by Close
	watchers map[*watcher]struct{}
	leaders  map[*leadership]struct{}

	warned *warnings // files already warned about
}

var _ registry.Registry = (*Registry)(nil)

// Open returns a Registry kept in dir, creating dir (mode 0700, with any missing parents) if
// needed. An empty dir means DefaultDir. It refuses a directory that is owned by another
// user; for the fallback location of DefaultDir in the shared temporary directory, it also
// refuses a directory that is writable by other users or is a symbolic link, and the same of
// the micro-<uid> directory that holds it. See the package documentation.
func Open(dir string, opts Options) (*Registry, error) {
	if opts.ScanInterval < 0 {
		return nil, fmt.Errorf("embedded registry: scan interval %v is negative", opts.ScanInterval)
	}
	loc, err := statedir.New(dir, "registry", "registry")
	if err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	r := &Registry{
		loc:        loc,
		log:        opts.Logger,
		scan:       opts.ScanInterval,
		maxWatched: maxWatched,
		maxKnown:   maxKnown,
		done:       make(chan struct{}),
		watchers:   make(map[*watcher]struct{}),
		leaders:    make(map[*leadership]struct{}),
		warned:     newWarnings(maxWarned),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.scan == 0 {
		r.scan = DefaultScanInterval
	}
	perm, err := loc.Prepare()
	if err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	if perm&0o022 != 0 {
		r.log.Warn("embedded registry: directory is writable by other users, who can add nodes",
			"dir", loc.Path, "mode", perm)
	}
	return r, nil
}

// Dir returns the directory that holds the registry, as an absolute path.
func (r *Registry) Dir() string { return r.loc.Path }

// Register writes an entry for each node of s that expires ttl from now, replacing the
// node's previous entry. ttl must be positive. Service name and node IDs must be plain file
// names (see the package documentation); they are all checked before anything is written.
// It fails when something other than a directory, a symbolic link included, has the name of
// the service.
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
	root, err := r.openRoot(true)
	if err != nil {
		return fmt.Errorf("embedded registry: register %q: %w", s.Name, err)
	}
	defer root.close()
	if err := root.mkdir(s.Name); err != nil {
		return fmt.Errorf("embedded registry: register %q: %w", s.Name, err)
	}
	sd, err := root.openDir(s.Name)
	if err != nil {
		return fmt.Errorf("embedded registry: register %q: %w", s.Name, err)
	}
	defer sd.close()
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
			err = sd.writeFile(n.ID+".json", data)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("embedded registry: register %s/%s: %w", s.Name, n.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Deregister removes the entries of the nodes of s. Nodes that are not registered are
// ignored. Something in place of an entry that the registry cannot have written (a symbolic
// link, a named pipe, a file of another user...) is not removed, and is reported as an error.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return fmt.Errorf("embedded registry: deregister: %w", err)
	}
	root, err := r.openRoot(false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("embedded registry: deregister %q: %w", s.Name, err)
	}
	defer root.close()
	sd, err := r.openService(root, s.Name)
	if sd == nil {
		return err // nil when there is no such service directory
	}
	defer sd.close()
	var errs []error
	for _, n := range s.Nodes {
		name := n.ID + ".json"
		fi, err := sd.lstat(name)
		if err == nil {
			err = sd.remove(name, fi)
		}
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
	var recs []record
	root, err := r.openRoot(false)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("embedded registry: %w", err)
	default:
		recs, err = r.readService(root, name, time.Now().UnixNano())
		root.close()
		if err != nil {
			return nil, err
		}
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("embedded registry: service %q: %w", name, registry.ErrNotFound)
	}
	return toService(name, recs), nil
}

// ListServices returns every service with at least one live node, sorted by name, each with
// its live nodes sorted by ID. Unreadable entries are logged and skipped.
func (r *Registry) ListServices(ctx context.Context) ([]*registry.Service, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	out := []*registry.Service{}
	root, err := r.openRoot(false)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	defer root.close()
	now := time.Now().UnixNano()
	var rerr error
	err = root.each(func(name string, _ fs.FileMode) bool {
		if checkName("service name", name) != nil {
			return true
		}
		var recs []record
		recs, rerr = r.readService(root, name, now)
		if len(recs) > 0 {
			out = append(out, toService(name, recs))
		}
		return rerr == nil
	})
	if err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	if rerr != nil {
		return nil, rerr
	}
	slices.SortFunc(out, func(a, b *registry.Service) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Close stops the registry's watchers; their Next returns ErrClosed. It gives up the
// leaderships that its Campaigns won (their Lost is closed), and ends the Campaigns still
// waiting, which return ErrClosed. It does not deregister anything and leaves the directory
// in place. Other methods return ErrClosed afterwards.
func (r *Registry) Close() error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.done)
	}
	ws := make([]*watcher, 0, len(r.watchers))
	for w := range r.watchers {
		ws = append(ws, w)
	}
	ls := make([]*leadership, 0, len(r.leaders))
	for l := range r.leaders {
		ls = append(ls, l)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.stop(ErrClosed)
	}
	for _, l := range ls {
		l.resign()
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

// openService opens the directory of the named service in root. When there is none, or
// something else has its name, or it may not be read (both of which are logged), it returns
// neither a directory nor an error: the service has no nodes.
func (r *Registry) openService(root *dir, name string) (*dir, error) {
	sd, err := root.openDir(name)
	var wrong *wrongTypeError
	switch {
	case err == nil:
		return sd, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case errors.As(err, &wrong):
		r.warnOnce(unreadableMsg, wrong.path, wrong.info.mod, err)
		return nil, nil
	case errors.Is(err, fs.ErrPermission):
		fi, _ := root.lstat(name)
		r.warnOnce(unreadableMsg, root.join(name), fi.mod, err)
		return nil, nil
	}
	return nil, fmt.Errorf("embedded registry: service %q: %w", name, err)
}

// readService returns the entries of the named service that are live at now (Unix
// nanoseconds), sorted by node ID.
func (r *Registry) readService(root *dir, name string, now int64) ([]record, error) {
	sd, err := r.openService(root, name)
	if sd == nil {
		return nil, err
	}
	defer sd.close()
	var recs []record
	err = sd.each(func(file string, _ fs.FileMode) bool {
		if strings.HasPrefix(file, ".") {
			if isTempName(file) {
				r.tidyTemp(sd, file, now)
			}
			return true
		}
		id, ok := strings.CutSuffix(file, ".json")
		if !ok || checkName("node ID", id) != nil {
			return true
		}
		if rec, ok := r.readNode(sd, name, id, now); ok {
			recs = append(recs, rec)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("embedded registry: service %q: %w", name, err)
	}
	slices.SortFunc(recs, func(a, b record) int { return strings.Compare(a.Node.ID, b.Node.ID) })
	return recs, nil
}

// readNode returns the entry of one node from its service directory sd if it is live at now
// (Unix nanoseconds). Unreadable entries are logged and skipped, and removed once older than
// staleGrace if the registry may remove them. Expired entries are skipped, and removed once
// they have been expired for another TTL.
func (r *Registry) readNode(sd *dir, service, id string, now int64) (record, bool) {
	name := id + ".json"
	data, fi, err := sd.readFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return record{}, false
	}
	var rec record
	if err == nil {
		rec, err = decodeRecord(data)
		if err == nil && (rec.Service != service || rec.Node.ID != id) {
			err = fmt.Errorf("entry is for node %q of service %q", rec.Node.ID, rec.Service)
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", sd.join(name), err)
		}
	}
	switch {
	case errors.Is(err, errForeignVersion):
		r.log.Debug("embedded registry: skipping entry of another format", "file", sd.join(name), "err", err)
		return record{}, false
	case err != nil:
		path := sd.join(name)
		var mod time.Time
		if fi != nil {
			mod = fi.mod
		}
		r.warnOnce(unreadableMsg, path, mod, err)
		if fi != nil && now-fi.mod.UnixNano() > int64(staleGrace) && sd.removeIfSame(name, *fi) {
			r.warned.forget(path)
			r.log.Info("embedded registry: removed unreadable entry", "file", path)
		}
		return record{}, false
	case rec.Expires <= now:
		if now-rec.Expires > int64(rec.TTL) && sd.removeIfSame(name, *fi) {
			r.log.Debug("embedded registry: removed expired entry", "file", sd.join(name))
		}
		return record{}, false
	}
	return rec, true
}

// warnOnce logs msg about the file at path, last modified at mod, and the error err that it
// causes: as a warning the first time, and at debug level when the same unchanged file is
// found again, as watchers do every scan until the file is removed.
func (r *Registry) warnOnce(msg, path string, mod time.Time, err error) {
	warn, overflow := r.warned.note(path, mod, time.Now())
	if overflow {
		r.log.Warn("embedded registry: too many bad files to keep track of; logging further ones at debug level",
			"dir", r.loc.Path, "max", r.warned.max)
	}
	level := slog.LevelDebug
	if warn {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, msg, "file", path, "err", err)
}

// tidyTemp removes a temporary file that a writer left behind when it crashed.
func (r *Registry) tidyTemp(sd *dir, name string, now int64) {
	fi, err := sd.lstat(name)
	if err != nil || now-fi.mod.UnixNano() <= int64(staleGrace) {
		return
	}
	if sd.removeIfSame(name, fi) {
		r.log.Debug("embedded registry: removed stale temporary file", "file", sd.join(name))
	}
}

func toService(name string, recs []record) *registry.Service {
	s := &registry.Service{Name: name, Nodes: make([]*registry.Node, len(recs))}
	for i, rec := range recs {
		s.Nodes[i] = rec.Node
	}
	return s
}
