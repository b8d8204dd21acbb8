package selector

import (
	"context"
	"testing"
	"time"
)

// TestSnapshot: a snapshot shows each node's calls in flight, its p2c cost, its ejections
// (whole and per endpoint, with the time left) and nodes gone from the registry.
func TestSnapshot(t *testing.T) {
	clock := newFakeClock()
	src := source("greeter", mkNode("a"), mkNode("b"), mkNode("c"))
	s := New(src, Policy{Ejection: Ejection{ConsecutiveFailures: 2, Base: 30 * time.Second, Max: time.Minute, MaxPercent: 100}},
		Options{Now: clock.Now})
	if got := s.Snapshot(); len(got) != 0 {
		t.Fatalf("snapshot before any call = %+v, want none", got)
	}

	// a: a call in flight after a 10 ms answer; b: out for endpoint Hello; c: out as a whole.
	var out []Pick
	for range 30 {
		p, err := s.Select(context.Background(), "greeter", "Hello", nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	for _, p := range out {
		switch p.Node().ID {
		case "a":
			p.Done(10*time.Millisecond, Success)
		case "b":
			p.Done(time.Millisecond, EndpointFailure)
		default:
			p.Done(time.Millisecond, NodeFailure)
		}
	}
	for _, want := range []string{"a", "b", "c"} {
		found := false
		for _, p := range out {
			found = found || p.Node().ID == want
		}
		if !found {
			t.Fatalf("30 picks never chose node %s", want)
		}
	}
	p, err := s.Select(context.Background(), "greeter", "Hello", nil)
	if err != nil || p.Node().ID != "a" {
		t.Fatalf("Select with b and c out = %v, %v; want a", p.Node(), err)
	}
	clock.Advance(10 * time.Second)

	snap := s.Snapshot()
	if len(snap) != 1 || snap[0].Name != "greeter" || len(snap[0].Nodes) != 3 {
		t.Fatalf("snapshot = %+v, want greeter's 3 nodes", snap)
	}
	a, b, c := snap[0].Nodes[0], snap[0].Nodes[1], snap[0].Nodes[2]
	if a.ID != "a" || a.Address != "a:1" || a.Version != "1.0.0" || a.InFlight != 1 || a.Cost <= 0 || a.Ejected != 0 || len(a.EjectedEndpoints) != 0 {
		t.Errorf("node a = %+v, want 1 in flight, a cost, not ejected", a)
	}
	if b.Ejected != 0 || !about(b.EjectedEndpoints["Hello"], 20*time.Second) || len(b.EjectedEndpoints) != 1 {
		t.Errorf("node b = %+v, want out for Hello only, 20s left", b)
	}
	if !about(c.Ejected, 20*time.Second) || len(c.EjectedEndpoints) != 0 {
		t.Errorf("node c = %+v, want out as a whole, 20s left", c)
	}
	p.Done(time.Millisecond, Success)

	// c leaves the registry: it is still shown, as gone, with its state.
	src.set("greeter", mkNode("a"), mkNode("b"))
	p, err = s.Select(context.Background(), "greeter", "Other", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Done(time.Millisecond, Success)
	snap = s.Snapshot()
	if n := snap[0].Nodes; len(n) != 3 || n[2].ID != "c" || !n[2].Gone || n[2].Address != "" || !about(n[2].Ejected, 20*time.Second) {
		t.Fatalf("after c left: %+v, want c gone and still ejected", n)
	}
	if n := snap[0].Nodes; n[0].Gone || n[1].Gone || n[0].InFlight != 0 {
		t.Fatalf("after c left: %+v, want a and b present, nothing in flight", n)
	}
}

// about reports whether d is want, give or take the 1 ms the failing attempts took.
func about(d, want time.Duration) bool { return d >= want && d <= want+time.Millisecond }
