package quota

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// fakeElector is an in-memory registry.Elector: one leader per name, and candidates that
// wait their turn.
type fakeElector struct {
	mu      sync.Mutex
	leaders map[string]*fakeLeadership
	changed chan struct{}  // closed and replaced at every change of leader
	won     chan string    // receives the value of every winner
	hold    bool           // Campaign never wins
	lookups int            // calls of Leader
	fail    error          // Leader fails with it
	entered map[string]int // calls of Campaign, by value
	queue   []*int         // waiting candidates, first come first served
}

type fakeLeadership struct {
	el    *fakeElector
	name  string
	value string
	lost  chan struct{}
	once  sync.Once
}

func newFakeElector() *fakeElector {
	return &fakeElector{leaders: map[string]*fakeLeadership{}, changed: make(chan struct{}), won: make(chan string, 16), entered: map[string]int{}}
}

func (e *fakeElector) Campaign(ctx context.Context, name, value string) (registry.Leadership, error) {
	ticket := new(int)
	e.mu.Lock()
	e.entered[value]++
	e.queue = append(e.queue, ticket)
	e.notifyLocked()
	e.mu.Unlock()
	for {
		e.mu.Lock()
		if e.leaders[name] == nil && !e.hold && e.queue[0] == ticket {
			l := &fakeLeadership{el: e, name: name, value: value, lost: make(chan struct{})}
			e.leaders[name] = l
			e.queue = e.queue[1:]
			e.notifyLocked()
			e.mu.Unlock()
			select {
			case e.won <- value:
			default:
			}
			return l, nil
		}
		changed := e.changed
		e.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			e.mu.Lock()
			e.queue = slices.DeleteFunc(e.queue, func(t *int) bool { return t == ticket })
			e.notifyLocked()
			e.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

func (e *fakeElector) Leader(ctx context.Context, name string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lookups++
	if e.fail != nil {
		return "", e.fail
	}
	if l := e.leaders[name]; l != nil {
		return l.value, nil
	}
	return "", registry.ErrNoLeader
}

func (e *fakeElector) notifyLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// depose ends the current leadership of name, as a lost session does.
func (e *fakeElector) depose(name string) {
	e.mu.Lock()
	l := e.leaders[name]
	e.mu.Unlock()
	if l != nil {
		l.end()
	}
}

// waitCampaigns waits until the candidate self has called Campaign n times.
func (e *fakeElector) waitCampaigns(t *testing.T, self Member, n int) {
	t.Helper()
	value, _ := json.Marshal(self)
	timeout := time.After(10 * time.Second)
	for {
		e.mu.Lock()
		got, changed := e.entered[string(value)], e.changed
		e.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("%s campaigned %d times, want %d", self.Node, got, n)
		}
	}
}

func (e *fakeElector) lookupCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lookups
}

func (l *fakeLeadership) end() {
	l.once.Do(func() {
		l.el.mu.Lock()
		if l.el.leaders[l.name] == l {
			delete(l.el.leaders, l.name)
		}
		l.el.notifyLocked()
		l.el.mu.Unlock()
		close(l.lost)
	})
}

func (l *fakeLeadership) Lost() <-chan struct{} { return l.lost }

func (l *fakeLeadership) Resign(context.Context) error { l.end(); return nil }

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// instance is one quota service instance under test.
type instance struct {
	svc   *Service
	self  Member
	done  chan error
	roles chan bool // each change of role
}

// waitRole waits until in becomes master (true) or follower (false).
func (in *instance) waitRole(t *testing.T, master bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-in.roles:
			if got == master {
				return
			}
		case <-timeout:
			t.Fatalf("%s never became master=%v", in.self.Node, master)
		}
	}
}

// startInstance runs a Service on el until the test ends.
func startInstance(t *testing.T, el *fakeElector, node string, clock *fakeClock, logs *syncBuffer) *instance {
	t.Helper()
	srv := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{Learning: DefaultLease})
	opts := ServiceOptions{Now: clock.Now}
	if logs != nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	in := &instance{svc: NewService(srv, opts), self: Member{Node: node, Address: node + ":7000"}, done: make(chan error, 1), roles: make(chan bool, 16)}
	in.svc.onRole = func(master bool) { in.roles <- master }
	ctx, cancel := context.WithCancel(context.Background())
	go func() { in.done <- in.svc.Run(ctx, el, "quota", in.self) }()
	t.Cleanup(func() {
		cancel()
		if err := <-in.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	el.waitCampaigns(t, in.self, 1)
	return in
}

// waitWon waits until the candidate self wins.
func waitWon(t *testing.T, el *fakeElector, self Member) {
	t.Helper()
	want, _ := json.Marshal(self)
	for {
		select {
		case v := <-el.won:
			if v == string(want) {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never won", self.Node)
		}
	}
}

var leaseBody = []byte(`{"client":"c1","resources":[{"name":"api","wants":100}]}`)

func TestServiceElectionAndRedirects(t *testing.T) {
	el := newFakeElector()
	clock := newFakeClock()
	logs := &syncBuffer{}
	a := startInstance(t, el, "a", clock, logs)
	a.waitRole(t, true)
	b := startInstance(t, el, "b", clock, nil)

	status, answer := a.svc.Handle(context.Background(), Endpoint, leaseBody)
	if status != 200 {
		t.Fatalf("master answered %d %s", status, answer)
	}
	var resp Response
	if err := json.Unmarshal(answer, &resp); err != nil || resp.Resources[0].Rate != 0 {
		// a new master is learning: a client that holds nothing gets nothing yet
		t.Fatalf("master's answer %s, %v", answer, err)
	}
	status, answer = b.svc.Handle(context.Background(), Endpoint, leaseBody)
	r := decodeRefusal(answer)
	if status != 307 || r.Code != 307 || r.Node != "a" || r.Address != "a:7000" || r.ID != ID {
		t.Fatalf("follower answered %d %s", status, answer)
	}

	// a loses its session: b takes over, and a redirects to it.
	el.depose("quota")
	b.waitRole(t, true)
	a.waitRole(t, false)
	if a.svc.Leading() || !b.svc.Leading() {
		t.Fatalf("leading: a %v, b %v", a.svc.Leading(), b.svc.Leading())
	}
	if status, answer := b.svc.Handle(context.Background(), Endpoint, leaseBody); status != 200 {
		t.Fatalf("new master answered %d %s", status, answer)
	}
	status, answer = a.svc.Handle(context.Background(), Endpoint, leaseBody)
	if r := decodeRefusal(answer); status != 307 || r.Node != "b" || r.Address != "b:7000" {
		t.Fatalf("old master answered %d %s", status, answer)
	}
	for _, want := range []string{"became master", "lost the master role", "following master"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
}

func TestServiceNoMaster(t *testing.T) {
	clock := newFakeClock()
	srv := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{})
	svc := NewService(srv, ServiceOptions{Now: clock.Now, RetryAfter: 1500 * time.Millisecond})

	// Not running: no master known here.
	status, answer := svc.Handle(context.Background(), Endpoint, leaseBody)
	if r := decodeRefusal(answer); status != 503 || r.RetryAfterMS != 1500 {
		t.Fatalf("before Run: %d %s", status, answer)
	}

	el := newFakeElector()
	el.hold = true // nobody wins
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	self := Member{Node: "a", Address: "a:1"}
	go func() { done <- svc.Run(ctx, el, "quota", self) }()
	defer func() { cancel(); <-done }()
	el.waitCampaigns(t, self, 1)
	status, answer = svc.Handle(context.Background(), Endpoint, leaseBody)
	if r := decodeRefusal(answer); status != 503 || r.RetryAfterMS != 1500 || !strings.Contains(r.Detail, "no leader") {
		t.Fatalf("no leader: %d %s", status, answer)
	}

	// The registry names this node, which does not lead: the master is changing.
	el.mu.Lock()
	el.leaders["quota"] = &fakeLeadership{value: `{"node":"a","address":"a:1"}`, lost: make(chan struct{})}
	el.mu.Unlock()
	clock.Advance(time.Second)
	if status, answer = svc.Handle(context.Background(), Endpoint, leaseBody); status != 503 {
		t.Fatalf("self named but not leading: %d %s", status, answer)
	}

	// A value that is not a member.
	el.mu.Lock()
	el.leaders["quota"].value = `garbage`
	el.mu.Unlock()
	clock.Advance(time.Second)
	if status, answer = svc.Handle(context.Background(), Endpoint, leaseBody); status != 503 || !strings.Contains(string(answer), "not a member") {
		t.Fatalf("garbage leader: %d %s", status, answer)
	}

	// The registry fails.
	el.mu.Lock()
	el.fail = errors.New("consul down")
	el.mu.Unlock()
	clock.Advance(time.Second)
	if status, answer = svc.Handle(context.Background(), Endpoint, leaseBody); status != 503 || !strings.Contains(string(answer), "consul down") {
		t.Fatalf("registry down: %d %s", status, answer)
	}
}

func TestServiceCachesTheMaster(t *testing.T) {
	el := newFakeElector()
	clock := newFakeClock()
	a := startInstance(t, el, "a", clock, nil)
	a.waitRole(t, true)
	b := startInstance(t, el, "b", clock, nil)
	for range 10 {
		if status, _ := b.svc.Handle(context.Background(), Endpoint, leaseBody); status != 307 {
			t.Fatalf("follower answered %d", status)
		}
	}
	if n := el.lookupCount(); n != 1 {
		t.Fatalf("%d lookups within the TTL, want 1", n)
	}
	clock.Advance(600 * time.Millisecond)
	b.svc.Handle(context.Background(), Endpoint, leaseBody)
	if n := el.lookupCount(); n != 2 {
		t.Fatalf("%d lookups after the TTL, want 2", n)
	}
}

func TestServiceRefusesBadCalls(t *testing.T) {
	el := newFakeElector()
	a := startInstance(t, el, "a", newFakeClock(), nil)
	a.waitRole(t, true)
	status, answer := a.svc.Handle(context.Background(), "other", leaseBody)
	if r := decodeRefusal(answer); status != 404 || r.Code != 404 || r.Status != "Not Found" {
		t.Errorf("unknown endpoint: %d %s", status, answer)
	}
	status, answer = a.svc.Handle(context.Background(), Endpoint, []byte(`{"client":"c","resources":[{"name":"api","wants":-3}]}`))
	if r := decodeRefusal(answer); status != 400 || !strings.Contains(r.Detail, "resources[0].wants") {
		t.Errorf("bad wants: %d %s", status, answer)
	}
}

func TestServiceRunResignsAndValidates(t *testing.T) {
	el := newFakeElector()
	svc := NewService(newTestServer(t, newFakeClock(), nil, ServerOptions{}), ServiceOptions{})
	for _, m := range []Member{{Node: "", Address: "a:1"}, {Node: "a", Address: "nope"}} {
		if err := svc.Run(context.Background(), el, "quota", m); err == nil {
			t.Errorf("Run with member %+v passes", m)
		}
	}
	if err := svc.Run(context.Background(), nil, "quota", Member{Node: "a", Address: "a:1"}); err == nil {
		t.Error("Run without an elector passes")
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	self := Member{Node: "a", Address: "a:1"}
	go func() { done <- svc.Run(ctx, el, "quota", self) }()
	waitWon(t, el, self)
	if err := svc.Run(ctx, el, "quota", self); err == nil {
		t.Error("a second Run passes")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := el.Leader(context.Background(), "quota"); !errors.Is(err, registry.ErrNoLeader) {
		t.Fatalf("after Run ended, the leader is still there: %v", err)
	}
	if svc.Leading() {
		t.Fatal("still leading after Run")
	}
}
