package embedded

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/runtime/registry"
)

// Leader election (registry.Elector) keeps two files per election name in the directory
// .elect of the registry directory, which no service can be named after:
//
//   - <name>.lock, an empty file. A candidate leads while it holds an exclusive flock on it.
//     The lock belongs to the candidate's open file description, so the kernel releases it
//     when the candidate's process dies, however it dies (SIGKILL included). Lock files are
//     never removed: a candidate waiting on a removed file would wait on nothing.
//   - <name>.value, the leader's value. The leader writes it once it holds the lock, as a
//     temporary file that it locks (exclusive flock) and then renames into place, and keeps
//     it locked for as long as it leads. A value file nobody holds locked was left by a
//     leader that died or resigned, and is stale.
//
// Leader reports a value only when both files are locked by someone else, so it never
// reports a dead leader's value, even while a new leader is taking over. The files are
// reached as the rest of the directory is (see dir.go): through open directories, never
// following symbolic links, opening regular files only.

// electDir is the directory of election files in the registry directory. Its leading dot
// keeps it apart from service names.
const electDir = ".elect"

// campaignPoll is how often a waiting candidate tries the lock again.
const campaignPoll = 50 * time.Millisecond

// leaderCheck is how often a leader checks that its lock file is still the one in the
// directory: one removed, or replaced, no longer keeps other candidates out.
const leaderCheck = 250 * time.Millisecond

// checkValueFile checks that fi describes a regular file that can hold a leader's value.
func checkValueFile(path string, fi fileInfo) error {
	if !fi.isRegular() {
		return &wrongTypeError{path: path, info: fi, want: "regular file"}
	}
	if fi.size > abi.MaxLeaderValue {
		return fmt.Errorf("%s: %d bytes, more than %d", path, fi.size, abi.MaxLeaderValue)
	}
	return nil
}

// checkLockFile checks that fi describes a regular file, which can be a lock file.
func checkLockFile(path string, fi fileInfo) error {
	if !fi.isRegular() {
		return &wrongTypeError{path: path, info: fi, want: "regular file"}
	}
	return nil
}

var _ registry.Elector = (*Registry)(nil)

// Campaign implements registry.Elector: it blocks until this candidate leads name, or ctx
// ends, or the Registry is closed (ErrClosed). It tries the election's lock every 50 ms, so
// a leader that resigns or dies, even by SIGKILL, is replaced within about that long.
//
// name is 1 to 128 bytes of [A-Za-z0-9._-]; value is valid UTF-8 of at most 4 KiB.
// Any number of candidates, in one process or many, may campaign for one name in one
// directory; each call is a candidate of its own.
//
// The Leadership ends (Lost is closed) at Resign, at Close of the Registry, and when the
// lock file is removed or replaced, which is checked every 250 ms: then another candidate
// may already lead.
func (r *Registry) Campaign(ctx context.Context, name, value string) (registry.Leadership, error) {
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	if err := abi.CheckElection(name, &value); err != nil {
		return nil, fmt.Errorf("embedded registry: campaign: %w", err)
	}
	lockName := name + ".lock"
	var (
		ed   *dir      // the election directory
		lock *openFile // the lock file, opened through ed
	)
	release := func() {
		if lock != nil {
			lock.close()
			lock = nil
		}
		if ed != nil {
			ed.close()
			ed = nil
		}
	}
	defer func() { release() }()
	ticker := time.NewTicker(campaignPoll)
	defer ticker.Stop()
	for {
		// Open the lock file anew when it is not the one under its name (anymore): a
		// candidate waiting on a removed file would wait on nothing.
		cur, err := r.openElectDir(true)
		if err != nil {
			return nil, fmt.Errorf("embedded registry: campaign %q: %w", name, err)
		}
		fi, err := cur.lstat(lockName)
		if lock != nil && (err != nil || !fi.same(lock.info)) {
			release()
		}
		if lock == nil {
			lock, err = cur.openLock(lockName)
			if err != nil {
				cur.close()
				return nil, fmt.Errorf("embedded registry: campaign %q: %w", name, err)
			}
		}
		if ed != nil {
			ed.close()
		}
		ed = cur
		won, err := lock.tryLock(unix.LOCK_EX)
		if err != nil {
			return nil, fmt.Errorf("embedded registry: campaign %q: %w", name, err)
		}
		if won {
			// The file may have been replaced since lstat saw it: then this lock keeps
			// nobody out, and the next round opens the new file.
			fi, err := ed.lstat(lockName)
			if err == nil && fi.same(lock.info) {
				break
			}
			release()
			continue
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("embedded registry: campaign %q: %w", name, ctx.Err())
		case <-r.done:
			return nil, ErrClosed
		case <-ticker.C:
		}
	}

	// Elected. Publish the value, locked, for Leader.
	val, err := ed.writeLocked(name+".value", []byte(value))
	if err != nil {
		return nil, fmt.Errorf("embedded registry: campaign %q: write the leader's value: %w", name, err)
	}
	l := &leadership{
		r:     r,
		name:  name,
		lock:  lock,
		value: val,
		lost:  make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	lock = nil // the leadership's now
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		l.end(ed)
		ed = nil
		close(l.done)
		return nil, ErrClosed
	}
	r.leaders[l] = struct{}{}
	r.mu.Unlock()
	go l.run()
	return l, nil
}

// Leader implements registry.Elector: it returns the value of the candidate that leads
// name, or an error wrapping registry.ErrNoLeader when none does. A new leader is reported
// once it has written its value, just before its Campaign returns; a leader that resigned or
// died is not reported, whether or not its files are still there.
func (r *Registry) Leader(ctx context.Context, name string) (string, error) {
	if err := r.check(ctx); err != nil {
		return "", err
	}
	if err := abi.CheckElection(name, nil); err != nil {
		return "", fmt.Errorf("embedded registry: leader: %w", err)
	}
	noLeader := fmt.Errorf("embedded registry: election %q: %w", name, registry.ErrNoLeader)
	ed, err := r.openElectDir(false)
	if errors.Is(err, fs.ErrNotExist) {
		return "", noLeader
	}
	if err != nil {
		return "", fmt.Errorf("embedded registry: leader of %q: %w", name, err)
	}
	defer ed.close()
	// locked opens file and reports whether someone holds it locked. A missing file is
	// nobody's.
	locked := func(file string, check func(string, fileInfo) error) (*openFile, bool, error) {
		of, _, err := ed.openFile(file, check)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		held, err := of.lockedByOther()
		if err != nil || !held {
			of.close()
			return nil, false, err
		}
		return of, true, nil
	}
	lock, held, err := locked(name+".lock", checkLockFile)
	if err != nil {
		return "", fmt.Errorf("embedded registry: leader of %q: %w", name, err)
	}
	if !held {
		return "", noLeader
	}
	lock.close()
	val, held, err := locked(name+".value", checkValueFile)
	if err != nil {
		return "", fmt.Errorf("embedded registry: leader of %q: %w", name, err)
	}
	if !held {
		return "", noLeader // a new leader has not written its value yet
	}
	defer val.close()
	data, err := io.ReadAll(io.LimitReader(val.f, abi.MaxLeaderValue+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("embedded registry: leader of %q: %w", name, err)
	case len(data) > abi.MaxLeaderValue:
		return "", fmt.Errorf("embedded registry: leader of %q: %s: more than %d bytes", name, val.f.Name(), abi.MaxLeaderValue)
	case !utf8.Valid(data):
		return "", fmt.Errorf("embedded registry: leader of %q: %s: not valid UTF-8", name, val.f.Name())
	}
	return string(data), nil
}

// openElectDir opens the election directory, creating it (and the registry directory) when
// create is set.
func (r *Registry) openElectDir(create bool) (*dir, error) {
	root, err := r.openRoot(create)
	if err != nil {
		return nil, err
	}
	defer root.close()
	if create {
		if err := root.mkdir(electDir); err != nil {
			return nil, err
		}
	}
	return root.openDir(electDir)
}

// leadership is a won Campaign of a Registry.
type leadership struct {
	r     *Registry
	name  string
	lock  *openFile // the lock file, exclusively locked; nil once ended
	value *openFile // the value file, exclusively locked; nil once ended

	lost     chan struct{} // closed by end
	stopOnce sync.Once
	stop     chan struct{} // closed by Resign and Close
	done     chan struct{} // closed when run returns
}

// Lost implements registry.Leadership.
func (l *leadership) Lost() <-chan struct{} { return l.lost }

// Resign implements registry.Leadership: it removes the leader's value and releases the
// lock, so that a waiting candidate takes over within its next try. Resigning a lost
// leadership does nothing.
func (l *leadership) Resign(context.Context) error {
	l.resign()
	return nil
}

// resign ends the leadership and waits until it has.
func (l *leadership) resign() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

// run checks the lock file every leaderCheck until the leadership is given up or the lock
// file is found removed or replaced, and then ends the leadership.
func (l *leadership) run() {
	defer close(l.done)
	ticker := time.NewTicker(leaderCheck)
	defer ticker.Stop()
	for {
		select {
		case <-l.stop:
			ed, _ := l.r.openElectDir(false)
			l.end(ed)
			return
		case <-ticker.C:
		}
		ed, why := l.check()
		if why != "" {
			l.r.log.Warn("embedded registry: leadership lost", "election", l.name, "why", why)
			l.end(ed)
			return
		}
		if ed != nil {
			ed.close()
		}
	}
}

// check reports why the leadership is lost, or "" while the lock file under its name is
// still the locked one. It returns the election directory, or nil when it could not be
// opened. An error that says nothing about the lock file (too many open files, say) is
// logged, and the leadership kept: the lock is held all the same.
func (l *leadership) check() (*dir, string) {
	path := l.lock.f.Name()
	ed, err := l.r.openElectDir(false)
	var wrong *wrongTypeError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, "the election directory was removed"
	case errors.As(err, &wrong):
		return nil, "the election directory was replaced: " + err.Error()
	case err != nil:
		l.r.log.Warn("embedded registry: cannot check the leader's lock file", "file", path, "err", err)
		return nil, ""
	}
	fi, err := ed.lstat(l.name + ".lock")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ed, "the lock file " + path + " was removed"
	case err != nil:
		l.r.log.Warn("embedded registry: cannot check the leader's lock file", "file", path, "err", err)
		return ed, ""
	case !fi.same(l.lock.info):
		return ed, "the lock file " + path + " was replaced"
	}
	return ed, ""
}

// end gives the leadership up: it removes the value file if it is still this leader's,
// releases the locks, value file first, so that a value file is never locked by a candidate
// that no longer leads, and closes Lost. ed is the election directory, or nil; end closes
// it.
func (l *leadership) end(ed *dir) {
	if ed != nil {
		ed.removeIfSame(l.name+".value", l.value.info)
		ed.close()
	}
	l.value.close()
	l.lock.close()
	l.r.mu.Lock()
	delete(l.r.leaders, l)
	l.r.mu.Unlock()
	close(l.lost)
}
