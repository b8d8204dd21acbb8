// Command proxy measures micro's call path against nginx, side by side, in one run, with
// wrk (issue 9).
//
// It builds micro, the greeter and both shipped wrappers, starts one greeter on loopback as
// the small JSON backend, and puts in front of it, each on a free loopback port:
//
//   - nginx, when it is on PATH, with a config generated in a temp dir: proxy_pass to an
//     upstream with a keepalive pool, proxy_http_version 1.1, Connection "", worker_processes
//     auto, access_log off, daemon off, and every pid, log and temp path in the temp dir;
//   - httputil.ReverseProxy, in this process, as an in-Go baseline (its Transport keeps up to
//     1,024 idle connections to the greeter);
//   - micro, fronting the greeter as [services.greeter] address = …, with no wrappers;
//   - micro with both shipped wrappers, set as the repo's micro.toml sets them (ratelimit on
//     inbound calls, at a rate so high it never rejects; breaker on client attempts);
//   - the remote path: a micro fronting the greeter and a second micro fronting nothing,
//     sharing an embedded registry dir, called at the second one's ingress, so that every
//     call crosses from one micro to the other.
//
// Every path is called as POST /greeter/Greeter.Hello {"name":"Ada"} (nginx and the
// ReverseProxy strip /greeter; the greeter itself is called as POST /Greeter.Hello). Each
// path must answer 200 with the greeting, then gets a warm-up, then -rounds rounds of
//
//	wrk -t T -c C -d D --latency -s post.lua URL
//
// alternated across the paths. post.lua (generated) sets the method and body, and prints
// wrk's own figures at full precision when wrk is done: requests, duration, the 50th and
// 99th percentiles of its latency distribution, non-2xx answers and socket errors. While a
// path is under load, the VmRSS of each micro on it is sampled every 20ms for its peak; its
// idle figure is taken after the check and before any load.
//
// It prints one markdown table (req/s, p50, p99, errors, ratios to nginx and to direct,
// micro's RSS), then one line per issue 9 target, met or not, with the figures. Everything
// shares the machine's cores: wrk, the proxies, the greeter, and this process, which serves
// the ReverseProxy path.
//
//	go run ./bench/proxy                       # 32 connections, 5s, 1 wrk thread, 1 round
//	go run ./bench/proxy -c 32 -d 5s -rounds 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/bench/internal/proc"
	"github.com/microhost/micro/host/wasm"
)

func main() {
	var o options
	flag.IntVar(&o.conns, "c", 32, "wrk connections (-c)")
	flag.DurationVar(&o.dur, "d", 5*time.Second, "length of one wrk run (-d), whole seconds")
	flag.IntVar(&o.threads, "t", 1, "wrk threads (-t)")
	flag.IntVar(&o.rounds, "rounds", 1, "rounds over every path, alternated")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "wrk warm-up of each path before the rounds, whole seconds; 0 for none")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "proxy:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	conns, threads, rounds int
	dur, warmup            time.Duration
}

// path is one way to reach the greeter, and what was measured on it.
type path struct {
	name   string
	url    string
	micros []*microProc // the micro processes on the path, whose memory is sampled
	runs   []wrkResult  // one per round
	note   string       // printed under the table
}

// microProc is one micro process and its resident memory.
type microProc struct {
	role       string // what it does on its path, when there is more than one
	cmd        *exec.Cmd
	idle, peak int64 // bytes: before any load, and the most sampled under load
}

// Names of the paths that the targets compare.
const (
	pDirect  = "direct"
	pNginx   = "nginx"
	pProxy   = "httputil.ReverseProxy"
	pMicro   = "micro"
	pWrapped = "micro + both wrappers"
	pRemote  = "2 micros (remote path)"
	// pRemoteOff is pRemote with security.mode = "off": plain HTTP between the micros, so
	// that the two rows give what mutual TLS costs with pooled connections.
	pRemoteOff = "2 micros, security off"
)

func run(o options) error {
	wrkBin, err := exec.LookPath("wrk")
	if err != nil {
		return errors.New("wrk is not on PATH; install it: apt-get install wrk")
	}
	if o.threads < 1 || o.conns < o.threads || o.rounds < 1 || o.dur < time.Second || o.warmup < 0 {
		return errors.New("want -t ≥ 1, -c ≥ -t, -rounds ≥ 1, -d ≥ 1s and -warmup ≥ 0")
	}
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "micro-proxy")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var stops []*exec.Cmd // stopped in reverse order: proxies before the greeter
	defer func() {
		for _, c := range slices.Backward(stops) {
			proc.Stop(c)
		}
	}()

	fmt.Fprintln(os.Stderr, "building micro, the greeter and the wrappers")
	microBin, greeterBin := filepath.Join(dir, "micro"), filepath.Join(dir, "greeter")
	if err := proc.Build(map[string]string{microBin: "./cmd/micro", greeterBin: "./examples/greeter"}); err != nil {
		return err
	}
	wasmCache := filepath.Join(root, ".cache", "bench-wasm")
	ratelimit, err := wasm.BuildCached(context.Background(), filepath.Join(root, "plugins", "wrapper-ratelimit"), wasmCache)
	if err != nil {
		return err
	}
	breaker, err := wasm.BuildCached(context.Background(), filepath.Join(root, "plugins", "wrapper-breaker"), wasmCache)
	if err != nil {
		return err
	}

	greeter, appAddr, err := proc.StartGreeter(greeterBin)
	if err != nil {
		return err
	}
	stops = append(stops, greeter)
	paths := []*path{{name: pDirect, url: "http://" + appAddr + "/Greeter.Hello"}}

	if _, err := exec.LookPath("nginx"); err != nil {
		fmt.Fprintln(os.Stderr, "nginx is not on PATH: its path is skipped (apt-get install nginx)")
	} else {
		nginx, addr, err := startNginx(filepath.Join(dir, "nginx"), appAddr, o.conns)
		if err != nil {
			return err
		}
		stops = append(stops, nginx)
		paths = append(paths, &path{name: pNginx, url: "http://" + addr + "/greeter/Greeter.Hello"})
	}

	proxyAddr, closeProxy, err := startReverseProxy(appAddr)
	if err != nil {
		return err
	}
	defer closeProxy()
	paths = append(paths, &path{name: pProxy, url: "http://" + proxyAddr + "/greeter/Greeter.Hello"})

	// The micros. Each standalone one has a registry of its own; the remote pair shares one.
	launch := func(name, server, body string) (*microProc, string, error) {
		cmd, u, err := startMicro(microBin, filepath.Join(dir, name), server, body)
		if cmd != nil {
			stops = append(stops, cmd)
		}
		return &microProc{cmd: cmd}, u, err
	}
	registry := func(name string) string {
		return fmt.Sprintf("[registry]\ndir = %q\n", filepath.Join(dir, "registry-"+name))
	}
	fronts := fmt.Sprintf("[services.greeter]\naddress = \"http://%s\"\n", appAddr)

	m, u, err := launch("plain", "", registry("plain")+fronts)
	if err != nil {
		return err
	}
	paths = append(paths, &path{name: pMicro, url: u, micros: []*microProc{m}})

	// Both wrappers as micro.toml sets them, except the rate: high enough never to reject,
	// so that their cost is measured, not their effect.
	wrappedCfg := registry("wrapped") + fronts + fmt.Sprintf(`
[client]
wrappers = ["breaker"]
[wrappers.ratelimit]
path = %q
services = ["greeter"]
[wrappers.ratelimit.config]
rate = 1000000000
burst = 1000000000
key = "service"
[wrappers.breaker]
path = %q
[wrappers.breaker.config]
key = "node_endpoint"
consecutive_failures = 3
cooldown = "5s"
`, ratelimit, breaker)
	// The first start compiles both guests in process (wazero), into the cache dir next to
	// its micro.toml, and holds on to much of that memory for a while. The micro measured
	// is a second start on the warm cache, as after any restart; the first one's idle RSS
	// is reported beside it.
	cold, _, err := launch("wrapped", `wrappers = ["ratelimit"]`, wrappedCfg)
	if err != nil {
		return err
	}
	time.Sleep(time.Second)
	coldIdle, err := proc.RSS(cold.cmd.Process.Pid)
	if err != nil {
		return err
	}
	proc.Stop(cold.cmd)
	m, u, err = launch("wrapped", `wrappers = ["ratelimit"]`, wrappedCfg)
	if err != nil {
		return err
	}
	paths = append(paths, &path{name: pWrapped, url: u, micros: []*microProc{m},
		note: fmt.Sprintf("measured on its second start, with the guests' compilation cache warm; its first start, which compiled them, idled at %.1f MiB", mib(coldIdle))})

	server, _, err := launch("remote-server", "", registry("remote")+fronts)
	if err != nil {
		return err
	}
	caller, u, err := launch("remote-caller", "", registry("remote"))
	if err != nil {
		return err
	}
	caller.role, server.role = "caller", "server"
	paths = append(paths, &path{name: pRemote, url: u, micros: []*microProc{caller, server}})
	off := "[security]\nmode = \"off\"\n"
	server, _, err = launch("remote-off-server", "", registry("remote-off")+off+fronts)
	if err != nil {
		return err
	}
	caller, u, err = launch("remote-off-caller", "", registry("remote-off")+off)
	if err != nil {
		return err
	}
	caller.role, server.role = "caller", "server"
	paths = append(paths, &path{name: pRemoteOff, url: u, micros: []*microProc{caller, server}})

	// Every path answers the greeting before it is measured; then the micros are idle.
	for _, p := range paths {
		if err := check(p.url); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	time.Sleep(time.Second)
	for _, p := range paths {
		for _, m := range p.micros {
			if m.idle, err = proc.RSS(m.cmd.Process.Pid); err != nil {
				return err
			}
		}
	}

	script := filepath.Join(dir, "post.lua")
	if err := os.WriteFile(script, []byte(postLua), 0o644); err != nil {
		return err
	}
	w := wrk{bin: wrkBin, script: script, threads: o.threads, conns: o.conns}
	if o.warmup >= time.Second {
		for _, p := range paths {
			fmt.Fprintf(os.Stderr, "warm-up: %s\n", p.name)
			if _, err := w.run(p.url, o.warmup); err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
		}
	}
	for round := range o.rounds {
		for _, p := range paths {
			stop := samplePeak(p.micros)
			r, err := w.run(p.url, o.dur)
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			fmt.Fprintf(os.Stderr, "round %d/%d %-24s %9.0f req/s  p50 %s  p99 %s  errors %s\n",
				round+1, o.rounds, p.name, r.rps(), ms(r.p50), ms(r.p99), r.errorText())
			p.runs = append(p.runs, r)
		}
	}

	report(os.Stdout, o, paths)
	return nil
}

// startNginx writes an nginx config into dir that proxies /greeter/ on a free loopback
// port to the app at appAddr, starts nginx on it in the foreground, and returns the process
// and its address once it answers the greeting.
func startNginx(dir, appAddr string, conns int) (*exec.Cmd, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	// nginx's workers drop to an unprivileged user when it runs as root. Its default group
	// "nobody" does not exist on every system (Debian has nogroup), so name nobody's own; and
	// they must be able to reach the temp paths.
	userLine := ""
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("nobody"); err == nil {
			if g, err := user.LookupGroupId(u.Gid); err == nil {
				userLine = fmt.Sprintf("user nobody %s;\n", g.Name)
			}
		}
		for d := dir; d != filepath.Dir(d) && d != os.TempDir(); d = filepath.Dir(d) {
			_ = os.Chmod(d, 0o755)
		}
	}
	addr, err := proc.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	cfg := fmt.Sprintf(`%sworker_processes auto;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path %[2]s/client_body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    keepalive_requests 1000000;
    upstream greeter {
        server %[3]s;
        keepalive %[4]d;
        keepalive_requests 1000000;
    }
    server {
        listen %[5]s;
        location /greeter/ {
            proxy_pass http://greeter/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, userLine, dir, appAddr, 2*conns, addr)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	args := []string{"-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf}
	if out, err := exec.Command("nginx", append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("nginx -t on %s: %w\n%s", conf, err, out)
	}
	cmd := exec.Command("nginx", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	if err := proc.WaitOK("http://" + addr + "/greeter/Greeter.Hello"); err != nil {
		errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return cmd, "", fmt.Errorf("nginx: %w; its error log:\n%s", err, errLog)
	}
	return cmd, addr, nil
}

// startReverseProxy serves httputil.ReverseProxy to the app at appAddr, with /greeter
// stripped, on a free loopback port, and returns its address and a func that stops it.
func startReverseProxy(appAddr string) (string, func(), error) {
	target := &url.URL{Scheme: "http", Host: appAddr}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: tr,
		// wrk cuts the calls in flight when a run ends, and each would be logged as a proxy
		// error; the errors that matter reach wrk as 502s.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.StripPrefix("/greeter", rp), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return l.Addr().String(), func() { srv.Close(); tr.CloseIdleConnections() }, nil
}

// startMicro writes a micro.toml into dir: an ingress on a free loopback port and the
// server lines, log level warn, then body. It starts micro on it, and returns it and the
// URL of greeter's Hello at its ingress once that answers 200. The process is returned
// even with an error, to be stopped.
func startMicro(bin, dir, server, body string) (*exec.Cmd, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	cfg := fmt.Sprintf("[server]\ningress = \"127.0.0.1:0\"\n%s\n[log]\nlevel = \"warn\"\n%s", server, body)
	cfgPath := filepath.Join(dir, "micro.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	cmd, ingress, err := proc.StartMicro(bin, cfgPath)
	if err != nil {
		return nil, "", err
	}
	u := "http://" + ingress + "/greeter/Greeter.Hello"
	return cmd, u, proc.WaitOK(u)
}

// check posts {"name":"Ada"} to u once it answers 200, and wants the greeting back.
func check(u string) error {
	if err := proc.WaitOK(u); err != nil {
		return err
	}
	resp, err := http.Post(u, "application/json", strings.NewReader(`{"name":"Ada"}`))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Hello, Ada!") {
		return fmt.Errorf("POST %s: %s %s, want 200 with the greeting", u, resp.Status, body)
	}
	return nil
}

// samplePeak samples the VmRSS of each micro every 20ms until the returned func is
// called, and raises each one's peak to the most it saw.
func samplePeak(micros []*microProc) (stop func()) {
	if len(micros) == 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			for _, m := range micros {
				if n, err := proc.RSS(m.cmd.Process.Pid); err == nil {
					m.peak = max(m.peak, n)
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// merge sums the rounds of a path: requests, time and errors add up; p50 and p99 are the
// medians of the rounds' own.
func merge(runs []wrkResult) wrkResult {
	var out wrkResult
	var p50s, p99s []time.Duration
	for _, r := range runs {
		out.requests += r.requests
		out.took += r.took
		out.non2xx += r.non2xx
		out.connect += r.connect
		out.read += r.read
		out.write += r.write
		out.timeout += r.timeout
		p50s, p99s = append(p50s, r.p50), append(p99s, r.p99)
	}
	out.p50, out.p99 = median(p50s), median(p99s)
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	n := len(ds)
	return (ds[(n-1)/2] + ds[n/2]) / 2
}

// report prints the table of every path and a line per issue 9 target.
func report(w io.Writer, o options, paths []*path) {
	byName := map[string]wrkResult{}
	micros := map[string][]*microProc{}
	for _, p := range paths {
		byName[p.name] = merge(p.runs)
		micros[p.name] = p.micros
	}
	direct := byName[pDirect]
	nginx, haveNginx := byName[pNginx]
	ratio := func(r, base wrkResult, have bool) string {
		if !have || base.rps() == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f×", r.rps()/base.rps())
	}

	fmt.Fprintf(w, "\nwrk -t%d -c%d -d%ds --latency, POST {\"name\":\"Ada\"}; %d round(s) per path, alternated; %s\n\n",
		o.threads, o.conns, int(o.dur.Round(time.Second)/time.Second), o.rounds, time.Now().Format("2006-01-02 15:04"))
	fmt.Fprintln(w, "| path | req/s | p50 | p99 | errors | vs nginx | vs direct | micro RSS idle → under load |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, p := range paths {
		r := byName[p.name]
		var mem []string
		for _, m := range p.micros {
			s := fmt.Sprintf("%.1f → %.1f MiB", mib(m.idle), mib(m.peak))
			if m.role != "" {
				s += " (" + m.role + ")"
			}
			mem = append(mem, s)
		}
		if len(mem) == 0 {
			mem = []string{"–"}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", p.name, thousands(r.rps()), ms(r.p50), ms(r.p99),
			r.errorText(), ratio(r, nginx, haveNginx), ratio(r, direct, true), strings.Join(mem, ", "))
	}

	fmt.Fprintln(w)
	for _, p := range paths {
		if p.note != "" {
			fmt.Fprintf(w, "%s: %s.\n", p.name, p.note)
		}
	}

	// The targets of issue 9. One that involves a path with errors is not met.
	fmt.Fprintln(w)
	if o.conns != 32 {
		fmt.Fprintf(w, "(the targets are set at 32 connections; this run used %d)\n", o.conns)
	}
	target := func(what string, met bool, figures string, involved ...string) {
		for _, name := range involved {
			if r := byName[name]; r.errors() > 0 {
				met, figures = false, figures+fmt.Sprintf("; %s had errors: %s", name, r.errorText())
			}
		}
		verdict := "not met"
		if met {
			verdict = "met"
		}
		fmt.Fprintf(w, "- %s: %s (%s)\n", what, verdict, figures)
	}
	wrapped, remote := byName[pWrapped], byName[pRemote]
	if haveNginx {
		target("micro + both wrappers ≥ 1.0× nginx's req/s", wrapped.rps() >= nginx.rps(),
			fmt.Sprintf("%.2f×: %s against %s req/s", wrapped.rps()/nginx.rps(), thousands(wrapped.rps()), thousands(nginx.rps())), pWrapped, pNginx)
		target("micro + both wrappers p99 ≤ nginx's", wrapped.p99 <= nginx.p99,
			fmt.Sprintf("%s against %s", ms(wrapped.p99), ms(nginx.p99)), pWrapped, pNginx)
	} else {
		fmt.Fprintln(w, "- micro + both wrappers ≥ 1.0× nginx's req/s, and p99 ≤ nginx's: not measured (nginx is not installed)")
	}
	target("micro + both wrappers ≥ 0.5× direct", wrapped.rps() >= 0.5*direct.rps(),
		fmt.Sprintf("%.2f×: %s against %s req/s", wrapped.rps()/direct.rps(), thousands(wrapped.rps()), thousands(direct.rps())), pWrapped, pDirect)
	if haveNginx {
		target("2 micros (remote path) ≥ 0.5× nginx", remote.rps() >= 0.5*nginx.rps(),
			fmt.Sprintf("%.2f×: %s against %s req/s", remote.rps()/nginx.rps(), thousands(remote.rps()), thousands(nginx.rps())), pRemote, pNginx)
	} else {
		fmt.Fprintln(w, "- 2 micros (remote path) ≥ 0.5× nginx: not measured (nginx is not installed)")
	}
	if off, ok := byName[pRemoteOff]; ok {
		target("mutual TLS between two micros costs < 10% of their throughput (pooled connections)", remote.rps() >= 0.9*off.rps(),
			fmt.Sprintf("%s req/s with mTLS against %s with security off: %.1f%% less", thousands(remote.rps()), thousands(off.rps()), 100*(1-remote.rps()/off.rps())), pRemote, pRemoteOff)
	}
	if m := micros[pWrapped]; len(m) == 1 {
		target("micro + both wrappers under load < 40 MiB RSS", m[0].peak < 40<<20, fmt.Sprintf("peak %.1f MiB", mib(m[0].peak)))
	}
	if m := micros[pMicro]; len(m) == 1 {
		target("micro without wrappers idle < 25 MiB RSS", m[0].idle < 25<<20, fmt.Sprintf("%.1f MiB", mib(m[0].idle)))
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// ms formats d in milliseconds with two decimals.
func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// thousands formats a rate as a whole number with thousands separated by commas.
func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
