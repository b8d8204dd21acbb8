package embedded

import (
	"container/heap"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/broker"
)

// maxSynced bounds how many topics a Broker remembers having made durable.
const maxSynced = 4096

// topicDirs are the open directories of one topic.
type topicDirs struct {
	name                            string
	dir, ids, held, groups, corrupt *dir
}

func (t *topicDirs) close() {
	for _, d := range []*dir{t.ids, t.held, t.groups, t.corrupt, t.dir} {
		if d != nil {
			d.close()
		}
	}
}

// openTopic opens the directories of topic, making those that are missing; the topic's own
// directory is made only when create is set, and is else an error wrapping fs.ErrNotExist.
// The first time a Broker opens a topic to create it, it flushes the directories above, for
// a process that made them may have crashed before it did.
func (b *Broker) openTopic(root *dir, topic string, create bool) (*topicDirs, error) {
	topics, err := root.ensure("topics")
	if err != nil {
		return nil, err
	}
	defer topics.close()
	made := false
	if create {
		if made, err = topics.mkdir(topic); err != nil {
			return nil, err
		}
	}
	t := &topicDirs{name: topic}
	if t.dir, err = topics.sub(topic); err != nil {
		return nil, err
	}
	for _, p := range []struct {
		d    **dir
		name string
	}{{&t.ids, "ids"}, {&t.held, "held"}, {&t.groups, "groups"}, {&t.corrupt, "corrupt"}} {
		made2, err := t.dir.mkdir(p.name)
		if err == nil {
			*p.d, err = t.dir.sub(p.name)
		}
		if err != nil {
			t.close()
			return nil, err
		}
		made = made || made2
	}
	if !create {
		return t, nil
	}
	b.mu.Lock()
	synced := b.synced[topic]
	b.mu.Unlock()
	if made || !synced {
		for _, d := range []*dir{t.dir, topics, root} {
			if err := d.sync(); err != nil {
				t.close()
				return nil, err
			}
		}
		b.mu.Lock()
		if len(b.synced) >= maxSynced {
			clear(b.synced)
		}
		b.synced[topic] = true
		b.mu.Unlock()
	}
	return t, nil
}

// lock takes the topic's lock, shared or exclusive (unix.LOCK_SH or unix.LOCK_EX), and
// returns what releases it. Each call opens the lock file anew: flock locks belong to an
// open file, so two callers sharing one would release each other's lock.
func (t *topicDirs) lock(how int) (func(), error) {
	fd, err := openat(t.dir.fd, "lock", unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: t.dir.join("lock"), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: not a regular file", t.dir.join("lock"))
	}
	if err := flock(fd, how); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "flock", Path: t.dir.join("lock"), Err: err}
	}
	return func() { unix.Close(fd) }, nil
}

// readyDirs opens the ready directory of every group of t. A name in groups that is not a
// group directory is skipped, with a warning.
func (b *Broker) readyDirs(t *topicDirs) ([]*dir, error) {
	var ds []*dir
	var errs []error
	err := t.groups.each(func(name string, typ fs.FileMode) bool {
		d, err := b.groupDir(t, name, typ, "ready")
		switch {
		case err != nil:
			errs = append(errs, err)
		case d != nil:
			ds = append(ds, d)
		}
		return true
	})
	if err = errors.Join(append(errs, err)...); err != nil {
		closeAll(ds)
		return nil, err
	}
	return ds, nil
}

// groupDir opens sub (ready or inflight) of the group directory name in t, whose type the
// directory says is typ. It returns nil, with a warning, when name is not a group directory
// of micro's, and an error only when the file system fails.
func (b *Broker) groupDir(t *topicDirs, name string, typ fs.FileMode, sub string) (*dir, error) {
	path := t.groups.join(name)
	if broker.ValidGroup(name) != nil {
		b.warnOnce(strayMsg, path, errors.New("not a group name"))
		return nil, nil
	}
	if !typ.IsDir() {
		b.warnOnce(strayMsg, path, errors.New("not a directory"))
		return nil, nil
	}
	g, err := t.groups.sub(name)
	if err == nil {
		defer g.close()
		var d *dir
		if d, err = g.sub(sub); err == nil {
			return d, nil
		}
	}
	if errors.Is(err, fs.ErrNotExist) || !errors.As(err, new(*fs.PathError)) {
		b.warnOnce(strayMsg, path, err)
		return nil, nil
	}
	return nil, err
}

// eachEntry calls fn with every entry of t, held, ready and inflight, and the directory that
// holds it, until fn returns false. Names that are not entries are skipped.
func (b *Broker) eachEntry(t *topicDirs, fn func(d *dir, name string, e entry) bool) error {
	more := true
	visit := func(d *dir, parse func(string) (entry, bool)) error {
		return d.each(func(name string, typ fs.FileMode) bool {
			if e, ok := parse(name); ok && typ.IsRegular() {
				more = fn(d, name, e)
			}
			return more
		})
	}
	if err := visit(t.held, parseReady); err != nil || !more {
		return err
	}
	var errs []error
	err := t.groups.each(func(name string, typ fs.FileMode) bool {
		for _, sub := range []string{"ready", "inflight"} {
			d, err := b.groupDir(t, name, typ, sub)
			if d == nil {
				if err != nil {
					errs = append(errs, err)
				}
				return true
			}
			parse := parseReady
			if sub == "inflight" {
				parse = parseInflight
			}
			err = visit(d, parse)
			d.close()
			if err != nil {
				errs = append(errs, err)
			}
			if !more {
				return false
			}
		}
		return true
	})
	return errors.Join(append(errs, err)...)
}

// oldest keeps the oldest entries it is given, up to a limit, one per message.
type oldest struct {
	limit int
	h     entryHeap // a max-heap: the newest kept is at the top
	kept  map[string]bool
}

func newOldest(limit int) *oldest {
	return &oldest{limit: limit, h: entryHeap{max: true}, kept: make(map[string]bool)}
}

func (o *oldest) add(e entry) {
	if o.kept[e.hash] {
		return
	}
	if len(o.h.es) >= o.limit {
		if !older(e, o.h.es[0]) {
			return
		}
		delete(o.kept, heap.Pop(&o.h).(entry).hash)
	}
	heap.Push(&o.h, e)
	o.kept[e.hash] = true
}

// sorted returns the entries kept, oldest first.
func (o *oldest) sorted() []entry {
	es := slices.Clone(o.h.es)
	slices.SortFunc(es, func(a, b entry) int {
		if older(a, b) {
			return -1
		}
		if older(b, a) {
			return 1
		}
		return 0
	})
	return es
}

// older orders entries by publish time, then by hash.
func older(a, b entry) bool {
	if a.time != b.time {
		return a.time < b.time
	}
	return a.hash < b.hash
}

// entryHeap is a heap of entries by publish time, or by notBefore when byNotBefore is set;
// the smallest first, or the largest when max is set.
type entryHeap struct {
	es          []entry
	max         bool
	byNotBefore bool
}

func (h *entryHeap) Len() int { return len(h.es) }
func (h *entryHeap) Less(i, j int) bool {
	a, b := h.es[i], h.es[j]
	if h.max {
		a, b = b, a
	}
	if h.byNotBefore && a.notBefore != b.notBefore {
		return a.notBefore < b.notBefore
	}
	return older(a, b)
}
func (h *entryHeap) Swap(i, j int) { h.es[i], h.es[j] = h.es[j], h.es[i] }
func (h *entryHeap) Push(x any)    { h.es = append(h.es, x.(entry)) }
func (h *entryHeap) Pop() any {
	e := h.es[len(h.es)-1]
	h.es = h.es[:len(h.es)-1]
	return e
}
