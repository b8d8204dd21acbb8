package embedded

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/internal/statedir"
)

// This file is the only code that opens, reads, writes, links, renames or removes what is
// inside the broker directory. Anyone who can write there can put anything there, so every
// name is untrusted: files are reached through open directories (openat, linkat, renameat,
// unlinkat), never through a path that a symbolic link could redirect; every open has
// O_NOFOLLOW; a file is read only when fstat says it is a regular file of bounded size, and it
// is opened with O_NONBLOCK in case it is a named pipe.

// readBatch is how many directory entries are read at a time, so that a directory flooded
// with names costs memory for one batch of them.
const readBatch = 256

// dir is an open directory of the store.
type dir struct {
	fd   int
	path string // for messages and file-system watches
}

// openDirPath opens the directory at path, following symbolic links in path: it is the
// broker directory, which its owner chose.
func openDirPath(path string) (*dir, error) {
	fd, err := openat(unix.AT_FDCWD, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &dir{fd: fd, path: path}, nil
}

func (d *dir) close() { unix.Close(d.fd) }

func (d *dir) join(name string) string { return filepath.Join(d.path, name) }

// sub opens the directory name in d; a symbolic link there is refused.
func (d *dir) sub(name string) (*dir, error) {
	fd, err := openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("%s: not a directory (a symbolic link is not followed)", d.join(name))
		}
		return nil, &fs.PathError{Op: "open", Path: d.join(name), Err: err}
	}
	return &dir{fd: fd, path: d.join(name)}, nil
}

// mkdir creates the directory name in d, readable by its owner only, and reports whether
// it did; a name that exists already is not an error.
func (d *dir) mkdir(name string) (bool, error) {
	err := unix.Mkdirat(d.fd, name, 0o700)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, &fs.PathError{Op: "mkdir", Path: d.join(name), Err: err}
	}
	return true, nil
}

// ensure opens the directory name in d, creating it first if it is missing.
func (d *dir) ensure(name string) (*dir, error) {
	if _, err := d.mkdir(name); err != nil {
		return nil, err
	}
	return d.sub(name)
}

// sync flushes d's entries to disk.
func (d *dir) sync() error {
	if err := unix.Fsync(d.fd); err != nil {
		return &fs.PathError{Op: "fsync", Path: d.path, Err: err}
	}
	return nil
}

// each calls fn with the name and type of every entry of d, in no particular order, until fn
// returns false. The type is the one the directory records (a symbolic link is a symbolic
// link); it is zero for a regular file, and fs.ModeIrregular when unknown.
func (d *dir) each(fn func(name string, typ fs.FileMode) bool) error {
	fd, err := openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: d.path, Err: err}
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	for {
		ents, err := f.ReadDir(readBatch)
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

// lstat describes the file name in d, without following a symbolic link.
func (d *dir) lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, &fs.PathError{Op: "lstat", Path: d.join(name), Err: err}
	}
	return st, nil
}

// readFile reads the file name in d, which must be a regular file of at most max bytes.
func (d *dir) readFile(name string, max int64) ([]byte, error) {
	path := d.join(name)
	fd, err := openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: symbolic link, not followed", path)
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: %s, not a regular file", path, statedir.Kind(uint32(st.Mode)))
	}
	if st.Size > max {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", path, st.Size, max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s: more than %d bytes", path, max)
	}
	return data, nil
}

// create writes data to the new file name in d and flushes it to disk.
func (d *dir) create(name string, data []byte) error {
	fd, err := openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "create", Path: d.join(name), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.join(name))
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(d.fd, name, 0)
	}
	return err
}

// link makes new in to a second name of the file old in d. It fails with an error wrapping
// fs.ErrExist when new exists.
func (d *dir) link(old string, to *dir, new string) error {
	if err := unix.Linkat(d.fd, old, to.fd, new, 0); err != nil {
		return &os.LinkError{Op: "link", Old: d.join(old), New: to.join(new), Err: err}
	}
	return nil
}

// rename moves old in d to new in to. It fails with an error wrapping fs.ErrNotExist when
// old is gone, as when another process moved it first.
func (d *dir) rename(old string, to *dir, new string) error {
	if err := unix.Renameat(d.fd, old, to.fd, new); err != nil {
		return &os.LinkError{Op: "rename", Old: d.join(old), New: to.join(new), Err: err}
	}
	return nil
}

// remove removes the name name from d (never what a symbolic link points to).
func (d *dir) remove(name string) error {
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: d.join(name), Err: err}
	}
	return nil
}

// removeDir removes the empty directory name from d.
func (d *dir) removeDir(name string) error {
	if err := unix.Unlinkat(d.fd, name, unix.AT_REMOVEDIR); err != nil {
		return &fs.PathError{Op: "remove", Path: d.join(name), Err: err}
	}
	return nil
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

// flock is unix.Flock, retried when a signal interrupts it.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
