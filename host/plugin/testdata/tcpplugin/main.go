// Command tcpplugin is a transport plugin for host/plugin's tests: it carries messages over
// plain TCP on loopback, length-prefixed, so that two plugin processes (two micros) can
// talk. It is served with sdk/transport. Environment variables make it misbehave:
//
//	TCPPLUGIN_PROTOCOL=N      speak transport protocol N instead of micro's
//	TCPPLUGIN_RAW=MODE        serve a raw protocol server whose Dial answers connected, then
//	                          MODE: "oversize" (a message over the limit), "empty" (an
//	                          empty frame), "twice" (connected again); or, for
//	                          "early", a message instead of connected
//	TCPPLUGIN_BIG_REPLY=1     the sdk's server gets an over-limit message from the
//	                          transport's Recv (the sdk must refuse it)
//	TCPPLUGIN_INIT_FAIL=1     fail Init
//
// TCPPLUGIN_PIDFILE=F makes it write its process id to F first.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/abi/transportpb"
	"github.com/microhost/micro/sdk/transport"
	"google.golang.org/grpc"
)

func main() {
	if f := os.Getenv("TCPPLUGIN_PIDFILE"); f != "" {
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "tcpplugin:", err)
			os.Exit(1)
		}
	}
	t := &tcp{bigReply: os.Getenv("TCPPLUGIN_BIG_REPLY") != ""}
	if s := os.Getenv("TCPPLUGIN_PROTOCOL"); s != "" {
		v, _ := strconv.ParseUint(s, 10, 32)
		serveRaw(uint(v), transport.NewServer(t))
		return
	}
	if mode := os.Getenv("TCPPLUGIN_RAW"); mode != "" {
		serveRaw(abi.TransportProtocolVersion, &raw{mode: mode})
		return
	}
	transport.Serve(t)
}

// serveRaw serves srv with protocol version v, bypassing sdk/transport.Serve.
func serveRaw(v uint, srv transportpb.TransportServer) {
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  v,
			MagicCookieKey:   abi.MagicCookieKey,
			MagicCookieValue: abi.MagicCookieValue,
		},
		Plugins: goplugin.PluginSet{abi.TransportPlugin: &grpcPlugin{srv: srv}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.MaxSendMsgSize(64<<20))...)
		},
	})
}

type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	srv transportpb.TransportServer
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	transportpb.RegisterTransportServer(s, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("not a client")
}

// raw is a protocol server that breaks the protocol on Dial.
type raw struct {
	transportpb.UnimplementedTransportServer
	mode string
}

func (r *raw) Init(context.Context, *transportpb.InitRequest) (*transportpb.InitResponse, error) {
	return &transportpb.InitResponse{}, nil
}

func (r *raw) Dial(stream transportpb.Transport_DialServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	connected := &transportpb.Frame{Frame: &transportpb.Frame_Connected{Connected: &transportpb.Connected{}}}
	msg := func(n int) *transportpb.Frame {
		return &transportpb.Frame{Frame: &transportpb.Frame_Message{Message: &transportpb.Message{Body: make([]byte, n)}}}
	}
	var frames []*transportpb.Frame
	switch r.mode {
	case "oversize":
		frames = []*transportpb.Frame{connected, msg(transportpb.MaxMessageSize + 1)}
	case "hugeframe":
		frames = []*transportpb.Frame{connected, msg(transportpb.MaxFrameSize + 1)}
	case "empty":
		frames = []*transportpb.Frame{connected, {}}
	case "twice":
		frames = []*transportpb.Frame{connected, connected}
	case "early":
		frames = []*transportpb.Frame{msg(1)}
	}
	for _, f := range frames {
		if err := stream.Send(f); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// tcp is the transport.
type tcp struct {
	bigReply bool
}

func (t *tcp) Init(_ context.Context, c transport.Config) error {
	if os.Getenv("TCPPLUGIN_INIT_FAIL") != "" {
		return fmt.Errorf("backend %q unreachable", c.URL)
	}
	return nil
}

func (t *tcp) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newConn(c, false), nil
}

func (t *tcp) Listen(_ context.Context, addr string) (transport.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &listener{l: l.(*net.TCPListener), big: t.bigReply}, nil
}

type listener struct {
	l   *net.TCPListener
	big bool
}

func (l *listener) Accept(ctx context.Context) (transport.Conn, error) {
	stop := context.AfterFunc(ctx, func() { l.l.SetDeadline(time.Now()) })
	defer stop()
	c, err := l.l.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return newConn(c, l.big), nil
}

func (l *listener) Addr() string { return l.l.Addr().String() }
func (l *listener) Close() error { return l.l.Close() }

// conn frames a message as: header count, then each key and value, then the body, every
// length a uint32.
type conn struct {
	c   net.Conn
	big bool // a server conn whose Recv returns an over-limit message
	r   *bufio.Reader
	wmu sync.Mutex
	w   *bufio.Writer
}

func newConn(c net.Conn, big bool) *conn {
	return &conn{c: c, big: big, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
}

// arm makes the conn's I/O honour ctx.
func arm(ctx context.Context, set func(time.Time) error) func() bool {
	if d, ok := ctx.Deadline(); ok {
		set(d)
	} else {
		set(time.Time{})
	}
	return context.AfterFunc(ctx, func() { set(time.Now()) })
}

func (c *conn) Send(ctx context.Context, m *transport.Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	defer arm(ctx, c.c.SetWriteDeadline)()
	put := func(b []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		c.w.Write(n[:])
		c.w.Write(b)
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(m.Header)))
	c.w.Write(n[:])
	for k, v := range m.Header {
		put([]byte(k))
		put([]byte(v))
	}
	put(m.Body)
	return c.w.Flush()
}

func (c *conn) Recv(ctx context.Context) (*transport.Message, error) {
	defer arm(ctx, c.c.SetReadDeadline)()
	get := func() ([]byte, error) {
		var n [4]byte
		if _, err := io.ReadFull(c.r, n[:]); err != nil {
			return nil, err
		}
		b := make([]byte, binary.BigEndian.Uint32(n[:]))
		_, err := io.ReadFull(c.r, b)
		return b, err
	}
	var n [4]byte
	if _, err := io.ReadFull(c.r, n[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, err
	}
	m := &transport.Message{Header: map[string]string{}}
	for range binary.BigEndian.Uint32(n[:]) {
		k, err := get()
		if err != nil {
			return nil, err
		}
		v, err := get()
		if err != nil {
			return nil, err
		}
		m.Header[string(k)] = string(v)
	}
	body, err := get()
	if err != nil {
		return nil, err
	}
	m.Body = body
	if c.big {
		m.Body = make([]byte, transportpb.MaxMessageSize+1)
	}
	return m, nil
}

func (c *conn) Close() error { return c.c.Close() }
