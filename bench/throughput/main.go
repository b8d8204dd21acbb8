// Command throughput measures calls through micro against calls straight to the app, at
// the same concurrency, in the same run.
//
// It builds micro and the greeter, starts one greeter on loopback, starts micro fronting
// it (as an app at a fixed address), and then alternates timed rounds of POST
// /Greeter.Hello straight to the greeter and through micro's ingress. With -wrappers, a
// second micro with both shipped wrappers on (never rejecting) joins the rounds. It prints
// requests per second, p50/p99 latency and the CPU time that the process called (the
// greeter, or the micro) spent per request, for each, and their ratios.
//
// With -nats, calls between two micro processes over HTTP and over the NATS transport
// plugin (with an in-process NATS server) join the rounds.
//
// With -cpuprofile DIR, every micro is built with a CPU profiler (a file added to its
// build with -overlay, so the repo is untouched) and profiled over the timed rounds, into
// DIR/NAME.pprof for each micro: compare them with go tool pprof -diff_base.
//
//	go run ./bench/throughput -c 16 -d 5s -rounds 3 -wrappers -nats
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/microhost/micro/bench/internal/proc"
)

func main() {
	conc := flag.Int("c", 16, "concurrent callers")
	dur := flag.Duration("d", 5*time.Second, "length of one round")
	rounds := flag.Int("rounds", 3, "rounds of each kind, alternated")
	wrappers := flag.Bool("wrappers", false, "also measure a micro with both shipped wrappers on")
	nats := flag.Bool("nats", false, "also measure calls between two micros over HTTP and over the NATS transport plugin")
	tracing := flag.Bool("tracing", false, "also measure micros at trace sample ratios 0, 0.01 (the default) and 1, spans kept in memory (no exporter)")
	adaptive := flag.Bool("adaptive", false, "also measure calls to an endpoint declared idempotent, with adaptive attempt timeouts and hedging on (the defaults) and off")
	profDir := flag.String("cpuprofile", "", "write a CPU profile of each micro over the timed rounds to `dir`/NAME.pprof")
	flag.Parse()
	if err := run(*conc, *dur, *rounds, *wrappers, *nats, *adaptive, *tracing, *profDir); err != nil {
		fmt.Fprintln(os.Stderr, "throughput:", err)
		os.Exit(1)
	}
}

func run(conc int, dur time.Duration, rounds int, wrappers, nats, adaptive, tracing bool, profDir string) error {
	var stops []*exec.Cmd
	dir, err := os.MkdirTemp("", "micro-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	microBin, greeterBin, natsBin := filepath.Join(dir, "micro"), filepath.Join(dir, "greeter"), filepath.Join(dir, "transport-nats")
	if err := proc.Build(map[string]string{greeterBin: "./examples/greeter", natsBin: "./plugins/transport-nats"}); err != nil {
		return err
	}
	var prof *profiler
	if profDir != "" {
		if prof, err = newProfiler(dir, profDir, microBin); err != nil {
			return err
		}
	} else if err := proc.Build(map[string]string{microBin: "./cmd/micro"}); err != nil {
		return err
	}
	greeter, appAddr, err := proc.StartGreeter(greeterBin)
	if err != nil {
		return err
	}
	defer proc.Stop(greeter)
	pids := map[string]int{} // the URL of a path → the process it calls

	// launch starts a micro on the config body (sections after [server]), each in a
	// directory of its own, and returns the URL of greeter's Hello at its ingress.
	launch := func(name, server, body string) (string, error) {
		cfg := fmt.Sprintf("[server]\ningress = \"127.0.0.1:0\"\n%s\n[log]\nlevel = \"warn\"\n%s", server, body)
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			return "", err
		}
		cfgPath := filepath.Join(dir, name, "micro.toml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			return "", err
		}
		if err := prof.prepare(name); err != nil {
			return "", err
		}
		micro, ingress, err := proc.StartMicro(microBin, cfgPath)
		if err != nil {
			return "", err
		}
		stops = append(stops, micro)
		url := "http://" + ingress + "/greeter/Greeter.Hello"
		pids[url] = micro.Process.Pid
		return url, proc.WaitOK(url)
	}
	var shutdowns []func() // run after the micros stopped
	defer func() {
		for _, c := range stops {
			proc.Stop(c)
		}
		for _, f := range shutdowns {
			f()
		}
	}()
	registry := func(name string) string {
		return fmt.Sprintf("[registry]\ndir = %q\n", filepath.Join(dir, name, "registry"))
	}
	fronts := fmt.Sprintf("[services.greeter]\naddress = \"http://%s\"\n", appAddr)
	paths := []struct{ name, url string }{{name: "direct", url: "http://" + appAddr + "/Greeter.Hello"}}
	pids[paths[0].url] = greeter.Process.Pid
	via, err := launch("plain", "", registry("plain")+fronts)
	if err != nil {
		return err
	}
	paths = append(paths, struct{ name, url string }{"micro", via})
	if wrappers {
		root, _ := os.Getwd()
		// Both shipped wrappers, set so that they never reject: their cost, not their effect.
		wrapped, err := launch("wrapped", `wrappers = ["ratelimit"]`, registry("wrapped")+fronts+fmt.Sprintf(`
[client]
wrappers = ["breaker"]
[wrappers.ratelimit]
source = %q
[wrappers.ratelimit.config]
rate = 1000000
burst = 1000000
[wrappers.breaker]
source = %q
[wrappers.breaker.config]
key = "node"
`, filepath.Join(root, "plugins/wrapper-ratelimit"), filepath.Join(root, "plugins/wrapper-breaker")))
		if err != nil {
			return err
		}
		paths = append(paths, struct{ name, url string }{"micro+wrappers", wrapped})
	}
	if tracing {
		// Every call is a hop through micro; what recording spans (or not) costs it.
		for _, ratio := range []string{"0", "0.01", "1"} {
			name := "tracing-" + strings.ReplaceAll(ratio, ".", "")
			via, err := launch(name, "", registry(name)+fronts+"[telemetry]\nsample_ratio = "+ratio+"\n")
			if err != nil {
				return err
			}
			paths = append(paths, struct{ name, url string }{"micro, sample_ratio " + ratio, via})
		}
	}
	if adaptive {
		// Calls that are safe to repeat get attempt timeouts and hedge delays from their
		// endpoint's latencies: what that bookkeeping costs a call that needs neither.
		idem := fronts + "idempotent = [\"Greeter.Hello\"]\n"
		on, err := launch("idempotent", "", registry("idempotent")+idem)
		if err != nil {
			return err
		}
		off, err := launch("idempotent-off", "", registry("idempotent-off")+idem+"[client]\nadaptive = { enabled = false }\nhedge = { enabled = false }\n")
		if err != nil {
			return err
		}
		noHedge, err := launch("idempotent-nohedge", "", registry("idempotent-nohedge")+idem+"[client]\nhedge = { enabled = false }\n")
		if err != nil {
			return err
		}
		paths = append(paths, struct{ name, url string }{"idempotent, adaptive+hedging", on},
			struct{ name, url string }{"idempotent, adaptive only", noHedge},
			struct{ name, url string }{"idempotent, neither", off})
	}
	if nats {
		// Two micros each: one fronts the greeter, the other (fronting nothing) is called,
		// so every call crosses the transport between two processes.
		if _, err := launch("http-server", "", registry("http")+fronts); err != nil {
			return err
		}
		viaHTTP, err := launch("http-client", "", registry("http"))
		if err != nil {
			return err
		}
		ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
		if err != nil {
			return err
		}
		go ns.Start()
		shutdowns = append(shutdowns, ns.Shutdown)
		if !ns.ReadyForConnections(10 * time.Second) {
			return fmt.Errorf("nats server not ready")
		}
		tr := fmt.Sprintf("[transport]\nplugin = \"nats\"\nurl = %q\npath = %q\n", ns.ClientURL(), natsBin)
		if _, err := launch("nats-server", "", registry("nats")+tr+fronts); err != nil {
			return err
		}
		viaNATS, err := launch("nats-client", "", registry("nats")+tr)
		if err != nil {
			return err
		}
		paths = append(paths, struct{ name, url string }{"2 micros, http", viaHTTP}, struct{ name, url string }{"2 micros, nats", viaNATS})
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}}
	results := make([][]result, len(paths))
	for _, p := range paths { // warm up
		measure(client, p.url, conc, dur/5)
	}
	profiled := prof.start(time.Duration(rounds*len(paths))*dur + time.Second)
	for range rounds {
		for i, p := range paths {
			cpu := cpuTime(pids[p.url])
			r := measure(client, p.url, conc, dur)
			r.cpu = cpuTime(pids[p.url]) - cpu
			results[i] = append(results[i], r)
		}
	}
	if err := profiled(); err != nil {
		return err
	}
	fmt.Printf("concurrency %d, %d rounds of %v each, alternated\n\n", conc, rounds, dur)
	fmt.Printf("%-15s %10s %10s %10s %8s %10s %12s\n", "path", "req/s", "p50", "p99", "errors", "cpu/req", "vs direct")
	base := merge(results[0])
	for i, p := range paths {
		r := merge(results[i])
		fmt.Printf("%-15s %10.0f %10v %10v %8d %10v %11.2fx\n", p.name, r.rps(), r.pct(50), r.pct(99), r.errors, r.cpuPerReq(), r.rps()/base.rps())
	}
	if wrappers {
		m, w := merge(results[1]), merge(results[2])
		fmt.Printf("\nwith both wrappers against without: throughput %.2f, p50 +%v, p99 +%v\n",
			w.rps()/m.rps(), w.pct(50)-m.pct(50), w.pct(99)-m.pct(99))
	}
	return nil
}

type result struct {
	lat    []time.Duration
	errors int
	took   time.Duration
	cpu    time.Duration // of the process called
}

func (r result) rps() float64 { return float64(len(r.lat)) / r.took.Seconds() }

// cpuPerReq is the CPU time the process called spent per request answered.
func (r result) cpuPerReq() time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return (r.cpu / time.Duration(len(r.lat))).Round(100 * time.Nanosecond)
}

func (r result) pct(p int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[(len(r.lat)-1)*p/100].Round(time.Microsecond)
}

func merge(rs []result) result {
	var out result
	for _, r := range rs {
		out.lat = append(out.lat, r.lat...)
		out.errors += r.errors
		out.took += r.took
		out.cpu += r.cpu
	}
	slices.Sort(out.lat)
	return out
}

// measure calls url from conc goroutines for d.
func measure(client *http.Client, url string, conc int, d time.Duration) result {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	body := []byte(`{"name":"Ada"}`)
	var (
		mu  sync.Mutex
		all result
		wg  sync.WaitGroup
	)
	start := time.Now()
	for range conc {
		wg.Go(func() {
			var lat []time.Duration
			errs := 0
			for ctx.Err() == nil {
				t0 := time.Now()
				resp, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					errs++
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all.lat = append(all.lat, lat...)
			all.errors += errs
			mu.Unlock()
		})
	}
	wg.Wait()
	all.took = time.Since(start)
	slices.Sort(all.lat)
	return all
}

// cpuTime returns the CPU time (user and system) that process pid has spent, from
// /proc/pid/stat; 0 where there is no /proc.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command, which is in parentheses and may hold spaces:
	// state is the first, utime the 12th and stime the 13th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is the unit of the times in /proc/pid/stat (USER_HZ), 100 on Linux.
const clockTicks = 100
