package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/microhost/micro/e2e/browsertest"
	"github.com/microhost/micro/runtime/registry"
)

// TestDashboard: the dashboard at /ui, in headless Chromium, shows greeter's two nodes
// with live figures. When one node fails, its breaker turns open on the page without a
// reload, and closed again once the node recovers; a failed call opens its trace as a
// waterfall. The page fetches nothing off loopback and logs no error. `micro top -once`
// shows the same routes.
//
// With MICRO_DASHBOARD_SCREENSHOT set to a path, the screenshot taken while the breaker
// is open is written there (docs/dashboard.png is made so).
func TestDashboard(t *testing.T) {
	t.Parallel()
	failDir := t.TempDir()
	// Round robin, so that both nodes have calls in every window whatever their latency.
	cfg := breakerConfig(t.TempDir(), failDir, "\n[telemetry]\nsample_ratio = 1\n")
	m := startMicro(t, strings.Replace(cfg, "[client]", "[client]\nstrategy = \"round_robin\"", 1))
	ids := nodesOf(t, m, "greeter", 2)
	failing := nodeOfInstance(t, m, "greeter", "greeter-1")

	// A steady load of 50 calls a second.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			_, _ = m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	})

	b := browsertest.Start(t)
	b.Navigate(m.ingress + "/ui")
	for _, id := range ids {
		b.WaitText(fmt.Sprintf(`[data-node=%q]`, id), id, 20*time.Second)
		// Live figures: the node serves calls, all of them fine.
		b.WaitText(fmt.Sprintf(`[data-node=%q] [data-col="success"]`, id), "100", 20*time.Second)
	}
	b.WaitText("#live", "live", 10*time.Second)

	// greeter-1 fails: its breaker opens, and the page shows it without a reload.
	if err := os.WriteFile(filepath.Join(failDir, "greeter-1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	breaker := fmt.Sprintf(`[data-node=%q] [data-col="breaker"]`, failing)
	b.WaitText(breaker, "open", 20*time.Second)
	b.WaitText("#failed", "greeter", 20*time.Second)
	shot := os.Getenv("MICRO_DASHBOARD_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "dashboard.png")
	}
	b.Screenshot(shot)

	// A failed call opens its trace as a waterfall.
	cctx, ccancel := context.WithTimeout(b.Context(), 10*time.Second)
	err := chromedp.Do(cctx, chromedp.Click(`#failed [data-trace]`, chromedp.NodeVisible))
	ccancel()
	if err != nil {
		t.Fatalf("clicking a failed call: %v", err)
	}
	b.WaitText("#waterfall", "attempt", 10*time.Second)
	b.WaitText("#waterfall", "ingress", 10*time.Second)

	// greeter-1 recovers: after the cool-down a probe closes its breaker.
	if err := os.Remove(filepath.Join(failDir, "greeter-1")); err != nil {
		t.Fatal(err)
	}
	b.WaitText(breaker, "closed", 30*time.Second)
	b.AssertClean()

	// micro top shows the routes the dashboard does.
	addr := strings.TrimPrefix(m.ingress, "http://")
	out, err := exec.Command(bins.micro, "top", "--address", addr, "-once").CombinedOutput()
	if err != nil {
		t.Fatalf("micro top -once: %v\n%s", err, out)
	}
	for _, id := range ids {
		if !strings.Contains(string(out), id) {
			t.Errorf("micro top -once does not show node %s:\n%s", id, out)
		}
	}
	if !strings.Contains(string(out), "Greeter.Hello") {
		t.Errorf("micro top -once does not show Greeter.Hello:\n%s", out)
	}
}

// nodeOfInstance returns the ID of the node of service whose instance is instance, as
// the registry lists it at m.
func nodeOfInstance(t *testing.T, m *micro, service, instance string) string {
	t.Helper()
	raw, err := m.servicesRaw()
	if err != nil {
		t.Fatal(err)
	}
	var list []*registry.Service
	if err := json.Unmarshal([]byte(raw), &list); err != nil {
		t.Fatalf("/services: %v: %s", err, raw)
	}
	for _, s := range list {
		for _, n := range s.Nodes {
			if s.Name == service && n.Metadata["instance"] == instance {
				return n.ID
			}
		}
	}
	t.Fatalf("no node of %s is instance %s: %s", service, instance, raw)
	return ""
}
