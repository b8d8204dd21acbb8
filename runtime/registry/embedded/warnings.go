package embedded

import (
	"sync"
	"time"
)

// maxWarned bounds how many files a Registry remembers having warned about. The directory may
// be flooded with junk names, and the memory that costs must not grow without bound: past
// this many, further files are logged at debug level only, after one warning that says so.
// Files not seen for staleGrace are forgotten when room is needed, at most once per
// staleGrace, so a flood that is cleaned up leaves room again.
const maxWarned = 1024

// warnings remembers which files have been warned about, with their modification time, so
// that a file that is read again unchanged, as watchers do at every scan, is warned about
// once. It holds at most max files.
type warnings struct {
	max int

	mu       sync.Mutex
	files    map[string]warned
	swept    time.Time // when files not seen lately were last forgotten
	overflow bool      // whether files was full since the last sweep that made room
}

type warned struct {
	mod  time.Time // the file's modification time when warned about
	seen time.Time // when the file was last seen
}

func newWarnings(max int) *warnings {
	return &warnings{max: max, files: make(map[string]warned)}
}

// note records that path, modified at mod, was found bad at now. It reports whether to warn
// about it, which is when it is new or changed, and whether this is the first file that did
// not fit since room was last made.
func (w *warnings) note(path string, mod, now time.Time) (warn, overflow bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if last, ok := w.files[path]; ok {
		w.files[path] = warned{mod: mod, seen: now}
		return !last.mod.Equal(mod), false
	}
	if len(w.files) >= w.max && now.Sub(w.swept) >= staleGrace {
		w.swept = now
		for p, f := range w.files {
			if now.Sub(f.seen) >= staleGrace {
				delete(w.files, p)
			}
		}
		if len(w.files) < w.max {
			w.overflow = false
		}
	}
	if len(w.files) >= w.max {
		first := !w.overflow
		w.overflow = true
		return false, first
	}
	w.files[path] = warned{mod: mod, seen: now}
	return true, false
}

// forget drops path, which is gone: a new file of that name is warned about again.
func (w *warnings) forget(path string) {
	w.mu.Lock()
	delete(w.files, path)
	w.mu.Unlock()
}
