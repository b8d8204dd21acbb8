// Command pubsub measures publish and subscribe through micro: how many messages a second
// its ingress accepts (each answered 202 once the broker stored it), and the time from a
// publish to its delivery at the subscribing app (p50 and p99), with the embedded broker and
// with NATS JetStream through plugins/broker-nats. In the same run, the anchor: the nats.go
// client publishing straight to a JetStream stream of the same server, and a durable
// consumer taking the messages.
//
// It builds micro and the broker-nats plugin, runs a NATS server with JetStream in this
// process (file storage in a temporary directory), and serves the subscribing app itself:
// it records when each message arrives. Publishers send -n messages from -c goroutines.
//
//	go run ./bench/pubsub -n 5000 -c 16
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/microhost/micro/bench/internal/proc"
)

// sentHeader carries the time a message was published, in Unix nanoseconds.
const sentHeader = "X-Sent"

func main() {
	n := flag.Int("n", 5000, "messages per run")
	conc := flag.Int("c", 16, "concurrent publishers")
	body := flag.Int("size", 256, "body bytes")
	flag.Parse()
	if err := run(*n, *conc, *body); err != nil {
		fmt.Fprintln(os.Stderr, "pubsub:", err)
		os.Exit(1)
	}
}

func run(n, conc, size int) error {
	dir, err := os.MkdirTemp("", "micro-bench-pubsub")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	microBin, pluginBin := filepath.Join(dir, "micro"), filepath.Join(dir, "broker-nats")
	if err := proc.Build(map[string]string{microBin: "./cmd/micro", pluginBin: "./plugins/broker-nats"}); err != nil {
		return err
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, JetStream: true, StoreDir: filepath.Join(dir, "jetstream")})
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats server not ready")
	}
	defer ns.Shutdown()

	sink, err := newSink()
	if err != nil {
		return err
	}
	defer sink.close()
	payload := []byte(`{"data":"` + strings.Repeat("x", max(size-11, 0)) + `"}`)

	fmt.Printf("%d messages of %d bytes from %d publishers; each row is one broker\n\n", n, len(payload), conc)
	fmt.Printf("%-34s %12s %10s %10s\n", "", "publish/s", "p50", "p99")
	for _, b := range []struct{ name, section string }{
		{"micro, embedded broker", fmt.Sprintf("dir = %q\n", filepath.Join(dir, "broker"))},
		{"micro, NATS JetStream (plugin)", fmt.Sprintf("plugin = \"nats\"\nurl = %q\npath = %q\n", ns.ClientURL(), pluginBin)},
	} {
		for _, subscribed := range []bool{true, false} {
			r, err := throughMicro(dir, microBin, b.section, sink, n, conc, payload, subscribed)
			if err != nil {
				return fmt.Errorf("%s: %w", b.name, err)
			}
			if subscribed {
				r.print(b.name)
			} else {
				r.print("  publish only, no subscriber")
			}
		}
	}
	r, err := straightToJetStream(ns.ClientURL(), n, conc, payload)
	if err != nil {
		return fmt.Errorf("anchor: %w", err)
	}
	r.print("nats.go straight to JetStream")
	return nil
}

// result is one row of the table.
type result struct {
	rate     float64
	p50, p99 time.Duration
}

func (r result) print(name string) {
	if r.p50 == 0 {
		fmt.Printf("%-34s %12.0f %10s %10s\n", name, r.rate, "-", "-")
		return
	}
	fmt.Printf("%-34s %12.0f %10s %10s\n", name, r.rate, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond))
}

// sink is the subscribing app: it records the latency of every delivery.
type sink struct {
	srv  *http.Server
	addr string
	mu   sync.Mutex
	lat  []time.Duration
	got  atomic.Int64
}

func newSink() (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{addr: ln.Addr().String()}
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.record(r.Header.Get(sentHeader))
	})}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *sink) record(sent string) {
	ns, err := strconv.ParseInt(sent, 10, 64)
	if err != nil {
		return
	}
	d := time.Since(time.Unix(0, ns))
	s.mu.Lock()
	s.lat = append(s.lat, d)
	s.mu.Unlock()
	s.got.Add(1)
}

// reset forgets what was recorded.
func (s *sink) reset() {
	s.mu.Lock()
	s.lat = s.lat[:0]
	s.mu.Unlock()
	s.got.Store(0)
}

// wait waits until n deliveries were recorded, and returns their p50 and p99.
func (s *sink) wait(n int, timeout time.Duration) (p50, p99 time.Duration, err error) {
	deadline := time.Now().Add(timeout)
	for s.got.Load() < int64(n) {
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("%d of %d messages delivered within %v", s.got.Load(), n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	slices.Sort(s.lat)
	return s.lat[len(s.lat)/2], s.lat[len(s.lat)*99/100], nil
}

func (s *sink) close() { _ = s.srv.Close() }

// throughMicro runs a micro with the [broker] keys of section and the sink as a service
// that subscribes to bench.events (or, unless subscribed, to nothing), and publishes n
// messages at its ingress.
func throughMicro(dir, microBin, section string, sk *sink, n, conc int, payload []byte, subscribed bool) (result, error) {
	topic := "bench.events"
	if !subscribed {
		topic = "bench.unread"
	}
	cfg := filepath.Join(dir, "micro.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[server]
ingress = "127.0.0.1:0"
[registry]
dir = %q
[broker]
max_inflight = 256
%s
[log]
level = "warn"
[services.sink]
address = "http://%s"
subscribe = { "bench.events" = "Sink.On" }
`, filepath.Join(dir, "registry"), section, sk.addr)), 0o644); err != nil {
		return result{}, err
	}
	micro, ingress, err := proc.StartMicro(microBin, cfg)
	if err != nil {
		return result{}, err
	}
	defer proc.Stop(micro)
	url := "http://" + ingress + "/publish/" + topic
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	publish := func() error {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(payload)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(sentHeader, strconv.FormatInt(time.Now().UnixNano(), 10))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("publish: %s", resp.Status)
		}
		return nil
	}
	if !subscribed {
		if err := publish(); err != nil { // warm up
			return result{}, err
		}
		took, err := spread(n, conc, publish)
		return result{rate: float64(n) / took.Seconds()}, err
	}
	// Warm up until the subscription delivers.
	sk.reset()
	deadline := time.Now().Add(60 * time.Second)
	for sk.got.Load() == 0 {
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("no delivery within a minute of starting")
		}
		if err := publish(); err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, _, err := sk.wait(1, time.Minute); err != nil {
		return result{}, err
	}
	time.Sleep(500 * time.Millisecond) // let the warm-up's deliveries finish
	sk.reset()
	took, err := spread(n, conc, publish)
	if err != nil {
		return result{}, err
	}
	p50, p99, err := sk.wait(n, 2*time.Minute)
	if err != nil {
		return result{}, err
	}
	return result{rate: float64(n) / took.Seconds(), p50: p50, p99: p99}, nil
}

// straightToJetStream publishes n messages with the nats.go client to a stream on the
// server at url, from conc goroutines, each waiting for its PubAck as micro's plugin does,
// while a durable pull consumer takes and acknowledges them.
func straightToJetStream(url string, n, conc int, payload []byte) (result, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return result{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return result{}, err
	}
	ctx := context.Background()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ANCHOR", Subjects: []string{"anchor.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		return result{}, err
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "sink", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 256})
	if err != nil {
		return result{}, err
	}
	var sk sink
	cc, err := cons.Consume(func(m jetstream.Msg) {
		sk.record(m.Headers().Get(sentHeader))
		_ = m.Ack()
	})
	if err != nil {
		return result{}, err
	}
	defer cc.Stop()
	took, err := spread(n, conc, func() error {
		m := nats.NewMsg("anchor.events")
		m.Header.Set(sentHeader, strconv.FormatInt(time.Now().UnixNano(), 10))
		m.Data = payload
		_, err := js.PublishMsg(ctx, m)
		return err
	})
	if err != nil {
		return result{}, err
	}
	p50, p99, err := sk.wait(n, 2*time.Minute)
	if err != nil {
		return result{}, err
	}
	return result{rate: float64(n) / took.Seconds(), p50: p50, p99: p99}, nil
}

// spread runs f n times from conc goroutines and returns how long that took; it stops at
// the first error.
func spread(n, conc int, f func() error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var first error
	var once sync.Once
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := f(); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), first
}
