package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/broker"
)

// sweeper sweeps the store every sweepInterval until the Broker closes.
func (b *Broker) sweeper() {
	defer close(b.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.stop
		cancel()
	}()
	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
			if err := b.sweep(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("embedded broker: sweeping the store", "dir", b.loc.Path, "err", err)
			}
		}
	}
}

// sweep removes what dead processes left in tmp and owners, and expired messages, and
// measures the store.
func (b *Broker) sweep(ctx context.Context) error {
	b.sweepMu.Lock()
	defer b.sweepMu.Unlock()
	root, err := b.openRoot()
	if err != nil {
		return err
	}
	defer root.close()
	owners, err := root.sub("owners")
	if err != nil {
		return err
	}
	defer owners.close()
	if err := b.cleanTmp(root, owners); err != nil {
		return err
	}
	err = owners.each(func(name string, typ fs.FileMode) bool {
		if name != b.owner.id && typ.IsRegular() && parseHex(name, ownerIDLen) {
			alive(owners, name) // removes the file of a dead owner
		}
		return true
	})
	if err != nil {
		return err
	}
	return b.eachTopic(ctx, root, true)
}

// measure measures the store.
func (b *Broker) measure(ctx context.Context) error {
	b.sweepMu.Lock()
	defer b.sweepMu.Unlock()
	root, err := b.openRoot()
	if err != nil {
		return err
	}
	defer root.close()
	return b.eachTopic(ctx, root, false)
}

// cleanTmp removes the temporary files and directories of dead owners.
func (b *Broker) cleanTmp(root, owners *dir) error {
	tmp, err := root.ensure("tmp")
	if err != nil {
		return err
	}
	defer tmp.close()
	return tmp.each(func(name string, typ fs.FileMode) bool {
		id, _, ok := strings.Cut(name, ".")
		if !ok || !parseHex(id, ownerIDLen) {
			b.warnOnce(strayMsg, tmp.join(name), errors.New("not a temporary file name"))
			return true
		}
		if id == b.owner.id || alive(owners, id) {
			return true
		}
		switch {
		case typ.IsRegular():
			tmp.remove(name)
		case typ.IsDir(): // a group being made
			if g, err := tmp.sub(name); err == nil {
				g.removeDir("ready")
				g.removeDir("inflight")
				g.close()
			}
			tmp.removeDir(name)
		}
		return true
	})
}

// eachTopic measures every topic, and, when expire is set, removes its expired messages.
// It stores the measure in b.used.
func (b *Broker) eachTopic(ctx context.Context, root *dir, expire bool) error {
	topics, err := root.ensure("topics")
	if err != nil {
		return err
	}
	defer topics.close()
	var total int64
	var errs []error
	err = topics.each(func(name string, typ fs.FileMode) bool {
		if broker.ValidTopic(name) != nil || !typ.IsDir() {
			b.warnOnce(strayMsg, topics.join(name), errors.New("not a topic directory"))
			return true
		}
		t, err := b.openTopic(root, name, false)
		if err != nil {
			errs = append(errs, err)
			return true
		}
		defer t.close()
		if expire {
			errs = append(errs, b.expire(t))
		}
		n, err := b.measureTopic(t, expire)
		total += n
		errs = append(errs, err)
		return ctx.Err() == nil
	})
	if err := errors.Join(append(errs, err, ctx.Err())...); err != nil {
		return err
	}
	b.used.Store(total)
	b.measured.Store(time.Now().UnixNano())
	return nil
}

// expire removes the entries of t published longer than MaxAge ago, and the files moved
// aside as long ago.
func (b *Broker) expire(t *topicDirs) error {
	cutoff := time.Now().Add(-b.maxAge).UnixNano()
	err := b.eachEntry(t, func(d *dir, name string, e entry) bool {
		if e.time < cutoff {
			d.remove(name)
		}
		return true
	})
	cerr := t.corrupt.each(func(name string, typ fs.FileMode) bool {
		if st, err := t.corrupt.lstat(name); err == nil && typ.IsRegular() && st.Mtim.Nano() < cutoff {
			t.corrupt.remove(name)
		}
		return true
	})
	return errors.Join(err, cerr)
}

// measureTopic returns the size of t's message files, removing those that no entry links to
// any more. With expired set, it warns of those it removed that were expired.
func (b *Broker) measureTopic(t *topicDirs, expired bool) (int64, error) {
	cutoff := time.Now().Add(-b.maxAge).UnixNano()
	var size, gone int64
	err := t.ids.each(func(name string, typ fs.FileMode) bool {
		if !parseHex(name, 32) || !typ.IsRegular() {
			b.warnOnce(strayMsg, t.ids.join(name), errors.New("not a message file"))
			return true
		}
		st, err := t.ids.lstat(name)
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return true
		}
		if st.Nlink > 1 {
			size += st.Size
			return true
		}
		// No entry is left: every group acknowledged it, or its entries expired, or the
		// process that wrote it died before it linked any.
		if t.ids.remove(name) == nil && st.Mtim.Nano() < cutoff {
			gone++
		}
		return true
	})
	if expired && gone > 0 {
		b.log.Warn("embedded broker: removed expired messages", "topic", t.name, "count", gone, "max_age", b.maxAge)
	}
	if err != nil {
		return size, fmt.Errorf("measuring %s: %w", t.ids.path, err)
	}
	return size, nil
}
