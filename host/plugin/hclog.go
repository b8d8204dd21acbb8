package plugin

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// levelTrace is the slog level of hclog's Trace, below slog's Debug.
const levelTrace = slog.LevelDebug - 4

// hclogger is an hclog.Logger that writes into a *slog.Logger. go-plugin logs through it,
// both its own messages and the lines that the plugin writes to its standard error, with
// their levels kept.
type hclogger struct {
	log     *slog.Logger
	name    string
	implied []any
}

var _ hclog.Logger = (*hclogger)(nil)

func newHCLogger(log *slog.Logger) *hclogger { return &hclogger{log: log} }

func slogLevel(l hclog.Level) (slog.Level, bool) {
	switch l {
	case hclog.Trace:
		return levelTrace, true
	case hclog.Debug:
		return slog.LevelDebug, true
	case hclog.NoLevel, hclog.Info:
		return slog.LevelInfo, true
	case hclog.Warn:
		return slog.LevelWarn, true
	case hclog.Error:
		return slog.LevelError, true
	}
	return 0, false // Off
}

// Log writes msg and args (key-value pairs) at level. It drops the "timestamp" that
// go-plugin adds to a plugin's line (micro's handler stamps its own time) and renames
// go-plugin's "plugin" (the executable's path) to "path", since "plugin" is the
// plugin's name in micro's log.
func (h *hclogger) Log(level hclog.Level, msg string, args ...any) {
	lvl, ok := slogLevel(level)
	if !ok || !h.log.Enabled(context.Background(), lvl) {
		return
	}
	attrs := make([]any, 0, len(args))
	for i := 0; i < len(args); i += 2 {
		k, ok := args[i].(string)
		if !ok || i+1 == len(args) {
			attrs = append(attrs, args[i:min(i+2, len(args))]...)
			continue
		}
		switch k {
		case "timestamp":
			continue
		case "plugin":
			k = "path"
		}
		attrs = append(attrs, k, args[i+1])
	}
	h.log.Log(context.Background(), lvl, msg, attrs...)
}

func (h *hclogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogger) enabled(l hclog.Level) bool {
	lvl, ok := slogLevel(l)
	return ok && h.log.Enabled(context.Background(), lvl)
}

func (h *hclogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hclogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hclogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hclogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hclogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hclogger) ImpliedArgs() []any { return h.implied }

func (h *hclogger) With(args ...any) hclog.Logger {
	return &hclogger{
		log:     h.log.With(args...),
		name:    h.name,
		implied: append(h.implied[:len(h.implied):len(h.implied)], args...),
	}
}

func (h *hclogger) Name() string { return h.name }

// Named returns a logger with the name extended; names do not reach the log, where the
// plugin attribute says whose lines these are.
func (h *hclogger) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.ResetNamed(name)
}

func (h *hclogger) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel does nothing: the slog handler decides.
func (h *hclogger) SetLevel(hclog.Level) {}

// GetLevel returns the lowest level that the slog handler writes.
func (h *hclogger) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if h.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (h *hclogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(h.log.Handler(), slog.LevelInfo)
}

func (h *hclogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return h.StandardLogger(opts).Writer()
}
