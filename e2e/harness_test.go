// Package e2e tests micro end to end: real micro processes, real greeter apps, a shared
// embedded registry, all on loopback.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/host/wasm"
	"github.com/microhost/micro/runtime/security"
)

// bins holds the binaries TestMain builds.
var bins struct {
	micro, greeter, consulPlugin string
	natsPlugin                   string
	brokerNats                   string // plugins/broker-nats
	counter                      string // e2e/testdata/counter
	grpcapp                      string // e2e/testdata/grpcapp
	subscriber                   string // e2e/testdata/subscriber
	ratelimit, breaker           string // .wasm
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "micro-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.micro = filepath.Join(dir, "micro")
	bins.greeter = filepath.Join(dir, "greeter")
	bins.consulPlugin = filepath.Join(dir, "registry-consul")
	bins.natsPlugin = filepath.Join(dir, "transport-nats")
	bins.brokerNats = filepath.Join(dir, "broker-nats")
	bins.counter = filepath.Join(dir, "counter")
	bins.grpcapp = filepath.Join(dir, "grpcapp")
	bins.subscriber = filepath.Join(dir, "subscriber")
	for out, pkg := range map[string]string{bins.micro: "../cmd/micro", bins.greeter: "../examples/greeter", bins.consulPlugin: "../plugins/registry-consul", bins.natsPlugin: "../plugins/transport-nats", bins.brokerNats: "../plugins/broker-nats", bins.counter: "./testdata/counter", bins.grpcapp: "./testdata/grpcapp", bins.subscriber: "./testdata/subscriber"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", pkg, err)
			os.Exit(1)
		}
	}
	bins.ratelimit = filepath.Join(dir, "ratelimit.wasm")
	bins.breaker = filepath.Join(dir, "breaker.wasm")
	for out, src := range map[string]string{bins.ratelimit: "../plugins/wrapper-ratelimit", bins.breaker: "../plugins/wrapper-breaker"} {
		if err := wasm.Build(context.Background(), src, out); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", src, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// micro is a running `micro run` process.
type micro struct {
	t       *testing.T
	cmd     *exec.Cmd
	cfgPath string
	ingress string // base URL
	inbound string // host:port
	logs    *syncBuffer
	done    chan struct{}
	exitErr error
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// baseConfig is a micro.toml for tests: loopback ports picked by the kernel, the shared
// registry in regDir with a short TTL, a local CA beside it (caDir) that the micros of the
// test share, and the given extra TOML.
func baseConfig(regDir, extra string) string {
	return fmt.Sprintf(`
[server]
ingress = "127.0.0.1:0"
inbound = "127.0.0.1:0"
drain_timeout = "5s"

[registry]
dir = %q
ttl = "2s"
heartbeat = "500ms"
cache_ttl = "5s"

[security]
dir = %q

[client]
timeout = "5s"
backoff = "5ms"
backoff_max = "50ms"

[log]
level = "debug"
%s`, regDir, caDir(regDir), extra)
}

// caDir is the directory of the local CA of the micros that share the registry in regDir.
func caDir(regDir string) string { return regDir + "-ca" }

// testTLS is a client TLS config for a test that talks to an inbound server itself: a
// certificate for services from the local CA of the micros of regDir.
func testTLS(t *testing.T, regDir string, services ...string) *tls.Config {
	t.Helper()
	ca, err := security.OpenLocalCA(caDir(regDir), security.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(security.IdentitySpec{Services: services, Micro: "e2e-test"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		// The inbound's certificate names SPIFFE IDs, not the loopback address it listens
		// on; these tests check the server's side.
		InsecureSkipVerify: true,
		NextProtos:         []string{"http/1.1"},
	}
}

// greeterService declares a greeter service run from the test's greeter binary. As in the
// repo's micro.toml, Greeter.Hello and Greeter.Sleep are declared safe to repeat.
func greeterService(name string, instances int, extra string) string {
	return fmt.Sprintf(`
[services.%s]
version = "1.0.0"
metadata = { zone = "a" }
command = [%q]
instances = %d
health = "/health"
idempotent = ["Greeter.Hello", "Greeter.Sleep"]
%s`, name, bins.greeter, instances, extra)
}

var listenLine = regexp.MustCompile(`micro listening on (\S+) \(ingress\) and (\S+) \(inbound\)`)

// startMicro writes cfg to a micro.toml in a new directory and runs micro on it. It
// returns once micro serves and every declared service has all its instances ready.
func startMicro(t *testing.T, cfg string) *micro {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "micro.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &micro{t: t, cfgPath: path, logs: &syncBuffer{}, done: make(chan struct{})}
	m.cmd = exec.Command(bins.micro, "run", "-c", path)
	m.cmd.Stderr = m.logs
	stdout, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		m.exitErr = m.cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(func() {
		m.kill(syscall.SIGINT)
		if t.Failed() {
			t.Logf("micro log (%s):\n%s", path, m.logs)
		}
	})
	select {
	case line := <-lines:
		sub := listenLine.FindStringSubmatch(line)
		if sub == nil {
			t.Fatalf("unexpected first line: %q", line)
		}
		m.ingress = "http://" + sub[1]
		m.inbound = sub[2]
	case <-m.done:
		t.Fatalf("micro exited at start: %v\n%s", m.exitErr, m.logs)
	case <-time.After(60 * time.Second):
		t.Fatalf("micro did not start\n%s", m.logs)
	}
	m.waitHealthy()
	return m
}

// waitHealthy polls /health until micro reports ok.
func (m *micro) waitHealthy() {
	m.t.Helper()
	eventually(m.t, 60*time.Second, func() error {
		resp, err := http.Get(m.ingress + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("health %d: %s", resp.StatusCode, b)
		}
		return nil
	})
}

// kill sends sig and, for a graceful signal, waits for micro to exit.
func (m *micro) kill(sig syscall.Signal) {
	select {
	case <-m.done:
		return
	default:
	}
	_ = m.cmd.Process.Signal(sig)
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
}

// writeConfig replaces micro.toml the way editors do: a new file renamed over the old.
func (m *micro) writeConfig(cfg string) {
	m.t.Helper()
	tmp := m.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, m.cfgPath); err != nil {
		m.t.Fatal(err)
	}
}

// reply is a call's outcome.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("reply %d is not JSON: %q", r.status, r.body)
	}
	return v
}

// call posts body to /{service}/{endpoint} at micro's ingress.
func (m *micro) call(service, endpoint, body string, header map[string]string) (reply, error) {
	return m.post("/"+service+"/"+endpoint, body, header)
}

// post posts body to path at micro's ingress.
func (m *micro) post(path, body string, header map[string]string) (reply, error) {
	req, err := http.NewRequest(http.MethodPost, m.ingress+path, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// httpGet returns the body of a GET of url.
func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// servicesRaw returns the ingress's /services answer as it is.
func (m *micro) servicesRaw() (string, error) {
	resp, err := http.Get(m.ingress + "/services")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// services lists the registry's services through the ingress.
func (m *micro) services() (map[string][]string, error) {
	resp, err := http.Get(m.ingress + "/services")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list []struct {
		Name  string `json:"name"`
		Nodes []struct {
			ID string `json:"id"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	out := make(map[string][]string)
	for _, s := range list {
		for _, n := range s.Nodes {
			out[s.Name] = append(out[s.Name], n.ID)
		}
	}
	return out, nil
}

// children returns the PIDs of micro's live child processes, from every thread's list.
func (m *micro) children() []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", m.cmd.Process.Pid))
	var pids []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, field := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(field, &pid); err == nil && !zombie(pid) {
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return pids
}

// zombie reports whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err != nil || strings.Contains(string(st), ") Z ")
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := 10 * time.Millisecond; ; wait = min(wait*2, 200*time.Millisecond) {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		time.Sleep(wait)
	}
}

// load is a steady stream of calls from several workers, with the outcomes counted.
type load struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	ok       int
	failures []string
	seen     map[string]int // instance → replies
}

// runLoad calls greeter's Greeter.Hello at m from workers goroutines until ctx ends.
func runLoad(ctx context.Context, m *micro, workers int, header map[string]string) *load {
	l := &load{seen: make(map[string]int)}
	for range workers {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				r, err := m.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, header)
				l.record(r, err)
			}
		})
	}
	return l
}

func (l *load) record(r reply, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		l.failures = append(l.failures, err.Error())
	case r.status != 200:
		l.failures = append(l.failures, fmt.Sprintf("%d %s", r.status, r.body))
	default:
		l.ok++
		var v struct{ Instance string }
		_ = json.Unmarshal(r.body, &v)
		l.seen[v.Instance]++
	}
}

// waitCalls waits until n more calls have succeeded.
func (l *load) waitCalls(t *testing.T, n int) {
	t.Helper()
	before := l.count()
	eventually(t, 20*time.Second, func() error {
		if got := l.count() - before; got < n {
			return fmt.Errorf("%d of %d calls", got, n)
		}
		return nil
	})
}

// count returns the successes so far.
func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok
}

// wait waits for the workers and returns the final counts.
func (l *load) wait() (ok int, failures []string, seen map[string]int) {
	l.wg.Wait()
	return l.ok, l.failures, l.seen
}
