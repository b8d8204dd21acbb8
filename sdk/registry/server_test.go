package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/abi/registrypb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fake is a Registry whose answers the test sets.
type fake struct {
	mu       sync.Mutex
	cfg      Config
	got      *Service
	ttl      time.Duration
	err      error
	svc      *Service
	list     []*Service
	events   []Event
	watchErr error // returned by Watch once events are sent; nil means wait for ctx
	ignore   bool  // Watch sends without watching ctx
	watching chan struct{}
	ended    chan error
}

func (f *fake) Init(_ context.Context, c Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg = c
	return f.err
}

func (f *fake) Register(_ context.Context, s *Service, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got, f.ttl = s, ttl
	return f.err
}

func (f *fake) Deregister(_ context.Context, s *Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = s
	return f.err
}

func (f *fake) GetService(ctx context.Context, _ string) (*Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.svc, ctx.Err()
}

func (f *fake) ListServices(context.Context) ([]*Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.list, f.err
}

func (f *fake) Watch(ctx context.Context, events chan<- Event) (err error) {
	defer func() { f.ended <- err }()
	close(f.watching)
	for _, ev := range f.events {
		select {
		case events <- ev:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.ignore {
		events <- Event{Type: EventUpdate, Service: "late"} // a careless plugin
		return errors.New("stopped late")
	}
	if f.watchErr != nil {
		return f.watchErr
	}
	<-ctx.Done()
	return ctx.Err()
}

// dial serves r over an in-memory gRPC connection.
func dial(t *testing.T, r Registry) registrypb.RegistryClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	registrypb.RegisterRegistryServer(s, NewServer(r))
	go s.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
	})
	return registrypb.NewRegistryClient(conn)
}

func newFake() *fake {
	return &fake{watching: make(chan struct{}), ended: make(chan error, 1)}
}

func TestServerCalls(t *testing.T) {
	f := newFake()
	c := dial(t, f)
	ctx := context.Background()

	if _, err := c.Init(ctx, &registrypb.InitRequest{Address: "a:1", Datacenter: "dc", Token: "t"}); err != nil {
		t.Fatal(err)
	}
	if f.cfg != (Config{Address: "a:1", Datacenter: "dc", Token: "t"}) {
		t.Errorf("Init got %+v", f.cfg)
	}

	svc := &registrypb.Service{Name: "greeter", Nodes: []*registrypb.Node{{
		Id: "g-1", Address: "127.0.0.1:1", Version: "1", Metadata: map[string]string{"zone": "a"}, Endpoints: []string{"E"},
	}}}
	if _, err := c.Register(ctx, &registrypb.RegisterRequest{Service: svc, Ttl: durationpb.New(3 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	n := f.got.Nodes[0]
	if f.got.Name != "greeter" || f.ttl != 3*time.Second || n.ID != "g-1" || n.Address != "127.0.0.1:1" ||
		n.Version != "1" || n.Metadata["zone"] != "a" || len(n.Endpoints) != 1 {
		t.Errorf("Register got %+v %+v ttl %v", f.got, n, f.ttl)
	}
	for _, req := range []*registrypb.RegisterRequest{
		{Service: svc},
		{Service: svc, Ttl: durationpb.New(0)},
		{Service: &registrypb.Service{}, Ttl: durationpb.New(time.Second)},
	} {
		if _, err := c.Register(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Register(%v): err = %v, want InvalidArgument", req, err)
		}
	}
	if _, err := c.Deregister(ctx, &registrypb.DeregisterRequest{Service: svc}); err != nil || f.got.Name != "greeter" {
		t.Errorf("Deregister: %v, got %+v", err, f.got)
	}

	f.svc = &Service{Name: "greeter", Nodes: []*Node{{ID: "g-1", Address: "x:1"}}}
	resp, err := c.GetService(ctx, &registrypb.GetServiceRequest{Name: "greeter"})
	if err != nil || resp.GetService().GetNodes()[0].GetId() != "g-1" {
		t.Errorf("GetService = %v, %v", resp, err)
	}
	f.svc = nil
	if _, err := c.GetService(ctx, &registrypb.GetServiceRequest{Name: "greeter"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetService of a nil service: err = %v, want NotFound", err)
	}
	f.list = []*Service{{Name: "a"}, nil, {Name: "b"}}
	list, err := c.ListServices(ctx, &registrypb.ListServicesRequest{})
	if err != nil || len(list.GetServices()) != 2 {
		t.Errorf("ListServices = %v, %v", list, err)
	}
}

func TestServerErrors(t *testing.T) {
	f := newFake()
	c := dial(t, f)
	ctx := context.Background()
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{ErrNotFound, codes.NotFound, "service not found"},
		{fmt.Errorf("lookup: %w", ErrNotFound), codes.NotFound, "lookup: service not found"},
		{context.DeadlineExceeded, codes.DeadlineExceeded, ""},
		{status.Error(codes.Unavailable, "consul is down"), codes.Unavailable, "consul is down"},
		{errors.New("boom"), codes.Unknown, "boom"},
	} {
		f.err = tc.err
		_, err := c.GetService(ctx, &registrypb.GetServiceRequest{Name: "x"})
		st := status.Convert(err)
		if st.Code() != tc.code || (tc.msg != "" && st.Message() != tc.msg) {
			t.Errorf("error %v became %v, want %v %q", tc.err, err, tc.code, tc.msg)
		}
	}
	f.err = errors.New("backend unreachable")
	if _, err := c.Init(ctx, &registrypb.InitRequest{}); status.Convert(err).Message() != "backend unreachable" {
		t.Errorf("Init: err = %v", err)
	}
}

func TestServerWatch(t *testing.T) {
	f := newFake()
	f.events = []Event{
		{Type: EventUpdate, Service: "a", Node: &Node{ID: "a-1"}},
		{Type: EventDelete, Service: "b"},
	}
	c := dial(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Watch(ctx, &registrypb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || ev.GetType() != registrypb.EventType_EVENT_TYPE_UPDATE || ev.GetService() != "a" || ev.GetNode().GetId() != "a-1" {
		t.Errorf("first event = %v, %v", ev, err)
	}
	ev, err = stream.Recv()
	if err != nil || ev.GetType() != registrypb.EventType_EVENT_TYPE_DELETE || ev.GetService() != "b" || ev.GetNode() != nil {
		t.Errorf("second event = %v, %v", ev, err)
	}
	cancel()
	if err := <-f.ended; !errors.Is(err, context.Canceled) {
		t.Errorf("the Registry's Watch ended with %v, want context.Canceled", err)
	}
}

func TestServerWatchFails(t *testing.T) {
	f := newFake()
	f.watchErr = status.Error(codes.Unavailable, "backend gone")
	c := dial(t, f)
	stream, err := c.Watch(context.Background(), &registrypb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Recv: err = %v, want Unavailable", err)
	}
	<-f.ended
}

// TestServerWatchCareless checks that a Registry that sends after its context ended does
// not block the server.
func TestServerWatchCareless(t *testing.T) {
	f := newFake()
	f.ignore = true
	f.events = []Event{{Type: EventUpdate, Service: "a"}}
	c := dial(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Watch(ctx, &registrypb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-f.ended
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, slog.Level(-8))
	log.Log(context.Background(), slog.Level(-8), "t")
	log.Debug("d")
	log.Info("i", "k", "v", slog.Group("g", "time", 1))
	log.Warn("w")
	log.Error("e", "err", errors.New("x"))
	want := []string{"trace", "debug", "info", "warn", "error"}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines:\n%s", len(lines), buf.String())
	}
	for i, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["@level"] != want[i] {
			t.Errorf("line %d: @level = %v, want %s", i, rec["@level"], want[i])
		}
		if _, err := time.Parse(hclogTime, rec["@timestamp"].(string)); err != nil {
			t.Errorf("line %d: @timestamp: %v", i, err)
		}
		if _, ok := rec["@message"].(string); !ok {
			t.Errorf("line %d: no @message: %s", i, line)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; ok {
				t.Errorf("line %d keeps slog's %q: %s", i, k, line)
			}
		}
	}
	if !strings.Contains(lines[2], `"k":"v","g":{"time":1}`) {
		t.Errorf("attributes: %s", lines[2])
	}
}
