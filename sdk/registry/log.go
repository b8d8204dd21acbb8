package registry

import (
	"io"
	"log/slog"
	"os"
)

// stderr is the process's standard error as it was at start. go-plugin's Serve points
// os.Stderr at a pipe of its own; micro reads log lines from the original.
var stderr = os.Stderr

// Logger returns a logger for a plugin. It writes to standard error in the JSON format of
// go-hclog (@level, @message, @timestamp, then the attributes), which micro reads from the
// plugin and writes into its own log with the level kept and the plugin's name added.
// micro drops the records below its log level, so Logger writes them all.
func Logger() *slog.Logger {
	return NewLogger(stderr, slog.LevelDebug)
}

// NewLogger returns a logger that writes go-hclog JSON lines to w, as Logger does, and
// drops records below level.
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: hclogAttr,
	}))
}

// hclogTime is the layout of @timestamp that go-plugin parses.
const hclogTime = "2006-01-02T15:04:05.000000Z07:00"

// hclogAttr renames slog's built-in keys to go-hclog's.
func hclogAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		return slog.String("@timestamp", a.Value.Time().Format(hclogTime))
	case slog.LevelKey:
		level, _ := a.Value.Any().(slog.Level)
		return slog.String("@level", hclogLevel(level))
	case slog.MessageKey:
		return slog.String("@message", a.Value.String())
	}
	return a
}

// hclogLevel names level as go-hclog does. slog levels below Debug are trace.
func hclogLevel(level slog.Level) string {
	switch {
	case level < slog.LevelDebug:
		return "trace"
	case level < slog.LevelInfo:
		return "debug"
	case level < slog.LevelWarn:
		return "info"
	case level < slog.LevelError:
		return "warn"
	}
	return "error"
}
