package main

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/sdk/broker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
)

// pluginClient serves a new broker over gRPC in process, through the sdk's plugin server
// as the plugin binary does, Inits it with req, and returns a client for it.
func pluginClient(t *testing.T, req *brokerpb.InitRequest) brokerpb.BrokerClient {
	t.Helper()
	b := newBroker(nil)
	t.Cleanup(func() { _ = b.Close() })
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.MaxRecvMsgSize(brokerpb.MaxFrameSize), grpc.MaxSendMsgSize(brokerpb.MaxFrameSize))
	brokerpb.RegisterBrokerServer(s, broker.NewServer(b))
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(brokerpb.MaxFrameSize), grpc.MaxCallSendMsgSize(brokerpb.MaxFrameSize)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	c := brokerpb.NewBrokerClient(cc)
	if _, err := c.Init(testCtx(t), req); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return c
}

// TestOverGRPC runs the broker behind the sdk's plugin server, as micro talks to it: the
// broker's errors arrive as the protocol's codes, and a Subscribe stream delivers,
// acks and reports the backlog.
func TestOverGRPC(t *testing.T) {
	s := startNATS(t)
	c := pluginClient(t, &brokerpb.InitRequest{Url: s.URL, MaxBytes: 64 << 10, MaxMessage: 4 << 10})
	ctx := testCtx(t)

	pub := func(id string, n int) error {
		_, err := c.Publish(ctx, &brokerpb.PublishRequest{Message: &brokerpb.Message{
			Id: id, Topic: "t", Header: map[string]string{"A": "1\n2"}, Body: make([]byte, n)}})
		return err
	}
	if err := pub("first", 10); err != nil {
		t.Fatal(err)
	}
	if err := pub("big", 4<<10+1); status.Code(err) != codes.OutOfRange {
		t.Errorf("too large: %v, want OUT_OF_RANGE", err)
	}
	var err error
	for i := 0; err == nil && i < 100; i++ {
		err = pub(fmt.Sprint("fill-", i), 2<<10)
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("full: %v, want RESOURCE_EXHAUSTED", err)
	}

	st, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&brokerpb.SubscribeFrame{Frame: &brokerpb.SubscribeFrame_Subscription{Subscription: &brokerpb.Subscription{
		Topic: "t", Group: "g", AckTimeout: durationpb.New(30 * time.Second), MaxInflight: 1}}}); err != nil {
		t.Fatal(err)
	}
	if f, err := st.Recv(); err != nil || f.GetSubscribed() == nil {
		t.Fatalf("first frame: %v, %v; want subscribed", f, err)
	}
	f, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	d := f.GetDelivery()
	if d.GetMessage().GetId() != "first" || d.GetAttempt() != 1 || d.GetMessage().GetHeader()["A"] != "1\n2" {
		t.Fatalf("delivery = %v, want first, attempt 1, header A", d)
	}
	if err := st.Send(&brokerpb.SubscribeFrame{OpId: 1, Frame: &brokerpb.SubscribeFrame_Ack{Ack: &brokerpb.DeliveryRef{Token: d.GetToken()}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&brokerpb.SubscribeFrame{OpId: 2, Frame: &brokerpb.SubscribeFrame_Backlog{Backlog: &brokerpb.BacklogQuery{}}}); err != nil {
		t.Fatal(err)
	}
	results := map[uint64]*brokerpb.Result{}
	for len(results) < 2 {
		f, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r := f.GetResult(); r != nil {
			results[r.GetOpId()] = r
		}
	}
	if r := results[1]; r.GetCode() != 0 {
		t.Errorf("ack: %v", r)
	}
	if r := results[2]; r.GetCode() != 0 || r.GetBacklog().GetMessages() < 1 || r.GetBacklog().GetOldest() == nil {
		t.Errorf("backlog: %v, want the messages left", r)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
}
