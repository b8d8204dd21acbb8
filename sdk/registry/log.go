package registry

import (
	"io"
	"log/slog"

	"github.com/microhost/micro/sdk/internal/pluginsrv"
)

// Logger returns a logger for a plugin. It writes to standard error in the JSON format of
// go-hclog (@level, @message, @timestamp, then the attributes), which micro reads from the
// plugin and writes into its own log with the level kept and the plugin's name added.
// micro drops the records below its log level, so Logger writes them all.
func Logger() *slog.Logger { return pluginsrv.Logger() }

// NewLogger returns a logger that writes go-hclog JSON lines to w, as Logger does, and
// drops records below level.
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return pluginsrv.NewLogger(w, level)
}

// hclogTime is the layout of the @timestamp that Logger writes.
const hclogTime = pluginsrv.HCLogTime
