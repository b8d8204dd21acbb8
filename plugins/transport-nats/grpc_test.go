package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// pluginClient serves a new transport over gRPC in process, as the plugin binary does,
// Inits it with url, and returns a client for it.
func pluginClient(t *testing.T, url string) transportpb.TransportClient {
	t.Helper()
	tr := newNATS(nil)
	t.Cleanup(func() { _ = tr.Close() })
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	transportpb.RegisterTransportServer(s, transport.NewServer(tr))
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	c := transportpb.NewTransportClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Init(ctx, &transportpb.InitRequest{Url: url}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return c
}

// TestOverGRPC runs calls between two plugin instances through the sdk's plugin server,
// the way two micro processes use them.
func TestOverGRPC(t *testing.T) {
	s := natstest.Start(t)
	server := pluginClient(t, s.URL)
	client := pluginClient(t, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// The server side: listen, and answer each accepted conn with its body reversed.
	ls, err := server.Listen(ctx, &transportpb.ListenRequest{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := ls.Recv()
	if err != nil {
		t.Fatal(err)
	}
	addr := first.GetAddr()
	if !strings.HasPrefix(addr, "nats:") {
		t.Fatalf("listener address %q", addr)
	}
	var served sync.WaitGroup
	go func() {
		for {
			a, err := ls.Recv()
			if err != nil {
				return
			}
			served.Add(1)
			go func(id uint64) {
				defer served.Done()
				st, err := server.Serve(ctx)
				if err != nil {
					return
				}
				_ = st.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_ConnId{ConnId: id}})
				if f, err := st.Recv(); err != nil || f.GetConnected() == nil {
					t.Errorf("serve: want connected, got %v, %v", f, err)
					return
				}
				f, err := st.Recv()
				if err != nil {
					t.Errorf("serve recv: %v", err)
					return
				}
				req := f.GetMessage()
				b := []byte(string(req.GetBody()))
				for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
					b[i], b[j] = b[j], b[i]
				}
				_ = st.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_Message{Message: &transportpb.Message{
					Header: map[string]string{"X-Got": req.GetHeader()["X-Put"]}, Body: b}}})
				if _, err := st.Recv(); !errors.Is(err, io.EOF) {
					t.Errorf("serve stream after the reply: %v, want a clean end", err)
				}
			}(a.GetConnId())
		}
	}()

	// The client side: one Dial stream carries several calls, as micro's pool uses it.
	ds, err := client.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: addr}}); err != nil {
		t.Fatal(err)
	}
	if f, err := ds.Recv(); err != nil || f.GetConnected() == nil {
		t.Fatalf("dial: want connected, got %v, %v", f, err)
	}
	for _, body := range []string{"hello", "abc", ""} {
		err := ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Message{Message: &transportpb.Message{
			Header: map[string]string{"X-Put": body + "!"}, Body: []byte(body)}}})
		if err != nil {
			t.Fatal(err)
		}
		f, err := ds.Recv()
		if err != nil {
			t.Fatalf("dial recv: %v", err)
		}
		m := f.GetMessage()
		want := []rune(body)
		for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
			want[i], want[j] = want[j], want[i]
		}
		if string(m.GetBody()) != string(want) || m.GetHeader()["X-Got"] != body+"!" {
			t.Errorf("reply %q %v, want %q with X-Got %q", m.GetBody(), m.GetHeader(), string(want), body+"!")
		}
	}
	_ = ds.CloseSend()
	served.Wait() // each Serve stream ended cleanly after its reply

	// A node that is not there: UNAVAILABLE, saying no responders.
	ds, err = client.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "nats:micro.inbound.gone"}})
	if f, err := ds.Recv(); err != nil || f.GetConnected() == nil {
		t.Fatalf("dial: want connected, got %v, %v", f, err)
	}
	_ = ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Message{Message: &transportpb.Message{}}})
	_, err = ds.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no responders") {
		t.Errorf("call to a gone node: %v, want UNAVAILABLE with no responders", err)
	}

	// A bad address fails the Dial with UNAVAILABLE.
	ds, err = client.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "127.0.0.1:1"}})
	if _, err := ds.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("dial of a bad address: %v, want UNAVAILABLE naming it", err)
	}
}
