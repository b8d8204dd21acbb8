// Package embedded is micro's default broker. It runs inside micro, needs no server, and is
// shared by every micro process on one machine that opens the same directory: a group's
// consumers in several processes share its messages, each message going to one of them.
//
// # Layout
//
// The directory holds:
//
//	owners/<owner>                             one locked file per open Broker (liveness)
//	tmp/<owner>.<random>                       messages being written, groups being made
//	topics/<topic>/lock                        flock: shared to publish, exclusive to add a group
//	topics/<topic>/ids/<hash>                  each stored message, named by a hash of its ID
//	topics/<topic>/held/<entry>                messages kept while the topic has no group
//	topics/<topic>/groups/<group>/ready/<entry>     messages the group has yet to be given
//	topics/<topic>/groups/<group>/inflight/<entry>  messages given to a consumer, not yet acked
//	topics/<topic>/corrupt/<name>              files that could not be read, moved aside
//
// Publish writes the message to a temporary file and flushes it, links it into ids (a link
// that exists already means the ID is stored, and nothing more is done), links it into the
// ready directory of every group of the topic (or into held when there is none), and flushes
// those directories before it returns: a message that Publish accepted survives the process
// being killed, and the machine losing power. The entries of a message are hard links to
// one file, so it is written once, and it is gone when its last entry is.
//
// A consumer claims an entry by renaming it from ready to inflight; rename is atomic, so one
// consumer, in whichever process, gets it. The inflight name carries the delivery's attempt,
// the consumer's owner ID and its deadline, and Ack, Nak and Extend are an unlink or a rename
// of it. Consumers of a group look at its inflight entries every second, and put back in
// ready the entries whose deadline has passed or whose owner's process died, which they see
// from its lock (see owner.go). Consumers learn of new entries from file-system events, with
// a rescan every few seconds in case events were lost.
//
// # Trust
//
// Every process that opens the directory must be trusted, so Open refuses a directory that
// another user owns, and, in the fallback location in the shared temporary directory, one
// that other users can write to or that is a symbolic link (see runtime/internal/statedir).
// Whatever is in the directory is still untrusted input: a file that is not micro's (a
// symbolic link, which is never followed, a named pipe, a device, a file too large, corrupt or
// truncated) is never delivered and never blocks or crashes a reader. It is skipped with one
// warning, and an unreadable message file that a consumer claimed is moved aside to corrupt.
package embedded

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/internal/statedir"
)

// Defaults of Options.
const (
	// DefaultMaxBytes is the default size of the store.
	DefaultMaxBytes = 1 << 30
	// DefaultMaxAge is the default retention of a message.
	DefaultMaxAge = 7 * 24 * time.Hour
	// DefaultMaxMessage is the default size limit of one message (see broker.Message.Size).
	DefaultMaxMessage = 1 << 20
	// DefaultAckTimeout is the AckTimeout of a Subscription that gives none.
	DefaultAckTimeout = 30 * time.Second
)

// Intervals of the background work.
const (
	// livenessInterval is how often a consumer looks for deliveries of its group that a
	// dead process held.
	livenessInterval = time.Second
	// rescanInterval is how often a consumer rereads its ready directory when it has nothing
	// to deliver, in case file-system events were lost.
	rescanInterval = 5 * time.Second
	// sweepInterval is how often a Broker removes expired messages and leftovers, and
	// measures the store.
	sweepInterval = time.Minute
	// measureInterval is how often, at most, a Broker whose store looks full measures it
	// again, since other processes acknowledge messages too.
	measureInterval = time.Second
)

// Options configures a Broker. The zero value is ready to use.
type Options struct {
	// Dir is the directory that holds the store; "" means DefaultDir.
	Dir string
	// MaxBytes bounds the store: Publish fails with broker.ErrFull while the message files
	// take this many bytes or more. Zero means DefaultMaxBytes.
	MaxBytes int64
	// MaxAge is how long a message is kept, delivered or not. Zero means DefaultMaxAge.
	MaxAge time.Duration
	// MaxMessage is the largest message accepted, by broker.Message.Size. Zero means
	// DefaultMaxMessage. Processes that share a directory should share it: a message file
	// far larger than it is skipped as not micro's.
	MaxMessage int64
	// Logger receives warnings: unreadable files, expired messages. Nil discards them.
	Logger *slog.Logger
}

// Broker is a broker.Broker kept in a directory. It is safe for concurrent use, and any number
// of Broker values, in one process or many, may share a directory.
type Broker struct {
	loc        statedir.Location
	maxBytes   int64
	maxAge     time.Duration
	maxMessage int64
	readLimit  int64 // the largest message file read
	log        *slog.Logger

	owner  *owner
	warned *warnings

	used     atomic.Int64 // bytes of message files, as last measured plus what was since added here
	measured atomic.Int64 // when used was last measured, in Unix nanoseconds

	sweepMu sync.Mutex // one sweep or measure at a time

	mu        sync.Mutex
	closed    bool
	consumers map[*consumer]struct{}
	synced    map[string]bool // topics whose directories this Broker made durable

	stop chan struct{} // closed by Close
	done chan struct{} // closed when the sweeper returns
}

var _ broker.Broker = (*Broker)(nil)

// DefaultDir returns the directory that Open uses when given none: micro/broker under the
// user's cache directory, or broker under a per-user directory micro-<uid> in the temporary
// directory when there is no cache directory.
func DefaultDir() string {
	d, _ := statedir.Default("broker")
	return d
}

// Open opens the store in opts.Dir, creating the directory (mode 0700, with missing parents)
// if needed, and checking it (see the package documentation). It removes what crashed
// processes left behind, and measures the store.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	switch {
	case opts.MaxBytes < 0:
		return nil, fmt.Errorf("embedded broker: max bytes %d is negative", opts.MaxBytes)
	case opts.MaxAge < 0:
		return nil, fmt.Errorf("embedded broker: max age %v is negative", opts.MaxAge)
	case opts.MaxMessage < 0:
		return nil, fmt.Errorf("embedded broker: max message %d is negative", opts.MaxMessage)
	}
	loc, err := statedir.New(opts.Dir, "broker", "broker")
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	b := &Broker{
		loc:        loc,
		maxBytes:   cmp(opts.MaxBytes, DefaultMaxBytes),
		maxAge:     cmp(opts.MaxAge, DefaultMaxAge),
		maxMessage: cmp(opts.MaxMessage, DefaultMaxMessage),
		log:        opts.Logger,
		warned:     newWarnings(maxWarned),
		consumers:  make(map[*consumer]struct{}),
		synced:     make(map[string]bool),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	// A record holds the message and at most two length bytes per header, each of which
	// has a key, and a little more.
	b.readLimit = 3*b.maxMessage + 4096
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	perm, err := loc.Prepare()
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if perm&0o022 != 0 {
		b.log.Warn("embedded broker: directory is writable by other users, who can add and remove messages",
			"dir", loc.Path, "mode", perm)
	}
	root, err := b.openRoot()
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	defer root.close()
	for _, name := range []string{"owners", "tmp", "topics"} {
		if _, err := root.mkdir(name); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
	}
	owners, err := root.sub("owners")
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	defer owners.close()
	if b.owner, err = newOwner(owners); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := b.sweep(ctx); err != nil {
		b.owner.release(owners)
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	go b.sweeper()
	return b, nil
}

func cmp[T int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Dir returns the directory that holds the store, as an absolute path.
func (b *Broker) Dir() string { return b.loc.Path }

// Health returns nil while the directory is usable, and else an error that says why not:
// it was removed, made unreadable, or handed to another user.
func (b *Broker) Health() error {
	root, err := b.openRoot()
	if err != nil {
		return fmt.Errorf("embedded broker: %w", err)
	}
	defer root.close()
	for _, name := range []string{"tmp", "topics", "owners"} {
		d, err := root.sub(name)
		if err != nil {
			return fmt.Errorf("embedded broker: %w", err)
		}
		defer d.close()
		if name != "owners" {
			continue
		}
		if _, err := d.lstat(b.owner.id); err != nil {
			return fmt.Errorf("embedded broker: owner file gone, so other processes take this one for dead: %w", err)
		}
	}
	return nil
}

// openRoot opens the broker directory and checks it again, for it may have been removed and
// made again since Open.
func (b *Broker) openRoot() (*dir, error) {
	d, err := openDirPath(b.loc.Path)
	if err != nil {
		return nil, err
	}
	if err := b.loc.CheckFD(d.fd); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (b *Broker) check(ctx context.Context) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return broker.ErrClosed
	}
	return ctx.Err()
}

// Publish stores m durably: when it returns nil, m is on disk, in every group of its topic.
// It sets m.Time, and m.ID when that is empty. A message whose ID is stored already for the
// topic is not stored again.
func (b *Broker) Publish(ctx context.Context, m *broker.Message) error {
	if err := b.check(ctx); err != nil {
		return fmt.Errorf("embedded broker: publish: %w", err)
	}
	if m == nil {
		return errors.New("embedded broker: publish: nil message")
	}
	if err := broker.ValidTopic(m.Topic); err != nil {
		return fmt.Errorf("embedded broker: publish: %w", err)
	}
	if m.ID == "" {
		m.ID = rand.Text()
	} else if len(m.ID) > maxIDLen {
		return fmt.Errorf("embedded broker: publish to %q: message ID of %d bytes, more than %d", m.Topic, len(m.ID), maxIDLen)
	}
	if size := int64(m.Size()); size > b.maxMessage {
		return fmt.Errorf("embedded broker: publish to %q: message of %d bytes, more than %d: %w", m.Topic, size, b.maxMessage, broker.ErrTooLarge)
	}
	if err := b.checkFull(ctx); err != nil {
		return fmt.Errorf("embedded broker: publish to %q: %w", m.Topic, err)
	}
	m.Time = time.Now()
	data := encodeRecord(m)
	if int64(len(data)) > b.readLimit {
		return fmt.Errorf("embedded broker: publish to %q: message file of %d bytes, more than %d: %w", m.Topic, len(data), b.readLimit, broker.ErrTooLarge)
	}
	if err := b.store(m, data); err != nil {
		return fmt.Errorf("embedded broker: publish to %q: %w", m.Topic, err)
	}
	return nil
}

// checkFull returns an error wrapping broker.ErrFull when the store is full. A store that
// looks full is measured again, at most once per measureInterval, since other processes
// remove messages too.
func (b *Broker) checkFull(ctx context.Context) error {
	if b.used.Load() < b.maxBytes {
		return nil
	}
	if time.Since(time.Unix(0, b.measured.Load())) >= measureInterval {
		if err := b.measure(ctx); err != nil {
			return err
		}
	}
	if used := b.used.Load(); used >= b.maxBytes {
		return fmt.Errorf("%d bytes stored, limit %d: %w", used, b.maxBytes, broker.ErrFull)
	}
	return nil
}

// store writes the message file data of m and links it into every group of its topic.
func (b *Broker) store(m *broker.Message, data []byte) error {
	root, err := b.openRoot()
	if err != nil {
		return err
	}
	defer root.close()
	tmp, err := root.sub("tmp")
	if err != nil {
		return err
	}
	defer tmp.close()
	name := b.tempName()
	if err := tmp.create(name, data); err != nil {
		return err
	}
	defer tmp.remove(name)
	t, err := b.openTopic(root, m.Topic, true)
	if err != nil {
		return err
	}
	defer t.close()
	unlock, err := t.lock(unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	hash := idHash(m.ID)
	if err := tmp.link(name, t.ids, hash); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // stored already
		}
		return err
	}
	targets, err := b.readyDirs(t)
	if err != nil {
		t.ids.remove(hash)
		return err
	}
	defer closeAll(targets)
	if len(targets) == 0 {
		targets = []*dir{t.held} // closed with t
	}
	e := entry{time: m.Time.UnixNano(), hash: hash}
	for i, d := range targets {
		if err := tmp.link(name, d, e.readyName()); err != nil {
			for _, d := range targets[:i] {
				d.remove(e.readyName())
			}
			t.ids.remove(hash)
			return err
		}
	}
	for _, d := range append(targets, t.ids) {
		if err := d.sync(); err != nil {
			return err
		}
	}
	b.used.Add(int64(len(data)))
	return nil
}

// tempName returns a new name for a file or directory of this Broker in tmp.
func (b *Broker) tempName() string {
	var r [8]byte
	rand.Read(r[:])
	return b.owner.id + "." + hex.EncodeToString(r[:])
}

func closeAll(ds []*dir) {
	for _, d := range ds {
		d.close()
	}
}

// Subscribe starts a consumer of s.Group on s.Topic, creating the group if it is new; the
// first group of a topic takes over the messages the topic held. An AckTimeout of zero means
// DefaultAckTimeout.
func (b *Broker) Subscribe(ctx context.Context, s broker.Subscription) (broker.Consumer, error) {
	if err := b.check(ctx); err != nil {
		return nil, fmt.Errorf("embedded broker: subscribe: %w", err)
	}
	if err := broker.ValidTopic(s.Topic); err != nil {
		return nil, fmt.Errorf("embedded broker: subscribe: %w", err)
	}
	if err := broker.ValidGroup(s.Group); err != nil {
		return nil, fmt.Errorf("embedded broker: subscribe to %q: %w", s.Topic, err)
	}
	switch {
	case s.AckTimeout < 0:
		return nil, fmt.Errorf("embedded broker: subscribe %q to %q: ack timeout %v is negative", s.Group, s.Topic, s.AckTimeout)
	case s.MaxInflight < 0:
		return nil, fmt.Errorf("embedded broker: subscribe %q to %q: max inflight %d is negative", s.Group, s.Topic, s.MaxInflight)
	case s.AckTimeout == 0:
		s.AckTimeout = DefaultAckTimeout
	}
	if s.MaxInflight == 0 {
		s.MaxInflight = 1
	}
	if err := b.addGroup(s.Topic, s.Group); err != nil {
		return nil, fmt.Errorf("embedded broker: subscribe %q to %q: %w", s.Group, s.Topic, err)
	}
	c, err := b.newConsumer(s)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: subscribe %q to %q: %w", s.Group, s.Topic, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		c.Close()
		return nil, fmt.Errorf("embedded broker: subscribe: %w", broker.ErrClosed)
	}
	b.consumers[c] = struct{}{}
	return c, nil
}

// addGroup creates the group if it is missing, and moves what the topic holds to its groups.
// It holds the topic's lock exclusively, so no Publish runs meanwhile: a message is in held,
// or in every group, never in neither.
func (b *Broker) addGroup(topic, group string) error {
	root, err := b.openRoot()
	if err != nil {
		return err
	}
	defer root.close()
	t, err := b.openTopic(root, topic, true)
	if err != nil {
		return err
	}
	defer t.close()
	unlock, err := t.lock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := t.groups.lstat(group); errors.Is(err, fs.ErrNotExist) {
		if err := b.makeGroup(root, t, group); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return b.takeHeld(t)
}

// makeGroup makes the group directory, with its ready and inflight directories, in tmp and
// renames it into place, so that a Publish never sees half a group.
func (b *Broker) makeGroup(root *dir, t *topicDirs, group string) error {
	tmp, err := root.sub("tmp")
	if err != nil {
		return err
	}
	defer tmp.close()
	name := b.tempName()
	g, err := tmp.ensure(name)
	if err != nil {
		return err
	}
	defer g.close()
	for _, sub := range []string{"ready", "inflight"} {
		if _, err := g.mkdir(sub); err != nil {
			return err
		}
	}
	if err := g.sync(); err != nil {
		return err
	}
	if err := tmp.rename(name, t.groups, group); err != nil {
		g.removeDir("ready")
		g.removeDir("inflight")
		tmp.removeDir(name)
		if errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			return nil // made meanwhile by a process that did not lock: not micro's, but there
		}
		return err
	}
	return t.groups.sync()
}

// takeHeld moves the entries in held to every group, and reports an error only when it
// could not. It runs with the topic's lock held exclusively.
func (b *Broker) takeHeld(t *topicDirs) error {
	var names []string
	err := t.held.each(func(name string, typ fs.FileMode) bool {
		if _, ok := parseReady(name); ok && typ.IsRegular() {
			names = append(names, name)
		}
		return len(names) < readBatch
	})
	if err != nil || len(names) == 0 {
		return err
	}
	targets, err := b.readyDirs(t)
	if err != nil {
		return err
	}
	defer closeAll(targets)
	for len(names) > 0 {
		for _, name := range names {
			for _, d := range targets {
				if err := t.held.link(name, d, name); err != nil && !errors.Is(err, fs.ErrExist) {
					return err
				}
			}
		}
		for _, d := range targets {
			if err := d.sync(); err != nil {
				return err
			}
		}
		for _, name := range names {
			t.held.remove(name)
		}
		names = names[:0]
		if err := t.held.each(func(name string, typ fs.FileMode) bool {
			if _, ok := parseReady(name); ok && typ.IsRegular() {
				names = append(names, name)
			}
			return len(names) < readBatch
		}); err != nil {
			return err
		}
	}
	return t.held.sync()
}

// Messages returns up to limit messages that topic holds for some group, or for itself while
// it has none, oldest first.
func (b *Broker) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	if err := b.check(ctx); err != nil {
		return nil, fmt.Errorf("embedded broker: messages: %w", err)
	}
	if err := broker.ValidTopic(topic); err != nil {
		return nil, fmt.Errorf("embedded broker: messages: %w", err)
	}
	if limit <= 0 {
		return nil, nil
	}
	root, err := b.openRoot()
	if err != nil {
		return nil, fmt.Errorf("embedded broker: messages of %q: %w", topic, err)
	}
	defer root.close()
	t, err := b.openTopic(root, topic, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("embedded broker: messages of %q: %w", topic, err)
	}
	defer t.close()
	unlock, err := t.lock(unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: messages of %q: %w", topic, err)
	}
	defer unlock()
	oldest := newOldest(limit)
	err = b.eachEntry(t, func(_ *dir, _ string, e entry) bool {
		oldest.add(e)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("embedded broker: messages of %q: %w", topic, err)
	}
	var ms []*broker.Message
	for _, e := range oldest.sorted() {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("embedded broker: messages of %q: %w", topic, err)
		}
		data, err := t.ids.readFile(e.hash, b.readLimit)
		if errors.Is(err, fs.ErrNotExist) {
			continue // acknowledged meanwhile
		}
		var m *broker.Message
		if err == nil {
			m, err = decodeRecord(data)
		}
		if err == nil && (m.Topic != topic || idHash(m.ID) != e.hash) {
			err = fmt.Errorf("record of %q, ID %q, does not belong here", m.Topic, m.ID)
		}
		if err != nil {
			b.warnOnce(unreadableMsg, t.ids.join(e.hash), err)
			continue
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// Delete removes the message with id from topic, for every group.
func (b *Broker) Delete(ctx context.Context, topic, id string) error {
	if err := b.check(ctx); err != nil {
		return fmt.Errorf("embedded broker: delete: %w", err)
	}
	if err := broker.ValidTopic(topic); err != nil {
		return fmt.Errorf("embedded broker: delete: %w", err)
	}
	root, err := b.openRoot()
	if err != nil {
		return fmt.Errorf("embedded broker: delete %q from %q: %w", id, topic, err)
	}
	defer root.close()
	t, err := b.openTopic(root, topic, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("embedded broker: delete %q from %q: %w", id, topic, err)
	}
	defer t.close()
	// Exclusively, so that no message moves from held to a group behind the scan.
	unlock, err := t.lock(unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("embedded broker: delete %q from %q: %w", id, topic, err)
	}
	defer unlock()
	hash := idHash(id)
	var errs []error
	err = b.eachEntry(t, func(d *dir, name string, e entry) bool {
		if e.hash == hash {
			if err := d.remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		return true
	})
	if err != nil {
		errs = append(errs, err)
	}
	b.release(t.ids, hash)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("embedded broker: delete %q from %q: %w", id, topic, err)
	}
	return nil
}

// release removes the message file hash from ids when no entry links to it any more, and
// takes its size off the store's count.
func (b *Broker) release(ids *dir, hash string) {
	st, err := ids.lstat(hash)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		return
	}
	if ids.remove(hash) == nil {
		b.used.Add(-st.Size)
	}
}

// Close closes the Broker's consumers, which put back what they hold, and releases the
// Broker: other processes see it gone.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	cs := make([]*consumer, 0, len(b.consumers))
	for c := range b.consumers {
		cs = append(cs, c)
	}
	b.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	close(b.stop)
	<-b.done
	root, err := b.openRoot()
	if err != nil {
		b.owner.f.Close()
		return nil
	}
	defer root.close()
	if owners, err := root.sub("owners"); err == nil {
		b.owner.release(owners)
		owners.close()
	} else {
		b.owner.f.Close()
	}
	return nil
}

// forget drops a closed consumer.
func (b *Broker) forget(c *consumer) {
	b.mu.Lock()
	delete(b.consumers, c)
	b.mu.Unlock()
}
