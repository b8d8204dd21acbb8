// Package registrytest holds helpers for tests of registry.Elector implementations: they run
// Campaigns in the background and check what the leaderships and Leader report.
//
// It imports only the standard library and runtime/registry, and only _test files import it.
package registrytest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/registry"
)

// Won is what a Campaign returned.
type Won struct {
	Leadership registry.Leadership
	Err        error
}

// Campaign runs e.Campaign in the background and delivers its result on the returned
// channel, which holds it until it is read.
func Campaign(ctx context.Context, e registry.Elector, name, value string) <-chan Won {
	ch := make(chan Won, 1)
	go func() {
		l, err := e.Campaign(ctx, name, value)
		ch <- Won{l, err}
	}()
	return ch
}

// Elected waits up to within for a background Campaign to win, and resigns the leadership
// when the test ends. It fails the test if the Campaign fails or still waits.
func Elected(t testing.TB, what string, ch <-chan Won, within time.Duration) registry.Leadership {
	t.Helper()
	select {
	case w := <-ch:
		if w.Err != nil {
			t.Fatalf("%s: Campaign: %v", what, w.Err)
		}
		t.Cleanup(func() { w.Leadership.Resign(context.Background()) })
		return w.Leadership
	case <-time.After(within):
		t.Fatalf("%s: Campaign still waits after %v", what, within)
	}
	return nil
}

// NotYet checks that a background Campaign has not returned.
func NotYet(t testing.TB, what string, ch <-chan Won) {
	t.Helper()
	select {
	case w := <-ch:
		t.Fatalf("%s: Campaign returned (%v, %v) while another candidate leads", what, w.Leadership, w.Err)
	default:
	}
}

// WantLost waits up to within for l's Lost to be closed.
func WantLost(t testing.TB, what string, l registry.Leadership, within time.Duration) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(within):
		t.Fatalf("%s: Lost still open after %v", what, within)
	}
}

// StillLeads checks that l's Lost is open.
func StillLeads(t testing.TB, what string, l registry.Leadership) {
	t.Helper()
	select {
	case <-l.Lost():
		t.Fatalf("%s: Lost is closed", what)
	default:
	}
}

// WantLeader checks what e.Leader reports for name: value, or registry.ErrNoLeader when
// value is "".
func WantLeader(t testing.TB, e registry.Elector, name, value string) {
	t.Helper()
	got, err := e.Leader(context.Background(), name)
	switch {
	case value == "" && !errors.Is(err, registry.ErrNoLeader):
		t.Fatalf("Leader(%q) = %q, %v; want ErrNoLeader", name, got, err)
	case value != "" && (err != nil || got != value):
		t.Fatalf("Leader(%q) = %q, %v; want %q", name, got, err, value)
	}
}
