package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// memTransport connects Dial to Listen in memory, by listener address.
type memTransport struct {
	mu        sync.Mutex
	listeners map[string]*memListener
}

func (t *memTransport) Init(context.Context, Config) error { return nil }

func (t *memTransport) Dial(_ context.Context, addr string) (Conn, error) {
	t.mu.Lock()
	l := t.listeners[addr]
	t.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("nothing listens on %s", addr)
	}
	a, b := memPipe()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.done:
		return nil, fmt.Errorf("%s closed", addr)
	}
}

func (t *memTransport) Listen(_ context.Context, addr string) (Listener, error) {
	l := &memListener{addr: addr, conns: make(chan Conn), done: make(chan struct{})}
	t.mu.Lock()
	t.listeners[addr] = l
	t.mu.Unlock()
	return l, nil
}

type memListener struct {
	addr  string
	conns chan Conn
	done  chan struct{}
	once  sync.Once
}

func (l *memListener) Accept(ctx context.Context) (Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.done:
		return nil, errors.New("closed")
	}
}

func (l *memListener) Addr() string { return l.addr }
func (l *memListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

// memConn is one end of a pipe of messages.
type memConn struct {
	in, out   chan *Message
	done      chan struct{} // closed by either end's Close
	closeOnce *sync.Once
}

func memPipe() (*memConn, *memConn) {
	ab, ba, done, once := make(chan *Message, 8), make(chan *Message, 8), make(chan struct{}), &sync.Once{}
	return &memConn{in: ba, out: ab, done: done, closeOnce: once}, &memConn{in: ab, out: ba, done: done, closeOnce: once}
}

func (c *memConn) Send(ctx context.Context, m *Message) error {
	select {
	case c.out <- m:
		return nil
	case <-c.done:
		return errors.New("closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *memConn) Recv(ctx context.Context) (*Message, error) {
	select {
	case m := <-c.in:
		return m, nil
	case <-c.done:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *memConn) Close() error { c.closeOnce.Do(func() { close(c.done) }); return nil }

// client serves NewServer over loopback gRPC and returns a client for it.
func client(t *testing.T) transportpb.TransportClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.MaxRecvMsgSize(transportpb.MaxFrameSize))
	transportpb.RegisterTransportServer(s, NewServer(&memTransport{listeners: map[string]*memListener{}}))
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(transportpb.MaxFrameSize)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return transportpb.NewTransportClient(cc)
}

func msgFrame(body string) *transportpb.DialFrame {
	return &transportpb.DialFrame{Frame: &transportpb.DialFrame_Message{Message: &transportpb.Message{Header: map[string]string{"K": "v"}, Body: []byte(body)}}}
}

func TestServerRoundTrip(t *testing.T) {
	c := client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ls, err := c.Listen(ctx, &transportpb.ListenRequest{Addr: "mem:a"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := ls.Recv()
	if err != nil || first.GetAddr() != "mem:a" || first.GetConnId() != 0 {
		t.Fatalf("first Accepted = %v, %v", first, err)
	}
	ds, err := c.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "mem:a"}})
	if f, err := ds.Recv(); err != nil || f.GetConnected() == nil {
		t.Fatalf("dial answer = %v, %v", f, err)
	}
	a, err := ls.Recv()
	if err != nil || a.GetConnId() == 0 {
		t.Fatalf("Accepted = %v, %v", a, err)
	}
	ss, err := c.Serve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ss.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_ConnId{ConnId: a.GetConnId()}})
	if f, err := ss.Recv(); err != nil || f.GetConnected() == nil {
		t.Fatalf("serve answer = %v, %v", f, err)
	}
	for i := range 3 {
		if err := ds.Send(msgFrame(fmt.Sprint("req", i))); err != nil {
			t.Fatal(err)
		}
		f, err := ss.Recv()
		if err != nil || string(f.GetMessage().GetBody()) != fmt.Sprint("req", i) || f.GetMessage().GetHeader()["K"] != "v" {
			t.Fatalf("server got %v, %v", f, err)
		}
		ss.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_Message{Message: &transportpb.Message{Body: []byte("resp")}}})
		if f, err := ds.Recv(); err != nil || string(f.GetMessage().GetBody()) != "resp" {
			t.Fatalf("client got %v, %v", f, err)
		}
	}
	// micro closes the client side: the plugin closes the conn, and the server side ends.
	ds.CloseSend()
	if _, err := ds.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("dial stream after CloseSend = %v, want EOF", err)
	}
	if _, err := ss.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("serve stream after the peer closed = %v, want EOF", err)
	}
	// The conn_id was claimed: a second Serve for it is NOT_FOUND.
	ss2, _ := c.Serve(ctx)
	ss2.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_ConnId{ConnId: a.GetConnId()}})
	if _, err := ss2.Recv(); status.Code(err) != codes.NotFound {
		t.Fatalf("second Serve = %v, want NOT_FOUND", err)
	}
}

// configTransport records the Config of its last Init.
type configTransport struct {
	*memTransport
	got Config
}

func (t *configTransport) Init(_ context.Context, c Config) error { t.got = c; return nil }

func TestServerInitConfig(t *testing.T) {
	tr := &configTransport{memTransport: &memTransport{listeners: map[string]*memListener{}}}
	req := &transportpb.InitRequest{
		Url: "nats://x", CredentialsFile: "/c.creds", NkeySeedFile: "/seed", TokenFile: "/token", User: "u",
		PasswordFile: "/pw", TlsCaFile: "/ca.pem", TlsCertFile: "/cert.pem", TlsKeyFile: "/key.pem", TlsRequired: true,
	}
	if _, err := NewServer(tr).Init(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	want := Config{
		URL: "nats://x", CredentialsFile: "/c.creds", NkeySeedFile: "/seed", TokenFile: "/token", User: "u",
		PasswordFile: "/pw", TLSCAFile: "/ca.pem", TLSCertFile: "/cert.pem", TLSKeyFile: "/key.pem", TLSRequired: true,
	}
	if tr.got != want {
		t.Errorf("Init got %+v, want %+v", tr.got, want)
	}
}

func TestServerRefuses(t *testing.T) {
	c := client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ls, _ := c.Listen(ctx, &transportpb.ListenRequest{Addr: "mem:b"})
	if _, err := ls.Recv(); err != nil {
		t.Fatal(err)
	}
	dial := func() transportpb.Transport_DialClient {
		ds, err := c.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "mem:b"}})
		if f, err := ds.Recv(); err != nil || f.GetConnected() == nil {
			t.Fatalf("dial answer = %v, %v", f, err)
		}
		return ds
	}
	for _, tc := range []struct {
		name  string
		frame *transportpb.DialFrame
		code  codes.Code
		want  string
	}{
		{"oversized", msgFrame(strings.Repeat("x", transportpb.MaxMessageSize)), codes.ResourceExhausted,
			fmt.Sprintf("message of %d bytes exceeds the limit of %d", transportpb.MaxMessageSize+2, transportpb.MaxMessageSize)},
		{"address again", &transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "mem:b"}}, codes.InvalidArgument, "frame is an address, want a message"},
		{"empty", &transportpb.DialFrame{}, codes.InvalidArgument, "frame is empty, want a message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := dial()
			if err := ds.Send(tc.frame); err != nil {
				t.Fatal(err)
			}
			_, err := ds.Recv()
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %v %q", err, tc.code, tc.want)
			}
		})
	}
	t.Run("message first", func(t *testing.T) {
		ds, _ := c.Dial(ctx)
		ds.Send(msgFrame("x"))
		if _, err := ds.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "want the address") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		ds, _ := c.Dial(ctx)
		ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "mem:nowhere"}})
		if _, err := ds.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "mem:nowhere") {
			t.Fatalf("got %v", err)
		}
	})
}
