package registry

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/registrypb"
	"google.golang.org/grpc"
)

// Serve serves r to micro: a registry plugin's main is
//
//	func main() { registry.Serve(myRegistry{}) }
//
// micro starts the plugin with go-plugin over gRPC (abi/registrypb), with the handshake of
// abi: a plugin built against another protocol version is refused by micro. Run by hand,
// without micro, the binary says that it is a plugin and exits 1. Serve returns when micro
// stops the plugin, and exits the process when micro itself has gone (the plugin's parent
// process changed). Log with Logger, which writes to standard error in the format that
// micro forwards into its own log.
func Serve(r Registry) {
	go exitWithParent(time.Second)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			ProtocolVersion:  abi.RegistryProtocolVersion,
			MagicCookieKey:   abi.MagicCookieKey,
			MagicCookieValue: abi.MagicCookieValue,
		},
		Plugins:    plugin.PluginSet{abi.RegistryPlugin: &grpcPlugin{srv: NewServer(r)}},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Level:      hclog.Debug,
			Output:     stderr,
			JSONFormat: true,
		}),
	})
}

// grpcPlugin is the server half of go-plugin's GRPCPlugin for the registry protocol.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	srv registrypb.RegistryServer
}

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	registrypb.RegisterRegistryServer(s, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("registry plugin: the client half of the protocol is micro's")
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
