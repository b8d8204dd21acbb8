// Package pluginsrv is the plugin side of go-plugin that every kind of micro plugin shares:
// serving a gRPC protocol with micro's handshake, exiting with micro, and logging in the
// format that micro forwards into its log. sdk/registry and sdk/transport build on it.
package pluginsrv

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"google.golang.org/grpc"
)

// Stderr is the process's standard error as it was at start. go-plugin's Serve points
// os.Stderr at a pipe of its own; micro reads log lines from the original.
var Stderr = os.Stderr

// Protocol is one kind of plugin protocol.
type Protocol struct {
	// Name is the plugin's name in the go-plugin plugin set, e.g. abi.RegistryPlugin.
	Name string
	// Version is the protocol version sent in the handshake.
	Version uint
	// Register registers the protocol's gRPC service on s.
	Register func(s *grpc.Server)
	// ServerOptions are added to the gRPC server's options.
	ServerOptions []grpc.ServerOption
}

// Serve serves p with micro's handshake until micro stops the plugin, and exits the
// process when micro has gone.
func Serve(p Protocol) {
	go exitWithParent(time.Second)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake(p.Version),
		Plugins:         plugin.PluginSet{p.Name: &grpcPlugin{register: p.Register}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, p.ServerOptions...)...)
		},
		Logger: hclog.New(&hclog.LoggerOptions{
			Level:      hclog.Debug,
			Output:     Stderr,
			JSONFormat: true,
		}),
	})
}

// Handshake is micro's go-plugin handshake for protocol version v.
func Handshake(v uint) plugin.HandshakeConfig {
	return plugin.HandshakeConfig{
		ProtocolVersion:  v,
		MagicCookieKey:   abi.MagicCookieKey,
		MagicCookieValue: abi.MagicCookieValue,
	}
}

// grpcPlugin is the server half of go-plugin's GRPCPlugin.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	register func(*grpc.Server)
}

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	p.register(s)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("plugin: the client half of the protocol is micro's")
}

// exitWithParent exits the process once its parent process has gone: micro starts
// plugins as its children, and a plugin whose micro was killed has no one to serve.
// (On Linux micro also asks the kernel to kill its plugins when it dies; this covers the
// other systems and the rare case where that does not fire.)
func exitWithParent(every time.Duration) {
	parent := os.Getppid()
	if parent <= 1 {
		return // started by init or a reaper: there is no parent to outlive
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if os.Getppid() != parent {
			Logger().Error("micro, the parent process, has gone; exiting", "parent_pid", parent)
			os.Exit(1)
		}
	}
}

// Logger returns a logger for a plugin, writing to Stderr as NewLogger does.
func Logger() *slog.Logger {
	return NewLogger(Stderr, slog.LevelDebug)
}

// NewLogger returns a logger that writes go-hclog JSON lines (@level, @message,
// @timestamp, then the attributes) to w, and drops records below level.
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: hclogAttr,
	}))
}

// HCLogTime is the layout of @timestamp that go-plugin parses.
const HCLogTime = "2006-01-02T15:04:05.000000Z07:00"

// hclogAttr renames slog's built-in keys to go-hclog's.
func hclogAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		return slog.String("@timestamp", a.Value.Time().Format(HCLogTime))
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
