package plugin

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/registry-consul/consultest"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/registry/registrytest"
)

// electPatience bounds the waits of these tests for what must happen soon. They end as soon
// as it happens; this only matters when something is broken.
const electPatience = 15 * time.Second

// waitsUntilCanceled checks that a Campaign waits while another candidate leads: it gives
// up when its context ends.
func waitsUntilCanceled(t *testing.T, r *Registry, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	l, err := r.Campaign(ctx, name, "impatient")
	if err == nil {
		l.Resign(context.Background())
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), name) {
		t.Fatalf("Campaign while another leads, until its context ends: %v", err)
	}
}

// TestElect: candidates on the test plugin; one leads and the others wait; Resign hands
// the leadership over; a plugin that loses the leadership ends the stream.
func TestElect(t *testing.T) {
	r, _ := open(t, Config{})
	ctx := context.Background()

	registrytest.WantLeader(t, r, "quota", "")
	a := registrytest.Elected(t, "a", registrytest.Campaign(ctx, r, "quota", "node-a"), electPatience)
	registrytest.WantLeader(t, r, "quota", "node-a")
	b := registrytest.Campaign(ctx, r, "quota", "node-b")
	waitsUntilCanceled(t, r, "quota")
	registrytest.NotYet(t, "b", b)
	registrytest.StillLeads(t, "a", a)

	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "a after Resign", a, electPatience)
	lb := registrytest.Elected(t, "b after a resigned", b, electPatience)
	registrytest.WantLeader(t, r, "quota", "node-b")
	if err := a.Resign(ctx); err != nil {
		t.Errorf("second Resign: %v", err)
	}

	// The plugin loses b's leadership (the test plugin's trick for a lost session).
	if err := r.Register(ctx, &registry.Service{Name: "depose", Nodes: []*registry.Node{{ID: "quota", Address: "127.0.0.1:1"}}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "b after the plugin lost it", lb, electPatience)
	registrytest.WantLeader(t, r, "quota", "")

	// The Campaign's context does not bound the leadership it won.
	cctx, cancel := context.WithCancel(ctx)
	c, err := r.Campaign(cctx, "quota", "node-c")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	registrytest.WantLeader(t, r, "quota", "node-c")
	registrytest.StillLeads(t, "c after its Campaign's context ended", c)
	if err := c.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c's resignation to reach the plugin", func() bool {
		_, err := r.Leader(ctx, "quota")
		return errors.Is(err, registry.ErrNoLeader)
	})

	if _, err := r.Campaign(ctx, "quota", "\xff"); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("Campaign with a value that is not UTF-8: err = %v", err)
	}
	cctx, cancel = context.WithCancel(ctx)
	cancel()
	if _, err := r.Campaign(cctx, "quota", "v"); !errors.Is(err, context.Canceled) {
		t.Errorf("Campaign with a canceled context: err = %v", err)
	}
}

// TestElectPluginKilled: when the plugin process dies, its leaderships are lost, and a
// waiting Campaign campaigns again on the restarted plugin.
func TestElectPluginKilled(t *testing.T) {
	r, _ := open(t, Config{restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond})
	ctx := context.Background()
	a := registrytest.Elected(t, "a", registrytest.Campaign(ctx, r, "quota", "node-a"), electPatience)
	b := registrytest.Campaign(ctx, r, "quota", "node-b")
	waitsUntilCanceled(t, r, "quota")
	registrytest.NotYet(t, "b", b)

	pid := r.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "a after its plugin was killed", a, electPatience)
	registrytest.Elected(t, "b on the restarted plugin", b, electPatience)
	if r.pid() == pid {
		t.Errorf("b won on the killed plugin %d", pid)
	}
	registrytest.WantLeader(t, r, "quota", "node-b")
}

// TestElectClose: Close ends the leaderships and the waiting Campaigns.
func TestElectClose(t *testing.T) {
	r, _ := open(t, Config{})
	ctx := context.Background()
	a := registrytest.Elected(t, "a", registrytest.Campaign(ctx, r, "quota", "node-a"), electPatience)
	b := registrytest.Campaign(ctx, r, "quota", "node-b")
	waitsUntilCanceled(t, r, "quota")
	r.Close()
	registrytest.WantLost(t, "a after Close", a, electPatience)
	select {
	case w := <-b:
		if !errors.Is(w.Err, errClosed) {
			t.Errorf("a waiting Campaign at Close returned (%v, %v), want errClosed", w.Leadership, w.Err)
		}
	case <-time.After(electPatience):
		t.Fatal("a waiting Campaign did not return at Close")
	}
	if _, err := r.Campaign(ctx, "quota", "v"); !errors.Is(err, errClosed) {
		t.Errorf("Campaign after Close: err = %v", err)
	}
	if _, err := r.Leader(ctx, "quota"); !errors.Is(err, errClosed) {
		t.Errorf("Leader after Close: err = %v", err)
	}
}

// TestElectUnsupported: a plugin whose registry cannot elect leaders (or that was built
// before election) makes Campaign and Leader fail with errors.ErrUnsupported, naming it.
func TestElectUnsupported(t *testing.T) {
	r, _ := open(t, Config{env: []string{"MEMPLUGIN_NO_ELECT=1"}})
	ctx := context.Background()
	const want = `registry plugin "mem" cannot elect leaders: `
	_, err := r.Campaign(ctx, "quota", "v")
	if !errors.Is(err, errors.ErrUnsupported) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Campaign: err = %v, want ErrUnsupported and %q", err, want)
	}
	_, err = r.Leader(ctx, "quota")
	if !errors.Is(err, errors.ErrUnsupported) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Leader: err = %v, want ErrUnsupported and %q", err, want)
	}
	if err := r.Health(); err != nil {
		t.Errorf("Health after the unsupported calls = %v", err)
	}
}

// consulPlugin builds plugins/registry-consul once per test binary.
var consulPlugin = sync.OnceValues(func() (string, error) {
	dir, err := filepath.Abs(filepath.Dir(memBin))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "registry-consul")
	if out, err := exec.Command("go", "build", "-o", bin, "../../plugins/registry-consul").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build plugins/registry-consul: %w\n%s", err, out)
	}
	return bin, nil
})

// TestElectConsul: two micros, each with its own consul plugin process, elect a leader on
// a real Consul agent. When the leader's plugin is killed (SIGKILL), its session expires
// (Consul's TTL of 10s, which Consul may stretch to twice that) and the other takes over;
// when a leader resigns, the other takes over at once.
func TestElectConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Consul, and waits for a session to expire")
	}
	bin, err := consulPlugin()
	if err != nil {
		t.Fatal(err)
	}
	agent := consultest.Start(t)
	cfg := Config{Name: "consul", Path: bin, Address: agent.Addr,
		restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond}
	ra, _ := open(t, cfg)
	rb, _ := open(t, cfg)
	ctx := context.Background()

	registrytest.WantLeader(t, rb, "quota", "")
	a := registrytest.Elected(t, "a", registrytest.Campaign(ctx, ra, "quota", "node-a 127.0.0.1:9001"), electPatience)
	registrytest.WantLeader(t, rb, "quota", "node-a 127.0.0.1:9001")
	b := registrytest.Campaign(ctx, rb, "quota", "node-b 127.0.0.1:9002")
	waitsUntilCanceled(t, rb, "quota")
	registrytest.NotYet(t, "b", b)

	pid := ra.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	registrytest.WantLost(t, "a after its plugin was killed", a, electPatience)
	// Loose: Consul invalidates a session between one and two TTLs after its last renewal.
	lb := registrytest.Elected(t, "b after a's plugin was killed", b, 90*time.Second)
	t.Logf("b took over %v after a's plugin was killed", time.Since(killed))
	registrytest.WantLeader(t, ra, "quota", "node-b 127.0.0.1:9002")

	// a, on its restarted plugin, waits; b resigns; a takes over.
	a2 := registrytest.Campaign(ctx, ra, "quota", "node-a again")
	waitsUntilCanceled(t, ra, "quota")
	registrytest.NotYet(t, "a again", a2)
	resigned := time.Now()
	if err := lb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	registrytest.WantLost(t, "b after Resign", lb, electPatience)
	registrytest.Elected(t, "a after b resigned", a2, electPatience)
	t.Logf("a took over %v after b resigned", time.Since(resigned))
	registrytest.WantLeader(t, rb, "quota", "node-a again")
}
