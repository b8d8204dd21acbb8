package config

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wait bounds every wait in these tests; it only keeps a broken test from hanging.
const wait = 10 * time.Second

// recorder is a slog.Handler that passes every record to a channel.
type recorder struct{ records chan slog.Record }

func (h recorder) Enabled(context.Context, slog.Level) bool { return true }
func (h recorder) Handle(_ context.Context, r slog.Record) error {
	h.records <- r.Clone()
	return nil
}
func (h recorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recorder) WithGroup(string) slog.Handler      { return h }

// watched is a running Watch.
type watched struct {
	t       *testing.T
	path    string
	applied chan *Config
	records chan slog.Record
}

// startWatch runs l.Watch until the test ends and waits until it watches.
func startWatch(t *testing.T, l *Loader) *watched {
	t.Helper()
	w := &watched{t: t, path: l.Path, applied: make(chan *Config, 16), records: make(chan slog.Record, 1024)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- l.Watch(ctx, slog.New(recorder{w.records}), func(c *Config) { w.applied <- c })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v", err)
			}
		case <-time.After(wait):
			t.Error("Watch did not return after its context ended")
		}
	})
	w.waitLog("config: watching", "")
	return w
}

// write writes the config file in place.
func (w *watched) write(content string) {
	w.t.Helper()
	if err := os.WriteFile(w.path, []byte(content), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// waitLog waits for a record with message msg whose attributes' text contains substr.
func (w *watched) waitLog(msg, substr string) slog.Record {
	w.t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case r := <-w.records:
			var attrs strings.Builder
			r.Attrs(func(a slog.Attr) bool {
				fmt.Fprintf(&attrs, "%s=%v ", a.Key, a.Value)
				return true
			})
			if r.Message == msg && strings.Contains(attrs.String(), substr) {
				return r
			}
		case <-deadline:
			w.t.Fatalf("no log record %q with %q", msg, substr)
		}
	}
}

// waitApplied waits for apply and returns its config.
func (w *watched) waitApplied() *Config {
	w.t.Helper()
	select {
	case c := <-w.applied:
		return c
	case <-time.After(wait):
		w.t.Fatal("apply was not called")
		return nil
	}
}

// noneApplied fails if apply has been called.
func (w *watched) noneApplied() {
	w.t.Helper()
	select {
	case c := <-w.applied:
		w.t.Fatalf("apply called with %+v", c.Client)
	default:
	}
}

func strategyFile(strategy string) string {
	return fmt.Sprintf("[client]\nstrategy = %q\n", strategy)
}

func TestWatchAppliesGoodEditsOnly(t *testing.T) {
	l := &Loader{Path: writeConfig(t, strategyFile("random"))}
	mustLoad(t, l)
	w := startWatch(t, l)

	w.write(strategyFile("round_robin"))
	if c := w.waitApplied(); c.Client.Strategy != "round_robin" {
		t.Fatalf("applied strategy %q, want round_robin", c.Client.Strategy)
	}

	// A bad value is logged, naming the key, and not applied.
	w.write(strategyFile("fastest"))
	w.waitLog("config: reload failed, keeping the running config", `client.strategy: unknown strategy "fastest"`)
	w.noneApplied()

	// So is a syntax error.
	w.write("[client]\nstrategy = \n")
	w.waitLog("config: reload failed, keeping the running config", l.Path+":2:")
	w.noneApplied()

	// A later fix applies.
	w.write(strategyFile("p2c_ewma"))
	if c := w.waitApplied(); c.Client.Strategy != "p2c_ewma" {
		t.Fatalf("applied strategy %q, want p2c_ewma", c.Client.Strategy)
	}

	// The same config again is not applied; neither is a change that keeps the config.
	w.write(strategyFile("p2c_ewma"))
	w.waitLog("config: file changed, config unchanged", "")
	w.write("# a comment\n" + strategyFile("p2c_ewma"))
	w.waitLog("config: file changed, config unchanged", "")
	w.noneApplied()
}

func TestWatchReplacedFile(t *testing.T) {
	t.Run("atomic rename", func(t *testing.T) {
		l := &Loader{Path: writeConfig(t, strategyFile("random"))}
		mustLoad(t, l)
		w := startWatch(t, l)
		tmp := filepath.Join(filepath.Dir(l.Path), ".micro.toml.swp")
		if err := os.WriteFile(tmp, []byte(strategyFile("round_robin")), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, l.Path); err != nil {
			t.Fatal(err)
		}
		if c := w.waitApplied(); c.Client.Strategy != "round_robin" {
			t.Fatalf("applied strategy %q, want round_robin", c.Client.Strategy)
		}
	})

	t.Run("delete then create", func(t *testing.T) {
		l := &Loader{Path: writeConfig(t, strategyFile("random"))}
		mustLoad(t, l)
		w := startWatch(t, l)
		if err := os.Remove(l.Path); err != nil {
			t.Fatal(err)
		}
		w.waitLog("config: reload failed, keeping the running config", "no such file")
		w.noneApplied()
		w.write(strategyFile("round_robin"))
		if c := w.waitApplied(); c.Client.Strategy != "round_robin" {
			t.Fatalf("applied strategy %q, want round_robin", c.Client.Strategy)
		}
	})

	t.Run("truncate then write", func(t *testing.T) {
		l := &Loader{Path: writeConfig(t, strategyFile("random"))}
		mustLoad(t, l)
		w := startWatch(t, l)
		if err := os.Truncate(l.Path, 0); err != nil {
			t.Fatal(err)
		}
		// An empty file is an edit in progress, not a reset to the defaults.
		w.waitLog("config: file is empty, keeping the running config", "")
		w.noneApplied()
		// A partial file that does not parse is logged too.
		w.write("[client]\nstrategy = \"round")
		w.waitLog("config: reload failed, keeping the running config", l.Path+":2:")
		w.noneApplied()
		w.write(strategyFile("round_robin"))
		if c := w.waitApplied(); c.Client.Strategy != "round_robin" {
			t.Fatalf("applied strategy %q, want round_robin", c.Client.Strategy)
		}
	})

	t.Run("other files ignored", func(t *testing.T) {
		l := &Loader{Path: writeConfig(t, strategyFile("random"))}
		mustLoad(t, l)
		w := startWatch(t, l)
		other := filepath.Join(filepath.Dir(l.Path), "other.toml")
		if err := os.WriteFile(other, []byte("garbage ="), 0o644); err != nil {
			t.Fatal(err)
		}
		// The next event for micro.toml is the first that reloads.
		w.write(strategyFile("round_robin"))
		if c := w.waitApplied(); c.Client.Strategy != "round_robin" {
			t.Fatalf("applied strategy %q, want round_robin", c.Client.Strategy)
		}
		for len(w.records) > 0 {
			if r := <-w.records; r.Level >= slog.LevelWarn {
				t.Errorf("unexpected log: %s", r.Message)
			}
		}
	})
}

func TestWatchWithoutPriorLoad(t *testing.T) {
	l := &Loader{Path: writeConfig(t, strategyFile("random"))}
	w := startWatch(t, l) // loads a baseline, not applied
	w.write(strategyFile("random"))
	w.waitLog("config: file changed, config unchanged", "")
	w.noneApplied()
	w.write(strategyFile("round_robin"))
	if c := w.waitApplied(); c.Client.Strategy != "round_robin" {
		t.Fatalf("applied strategy %q, want round_robin", c.Client.Strategy)
	}
}

func TestWatchKeepsEnvAndFlags(t *testing.T) {
	l := &Loader{
		Path:  writeConfig(t, strategyFile("random")),
		Env:   []string{"MICRO_CLIENT_ATTEMPTS=7"},
		Flags: map[string]string{"client.strategy": "round_robin"},
	}
	mustLoad(t, l)
	w := startWatch(t, l)
	w.write(strategyFile("random") + "timeout = \"1s\"\n")
	c := w.waitApplied()
	if c.Client.Timeout != time.Second || c.Client.Attempts != 7 || c.Client.Strategy != "round_robin" {
		t.Errorf("applied %+v; want timeout from the file, attempts from env, strategy from flags", c.Client)
	}
}

func TestWatchNeedsAFile(t *testing.T) {
	l := &Loader{}
	if err := l.Watch(context.Background(), slog.New(recorder{make(chan slog.Record, 8)}), func(*Config) {}); err == nil {
		t.Error("Watch without a path succeeded")
	}
	l = &Loader{Path: filepath.Join(t.TempDir(), "no", "such", "micro.toml")}
	if err := l.Watch(context.Background(), slog.New(recorder{make(chan slog.Record, 8)}), func(*Config) {}); err == nil {
		t.Error("Watch in a missing directory succeeded")
	}
}

// TestWatchReportsReloads: OnReload hears how each reload went, a failure with its error.
func TestWatchReportsReloads(t *testing.T) {
	type report struct {
		result string
		err    error
	}
	reports := make(chan report, 10)
	l := &Loader{Path: writeConfig(t, strategyFile("random")), OnReload: func(result string, err error) { reports <- report{result, err} }}
	mustLoad(t, l)
	w := startWatch(t, l)
	next := func() report {
		t.Helper()
		select {
		case r := <-reports:
			return r
		case <-time.After(wait):
			t.Fatal("OnReload was not called")
			return report{}
		}
	}
	w.write(strategyFile("round_robin"))
	if r := next(); r.result != ReloadApplied || r.err != nil {
		t.Fatalf("good edit: %+v, want applied", r)
	}
	w.waitApplied()
	w.write(strategyFile("fastest"))
	if r := next(); r.result != ReloadFailed || r.err == nil || !strings.Contains(r.err.Error(), "client.strategy") {
		t.Fatalf("bad edit: %+v, want failed naming client.strategy", r)
	}
	w.write("# a comment\n" + strategyFile("round_robin"))
	if r := next(); r.result != ReloadUnchanged || r.err != nil {
		t.Fatalf("same config: %+v, want unchanged", r)
	}
}
