package embedded

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/broker"
)

// The tests re-execute the test binary as a child process that does one thing with the
// broker in childDirEnv, as childEnv says, and reports on its standard output.
const (
	childEnv    = "EMBEDDED_BROKER_CHILD"
	childDirEnv = "EMBEDDED_BROKER_DIR"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := child(mode, os.Getenv(childDirEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child runs one child mode:
//   - consume: consumes group g of topic t, acknowledging, and prints each message ID, until
//     its standard input closes;
//   - claim: takes one message of group g of topic t with an ack timeout of an hour, prints
//     its ID, and waits to be killed;
//   - publish: publishes a message with ID "killed" to topic t, prints "published", and waits
//     to be killed.
func child(mode, dir string) error {
	ctx := context.Background()
	b, err := Open(ctx, Options{Dir: dir})
	if err != nil {
		return err
	}
	defer b.Close()
	switch mode {
	case "consume":
		c, err := b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: "g", AckTimeout: time.Minute, MaxInflight: 4})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(ctx)
		go func() {
			io.Copy(io.Discard, os.Stdin)
			cancel()
		}()
		for {
			d, err := c.Next(ctx)
			if err != nil {
				return c.Close()
			}
			if err := c.Ack(ctx, d); err != nil {
				return err
			}
			fmt.Println(d.ID)
		}
	case "claim":
		c, err := b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: "g", AckTimeout: time.Hour})
		if err != nil {
			return err
		}
		d, err := c.Next(ctx)
		if err != nil {
			return err
		}
		fmt.Println(d.ID)
	case "publish":
		if err := b.Publish(ctx, &broker.Message{ID: "killed", Topic: "t", Body: []byte("survives")}); err != nil {
			return err
		}
		fmt.Println("published")
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	select {} // until killed
}

// startChild starts a child in mode on dir, and returns it with its output's lines.
func startChild(t *testing.T, mode, dir string) (*exec.Cmd, io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, stdin, bufio.NewScanner(stdout)
}

// line reads the child's next line of output.
func line(t *testing.T, out *bufio.Scanner) string {
	t.Helper()
	if !out.Scan() {
		t.Fatalf("child output ended: %v", out.Err())
	}
	return out.Text()
}

func TestOneGroupTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	b := openB(t, Options{Dir: dir})
	c := subscribe(t, b, "t", "g", time.Minute, 4)
	cmd, stdin, out := startChild(t, "consume", dir)
	const n = 300
	for i := range n {
		publish(t, b, "t", fmt.Sprint(i))
	}
	seen := make(map[string]string)
	childIDs := make(chan string)
	go func() {
		defer close(childIDs)
		for out.Scan() {
			childIDs <- out.Text()
		}
	}()
	ctx := ctxT(t)
	mine := make(chan *broker.Delivery)
	go func() {
		for {
			d, err := c.Next(ctx)
			if err != nil {
				return
			}
			mine <- d
		}
	}()
	for len(seen) < n {
		var id, who string
		select {
		case id = <-childIDs:
			who = "child"
		case d := <-mine:
			id, who = d.ID, "parent"
			ack(t, c, d)
		case <-ctx.Done():
			t.Fatalf("got %d messages of %d", len(seen), n)
		}
		if prev, dup := seen[id]; dup {
			t.Fatalf("message %s delivered to the %s and to the %s", id, prev, who)
		}
		seen[id] = who
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	counts := map[string]int{}
	for _, who := range seen {
		counts[who]++
	}
	t.Logf("deliveries: %v", counts)
	wantBacklog(t, c, 0)
}

func TestKilledConsumerRedelivered(t *testing.T) {
	dir := t.TempDir()
	b := openB(t, Options{Dir: dir})
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	// The parent's consumer holds the one message it may: the child gets the other.
	publish(t, b, "t", "mine")
	mine := next(t, c)
	m := publish(t, b, "t", "theirs")
	cmd, _, out := startChild(t, "claim", dir)
	if id := line(t, out); id != m.ID {
		t.Fatalf("child claimed %s, want %s", id, m.ID)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	ack(t, c, mine)
	// Well before the hour of its ack timeout: the kernel dropped the child's lock.
	d := next(t, c)
	if d.ID != m.ID || d.Attempt != 2 {
		t.Fatalf("after the kill: %+v, want attempt 2 of %s", d, m.ID)
	}
	ack(t, c, d)
}

func TestKilledPublisherKeepsMessage(t *testing.T) {
	dir := t.TempDir()
	cmd, _, out := startChild(t, "publish", dir)
	if got := line(t, out); got != "published" {
		t.Fatalf("child said %q", got)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	b := openB(t, Options{Dir: dir})
	ms, err := b.Messages(context.Background(), "t", 10)
	if err != nil || len(ms) != 1 || ms[0].ID != "killed" || string(ms[0].Body) != "survives" {
		t.Fatalf("Messages = %+v, %v; want the message published before the kill", ms, err)
	}
	c := subscribe(t, b, "t", "g", time.Hour, 1)
	if d := next(t, c); d.ID != "killed" {
		t.Fatalf("delivery = %+v", d)
	}
	if owners, _ := os.ReadDir(dir + "/owners"); len(owners) != 1 {
		t.Errorf("owners after the dead one was swept: %v", owners)
	}
}
