package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce is how long Watch waits after the last event of a burst before it reloads:
// editors write a file in several steps.
const debounce = 100 * time.Millisecond

// Watch reloads the file at l.Path whenever it changes, until ctx ends, and calls apply with
// each new config that loads and validates and differs from the running one: the one the
// last successful Load returned (if Load has not succeeded yet, Watch loads a baseline first,
// without applying it). apply runs on Watch's goroutine.
//
// Watch watches the file's directory, not the file, so it sees a file replaced by rename,
// deleted and created again, or truncated and rewritten. Events come in bursts; Watch
// reloads once a burst has been quiet for 100ms. A reload that fails, a missing file and an
// empty file (an editor between truncating and writing) are logged, and the running config
// stays. When l.Path is a symlink, as in a Kubernetes ConfigMap volume, any change in its
// directory triggers a reload.
//
// Watch returns nil when ctx ends, or an error if it cannot watch the directory.
func (l *Loader) Watch(ctx context.Context, logger *slog.Logger, apply func(*Config)) error {
	if l.Path == "" {
		return errors.New("config: watch: no file to watch")
	}
	abs, err := filepath.Abs(l.Path)
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", l.Path, err)
	}
	dir := filepath.Dir(abs)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("config: watch %s: %w", dir, err)
	}
	fi, err := os.Lstat(abs)
	anyEvent := err == nil && fi.Mode()&os.ModeSymlink != 0

	if l.lastLoaded() == nil {
		if _, err := l.Load(); err != nil {
			logger.Error("config: load failed", "file", l.Path, "err", err)
		}
	}
	logger.Debug("config: watching", "file", l.Path, "dir", dir)

	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("config: watch %s: watcher closed", dir)
			}
			if ev.Op == fsnotify.Chmod || !anyEvent && filepath.Clean(ev.Name) != abs {
				continue
			}
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("config: watch %s: watcher closed", dir)
			}
			// An overflow may have dropped an event of ours: reload to be sure.
			logger.Warn("config: watch error", "dir", dir, "err", err)
			timer.Reset(debounce)
		case <-timer.C:
			l.reload(logger, apply)
		}
	}
}

// The results of a reload, as Loader.OnReload reports them.
const (
	ReloadApplied   = "applied"   // the file changed the config, and apply ran
	ReloadUnchanged = "unchanged" // the file changed, the config it gives did not
	ReloadFailed    = "failed"    // the file did not load or validate; the running config stays
)

// reload loads the file and applies it if it is good and differs from the running config.
func (l *Loader) reload(logger *slog.Logger, apply func(*Config)) {
	prev := l.lastLoaded()
	c, err := l.load(false)
	result := ReloadApplied
	switch {
	case errors.Is(err, errEmptyFile):
		logger.Warn("config: file is empty, keeping the running config", "file", l.Path)
		result = ReloadFailed
	case err != nil:
		logger.Error("config: reload failed, keeping the running config", "file", l.Path, "err", err)
		result = ReloadFailed
	case reflect.DeepEqual(prev, c):
		logger.Debug("config: file changed, config unchanged", "file", l.Path)
		result = ReloadUnchanged
	default:
		logger.Info("config: reloaded", "file", l.Path)
		apply(c)
	}
	if l.OnReload != nil {
		l.OnReload(result, err)
	}
}
