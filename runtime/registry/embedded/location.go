package embedded

import (
	"errors"
	"io/fs"

	"github.com/microhost/micro/runtime/internal/statedir"
)

// DefaultDir returns the directory that Open uses when given none: micro/registry under the
// user's cache directory, or registry under a per-user directory micro-<uid> in the
// temporary directory when there is no cache directory.
func DefaultDir() string {
	d, _ := statedir.Default("registry")
	return d
}

// openRoot opens the registry directory and checks it again as Open did, for it may have been
// removed and made again since. When create is set, a missing directory is created first.
func (r *Registry) openRoot(create bool) (*dir, error) {
	d, err := openDirPath(r.loc.Path)
	if create && errors.Is(err, fs.ErrNotExist) {
		if _, err := r.loc.Prepare(); err != nil {
			return nil, err
		}
		d, err = openDirPath(r.loc.Path)
	}
	if err != nil {
		return nil, err
	}
	if err := r.loc.CheckFD(d.fd); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}
