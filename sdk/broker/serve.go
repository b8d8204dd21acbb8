package broker

import (
	"io"
	"log/slog"

	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/sdk/internal/pluginsrv"
	"google.golang.org/grpc"
)

// Serve serves b to micro: a broker plugin's main is
//
//	func main() { broker.Serve(myBroker{}) }
//
// micro starts the plugin with go-plugin over gRPC (abi/brokerpb), with the handshake of
// abi: a plugin built against another protocol version is refused by micro. Run by hand,
// without micro, the binary says that it is a plugin and exits 1. Serve returns when micro
// stops the plugin, and exits the process when micro itself has gone. Log with Logger.
func Serve(b Broker) {
	srv := NewServer(b)
	pluginsrv.Serve(pluginsrv.Protocol{
		Name:     abi.BrokerPlugin,
		Version:  abi.BrokerProtocolVersion,
		Register: func(s *grpc.Server) { brokerpb.RegisterBrokerServer(s, srv) },
		ServerOptions: []grpc.ServerOption{
			grpc.MaxRecvMsgSize(brokerpb.MaxFrameSize),
			grpc.MaxSendMsgSize(brokerpb.MaxFrameSize),
		},
	})
}

// Logger returns a logger for a plugin. It writes to standard error in the JSON format of
// go-hclog, which micro reads from the plugin and writes into its own log with the level
// kept and the plugin's name added. micro drops the records below its log level, so Logger
// writes them all.
func Logger() *slog.Logger { return pluginsrv.Logger() }

// NewLogger returns a logger that writes go-hclog JSON lines to w, as Logger does, and
// drops records below level.
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return pluginsrv.NewLogger(w, level)
}
