package main

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
	c := grpcClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Init(ctx, &transportpb.InitRequest{Url: url}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return c
}

// grpcClient serves a new transport over gRPC in process, as the plugin binary does, and
// returns a client for it.
func grpcClient(t *testing.T) transportpb.TransportClient {
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
	return transportpb.NewTransportClient(cc)
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

// TestStreamOverGRPC runs streams between two plugin instances through the sdk's plugin
// server: messages both ways, a server that ends with an error message and closes, and a
// client that closes.
func TestStreamOverGRPC(t *testing.T) {
	s := natstest.Start(t)
	server := pluginClient(t, s.URL)
	client := pluginClient(t, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ls, err := server.Listen(ctx, &transportpb.ListenRequest{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := ls.Recv()
	if err != nil {
		t.Fatal(err)
	}
	addr := first.GetAddr()
	// The server side, as micro drives a Serve stream: greet, echo every message, and
	// answer "bye" with an error message and a close. ended says how each stream ended.
	ended := make(chan string, 2)
	go func() {
		for {
			a, err := ls.Recv()
			if err != nil {
				return
			}
			go func(id uint64) {
				st, err := server.Serve(ctx)
				if err != nil {
					ended <- err.Error()
					return
				}
				_ = st.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_ConnId{ConnId: id}})
				if f, err := st.Recv(); err != nil || f.GetConnected() == nil {
					ended <- fmt.Sprintf("want connected, got %v, %v", f, err)
					return
				}
				f, err := st.Recv()
				if err != nil || f.GetMessage().GetHeader()[transport.HeaderStream] != "1" {
					ended <- fmt.Sprintf("want the open message, got %v, %v", f, err)
					return
				}
				send := func(h map[string]string, body string) {
					_ = st.Send(&transportpb.ServeFrame{Frame: &transportpb.ServeFrame_Message{Message: &transportpb.Message{Header: h, Body: []byte(body)}}})
				}
				send(nil, "welcome")
				for {
					f, err := st.Recv()
					if errors.Is(err, io.EOF) {
						ended <- "client closed"
						return
					}
					if err != nil {
						ended <- err.Error()
						return
					}
					body := string(f.GetMessage().GetBody())
					if body == "bye" {
						send(map[string]string{"Micro-Status": "500"}, `{"detail":"bye"}`)
						_ = st.CloseSend()
						_, err := st.Recv()
						ended <- fmt.Sprintf("server closed: %v", err)
						return
					}
					send(nil, strings.ToUpper(body))
				}
			}(a.GetConnId())
		}
	}()

	open := func() transportpb.Transport_DialClient {
		t.Helper()
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
		send(t, ds, map[string]string{transport.HeaderStream: "1"}, "")
		if f, err := ds.Recv(); err != nil || string(f.GetMessage().GetBody()) != "welcome" {
			t.Fatalf("want the greeting, got %v, %v", f, err)
		}
		return ds
	}

	// Several messages each way, then the server's error and close.
	ds := open()
	words := []string{"a", "bb", "ccc"}
	for _, w := range words {
		send(t, ds, nil, w)
	}
	for _, w := range words {
		f, err := ds.Recv()
		if err != nil || string(f.GetMessage().GetBody()) != strings.ToUpper(w) {
			t.Fatalf("want %q, got %v, %v", strings.ToUpper(w), f, err)
		}
	}
	send(t, ds, nil, "bye")
	f, err := ds.Recv()
	if err != nil || f.GetMessage().GetHeader()["Micro-Status"] != "500" {
		t.Fatalf("want the error message, got %v, %v", f, err)
	}
	if _, err := ds.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the server closed: %v, want io.EOF", err)
	}
	if got := <-ended; got != "server closed: EOF" {
		t.Errorf("server stream ended: %s", got)
	}

	// The client closes: the server's stream ends cleanly.
	ds = open()
	_ = ds.CloseSend()
	if got := <-ended; got != "client closed" {
		t.Errorf("server stream ended: %s, want client closed", got)
	}
	if _, err := ds.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("client stream after its close: %v, want io.EOF", err)
	}

	// A stream to a node that is not there: UNAVAILABLE, saying no responders.
	ds, err = client.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Addr{Addr: "nats:micro.inbound.gone"}})
	if f, err := ds.Recv(); err != nil || f.GetConnected() == nil {
		t.Fatalf("dial: want connected, got %v, %v", f, err)
	}
	send(t, ds, map[string]string{transport.HeaderStream: "1"}, "")
	if _, err := ds.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no responders") {
		t.Errorf("stream to a gone node: %v, want UNAVAILABLE with no responders", err)
	}
}

// send sends a message frame on a Dial stream.
func send(t *testing.T, ds transportpb.Transport_DialClient, h map[string]string, body string) {
	t.Helper()
	err := ds.Send(&transportpb.DialFrame{Frame: &transportpb.DialFrame_Message{Message: &transportpb.Message{Header: h, Body: []byte(body)}}})
	if err != nil {
		t.Fatal(err)
	}
}
