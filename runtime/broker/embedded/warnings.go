package embedded

import "sync"

// Log messages about files that are not delivered.
const (
	unreadableMsg = "embedded broker: skipping unreadable message file"
	strayMsg      = "embedded broker: skipping a file that is not micro's"
	asideMsg      = "embedded broker: moved an unreadable message aside"
)

// maxWarned bounds how many files a Broker remembers having warned about, so that a
// directory flooded with junk costs bounded memory. Past it, files are logged at debug level.
const maxWarned = 1024

// warnings remembers the files warned about, so that a file met at every scan is warned
// about once.
type warnings struct {
	max int

	mu    sync.Mutex
	files map[string]bool
	full  bool
}

func newWarnings(max int) *warnings {
	return &warnings{max: max, files: make(map[string]bool)}
}

// note records path and reports whether to warn about it, and whether it is the first file
// that did not fit.
func (w *warnings) note(path string) (warn, overflow bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.files[path] {
		return false, false
	}
	if len(w.files) >= w.max {
		first := !w.full
		w.full = true
		return false, first
	}
	w.files[path] = true
	return true, false
}

// warnOnce logs msg about path at warn level the first time, and at debug level after.
func (b *Broker) warnOnce(msg, path string, err error) {
	warn, overflow := b.warned.note(path)
	switch {
	case warn:
		b.log.Warn(msg, "file", path, "err", err)
	case overflow:
		b.log.Warn("embedded broker: too many bad files to warn about each; further ones are logged at debug level",
			"max", b.warned.max)
		fallthrough
	default:
		b.log.Debug(msg, "file", path, "err", err)
	}
}
