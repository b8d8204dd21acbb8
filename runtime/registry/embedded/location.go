package embedded

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultDir returns the directory that Open uses when given none: micro/registry under the
// user's cache directory, or registry under a per-user directory micro-<uid> in the
// temporary directory when there is no cache directory.
func DefaultDir() string {
	d, _ := defaultDir()
	return d
}

// defaultDir returns DefaultDir, and the per-user directory that holds it when that is in the
// shared temporary directory ("" otherwise).
func defaultDir() (dir, private string) {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "micro", "registry"), ""
	}
	private = filepath.Join(os.TempDir(), "micro-"+strconv.Itoa(os.Getuid()))
	return filepath.Join(private, "registry"), private
}

// prepare creates the registry directory if it is missing, checks that it is fit to hold a
// registry (see Open), and returns what stat says of it.
func (r *Registry) prepare() (fileInfo, error) {
	if r.private == "" {
		if err := os.MkdirAll(r.dir, 0o700); err != nil {
			return fileInfo{}, err
		}
		return checkDir(r.dir, false)
	}
	// Any user may create the per-user directory in the shared temporary directory first, to
	// read or change the registry, so it is checked before anything goes into it; and it is
	// refused if it is a symbolic link, which its creator could repoint at any time.
	var fi fileInfo
	for _, d := range []string{r.private, r.dir} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fileInfo{}, err
		}
		var err error
		if fi, err = checkDir(d, true); err != nil {
			return fileInfo{}, err
		}
	}
	return fi, nil
}

// checkDir checks that path is a directory owned by this process's user, and, when strict,
// that it is not a symbolic link and not writable by other users. It returns what stat says
// of path.
func checkDir(path string, strict bool) (fileInfo, error) {
	var st unix.Stat_t
	stat, op := unix.Stat, "stat"
	if strict {
		stat, op = unix.Lstat, "lstat"
	}
	if err := stat(path, &st); err != nil {
		return fileInfo{}, &fs.PathError{Op: op, Path: path, Err: err}
	}
	fi := newFileInfo(&st)
	return fi, checkDirInfo(path, fi, strict)
}

// checkDirInfo is checkDir on what stat said of path.
func checkDirInfo(path string, fi fileInfo, strict bool) error {
	if !fi.isDir() {
		return fmt.Errorf("%s is a %s, not a directory", path, fi.kind())
	}
	if uid := os.Geteuid(); int64(fi.uid) != int64(uid) {
		return fmt.Errorf("directory %s is owned by %s, not by %s, who runs this process: "+
			"its owner can read and change the registry; remove it, or choose a directory of your own",
			path, describeUser(fi.uid), describeUser(uint32(uid)))
	}
	if strict && fi.perm()&0o022 != 0 {
		return fmt.Errorf("directory %s has mode %v, so other users can change the registry; "+
			"in the shared temporary directory it must be writable by its owner only (chmod 700 it, or remove it)",
			path, fi.perm())
	}
	return nil
}

// describeUser names a user ID, with the user's name when it can be looked up.
func describeUser(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil && u.Username != "" {
		return fmt.Sprintf("uid %s (%s)", id, u.Username)
	}
	return "uid " + id
}

// openRoot opens the registry directory and checks it again as Open did, for it may have been
// removed and made again since. When create is set, a missing directory is created first.
func (r *Registry) openRoot(create bool) (*dir, error) {
	d, err := openDirPath(r.dir)
	if create && errors.Is(err, fs.ErrNotExist) {
		if _, err := r.prepare(); err != nil {
			return nil, err
		}
		d, err = openDirPath(r.dir)
	}
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		d.close()
		return nil, &fs.PathError{Op: "fstat", Path: r.dir, Err: err}
	}
	if err := checkDirInfo(r.dir, newFileInfo(&st), r.private != ""); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}
