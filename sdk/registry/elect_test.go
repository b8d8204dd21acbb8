package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/abi/registrypb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeElector is a Registry and an Elector whose answers the test sets.
type fakeElector struct {
	*fake
	campaignErr error
	leader      string
	leaderErr   error

	mu    sync.Mutex
	name  string
	value string
	won   chan *fakeLeadership // each won Campaign, as it returns
}

func (f *fakeElector) Campaign(_ context.Context, name, value string) (Leadership, error) {
	f.mu.Lock()
	f.name, f.value = name, value
	f.mu.Unlock()
	if f.campaignErr != nil {
		return nil, f.campaignErr
	}
	l := &fakeLeadership{lost: make(chan struct{}), resigned: make(chan struct{})}
	f.won <- l
	return l, nil
}

func (f *fakeElector) Leader(_ context.Context, name string) (string, error) {
	f.mu.Lock()
	f.name = name
	f.mu.Unlock()
	return f.leader, f.leaderErr
}

type fakeLeadership struct {
	once     sync.Once
	lost     chan struct{}
	resigned chan struct{} // closed by Resign
}

func (l *fakeLeadership) Lost() <-chan struct{} { return l.lost }

func (l *fakeLeadership) Resign(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err() // the server must resign with a live context
	}
	l.once.Do(func() {
		close(l.resigned)
		close(l.lost)
	})
	return nil
}

// asked returns the name and value of the last call.
func (f *fakeElector) asked() (name, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.name, f.value
}

func newFakeElector() *fakeElector {
	return &fakeElector{fake: newFake(), won: make(chan *fakeLeadership, 4)}
}

// within waits for ch to be closed, failing the test after a while.
func within(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not happen", what)
	}
}

// TestServerCampaign: the elected event, then the stream holds the leadership until micro
// cancels it, which resigns, or the leadership is lost, which ends the stream.
func TestServerCampaign(t *testing.T) {
	f := newFakeElector()
	c := dial(t, f)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Campaign(ctx, &registrypb.CampaignRequest{Name: "quota", Value: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || !ev.GetElected() {
		t.Fatalf("first event = %v, %v; want elected", ev, err)
	}
	if name, value := f.asked(); name != "quota" || value != "node-1" {
		t.Errorf("Campaign got %q %q", name, value)
	}
	l := <-f.won
	cancel()
	within(t, "Resign after the stream was canceled", l.resigned)

	stream, err = c.Campaign(context.Background(), &registrypb.CampaignRequest{Name: "quota"})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || !ev.GetElected() {
		t.Fatalf("first event = %v, %v; want elected", ev, err)
	}
	l = <-f.won
	close(l.lost) // lost to the backend
	if _, err := stream.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("Recv after the leadership was lost: err = %v, want Aborted", err)
	}
}

func TestServerCampaignErrors(t *testing.T) {
	f := newFakeElector()
	c := dial(t, f)
	recv := func(req *registrypb.CampaignRequest) error {
		stream, err := c.Campaign(context.Background(), req)
		if err != nil {
			return err
		}
		ev, err := stream.Recv()
		if err == nil {
			return fmt.Errorf("event %v", ev)
		}
		return err
	}
	if err := recv(&registrypb.CampaignRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Campaign without a name: err = %v, want InvalidArgument", err)
	}
	f.campaignErr = status.Error(codes.InvalidArgument, `election name "a/b" contains '/'`)
	if err := recv(&registrypb.CampaignRequest{Name: "a/b"}); status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != `election name "a/b" contains '/'` {
		t.Errorf("Campaign with a bad name: err = %v", err)
	}
	f.campaignErr = errors.New("backend gone")
	if err := recv(&registrypb.CampaignRequest{Name: "quota"}); status.Code(err) != codes.Unknown || status.Convert(err).Message() != "backend gone" {
		t.Errorf("Campaign that fails: err = %v", err)
	}
}

func TestServerLeader(t *testing.T) {
	f := newFakeElector()
	c := dial(t, f)
	ctx := context.Background()
	f.leader = "node-1"
	resp, err := c.Leader(ctx, &registrypb.LeaderRequest{Name: "quota"})
	if name, _ := f.asked(); err != nil || !resp.GetFound() || resp.GetValue() != "node-1" || name != "quota" {
		t.Errorf("Leader = %v, %v (asked for %q)", resp, err, name)
	}
	f.leader, f.leaderErr = "", fmt.Errorf("election %q: %w", "quota", ErrNoLeader)
	resp, err = c.Leader(ctx, &registrypb.LeaderRequest{Name: "quota"})
	if err != nil || resp.GetFound() || resp.GetValue() != "" {
		t.Errorf("Leader without one = %v, %v; want not found", resp, err)
	}
	f.leaderErr = errors.New("backend gone")
	if _, err := c.Leader(ctx, &registrypb.LeaderRequest{Name: "quota"}); status.Code(err) != codes.Unknown {
		t.Errorf("Leader that fails: err = %v", err)
	}
	if _, err := c.Leader(ctx, &registrypb.LeaderRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Leader without a name: err = %v", err)
	}
}

// TestServerNoElector: a Registry that is no Elector answers UNIMPLEMENTED.
func TestServerNoElector(t *testing.T) {
	c := dial(t, newFake())
	ctx := context.Background()
	if _, err := c.Leader(ctx, &registrypb.LeaderRequest{Name: "quota"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Leader: err = %v, want Unimplemented", err)
	}
	stream, err := c.Campaign(ctx, &registrypb.CampaignRequest{Name: "quota"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unimplemented || errors.Is(err, io.EOF) {
		t.Errorf("Campaign: err = %v, want Unimplemented", err)
	}
}
