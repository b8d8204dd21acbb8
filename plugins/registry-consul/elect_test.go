package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/plugins/registry-consul/consultest"
	"github.com/microhost/micro/sdk/registry"
)

// electPatience bounds the waits for what must happen soon. They end as soon as it
// happens; this only matters when something is broken.
const electPatience = 15 * time.Second

// won is what a Campaign returned.
type won struct {
	l   registry.Leadership
	err error
}

// campaign runs Campaign in the background and delivers its result.
func campaign(ctx context.Context, r *consul, name, value string) <-chan won {
	ch := make(chan won, 1)
	go func() {
		l, err := r.Campaign(ctx, name, value)
		ch <- won{l, err}
	}()
	return ch
}

// elected waits for a background Campaign to win, and resigns the leadership when the test
// ends.
func elected(t *testing.T, what string, ch <-chan won) registry.Leadership {
	t.Helper()
	select {
	case w := <-ch:
		if w.err != nil {
			t.Fatalf("%s: Campaign: %v", what, w.err)
		}
		t.Cleanup(func() { w.l.Resign(context.Background()) })
		return w.l
	case <-time.After(electPatience):
		t.Fatalf("%s: Campaign still waits after %v", what, electPatience)
	}
	return nil
}

// wantLost waits for Lost to be closed.
func wantLost(t *testing.T, what string, l registry.Leadership) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(electPatience):
		t.Fatalf("%s: Lost still open after %v", what, electPatience)
	}
}

// wantLeader checks what Leader reports: value, or no leader when value is "".
func wantLeader(t *testing.T, r *consul, name, value string) {
	t.Helper()
	got, err := r.Leader(context.Background(), name)
	switch {
	case value == "" && !errors.Is(err, registry.ErrNoLeader):
		t.Fatalf("Leader(%q) = %q, %v; want ErrNoLeader", name, got, err)
	case value != "" && (err != nil || got != value):
		t.Fatalf("Leader(%q) = %q, %v; want %q", name, got, err, value)
	}
}

// sessions returns the sessions the agent knows.
func sessions(t *testing.T, c *api.Client) []*api.SessionEntry {
	t.Helper()
	list, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// TestConsulElect runs candidates, each its own registry (as each micro has its own plugin
// process), against a real agent: one leads, the others wait, Resign hands over, and a
// leader whose session is invalidated loses its leadership.
func TestConsulElect(t *testing.T) {
	agent := consultest.Start(t)
	cfg := registry.Config{Address: agent.Addr}
	logs := &syncBuffer{}
	ra := newRegistry(t, cfg, logs)
	rb := newRegistry(t, cfg, nil)
	c, err := api.NewClient(&api.Config{Address: agent.Addr})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	wantLeader(t, rb, "quota", "")
	a := elected(t, "a", campaign(ctx, ra, "quota", "node-a 127.0.0.1:9001"))
	wantLeader(t, rb, "quota", "node-a 127.0.0.1:9001")

	// The key and its session are as documented.
	pair, _, err := c.KV().Get("micro/elect/quota", nil)
	if err != nil || pair == nil || pair.Session == "" || string(pair.Value) != "node-a 127.0.0.1:9001" {
		t.Fatalf("key micro/elect/quota = %+v, %v", pair, err)
	}
	se, _, err := c.Session().Info(pair.Session, nil)
	if err != nil || se == nil {
		t.Fatalf("session %s: %+v, %v", pair.Session, se, err)
	}
	if se.TTL != "10s" || se.LockDelay != time.Millisecond || se.Behavior != api.SessionBehaviorDelete {
		t.Errorf("session TTL %s, lock-delay %v, behavior %s; want 10s, 1ms, delete", se.TTL, se.LockDelay, se.Behavior)
	}

	b := campaign(ctx, rb, "quota", "node-b")
	// A candidate gives up when its context ends, and destroys its session.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = rb.Campaign(cctx, "quota", "node-c")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"quota"`) {
		t.Fatalf("Campaign while another leads, until its context ends: %v", err)
	}
	eventually(t, electPatience, func() error {
		if n := len(sessions(t, c)); n != 2 {
			return fmt.Errorf("%d sessions, want a's and b's", n)
		}
		return nil
	})
	select {
	case w := <-b:
		t.Fatalf("b: Campaign returned (%v, %v) while a leads", w.l, w.err)
	default:
	}

	resigned := time.Now()
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	wantLost(t, "a after Resign", a)
	lb := elected(t, "b after a resigned", b)
	t.Logf("b took over %v after a resigned", time.Since(resigned))
	wantLeader(t, ra, "quota", "node-b")
	if err := a.Resign(ctx); err != nil {
		t.Errorf("second Resign: %v", err)
	}

	// b's session is invalidated (as when its process dies and the TTL runs out).
	pair, _, err = c.KV().Get("micro/elect/quota", nil)
	if err != nil || pair == nil {
		t.Fatalf("key micro/elect/quota = %+v, %v", pair, err)
	}
	if _, err := c.Session().Destroy(pair.Session, nil); err != nil {
		t.Fatal(err)
	}
	wantLost(t, "b after its session was destroyed", lb)
	wantLeader(t, ra, "quota", "")
	eventually(t, electPatience, func() error {
		if n := len(sessions(t, c)); n != 0 {
			return fmt.Errorf("%d sessions left", n)
		}
		return nil
	})

	// Someone deletes the key: the leader loses its leadership.
	d := elected(t, "d", campaign(ctx, ra, "other", "node-d"))
	if _, err := c.KV().Delete("micro/elect/other", nil); err != nil {
		t.Fatal(err)
	}
	wantLost(t, "d after its key was deleted", d)
	if !strings.Contains(logs.String(), "is no longer held by its session") {
		t.Errorf("no reason in the log:\n%s", logs)
	}
}

// TestConsulElectBadInput: names and values that cannot be are refused, with errors that
// name them, before anything reaches the agent.
func TestConsulElectBadInput(t *testing.T) {
	r := newConsul(nil) // not initialised: nothing may reach an agent
	ctx := context.Background()
	long := strings.Repeat("n", abi.MaxElectionName+1)
	for _, name := range []string{"", long, "a/b", "../x", "a b", "quota\n", "é", "a:b"} {
		want := fmt.Sprintf("%.40q", name)
		if name == "" {
			want = "empty"
		}
		if _, err := r.Campaign(ctx, name, "v"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Campaign(%q): err = %v, want one that names it", name, err)
		}
		if _, err := r.Leader(ctx, name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Leader(%q): err = %v, want one that names it", name, err)
		}
	}
	if _, err := r.Campaign(ctx, "quota", strings.Repeat("v", abi.MaxLeaderValue+1)); err == nil || !strings.Contains(err.Error(), "4097 bytes") {
		t.Errorf("Campaign with a value of 4097 bytes: err = %v", err)
	}
	if _, err := r.Campaign(ctx, "quota", "\xff"); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("Campaign with a value that is not UTF-8: err = %v", err)
	}
	if _, err := r.Campaign(ctx, "quota", "v"); err == nil || !strings.Contains(err.Error(), "not initialised") {
		t.Errorf("Campaign before Init: err = %v", err)
	}
}
