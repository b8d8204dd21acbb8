package embedded

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Each open Broker has an owner ID, and holds an exclusive flock on the file owners/<ID> for
// as long as it is open. The kernel drops that lock when the process dies, however it dies,
// so a lock that can be taken means a dead owner: its deliveries in flight go back to their
// groups, and its temporary files are removed. The file is created and locked before the ID
// names anything else, and an owner that finds its file gone before it held the lock (a prober
// took the unlocked file for a dead one) starts again with a new ID.

// ownerIDLen is the length of an owner ID: 64 random bits in hexadecimal.
const ownerIDLen = 16

// owner is this Broker's owner file, locked.
type owner struct {
	id string
	f  *os.File
}

// newOwner creates and locks a new owner file in owners.
func newOwner(owners *dir) (*owner, error) {
	for range 3 {
		var b [ownerIDLen / 2]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		fd, err := openat(owners.fd, id, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, &fs.PathError{Op: "create", Path: owners.join(id), Err: err}
		}
		f := os.NewFile(uintptr(fd), owners.join(id))
		if err := flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue // a prober holds it for now
		}
		var mine unix.Stat_t
		if unix.Fstat(fd, &mine) == nil {
			if st, err := owners.lstat(id); err == nil && st.Ino == mine.Ino && st.Dev == mine.Dev {
				return &owner{id: id, f: f}, nil
			}
		}
		f.Close()
	}
	return nil, fmt.Errorf("%s: could not create and lock an owner file", owners.path)
}

// release removes the owner file and drops its lock.
func (o *owner) release(owners *dir) {
	owners.remove(o.id)
	o.f.Close()
}

// alive reports whether the owner id holds its owner file's lock. A dead owner's file is
// removed, so that the next probe is cheap. When the lock cannot be probed (an I/O error,
// a file that is not micro's), the owner counts as alive, and its deliveries fall back on
// their deadline.
func alive(owners *dir, id string) bool {
	if !parseHex(id, ownerIDLen) {
		return false
	}
	fd, err := openat(owners.fd, id, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return false
	}
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return true
	}
	if err := flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	// Dead. Remove the file if it is still the one locked.
	if cur, err := owners.lstat(id); err == nil && cur.Ino == st.Ino && cur.Dev == st.Dev {
		owners.remove(id)
	}
	return false
}
