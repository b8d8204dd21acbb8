package registry

import (
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/registrypb"
	"github.com/microhost/micro/sdk/internal/pluginsrv"
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
	srv := NewServer(r)
	pluginsrv.Serve(pluginsrv.Protocol{
		Name:     abi.RegistryPlugin,
		Version:  abi.RegistryProtocolVersion,
		Register: func(s *grpc.Server) { registrypb.RegisterRegistryServer(s, srv) },
	})
}
