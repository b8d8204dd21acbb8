// Command hostile measures micro under hostile load: its memory through junk calls, and how
// it sheds calls past server.max_inflight.
//
// It builds micro and the greeter (or takes a micro binary with -micro, to compare builds),
// starts one greeter on loopback and a micro fronting it, and then:
//
//   - junk: calls made-up service names from -c callers, -junk times, and reports micro's
//     resident memory and /metrics series before (after a warm-up of a tenth as many) and
//     after;
//
//   - shed: with server.max_inflight = -inflight, -shedc callers (2 × -inflight by default)
//     call Greeter.Sleep {"ms":50} for -d, and it reports the answers by status, the rate
//     of each, and the latency of each.
//
//     go run ./bench/hostile -junk 50000 -inflight 64 -d 5s
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/bench/internal/proc"
)

func main() {
	microBin := flag.String("micro", "", "a micro binary to measure (default: build ./cmd/micro)")
	conc := flag.Int("c", 16, "concurrent callers of the junk calls")
	junkN := flag.Int("junk", 50000, "junk calls")
	inflight := flag.Int("inflight", 64, "server.max_inflight of the shedding run; 0 leaves it out and skips that run (for builds that do not know it)")
	shedC := flag.Int("shedc", 0, "concurrent callers of the shedding run (default 2 × -inflight)")
	dur := flag.Duration("d", 5*time.Second, "length of the shedding run")
	flag.Parse()
	if *shedC == 0 {
		*shedC = 2 * *inflight
	}
	if err := run(*microBin, *conc, *junkN, *inflight, *shedC, *dur); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}

func run(microBin string, conc, junkN, inflight, shedC int, dur time.Duration) error {
	dir, err := os.MkdirTemp("", "micro-hostile")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	greeterBin := filepath.Join(dir, "greeter")
	builds := map[string]string{greeterBin: "./examples/greeter"}
	if microBin == "" {
		microBin = filepath.Join(dir, "micro")
		builds[microBin] = "./cmd/micro"
	}
	if err := proc.Build(builds); err != nil {
		return err
	}
	greeter, appAddr, err := proc.StartGreeter(greeterBin)
	if err != nil {
		return err
	}
	defer proc.Stop(greeter)

	limit := ""
	if inflight > 0 {
		limit = fmt.Sprintf("max_inflight = %d", inflight)
	}
	cfgPath := filepath.Join(dir, "micro.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`[server]
ingress = "127.0.0.1:0"
%s
[registry]
dir = %q
[log]
level = "warn"
[services.greeter]
address = "http://%s"
`, limit, filepath.Join(dir, "registry"), appAddr)), 0o644); err != nil {
		return err
	}
	micro, ingress, err := proc.StartMicro(microBin, cfgPath)
	if err != nil {
		return err
	}
	defer proc.Stop(micro)
	base := "http://" + ingress
	if err := proc.WaitOK(base + "/greeter/Greeter.Hello"); err != nil {
		return err
	}

	// Junk.
	junk(base, 0, junkN/10, conc)
	rssBefore, err := proc.RSS(micro.Process.Pid)
	if err != nil {
		return err
	}
	seriesBefore := series(base)
	start := time.Now()
	junk(base, junkN/10, junkN, conc)
	took := time.Since(start)
	rssAfter, err := proc.RSS(micro.Process.Pid)
	if err != nil {
		return err
	}
	seriesAfter := series(base)
	fmt.Printf("junk: %d calls to made-up services in %v (%.0f/s)\n", junkN, took.Round(time.Millisecond), float64(junkN)/took.Seconds())
	fmt.Printf("  RSS %.1f MiB before, %.1f MiB after (%+.1f MiB); /metrics micro_ series %d before, %d after\n",
		mib(rssBefore), mib(rssAfter), mib(rssAfter-rssBefore), seriesBefore, seriesAfter)

	if inflight > 0 {
		shed(base, inflight, shedC, dur)
	}
	return nil
}

// junk calls made-up services from conc callers, numbered from to to.
func junk(base string, from, to, conc int) {
	next := make(chan int)
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	for range conc {
		wg.Go(func() {
			for i := range next {
				resp, err := client.Post(fmt.Sprintf("%s/junk-%d/X.Y%d", base, i, i), "application/json", nil)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	for i := from; i < to; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

// shed runs conc callers of a 50ms call for dur against a micro that admits inflight
// calls, and reports the answers.
func shed(base string, inflight, conc int, dur time.Duration) {
	type result struct {
		status  int
		latency time.Duration
	}
	var mu sync.Mutex
	var results []result
	retryAfter := 0
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	stopAt := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for time.Now().Before(stopAt) {
				start := time.Now()
				resp, err := client.Post(base+"/greeter/Greeter.Sleep", "application/json", bytes.NewReader([]byte(`{"ms":50}`)))
				r := result{latency: time.Since(start)}
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.status = resp.StatusCode
				}
				mu.Lock()
				results = append(results, r)
				if r.status == 503 && resp.Header.Get("Retry-After") != "" {
					retryAfter++
				}
				mu.Unlock()
				if r.status == 503 {
					// A caller that honours Retry-After would wait; this one comes back
					// after a short pause, to keep the pressure at twice the limit.
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	byStatus := map[int][]time.Duration{}
	for _, r := range results {
		byStatus[r.status] = append(byStatus[r.status], r.latency)
	}
	fmt.Printf("shed: server.max_inflight = %d, %d callers of a 50ms call for %v: %d answers\n", inflight, conc, dur, len(results))
	statuses := make([]int, 0, len(byStatus))
	for s := range byStatus {
		statuses = append(statuses, s)
	}
	slices.Sort(statuses)
	for _, s := range statuses {
		l := byStatus[s]
		slices.Sort(l)
		name := strconv.Itoa(s)
		if s == 0 {
			name = "error"
		}
		fmt.Printf("  %s: %d (%.1f%%, %.0f/s), p50 %v, p99 %v\n", name, len(l), 100*float64(len(l))/float64(len(results)),
			float64(len(l))/dur.Seconds(), l[len(l)/2].Round(10*time.Microsecond), l[len(l)*99/100].Round(10*time.Microsecond))
	}
	if n := len(byStatus[503]); n > 0 {
		fmt.Printf("  503s with Retry-After: %d of %d\n", retryAfter, n)
	}
}

func series(base string) int {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "micro_") {
			n++
		}
	}
	return n
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
