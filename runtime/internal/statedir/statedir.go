// Package statedir picks and checks the directories in which micro keeps state that the micro
// processes of one machine share, such as the embedded registry's and the embedded broker's.
//
// Every process that uses such a directory must be trusted, so a directory owned by another
// user is refused. The default location is under the user's cache directory; when there is
// none, it is under a per-user directory micro-<uid> in the shared temporary directory, which
// any user may create first: there, a directory that is writable by other users, or a symbolic
// link, is refused too, and so is the micro-<uid> directory that holds it.
package statedir

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

// Location is a state directory and how strictly it is checked.
type Location struct {
	// Path is the directory, an absolute path.
	Path string
	// Private is the per-user directory in the shared temporary directory that holds Path,
	// when Path is the fallback location of Default, and "" otherwise. It gets the strict
	// checks.
	Private string
	// What names the state kept there in messages, e.g. "registry".
	What string
}

// Default returns the default directory for the state called name: micro/<name> under the
// user's cache directory, or <name> under a per-user directory micro-<uid> in the temporary
// directory when there is no cache directory. private is that per-user directory in the
// second case, and "" in the first.
func Default(name string) (dir, private string) {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "micro", name), ""
	}
	private = filepath.Join(os.TempDir(), "micro-"+strconv.Itoa(os.Getuid()))
	return filepath.Join(private, name), private
}

// New returns the Location of dir, or of Default(name) when dir is "". what names the state
// in messages.
func New(dir, name, what string) (Location, error) {
	var private string
	if dir == "" {
		dir, private = Default(name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Location{}, fmt.Errorf("directory %q: %w", dir, err)
	}
	l := Location{Path: abs, What: what}
	if private != "" {
		l.Private = filepath.Dir(abs)
	}
	return l, nil
}

// Prepare creates the directory (mode 0700, with missing parents) if it is missing, checks
// that it is fit to hold the state, and returns its permission bits. In the shared temporary
// directory the per-user directory is checked before anything goes into it.
func (l Location) Prepare() (fs.FileMode, error) {
	if l.Private == "" {
		if err := os.MkdirAll(l.Path, 0o700); err != nil {
			return 0, err
		}
		var st unix.Stat_t
		if err := unix.Stat(l.Path, &st); err != nil {
			return 0, &fs.PathError{Op: "stat", Path: l.Path, Err: err}
		}
		return perm(&st), l.check(l.Path, &st, false)
	}
	var st unix.Stat_t
	for _, d := range []string{l.Private, l.Path} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return 0, err
		}
		if err := unix.Lstat(d, &st); err != nil {
			return 0, &fs.PathError{Op: "lstat", Path: d, Err: err}
		}
		if err := l.check(d, &st, true); err != nil {
			return 0, err
		}
	}
	return perm(&st), nil
}

// CheckFD checks the open directory fd, which is Path opened again, as Prepare did: it may
// have been removed and made again since, by anyone.
func (l Location) CheckFD(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: l.Path, Err: err}
	}
	return l.check(l.Path, &st, l.Private != "")
}

// check checks that st describes a directory owned by this process's user, and, when strict,
// one that is not writable by other users.
func (l Location) check(path string, st *unix.Stat_t, strict bool) error {
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s is a %s, not a directory", path, Kind(uint32(st.Mode)))
	}
	if uid := os.Geteuid(); int64(st.Uid) != int64(uid) {
		return fmt.Errorf("directory %s is owned by %s, not by %s, who runs this process: "+
			"its owner can read and change the %s; remove it, or choose a directory of your own",
			path, describeUser(st.Uid), describeUser(uint32(uid)), l.What)
	}
	if p := perm(st); strict && p&0o022 != 0 {
		return fmt.Errorf("directory %s has mode %v, so other users can change the %s; "+
			"in the shared temporary directory it must be writable by its owner only (chmod 700 it, or remove it)",
			path, p, l.What)
	}
	return nil
}

func perm(st *unix.Stat_t) fs.FileMode { return fs.FileMode(st.Mode).Perm() }

// Kind names the type of a file from its st_mode.
func Kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "named pipe"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "file of unknown type"
}

// describeUser names a user ID, with the user's name when it can be looked up.
func describeUser(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil && u.Username != "" {
		return fmt.Sprintf("uid %s (%s)", id, u.Username)
	}
	return "uid " + id
}
