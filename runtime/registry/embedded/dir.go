package embedded

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/internal/statedir"
)

// This file is the only code that reads, writes or removes what is inside the registry
// directory. Anyone who can write there can put anything there, so every file is untrusted: a
// symbolic link (to a file elsewhere, a device, a named pipe, a directory, nowhere), a named
// pipe that blocks whoever opens it, a device, a socket, a huge or corrupt file. The rules:
//
//   - Files are reached through an open directory (openat, fstatat, unlinkat, renameat),
//     never by a path through a service directory, so a service directory swapped for a
//     symbolic link after it was checked cannot lead a read, write or removal elsewhere.
//   - Symbolic links in the directory are never followed: every open there has O_NOFOLLOW.
//   - Nothing blocks: an entry is lstat'ed first and opened only when it is a regular file,
//     with O_NONBLOCK in case it was swapped for a named pipe in between, and fstat'ed
//     again once open; a directory is opened with O_DIRECTORY.
//   - Reads are bounded by maxRecordSize.
//   - Only what the registry may have written is removed: a regular file owned by this
//     process's user, and only while it is still the file that was read.
//   - A lock file is a regular file of this process's user; locks are flocks, which belong
//     to an open file description and never block (LOCK_NB).

// readBatch is how many directory entries are read at a time, so that a directory flooded
// with files costs memory for one batch of names, not for all of them.
const readBatch = 256

// dir is an open directory of the registry.
type dir struct {
	f    *os.File
	fd   int    // f's descriptor, valid until close
	path string // for messages
}

// openDirPath opens the directory at path. Symbolic links in path are followed: path is the
// registry directory, which its owner chose.
func openDirPath(path string) (*dir, error) {
	fd, err := openat(unix.AT_FDCWD, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &dir{f: os.NewFile(uintptr(fd), path), fd: fd, path: path}, nil
}

func (d *dir) close() { d.f.Close() }

func (d *dir) join(name string) string { return filepath.Join(d.path, name) }

// openDir opens the directory name in d. It fails with a *wrongTypeError when name is
// anything but a directory, a symbolic link to one included.
func (d *dir) openDir(name string) (*dir, error) {
	path := d.join(name)
	fd, err := openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if fi, lerr := d.lstat(name); lerr == nil && !fi.isDir() {
			return nil, &wrongTypeError{path: path, info: fi, want: "directory"}
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &dir{f: os.NewFile(uintptr(fd), path), fd: fd, path: path}, nil
}

// mkdir creates the directory name in d, readable by its owner only, unless something
// already has that name.
func (d *dir) mkdir(name string) error {
	err := unix.Mkdirat(d.fd, name, 0o700)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return &fs.PathError{Op: "mkdir", Path: d.join(name), Err: err}
	}
	return nil
}

// each calls fn with the name and type of each file in d, in no particular order, until fn
// returns false. The type is the one the directory records (so a symbolic link is a
// symbolic link, whatever it points to); it is zero for a regular file.
func (d *dir) each(fn func(name string, typ fs.FileMode) bool) error {
	for {
		ents, err := d.f.ReadDir(readBatch)
		for _, e := range ents {
			if !fn(e.Name(), e.Type()) {
				return nil
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// lstat describes the file name in d without following a symbolic link.
func (d *dir) lstat(name string) (fileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fileInfo{}, &fs.PathError{Op: "lstat", Path: d.join(name), Err: err}
	}
	return newFileInfo(&st), nil
}

// readFile reads the file name in d, which must be a regular file of at most maxRecordSize
// bytes. It returns what fstat (or, when it got no further, lstat) said of the file as well,
// so that a caller can log the file's modification time and remove the very file it read.
func (d *dir) readFile(name string) ([]byte, *fileInfo, error) {
	of, fi, err := d.openFile(name, checkRegular)
	if of == nil {
		return nil, fi, err
	}
	defer of.close()
	data, err := io.ReadAll(io.LimitReader(of.f, maxRecordSize+1))
	if err != nil {
		return nil, fi, err // a *PathError
	}
	if len(data) > maxRecordSize {
		return nil, fi, fmt.Errorf("%s: more than %d bytes", d.join(name), maxRecordSize)
	}
	return data, fi, nil
}

// openFile opens the file name in d for reading, after check accepts what lstat says of it,
// and checks again what fstat says of the open file. check must refuse anything but a
// regular file: opening a device may do something. It returns what fstat (or, when it got
// no further, lstat) said of the file, and with an error, no open file.
func (d *dir) openFile(name string, check func(path string, fi fileInfo) error) (*openFile, *fileInfo, error) {
	path := d.join(name)
	fi, err := d.lstat(name)
	if err != nil {
		return nil, nil, err
	}
	if err := check(path, fi); err != nil {
		return nil, &fi, err
	}
	fd, err := openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fi, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	of := &openFile{f: os.NewFile(uintptr(fd), path), fd: fd}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		of.close()
		return nil, &fi, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	// A writer may have renamed a new file over the one lstat saw, which is fine; anyone
	// may have put something else there, which is checked again.
	of.info = newFileInfo(&st)
	if err := check(path, of.info); err != nil {
		of.close()
		return nil, &of.info, err
	}
	return of, &of.info, nil
}

// openFile is an open regular file of the registry directory, whose flock may be taken.
type openFile struct {
	f    *os.File
	fd   int      // f's descriptor, valid until close
	info fileInfo // what fstat said of it when it was opened
}

// close closes the file, which releases every flock taken through it.
func (of *openFile) close() { of.f.Close() }

// tryLock takes a flock on the file, exclusive or shared as how says (unix.LOCK_EX or
// unix.LOCK_SH), without waiting. It reports false when another open file description,
// of this process or another, holds a lock that conflicts. A lock belongs to the open file
// description: the kernel releases it when the file is closed, or its process dies.
func (of *openFile) tryLock(how int) (bool, error) {
	for {
		err := unix.Flock(of.fd, how|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		case errors.Is(err, unix.EINTR):
			continue
		}
		return false, &fs.PathError{Op: "flock", Path: of.f.Name(), Err: err}
	}
}

// lockedByOther reports whether another open file description holds an exclusive flock on
// the file. It tries a shared lock, and releases it at once when it gets it.
func (of *openFile) lockedByOther() (bool, error) {
	ok, err := of.tryLock(unix.LOCK_SH)
	if ok {
		unix.Flock(of.fd, unix.LOCK_UN)
	}
	return !ok && err == nil, err
}

// openLock opens the lock file name in d, creating it empty (mode 0600) when it is missing.
// It refuses, with an error that names it, anything but a regular file owned by this
// process's user: a symbolic link (never followed), a named pipe, a device, or a file of
// another user, who could hold its lock forever.
func (d *dir) openLock(name string) (*openFile, error) {
	check := func(path string, fi fileInfo) error {
		if !fi.isRegular() {
			return &wrongTypeError{path: path, info: fi, want: "regular file"}
		}
		if int64(fi.uid) != int64(os.Geteuid()) {
			return fmt.Errorf("%s: owned by uid %d, not by this process's user", path, fi.uid)
		}
		return nil
	}
	for tries := 0; ; tries++ {
		of, _, err := d.openFile(name, check)
		if !errors.Is(err, fs.ErrNotExist) || tries == 3 {
			return of, err
		}
		fd, err := openat(d.fd, name, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue // another candidate created it first; open theirs
		}
		if err != nil {
			return nil, &fs.PathError{Op: "create", Path: d.join(name), Err: err}
		}
		of = &openFile{f: os.NewFile(uintptr(fd), d.join(name)), fd: fd}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			of.close()
			return nil, &fs.PathError{Op: "fstat", Path: d.join(name), Err: err}
		}
		of.info = newFileInfo(&st)
		return of, nil
	}
}

// writeLocked replaces the file name in d with data atomically, as writeFile does, and
// returns the new file open with an exclusive flock on it, taken before the file got its
// name: whoever finds the file under name finds it locked until the returned file is closed
// (or its process dies).
func (d *dir) writeLocked(name string, data []byte) (*openFile, error) {
	tmp := fmt.Sprintf(".%s.%016x", name, rand.Uint64())
	fd, err := openat(d.fd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &fs.PathError{Op: "create", Path: d.join(tmp), Err: err}
	}
	of := &openFile{f: os.NewFile(uintptr(fd), d.join(name)), fd: fd}
	fail := func(err error) (*openFile, error) {
		unix.Unlinkat(d.fd, tmp, 0)
		of.close()
		return nil, err
	}
	if _, err := of.f.Write(data); err != nil {
		return fail(err)
	}
	// Nobody else can have opened a file this new, so the lock is free.
	if ok, err := of.tryLock(unix.LOCK_EX); !ok {
		if err == nil {
			err = fmt.Errorf("%s: locked by someone else as soon as created", d.join(tmp))
		}
		return fail(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(&fs.PathError{Op: "fstat", Path: d.join(tmp), Err: err})
	}
	of.info = newFileInfo(&st)
	if err := unix.Renameat(d.fd, tmp, d.fd, name); err != nil {
		return fail(&os.LinkError{Op: "rename", Old: d.join(tmp), New: d.join(name), Err: err})
	}
	return of, nil
}

// checkRegular checks that fi describes a regular file of at most maxRecordSize bytes.
func checkRegular(path string, fi fileInfo) error {
	if !fi.isRegular() {
		return &wrongTypeError{path: path, info: fi, want: "regular file"}
	}
	if fi.size > maxRecordSize {
		return fmt.Errorf("%s: %d bytes, more than %d", path, fi.size, maxRecordSize)
	}
	return nil
}

// writeFile replaces the file name in d with data atomically: readers see the old contents or
// the new, never a part. The data is not fsynced: entries live for a TTL, so after a power
// loss every entry has expired anyway, and a torn file is then skipped as unreadable and
// later removed.
func (d *dir) writeFile(name string, data []byte) error {
	tmp := fmt.Sprintf(".%s.%016x", name, rand.Uint64())
	fd, err := openat(d.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "create", Path: d.join(tmp), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.join(tmp))
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if rerr := unix.Renameat(d.fd, tmp, d.fd, name); rerr != nil {
			err = &os.LinkError{Op: "rename", Old: d.join(tmp), New: d.join(name), Err: rerr}
		}
	}
	if err != nil {
		unix.Unlinkat(d.fd, tmp, 0)
		return err
	}
	return nil
}

// isTempName reports whether name is that of a temporary file of writeFile for an entry:
// ".<node ID>.json.<random>", with the random part in hexadecimal, or in decimal as earlier
// versions wrote it.
func isTempName(name string) bool {
	rest, ok := strings.CutPrefix(name, ".")
	if !ok {
		return false
	}
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return false
	}
	entry, random := rest[:i], rest[i+1:]
	id, ok := strings.CutSuffix(entry, ".json")
	if !ok || checkName("node ID", id) != nil || random == "" || len(random) > 20 {
		return false
	}
	return strings.Trim(random, "0123456789abcdef") == ""
}

// removable reports whether the registry may remove the file fi describes: a regular file
// owned by this process's user. Anything else, the registry did not write.
func removable(fi fileInfo) bool {
	return fi.isRegular() && int64(fi.uid) == int64(os.Geteuid())
}

// remove removes the file name from d if it is removable. unlinkat removes the name itself:
// it never follows a symbolic link.
func (d *dir) remove(name string, fi fileInfo) error {
	if !removable(fi) {
		return fmt.Errorf("%s: not removing a %s owned by uid %d, which the registry did not write",
			d.join(name), fi.kind(), fi.uid)
	}
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: d.join(name), Err: err}
	}
	return nil
}

// removeIfSame removes the file name from d if it is still the file described by seen, and
// removable. A writer who replaced it in the meantime (a heartbeat) keeps its new file. The
// check and the removal are two steps, so a replacement that lands between them is lost;
// callers only remove files that have been dead for a while, where that is unlikely and
// costs at most one heartbeat.
func (d *dir) removeIfSame(name string, seen fileInfo) bool {
	cur, err := d.lstat(name)
	return err == nil && cur.same(seen) && cur.mod.Equal(seen.mod) && d.remove(name, cur) == nil
}

// openat is unix.Openat, retried when a signal interrupts it.
func openat(dirfd int, name string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, perm)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// fileInfo is what lstat or fstat says about a file.
type fileInfo struct {
	dev, ino uint64
	mode     uint32 // type and permission bits, as in st_mode
	uid      uint32
	size     int64
	mod      time.Time
}

func newFileInfo(st *unix.Stat_t) fileInfo {
	return fileInfo{
		dev:  uint64(st.Dev),
		ino:  uint64(st.Ino),
		mode: uint32(st.Mode),
		uid:  st.Uid,
		size: st.Size,
		mod:  time.Unix(st.Mtim.Unix()),
	}
}

// same reports whether fi and o describe the same file.
func (fi fileInfo) same(o fileInfo) bool { return fi.dev == o.dev && fi.ino == o.ino }

func (fi fileInfo) isRegular() bool { return fi.mode&unix.S_IFMT == unix.S_IFREG }
func (fi fileInfo) isDir() bool     { return fi.mode&unix.S_IFMT == unix.S_IFDIR }

// kind names the type of the file.
func (fi fileInfo) kind() string { return statedir.Kind(fi.mode) }

// wrongTypeError is the error for a file that is not of the type the registry keeps in its
// place.
type wrongTypeError struct {
	path string
	info fileInfo
	want string // "regular file" or "directory"
}

func (e *wrongTypeError) Error() string {
	if e.info.mode&unix.S_IFMT == unix.S_IFLNK {
		return e.path + ": symbolic link, not followed"
	}
	return fmt.Sprintf("%s: %s, not a %s", e.path, e.info.kind(), e.want)
}
