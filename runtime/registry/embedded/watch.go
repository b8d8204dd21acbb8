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
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/microhost/micro/runtime/registry"
)

// Watch reports changes to any service until ctx ends, the Watcher is stopped, or the
// Registry is closed. It reports changes after the call, not the nodes registered before it.
//
// An EventUpdate carries a node that was registered or whose record changed; a heartbeat that
// changes nothing but the expiry is not reported. An EventDelete carries a node that was
// deregistered or expired; an expiry is reported when it happens, even if nobody removes the
// file. Next returns ErrStopped after Stop, ErrClosed after Close, and an error wrapping the
// context's error when ctx ends.
//
// Each Watcher has its own goroutine and file-system watch. Where file-system events are not
// available, it falls back to rereading the directory every scan interval.
func (r *Registry) Watch(ctx context.Context) (registry.Watcher, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	w := &watcher{
		r:       r,
		ctx:     ctx,
		watched: make(map[string]bool),
		known:   make(map[string]map[string]record),
		events:  make(chan registry.Event, 16),
		stopped: make(chan struct{}),
		done:    make(chan struct{}),
	}
	fw, err := fsnotify.NewWatcher()
	if err == nil && r.noEvents {
		fw.Close()
		err = errors.New("disabled")
	}
	if err != nil {
		r.log.Warn("embedded registry: no file-system events, polling instead",
			"interval", r.scan, "err", err)
	} else {
		w.fs = fw
	}
	// Take the initial state before Watch returns, so that every change after it is reported.
	if err := w.resync(false); err != nil {
		w.closeFS()
		return nil, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		w.closeFS()
		return nil, ErrClosed
	}
	r.watchers[w] = struct{}{}
	r.mu.Unlock()
	go w.run()
	return w, nil
}

// watcher is the registry.Watcher of a Registry.
type watcher struct {
	r   *Registry
	ctx context.Context
	fs  *fsnotify.Watcher // nil when polling

	// Owned by run once it starts. The maps are bounded, for the directory may be flooded:
	// watched by maxWatched and known by maxKnown.
	watched  map[string]bool              // directories under watch: "" is the root, others services
	known    map[string]map[string]record // live nodes by service and ID, as last reported
	nodes    int                          // how many nodes known holds
	lastScan time.Time
	// Whether a trouble of each kind was logged as a warning; the next are at debug level.
	watchTrouble, knownTrouble bool

	events   chan registry.Event
	stopOnce sync.Once
	cause    error         // why stopped was closed; written before closing it
	stopped  chan struct{} // closed by stop
	done     chan struct{} // closed when run returns, after err is set
	err      error         // what Next returns once done is closed
}

// Next blocks until the next event, or returns an error once the watch has ended.
func (w *watcher) Next() (registry.Event, error) {
	select {
	case <-w.done:
		return registry.Event{}, w.err
	default:
	}
	select {
	case ev := <-w.events:
		return ev, nil
	case <-w.done:
		return registry.Event{}, w.err
	}
}

// Stop ends the watch and waits for its goroutine to exit. A blocked Next returns ErrStopped.
func (w *watcher) Stop() { w.stop(ErrStopped) }

func (w *watcher) stop(cause error) {
	w.stopOnce.Do(func() {
		w.cause = cause
		close(w.stopped)
	})
	<-w.done
}

// run follows file-system events and wakes up for expiries and scans until the watch ends.
func (w *watcher) run() {
	defer func() {
		w.closeFS()
		w.r.mu.Lock()
		delete(w.r.watchers, w)
		w.r.mu.Unlock()
		close(w.done)
	}()
	var (
		fsEvents chan fsnotify.Event
		fsErrors chan error
	)
	if w.fs != nil {
		fsEvents, fsErrors = w.fs.Events, w.fs.Errors
	}
	timer := time.NewTimer(w.nextWake())
	defer timer.Stop()
	for {
		ok := true
		select {
		case <-w.stopped:
			ok = false
		case <-w.ctx.Done():
			ok = false
		case ev, open := <-fsEvents:
			if !open {
				fsEvents = nil
				break
			}
			ok = w.handle(ev)
		case err, open := <-fsErrors:
			if !open {
				fsErrors = nil
				break
			}
			if !errors.Is(err, fsnotify.ErrEventOverflow) {
				w.r.log.Warn("embedded registry: file-system events", "err", err)
			}
			ok = w.scan()
		case <-timer.C:
			ok = w.tick()
		}
		if !ok {
			w.err = w.endErr()
			return
		}
		timer.Reset(w.nextWake())
	}
}

// endErr says why the watch ended.
func (w *watcher) endErr() error {
	select {
	case <-w.stopped:
		return w.cause
	default:
	}
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("embedded registry: watch: %w", err)
	}
	return ErrStopped
}

// emit delivers ev, or returns false when the watch ends first.
func (w *watcher) emit(t registry.EventType, service string, node *registry.Node) bool {
	select {
	case w.events <- registry.Event{Type: t, Service: service, Node: node}:
		return true
	case <-w.stopped:
		return false
	case <-w.ctx.Done():
		return false
	}
}

// handle follows one file-system event: it rereads the node or the service it names.
func (w *watcher) handle(ev fsnotify.Event) bool {
	rel, err := filepath.Rel(w.r.loc.Path, ev.Name)
	if err != nil || rel == "." {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			delete(w.watched, "") // the root went away; scans watch it again when it is back
		}
		return w.scan()
	}
	service, file, inService := strings.Cut(rel, string(filepath.Separator))
	if checkName("service name", service) != nil {
		return true
	}
	if !inService {
		// The service directory itself was created, removed or renamed.
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			delete(w.watched, service)
		}
		if ev.Has(fsnotify.Create) {
			// A symbolic link is not followed, nor is anything else watched.
			if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
				w.watch(service)
			}
		}
		root, ok := w.openRoot()
		if !ok {
			return true
		}
		if root != nil {
			defer root.close()
		}
		return w.syncService(root, service, true)
	}
	id, ok := strings.CutSuffix(file, ".json")
	if !ok || checkName("node ID", id) != nil {
		return true // a temporary file, or not ours
	}
	return w.syncNode(service, id)
}

// tick handles a timer: a due scan, or the expiry of known nodes.
func (w *watcher) tick() bool {
	now := time.Now()
	if !now.Before(w.lastScan.Add(w.r.scan)) {
		return w.scan()
	}
	for service, nodes := range w.known {
		for id, rec := range nodes {
			// Reread rather than trust the expiry we know: a missed event may hide a heartbeat.
			if rec.Expires <= now.UnixNano() && !w.syncNode(service, id) {
				return false
			}
		}
	}
	return true
}

// nextWake returns how long until the next known node expires or the next scan is due.
func (w *watcher) nextWake() time.Duration {
	next := int64(math.MaxInt64)
	for _, nodes := range w.known {
		for _, rec := range nodes {
			next = min(next, rec.Expires)
		}
	}
	d := time.Until(w.lastScan.Add(w.r.scan))
	if next != math.MaxInt64 {
		d = min(d, time.Until(time.Unix(0, next)))
	}
	return max(d, 0)
}

// scan rereads the whole directory and reports what changed.
func (w *watcher) scan() bool { return w.resync(true) == nil }

// resync rereads the whole directory, adds file-system watches for directories that lack
// them, and reports what changed when emit is set. It fails only when the watch ends or,
// without emit, when the root cannot be read.
func (w *watcher) resync(emit bool) error {
	w.lastScan = time.Now()
	w.watch("")
	root, err := w.r.openRoot(false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if !emit {
			return fmt.Errorf("embedded registry: watch: %w", err)
		}
		w.r.warnOnce(watchMsg, w.r.loc.Path, time.Time{}, err)
		return nil
	}
	// The names of this scan that are known or watched, to tell which of those are gone.
	// Bounded as known and watched are.
	seen := make(map[string]bool)
	if root != nil {
		defer root.close()
		stopping := false
		err := root.each(func(name string, typ fs.FileMode) bool {
			if checkName("service name", name) != nil {
				return true
			}
			if typ.IsDir() {
				w.watch(name)
			} else if w.watched[name] {
				w.unwatch(name) // replaced by something else
			}
			if !w.syncService(root, name, emit) {
				stopping = true
				return false
			}
			if _, ok := w.known[name]; ok || w.watched[name] {
				seen[name] = true
			}
			return true
		})
		if stopping {
			return errStopping
		}
		if err != nil {
			if !emit {
				return fmt.Errorf("embedded registry: watch: %w", err)
			}
			w.r.warnOnce(watchMsg, w.r.loc.Path, time.Time{}, err)
			return nil
		}
	}
	for name := range w.watched {
		if name != "" && !seen[name] {
			w.unwatch(name)
		}
	}
	for name := range w.known {
		if !seen[name] && !w.syncService(root, name, emit) {
			return errStopping
		}
	}
	return nil
}

// errStopping ends a resync because the watch ends.
var errStopping = errors.New("embedded registry: watch ending")

// watchMsg is the message of the log line about a directory that a watcher cannot read.
const watchMsg = "embedded registry: watch"

// maxWatched bounds how many service directories a watcher puts under file-system watch (the
// root is watched besides): each costs an inotify watch, of which a user has a limited number,
// and an entry in watcher.watched, and the directory may be flooded. The rest are followed
// by scans only.
const maxWatched = 1024

// watch adds a file-system watch on the root ("") or a service directory, unless it has one.
// The caller has checked that a service's name is a directory and not a symbolic link.
func (w *watcher) watch(service string) {
	if w.fs == nil || w.watched[service] {
		return
	}
	if services := len(w.watched); service != "" {
		if w.watched[""] {
			services--
		}
		if services >= w.r.maxWatched {
			w.trouble(&w.watchTrouble, "embedded registry: too many service directories to watch; relying on scans for the rest",
				"max", w.r.maxWatched)
			return
		}
	}
	path := filepath.Join(w.r.loc.Path, service)
	if err := w.fs.Add(path); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			w.trouble(&w.watchTrouble, "embedded registry: cannot watch directory; relying on scans",
				"dir", path, "err", err)
		}
		return
	}
	w.watched[service] = true
}

// unwatch removes the file-system watch of a service directory that is gone.
func (w *watcher) unwatch(service string) {
	delete(w.watched, service)
	w.fs.Remove(filepath.Join(w.r.loc.Path, service)) // an error means the watch went with the directory
}

// trouble logs a problem that may recur at every scan: as a warning the first time, when
// *warned is false, and at debug level afterwards.
func (w *watcher) trouble(warned *bool, msg string, args ...any) {
	level := slog.LevelDebug
	if !*warned {
		level, *warned = slog.LevelWarn, true
	}
	w.r.log.Log(context.Background(), level, msg, args...)
}

// maxKnown bounds how many nodes a watcher keeps track of, in watcher.known, for the directory
// may be flooded with entries. Nodes past it are not reported.
const maxKnown = 1 << 14

// openRoot opens the registry directory for a watcher. It returns nil when the directory is
// gone, and false when it cannot be opened otherwise, which it logs.
func (w *watcher) openRoot() (*dir, bool) {
	root, err := w.r.openRoot(false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, true
	}
	if err != nil {
		w.r.warnOnce(watchMsg, w.r.loc.Path, time.Time{}, err)
		return nil, false
	}
	return root, true
}

// tooManyNodes logs that a node of service is not reported, for the watcher keeps track of
// maxKnown nodes already.
func (w *watcher) tooManyNodes(service string) {
	w.trouble(&w.knownTrouble, "embedded registry: watch: too many nodes to keep track of; not reporting the rest",
		"max", w.r.maxKnown, "service", service)
}

// syncService rereads a service in root, which is nil when there is no root, and reports its
// changed nodes when emit is set.
func (w *watcher) syncService(root *dir, service string, emit bool) bool {
	var recs []record
	if root != nil {
		var err error
		recs, err = w.r.readService(root, service, time.Now().UnixNano())
		if err != nil {
			w.r.warnOnce(watchMsg, root.join(service), time.Time{}, err)
			return true
		}
	}
	old := w.known[service]
	if room := w.r.maxKnown - (w.nodes - len(old)); len(recs) > room {
		w.tooManyNodes(service)
		recs = recs[:room]
	}
	next := make(map[string]record, len(recs))
	for _, rec := range recs {
		next[rec.Node.ID] = rec
	}
	w.nodes += len(next) - len(old)
	if len(next) == 0 {
		delete(w.known, service)
	} else {
		w.known[service] = next
	}
	if !emit {
		return true
	}
	for _, rec := range recs {
		if prev, ok := old[rec.Node.ID]; !ok || !reflect.DeepEqual(prev.Node, rec.Node) {
			if !w.emit(registry.EventUpdate, service, rec.Node) {
				return false
			}
		}
	}
	for id, prev := range old {
		if _, ok := next[id]; !ok && !w.emit(registry.EventDelete, service, prev.Node) {
			return false
		}
	}
	return true
}

// syncNode rereads one node and reports it if it changed. A node that cannot be read is
// gone, as it is for GetService.
func (w *watcher) syncNode(service, id string) bool {
	rec, live := w.readNode(service, id)
	prev, had := w.known[service][id]
	if live && !had && w.nodes >= w.r.maxKnown {
		w.tooManyNodes(service)
		live = false
	}
	switch {
	case live:
		if w.known[service] == nil {
			w.known[service] = make(map[string]record)
		}
		w.known[service][id] = rec
		if !had {
			w.nodes++
			return w.emit(registry.EventUpdate, service, rec.Node)
		}
		if !reflect.DeepEqual(prev.Node, rec.Node) {
			return w.emit(registry.EventUpdate, service, rec.Node)
		}
	case had:
		delete(w.known[service], id)
		w.nodes--
		if len(w.known[service]) == 0 {
			delete(w.known, service)
		}
		return w.emit(registry.EventDelete, service, prev.Node)
	}
	return true
}

// readNode rereads one node, and reports whether it is live.
func (w *watcher) readNode(service, id string) (record, bool) {
	root, _ := w.openRoot()
	if root == nil {
		return record{}, false
	}
	defer root.close()
	sd, err := w.r.openService(root, service)
	if sd == nil {
		if err != nil {
			w.r.warnOnce(watchMsg, root.join(service), time.Time{}, err)
		}
		return record{}, false
	}
	defer sd.close()
	return w.r.readNode(sd, service, id, time.Now().UnixNano())
}

func (w *watcher) closeFS() {
	if w.fs != nil {
		w.fs.Close()
	}
}
