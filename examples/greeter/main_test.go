package main

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// buildGreeter builds this package into a temporary directory and returns the binary's path.
func buildGreeter(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command in PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "greeter")
	out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestBinary runs the real greeter: it listens where MICRO_APP_ADDR says, names itself after
// MICRO_INSTANCE, and on SIGTERM finishes the request in flight and exits 0.
func TestBinary(t *testing.T) {
	bin := buildGreeter(t)
	addr := freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "MICRO_APP_ADDR="+addr, "MICRO_INSTANCE=greeter-7")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	waitLine := func(part string) string {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("greeter's stdout ended before a line with %q", part)
				}
				if strings.Contains(l, part) {
					return l
				}
			case <-timeout:
				t.Fatalf("no line with %q from the greeter", part)
			}
		}
	}
	start := waitLine("greeter listening")
	if !strings.Contains(start, "instance=greeter-7") || !strings.Contains(start, "addr="+addr) {
		t.Errorf("start line %q: want instance=greeter-7 and addr=%s", start, addr)
	}

	status, out := post(t, "http://"+addr+"/Greeter.Hello", `{"name":"Ada"}`, "2s")
	if status != 200 || out["greeting"] != "Hello, Ada!" || out["instance"] != "greeter-7" || out["budget"] != "2s" {
		t.Fatalf("Hello: %d %v", status, out)
	}

	// A stream open when SIGTERM arrives is closed with 1001 (going away).
	stream := dialStream(t, "http://"+addr, "2s")
	if rep := exchange(t, stream, "Ada"); rep.Greeting != "Hello, Ada!" || rep.Instance != "greeter-7" || rep.Seq != 1 {
		t.Fatalf("stream reply: %+v", rep)
	}
	streamEnd := make(chan error, 1)
	go func() {
		_, _, err := stream.Read(testCtx(t))
		streamEnd <- err
	}()

	// A sleep in flight when SIGTERM arrives still gets its reply.
	type result struct {
		status int
		body   map[string]any
		err    error
	}
	slept := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/Greeter.Sleep", "application/json", strings.NewReader(`{"ms":300}`))
		if err != nil {
			slept <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		slept <- result{resp.StatusCode, body, err}
	}()
	waitLine("sleeping")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-slept
	if r.err != nil || r.status != 200 || r.body["greeting"] != "Slept 300ms" {
		t.Errorf("sleep in flight during SIGTERM: %d %v %v, want 200 Slept 300ms", r.status, r.body, r.err)
	}
	if err := <-streamEnd; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("stream during SIGTERM: %v, want close status 1001", err)
	}
	for range lines { // read stdout to its end before Wait
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("greeter exit after SIGTERM: %v, want status 0", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Errorf("%s still accepts connections after the greeter exited", addr)
	}
}
