package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/transport-nats/natstest"
)

// Publish and subscribe, end to end: real micro processes, the subscriber test app
// (e2e/testdata/subscriber), and the embedded broker or NATS JetStream.

// subscriberService declares the subscriber app as service name, consuming topics (topic →
// endpoint) and logging deliveries to logFile; failTimes makes it fail each message that
// many times first.
func subscriberService(name string, instances int, logFile, stateDir string, failTimes int, topics map[string]string) string {
	var subs []string
	for topic, endpoint := range topics {
		subs = append(subs, fmt.Sprintf("%q = %q", topic, endpoint))
	}
	return fmt.Sprintf(`
[services.%s]
command = [%q]
instances = %d
health = "/health"
subscribe = { %s }
env = { LOG_FILE = %q, SUB_NAME = %q, STATE_DIR = %q, FAIL_TIMES = "%d" }
`, name, bins.subscriber, instances, strings.Join(subs, ", "), logFile, name, stateDir, failTimes)
}

// brokerSection is a [broker] section for tests: short backoffs, and the given extra keys.
func brokerSection(extra string) string {
	return `
[broker]
backoff = "50ms"
backoff_max = "200ms"
` + extra
}

// withBroker adds a [broker] section to a baseConfig.
func withBroker(cfg, section string) string {
	return strings.Replace(cfg, "[client]", strings.TrimPrefix(section, "\n")+"\n[client]", 1)
}

// delivery is one line of the subscriber app's log.
type delivery struct {
	name, status, topic, id, attempt, body string
}

// deliveries reads the subscriber app's log.
func deliveries(t *testing.T, path string) []delivery {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []delivery
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 6 {
			out = append(out, delivery{f[0], f[1], f[2], f[3], f[4], f[5]})
		}
	}
	return out
}

// okCount counts the successful deliveries of each message id to the subscriber named name.
func okCount(ds []delivery, name string) map[string]int {
	n := map[string]int{}
	for _, d := range ds {
		if d.name == name && d.status == "ok" {
			n[d.id]++
		}
	}
	return n
}

// publishMsg publishes body to topic at m's ingress and returns the message id; it fails
// the test unless the answer is 202.
func publishMsg(t *testing.T, m *micro, topic, body string) string {
	t.Helper()
	r, err := m.post("/publish/"+topic, body, map[string]string{"Content-Type": "application/json"})
	if err != nil || r.status != 202 {
		t.Fatalf("publish to %s: %v %d %s", topic, err, r.status, r.body)
	}
	var p struct{ ID, Topic string }
	if err := json.Unmarshal(r.body, &p); err != nil || p.ID == "" || p.Topic != topic {
		t.Fatalf("publish answer %s", r.body)
	}
	return p.ID
}

// waitDelivered waits until name has taken every id in ids successfully.
func waitDelivered(t *testing.T, logFile, name string, ids []string) {
	t.Helper()
	eventually(t, 60*time.Second, func() error {
		got := okCount(deliveries(t, logFile), name)
		for _, id := range ids {
			if got[id] == 0 {
				return fmt.Errorf("%s has %d of %d messages; %s missing", name, len(got), len(ids), id)
			}
		}
		return nil
	})
}

// metric returns the sum of the series of a metric in m's /metrics whose line contains
// every one of match.
func metric(t *testing.T, m *micro, name string, match ...string) float64 {
	t.Helper()
	resp, err := httpGet(m.ingress + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
lines:
	for _, line := range strings.Split(resp, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, s := range match {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// TestPubSubFanOut: two services in two micros subscribe to one topic; every message goes
// to both services, and to one instance of each.
func TestPubSubFanOut(t *testing.T) {
	t.Parallel()
	reg, state, logs := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	brk := brokerSection(fmt.Sprintf("dir = %q\n", t.TempDir()))
	a := startMicro(t, withBroker(baseConfig(reg, subscriberService("orders", 2, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})), brk))
	startMicro(t, withBroker(baseConfig(reg, subscriberService("audit", 1, logs, state, 0, map[string]string{"orders.created": "Audit.Record"})), brk))
	var ids []string
	for i := range 20 {
		ids = append(ids, publishMsg(t, a, "orders.created", fmt.Sprintf(`{"order":%d}`, i)))
	}
	waitDelivered(t, logs, "orders", ids)
	waitDelivered(t, logs, "audit", ids)
	ds := deliveries(t, logs)
	for _, name := range []string{"orders", "audit"} {
		for id, n := range okCount(ds, name) {
			if n != 1 {
				t.Errorf("%s took message %s %d times, want once", name, id, n)
			}
		}
	}
	for _, d := range ds {
		if d.topic != "orders.created" || d.attempt != "1" || !strings.HasPrefix(d.body, `{"order":`) {
			t.Errorf("delivery %+v", d)
		}
	}
	if n := metric(t, a, "micro_broker_published_total", `topic="orders.created"`); n != 20 {
		t.Errorf("micro_broker_published_total = %v, want 20", n)
	}
	eventually(t, 10*time.Second, func() error {
		if n := metric(t, a, "micro_broker_delivered_total", `service="orders"`); n != 20 {
			return fmt.Errorf("micro_broker_delivered_total{service=orders} = %v, want 20", n)
		}
		return nil
	})
}

// TestPubSubRedeliveredUntilSuccess: a subscriber that fails each message twice gets it a
// third time and takes it once.
func TestPubSubRedeliveredUntilSuccess(t *testing.T) {
	t.Parallel()
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), subscriberService("orders", 2, logs, state, 2, map[string]string{"orders.created": "Orders.OnCreated"})),
		brokerSection(fmt.Sprintf("dir = %q\nmax_deliveries = 5\n", t.TempDir()))))
	var ids []string
	for i := range 5 {
		ids = append(ids, publishMsg(t, m, "orders.created", fmt.Sprintf(`{"n":%d}`, i)))
	}
	waitDelivered(t, logs, "orders", ids)
	ds := deliveries(t, logs)
	for _, id := range ids {
		var seen []string
		for _, d := range ds {
			if d.id == id {
				seen = append(seen, d.status+"#"+d.attempt)
			}
		}
		if strings.Join(seen, ",") != "fail#1,fail#2,ok#3" {
			t.Errorf("message %s: deliveries %v, want fail#1,fail#2,ok#3", id, seen)
		}
	}
	eventually(t, 10*time.Second, func() error {
		if n := metric(t, m, "micro_broker_redelivered_total"); n != 10 {
			return fmt.Errorf("micro_broker_redelivered_total = %v, want 10", n)
		}
		return nil
	})
	if n := metric(t, m, "micro_broker_dead_lettered_total"); n != 0 {
		t.Errorf("micro_broker_dead_lettered_total = %v, want 0", n)
	}
}

// TestPubSubDeadLetterAndReplay: a message that a subscriber always fails goes to the
// dead-letter topic after max_deliveries; micro messages shows it, and micro publish
// --replay delivers it once the subscriber works again.
func TestPubSubDeadLetterAndReplay(t *testing.T) {
	t.Parallel()
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	if err := os.WriteFile(filepath.Join(state, "fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})),
		brokerSection(fmt.Sprintf("dir = %q\nmax_deliveries = 3\n", t.TempDir()))))
	publishMsg(t, m, "orders.created", `{"n":1}`)
	eventually(t, 30*time.Second, func() error {
		if n := metric(t, m, "micro_broker_dead_lettered_total", `topic="orders.created"`); n != 1 {
			return fmt.Errorf("micro_broker_dead_lettered_total = %v", n)
		}
		return nil
	})
	if n := len(deliveries(t, logs)); n != 3 {
		t.Errorf("%d deliveries before the dead letter, want 3 (max_deliveries)", n)
	}
	addr := strings.TrimPrefix(m.ingress, "http://")
	out, err := exec.Command(bins.micro, "messages", "-address", addr, "-json", "orders.created.dead").CombinedOutput()
	if err != nil {
		t.Fatalf("micro messages: %v\n%s", err, out)
	}
	var held []struct {
		ID     string
		Body   string
		Header map[string]string
	}
	if err := json.Unmarshal(out, &held); err != nil || len(held) != 1 {
		t.Fatalf("micro messages: %v\n%s", err, out)
	}
	if h := held[0].Header; h["Micro-Dead-Topic"] != "orders.created" || h["Micro-Dead-Group"] != "orders" || !strings.Contains(h["Micro-Dead-Reason"], "500") || held[0].Body != `{"n":1}` {
		t.Errorf("dead letter %+v", held[0])
	}

	if err := os.Remove(filepath.Join(state, "fail")); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bins.micro, "publish", "--replay", "-address", addr, "orders.created.dead").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "replayed 1 message(s)") {
		t.Fatalf("micro publish --replay: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, func() error {
		if n := len(okCount(deliveries(t, logs), "orders")); n != 1 {
			return fmt.Errorf("%d replayed messages delivered", n)
		}
		return nil
	})
	out, err = exec.Command(bins.micro, "messages", "-address", addr, "-json", "orders.created.dead").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "[]" {
		t.Errorf("the dead-letter topic still holds messages after the replay: %v\n%s", err, out)
	}
}

// TestPubSubSurvivesKill: micro is killed with SIGKILL right after the last 202; a micro
// started again on the same broker directory delivers every accepted message.
func TestPubSubSurvivesKill(t *testing.T) {
	t.Parallel()
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	cfg := withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})),
		brokerSection(fmt.Sprintf("dir = %q\n", t.TempDir())))
	m := startMicro(t, cfg)
	// Stop the app from taking messages, so that they are still in the broker at the kill.
	if err := os.WriteFile(filepath.Join(state, "fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 30 {
		ids = append(ids, publishMsg(t, m, "orders.created", fmt.Sprintf(`{"n":%d}`, i)))
	}
	m.kill(syscall.SIGKILL)
	if err := os.Remove(filepath.Join(state, "fail")); err != nil {
		t.Fatal(err)
	}
	startMicro(t, cfg)
	waitDelivered(t, logs, "orders", ids)
}

// TestPubSubBadInput: bad topics, oversized messages and a full store get clear errors,
// and micro goes on serving.
func TestPubSubBadInput(t *testing.T) {
	t.Parallel()
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), ""), brokerSection(fmt.Sprintf("dir = %q\nmax_message = \"1KiB\"\nmax_bytes = \"16KiB\"\n", t.TempDir()))))
	for _, tc := range []struct {
		path, body string
		want       int
	}{
		{"/publish/orders..created", "{}", 400},
		{"/publish/orders.*", "{}", 400},
		{"/publish/%2e%2e", "{}", 400},
		{"/publish/" + strings.Repeat("a", 300), "{}", 400},
		{"/publish/orders", strings.Repeat("x", 2048), 413},
	} {
		r, err := m.post(tc.path, tc.body, nil)
		if err != nil || r.status != tc.want {
			t.Errorf("POST %.40s: %v %d %s, want %d", tc.path, err, r.status, r.body, tc.want)
			continue
		}
		if e := r.json(t); e["detail"] == "" || e["code"] != float64(tc.want) {
			t.Errorf("POST %.40s: error %s", tc.path, r.body)
		}
	}
	// Fill the store: every publish is 202 until it is full, then 503, never a silent drop.
	accepted, full := 0, false
	for i := 0; i < 100 && !full; i++ {
		r, err := m.post("/publish/orders", strings.Repeat("y", 900), nil)
		switch {
		case err != nil:
			t.Fatal(err)
		case r.status == 202:
			accepted++
		case r.status == 503 && strings.Contains(string(r.body), "full"):
			full = true
		default:
			t.Fatalf("publish %d: %d %s", i, r.status, r.body)
		}
	}
	if !full || accepted == 0 {
		t.Fatalf("the store never said full (%d accepted)", accepted)
	}
	out, err := exec.Command(bins.micro, "messages", "-address", strings.TrimPrefix(m.ingress, "http://"), "-json", "-limit", "1000", "orders").CombinedOutput()
	var held []json.RawMessage
	if err != nil || json.Unmarshal(out, &held) != nil || len(held) != accepted {
		t.Errorf("the broker holds %d messages, want the %d accepted: %v %.200s", len(held), accepted, err, out)
	}
	mustHealthy(t, m)
}

// mustHealthy fails the test unless m answers /health with 200.
func mustHealthy(t *testing.T, m *micro) {
	t.Helper()
	body, err := httpGet(m.ingress + "/health")
	if err != nil || !strings.Contains(body, `"status": "ok"`) && !strings.Contains(body, `"status":"ok"`) {
		t.Fatalf("health: %v %s", err, body)
	}
}

// natsBroker is a [broker] section that uses the NATS JetStream plugin at url.
func natsBroker(url string) string {
	return brokerSection(fmt.Sprintf("plugin = \"nats\"\nurl = %q\npath = %q\n", url, bins.brokerNats))
}

// childPID finds micro's child process whose command line holds name.
func childPID(t *testing.T, m *micro, name string) int {
	t.Helper()
	var pid int
	eventually(t, 10*time.Second, func() error {
		for _, p := range m.children() {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			if strings.Contains(string(cmd), name) {
				pid = p
				return nil
			}
		}
		return fmt.Errorf("no %s process under micro", name)
	})
	return pid
}

// publishing publishes to topic at m until stop is closed, and returns the ids of the
// messages answered 202; other answers are counted apart (a 503 while a broker is away is
// honest, never a loss).
type publishing struct {
	done     chan struct{}
	ids      []string
	refused  int
	firstBad string
}

func startPublishing(m *micro, topic string, stop <-chan struct{}) *publishing {
	p := &publishing{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r, err := m.post("/publish/"+topic, fmt.Sprintf(`{"n":%d}`, i), map[string]string{"Micro-Timeout": "2s"})
			var pub struct{ ID string }
			switch {
			case err == nil && r.status == 202 && json.Unmarshal(r.body, &pub) == nil:
				p.ids = append(p.ids, pub.ID)
			default:
				p.refused++
				if p.firstBad == "" {
					p.firstBad = fmt.Sprintf("%v %d %s", err, r.status, r.body)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return p
}

// TestPubSubNATS: over NATS JetStream, every message goes to both subscribing services
// once; a publishing micro killed with SIGKILL right after its 202s loses none of them.
func TestPubSubNATS(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t, natstest.WithJetStream(t.TempDir()))
	reg, state, logs := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	brk := natsBroker(nats.URL)
	startMicro(t, withBroker(baseConfig(reg, subscriberService("orders", 2, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})), brk))
	startMicro(t, withBroker(baseConfig(reg, subscriberService("audit", 1, logs, state, 0, map[string]string{"orders.created": "Audit.Record"})), brk))
	pub := startMicro(t, withBroker(baseConfig(reg, ""), brk))
	var ids []string
	for i := range 20 {
		ids = append(ids, publishMsg(t, pub, "orders.created", fmt.Sprintf(`{"order":%d}`, i)))
	}
	pub.kill(syscall.SIGKILL)
	waitDelivered(t, logs, "orders", ids)
	waitDelivered(t, logs, "audit", ids)
	ds := deliveries(t, logs)
	for _, name := range []string{"orders", "audit"} {
		for id, n := range okCount(ds, name) {
			if n != 1 {
				t.Errorf("%s took message %s %d times, want once", name, id, n)
			}
		}
	}
}

// TestPubSubNATSRedeliveryAndDeadLetter: over NATS, a subscriber that fails twice takes the
// message on its third delivery, and one that always fails sends it to the dead-letter
// topic.
func TestPubSubNATSRedeliveryAndDeadLetter(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t, natstest.WithJetStream(t.TempDir()))
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 2, map[string]string{"orders.created": "Orders.OnCreated"})),
		natsBroker(nats.URL)+"max_deliveries = 3\n"))
	id := publishMsg(t, m, "orders.created", `{"n":1}`)
	waitDelivered(t, logs, "orders", []string{id})
	var seen []string
	for _, d := range deliveries(t, logs) {
		seen = append(seen, d.status+"#"+d.attempt)
	}
	if strings.Join(seen, ",") != "fail#1,fail#2,ok#3" {
		t.Errorf("deliveries %v, want fail#1,fail#2,ok#3", seen)
	}
	if err := os.WriteFile(filepath.Join(state, "fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	publishMsg(t, m, "orders.created", `{"n":2}`)
	eventually(t, 30*time.Second, func() error {
		if n := metric(t, m, "micro_broker_dead_lettered_total", `topic="orders.created"`); n != 1 {
			return fmt.Errorf("micro_broker_dead_lettered_total = %v", n)
		}
		return nil
	})
	out, err := exec.Command(bins.micro, "messages", "-address", strings.TrimPrefix(m.ingress, "http://"), "-json", "orders.created.dead").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"body":"{\"n\":2}"`) {
		t.Errorf("micro messages orders.created.dead: %v\n%s", err, out)
	}
}

// TestPubSubNATSRestart: the NATS server restarts while a micro publishes; every message
// that was answered 202 is delivered.
func TestPubSubNATSRestart(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t, natstest.WithJetStream(t.TempDir()))
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})), natsBroker(nats.URL)))
	p := publishAcross(t, m, nats.Restart)
	t.Logf("%d messages accepted, %d refused while NATS was down (first: %s)", len(p.ids), p.refused, p.firstBad)
	waitDelivered(t, logs, "orders", p.ids)
}

// TestPubSubBrokerPluginCrash: the NATS broker plugin process is killed while a micro
// publishes; micro restarts it, and every message that was answered 202 is delivered.
func TestPubSubBrokerPluginCrash(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t, natstest.WithJetStream(t.TempDir()))
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})), natsBroker(nats.URL)))
	p := publishAcross(t, m, func() {
		if err := syscall.Kill(childPID(t, m, "broker-nats"), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%d messages accepted, %d refused while the plugin restarted (first: %s)", len(p.ids), p.refused, p.firstBad)
	waitDelivered(t, logs, "orders", p.ids)
	mustHealthy(t, m)
}

// publishAcross publishes steadily at m, runs disrupt once publishing is under way, and
// stops once 20 more messages have been accepted after it.
func publishAcross(t *testing.T, m *micro, disrupt func()) *publishing {
	t.Helper()
	stop := make(chan struct{})
	p := startPublishing(m, "orders.created", stop)
	waitPublished(t, m, 20)
	disrupt()
	waitPublished(t, m, metric(t, m, "micro_broker_published_total")+20)
	close(stop)
	<-p.done
	return p
}

// waitPublished waits until m has had n messages accepted.
func waitPublished(t *testing.T, m *micro, n float64) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		if c := metric(t, m, "micro_broker_published_total"); c < n {
			return fmt.Errorf("%v of %v messages published", c, n)
		}
		return nil
	})
}

// TestPubSubBrokerSwitch: [broker] switches from the embedded broker to NATS JetStream and
// back while a micro publishes steadily; every message answered 202 is delivered, and none
// is refused.
func TestPubSubBrokerSwitch(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t, natstest.WithJetStream(t.TempDir()))
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	base := baseConfig(t.TempDir(), subscriberService("orders", 2, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"}))
	embedded := withBroker(base, brokerSection(fmt.Sprintf("dir = %q\ndrain_timeout = \"20s\"\n", t.TempDir())))
	m := startMicro(t, embedded)
	stop := make(chan struct{})
	p := startPublishing(m, "orders.created", stop)
	for i, cfg := range []string{withBroker(base, natsBroker(nats.URL)+"drain_timeout = \"20s\"\n"), embedded} {
		n := metric(t, m, "micro_broker_published_total")
		m.writeConfig(cfg)
		eventually(t, 60*time.Second, func() error {
			if c := strings.Count(m.logs.String(), "broker switched"); c < i+1 {
				return fmt.Errorf("switch %d not logged yet", i+1)
			}
			return nil
		})
		waitPublished(t, m, n+50)
	}
	close(stop)
	<-p.done
	if p.refused > 0 {
		t.Errorf("%d publishes refused across the switches; first: %s", p.refused, p.firstBad)
	}
	waitDelivered(t, logs, "orders", p.ids)
	t.Logf("%d messages published across 2 broker switches, all delivered", len(p.ids))
}

// TestPubSubRateLimitedDeliveries: a client rate-limit wrapper on the subscribing service
// refuses most deliveries with 429; they are held and delivered later, each once, and none
// counts as a failure or reaches the dead-letter topic.
func TestPubSubRateLimitedDeliveries(t *testing.T) {
	t.Parallel()
	state, logs := t.TempDir(), filepath.Join(t.TempDir(), "deliveries")
	cfg := withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 0, map[string]string{"orders.created": "Orders.OnCreated"})),
		brokerSection(fmt.Sprintf("dir = %q\nmax_deliveries = 1\n", t.TempDir())))
	cfg = strings.Replace(cfg, "[client]\n", "[client]\nwrappers = [\"ratelimit\"]\n", 1) + fmt.Sprintf(`
[wrappers.ratelimit]
path = %q
services = ["orders"]
[wrappers.ratelimit.config]
rate = 10
burst = 1
key = "service"
`, bins.ratelimit)
	m := startMicro(t, cfg)
	var ids []string
	for i := range 10 {
		ids = append(ids, publishMsg(t, m, "orders.created", fmt.Sprintf(`{"n":%d}`, i)))
	}
	waitDelivered(t, logs, "orders", ids)
	for id, n := range okCount(deliveries(t, logs), "orders") {
		if n != 1 {
			t.Errorf("message %s delivered %d times", id, n)
		}
	}
	for _, d := range deliveries(t, logs) {
		if d.attempt != "1" {
			t.Errorf("a delivery held by the rate limit counted as an attempt: %+v", d)
		}
	}
	if n := metric(t, m, "micro_broker_held_total", `service="orders"`); n == 0 {
		t.Error("no delivery was held: the rate limit did not apply to deliveries")
	}
	if n := metric(t, m, "micro_broker_dead_lettered_total") + metric(t, m, "micro_broker_redelivered_total"); n != 0 {
		t.Errorf("refusals by the rate limit counted as failures (%v)", n)
	}
}
