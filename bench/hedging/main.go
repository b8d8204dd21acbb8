// Command hedging measures micro's adaptive attempt timeouts and hedging with real micro
// processes on loopback: three micros front a counter app (service "count", whose
// Count.Safe endpoint is declared safe to repeat), and callers with different [client]
// settings call it in turn, round after round, so that each sees the same conditions.
//
// Two runs:
//   - slow: one node answers 5% of its calls after -slow (200ms); round robin spreads the
//     calls. It reports p50, p99 and p99.9 and the extra executions (the counter app counts
//     each call id it runs) with hedging on and off.
//   - hung: one node accepts calls and never answers; each call has a 250ms budget. It
//     reports the share of calls that succeed and their p50 and p99, against the same
//     calls before the node hung.
//
// Run it from the repo root: go run ./bench/hedging [-n 3000] [-c 4]
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/bench/internal/proc"
)

func main() {
	n := flag.Int("n", 3000, "rounds of calls per run (each caller makes one call per round)")
	conc := flag.Int("c", 4, "concurrent rounds")
	slow := flag.Duration("slow", 200*time.Millisecond, "how long the slow node's slow answers take")
	flag.Parse()
	if err := run(*n, *conc, *slow); err != nil {
		fmt.Fprintln(os.Stderr, "hedging:", err)
		os.Exit(1)
	}
}

// setup is the running micros of a run.
type setup struct {
	dir, microBin, counterBin string
	countFile, faults         string
	procs                     []*exec.Cmd
}

func run(n, conc int, slow time.Duration) error {
	dir, err := os.MkdirTemp("", "micro-hedging")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &setup{dir: dir, microBin: filepath.Join(dir, "micro"), counterBin: filepath.Join(dir, "counter"),
		countFile: filepath.Join(dir, "count"), faults: filepath.Join(dir, "faults")}
	if err := proc.Build(map[string]string{s.microBin: "./cmd/micro", s.counterBin: "./e2e/testdata/counter"}); err != nil {
		return err
	}
	if err := os.MkdirAll(s.faults, 0o755); err != nil {
		return err
	}
	defer s.stop()
	for _, name := range []string{"n1", "n2", "n3"} {
		if _, err := s.micro(name, "", fmt.Sprintf(`
[services.count]
command = [%q]
health = "/health"
idempotent = ["Count.Safe"]
env = { COUNT_FILE = %q, COUNT_NAME = %q, FAULT_DIR = %q }
`, s.counterBin, s.countFile, name, s.faults)); err != nil {
			return err
		}
	}

	// The slow node.
	callers := []struct{ name, client string }{
		{"hedging on", `strategy = "round_robin"`},
		{"hedging off", `strategy = "round_robin"` + "\nhedge = { enabled = false }"},
		{"neither", `strategy = "round_robin"` + "\nhedge = { enabled = false }\nadaptive = { enabled = false }"},
	}
	var bases []string
	for _, c := range callers {
		base, err := s.micro("caller-"+strings.ReplaceAll(c.name, " ", "-"), c.client, "")
		if err != nil {
			return err
		}
		bases = append(bases, base)
	}
	for _, base := range bases {
		if err := waitNodes(base); err != nil {
			return err
		}
	}
	if err := s.fault("n3", fmt.Sprintf("slow 0.05 %s", slow)); err != nil {
		return err
	}
	targets := func(budget string, prefix string) []target {
		var ts []target
		for i, base := range bases {
			ts = append(ts, target{name: callers[i].name, base: base, budget: budget, prefix: fmt.Sprintf("%s%d-", prefix, i)})
		}
		return ts
	}
	rounds(n/10, conc, targets("2s", "warm"))
	got := rounds(n, conc, targets("2s", "slow"))
	execs, err := executions(s.countFile)
	if err != nil {
		return err
	}
	fmt.Printf("slow node: one of three nodes answers 5%% of its calls after %v; %d calls per caller, %d at once\n\n", slow, n, conc)
	fmt.Println("| caller | ok | p50 | p99 | p99.9 | extra executions |")
	fmt.Println("|---|---|---|---|---|---|")
	for i, r := range got {
		extra := 0
		for id, k := range execs {
			if strings.HasPrefix(id, targets("", "slow")[i].prefix) {
				extra += k - 1
			}
		}
		fmt.Printf("| %s | %s | %v | %v | %v | %.1f%% |\n", callers[i].name, r.okRate(), r.q(0.5), r.q(0.99), r.q(0.999), 100*float64(extra)/float64(r.calls))
	}

	// The hung node.
	if err := s.fault("n3", ""); err != nil {
		return err
	}
	healthy := rounds(n, conc, targets("250ms", "healthy"))
	if err := s.fault("n3", "hang"); err != nil {
		return err
	}
	hung := rounds(n, conc, targets("250ms", "hung"))
	fmt.Printf("\nhung node: one of three nodes accepts calls and never answers; budget 250ms; %d calls per caller\n\n", n)
	fmt.Println("| caller | ok, healthy | p99, healthy | ok, one hung | p50, one hung | p99, one hung |")
	fmt.Println("|---|---|---|---|---|---|")
	for i := range hung {
		fmt.Printf("| %s | %s | %v | %s | %v | %v |\n", callers[i].name, healthy[i].okRate(), healthy[i].q(0.99), hung[i].okRate(), hung[i].q(0.5), hung[i].q(0.99))
	}
	return nil
}

// micro starts a micro named name with the given [client] keys and extra TOML, and
// returns its ingress URL.
func (s *setup) micro(name, client, extra string) (string, error) {
	cfg := filepath.Join(s.dir, name+".toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[server]
ingress = "127.0.0.1:0"
inbound = "127.0.0.1:0"
[registry]
dir = %q
[security]
dir = %q
[client]
%s
[log]
level = "warn"
%s`, filepath.Join(s.dir, "registry"), filepath.Join(s.dir, "ca"), client, extra)), 0o644); err != nil {
		return "", err
	}
	cmd, ingress, err := proc.StartMicro(s.microBin, cfg)
	if err != nil {
		return "", err
	}
	s.procs = append(s.procs, cmd)
	return "http://" + ingress, nil
}

// waitNodes waits until the micro at base sees three nodes of count.
func waitNodes(base string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if body, err := get(base + "/services"); err == nil && strings.Count(body, `"address"`) >= 3 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("micro at %s never saw three nodes of count", base)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *setup) stop() {
	for _, p := range s.procs {
		proc.Stop(p)
	}
}

// fault sets node's fault ("" for none).
func (s *setup) fault(node, f string) error {
	path := filepath.Join(s.faults, node)
	if f == "" {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	return os.WriteFile(path, []byte(f), 0o644)
}

func get(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// target is one caller's calls.
type target struct {
	name, base, budget, prefix string
}

// result is what one caller's calls measured.
type result struct {
	calls, ok int
	lat       []time.Duration
}

func (r *result) okRate() string {
	return fmt.Sprintf("%.2f%%", 100*float64(r.ok)/float64(max(r.calls, 1)))
}

// q returns the q-th quantile of the latencies.
func (r *result) q(q float64) time.Duration {
	l := slices.Clone(r.lat)
	slices.Sort(l)
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(q*float64(len(l))))].Round(10 * time.Microsecond)
}

// rounds makes n rounds, conc at once; in each round every target makes one call.
func rounds(n, conc int, ts []target) []*result {
	out := make([]*result, len(ts))
	for i := range out {
		out[i] = &result{}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int)
	for range conc {
		wg.Go(func() {
			for round := range next {
				for i, t := range ts {
					status, d := call(client, t, fmt.Sprintf("%s%d", t.prefix, round))
					mu.Lock()
					out[i].calls++
					if status == http.StatusOK {
						out[i].ok++
					}
					out[i].lat = append(out[i].lat, d)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

// call makes one call of t with call id id.
func call(c *http.Client, t target, id string) (int, time.Duration) {
	req, err := http.NewRequest(http.MethodPost, t.base+"/count/Count.Safe", strings.NewReader("{}"))
	if err != nil {
		return 0, 0
	}
	req.Header.Set("X-Call-Id", id)
	req.Header.Set("Micro-Timeout", t.budget)
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, time.Since(start)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// executions reads the counter app's file: how often each call id ran.
func executions(path string) (map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	n := make(map[string]int)
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "exec" {
			n[f[1]]++
		}
	}
	return n, nil
}
