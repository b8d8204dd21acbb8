package breaker

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
)

// call is a wrapper.Request and a wrapper.Response with fixed fields.
type call struct {
	service, endpoint, node string
	budget                  time.Duration
	status                  int // 0: no answer
	err                     string
	latency                 time.Duration
	fault                   bool
}

func (c call) Service() string        { return c.service }
func (c call) Endpoint() string       { return c.endpoint }
func (c call) Node() string           { return c.node }
func (c call) Budget() time.Duration  { return c.budget }
func (c call) Status() int            { return c.status }
func (c call) Err() string            { return c.err }
func (c call) Latency() time.Duration { return c.latency }
func (c call) Fault() bool            { return c.fault }

// The rest of wrapper.Response, which Breakers does not read.
func (c call) Caller() string               { return "" }
func (c call) Header(string) (string, bool) { return "", false }
func (c call) SetHeader(string, string)     {}

var (
	t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ok = call{status: 200}
	ko = call{status: 500, fault: true}
)

// on returns c as a call to node, of service greeter, to endpoint Greeter.Hello unless c
// names another.
func on(node string, c call) call {
	c.node, c.service = node, "greeter"
	if c.endpoint == "" {
		c.endpoint = "Greeter.Hello"
	}
	return c
}

// state returns the state at time at of the breaker of a call to node, as on makes it.
func state(b *Breakers, node string, at time.Time) gobreaker.State { return b.State(on(node, ok), at) }

// waiting returns how many calls to node, as on makes them, wait for their outcome.
func waiting(b *Breakers, node string) int { return b.Pending(on(node, ok)) }

// config returns the defaults changed by a JSON object, decoded as the guest does.
func config(t *testing.T, js string) Config {
	t.Helper()
	c, err := decode(js)
	if err != nil {
		t.Fatalf("decode %s: %v", js, err)
	}
	return c
}

func decode(js string) (Config, error) {
	c := DefaultConfig()
	d := json.NewDecoder(bytes.NewReader([]byte(js)))
	d.DisallowUnknownFields()
	err := d.Decode(&c)
	return c, err
}

func mustNew(t *testing.T, c Config) *Breakers {
	t.Helper()
	b, err := New(c, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

// do runs one whole call (request, then its outcome) to node at now and reports whether
// it was allowed.
func do(b *Breakers, node string, outcome call, now time.Time) bool {
	c := on(node, outcome)
	if !b.OnRequest(c, now).Allowed {
		return false
	}
	b.OnResponse(c, now.Add(c.latency))
	return true
}

// halfOpenAt checks that the breaker of node, open since opened, is still open just
// before the cooldown has passed and half-open once it has, and returns that time.
func halfOpenAt(t *testing.T, b *Breakers, node string, opened time.Time, cooldown time.Duration) time.Time {
	t.Helper()
	at := opened.Add(cooldown)
	if s := state(b, node, at.Add(-time.Nanosecond)); s != gobreaker.StateOpen {
		t.Fatalf("state of %s a nanosecond before the cooldown has passed = %v, want open", node, s)
	}
	if s := state(b, node, at); s != gobreaker.StateHalfOpen {
		t.Fatalf("state of %s once the cooldown has passed = %v, want half-open", node, s)
	}
	return at
}

func TestTripsOnRatio(t *testing.T) {
	b := mustNew(t, config(t, `{"failure_ratio": 0.5, "min_requests": 10, "consecutive_failures": 0}`))
	for i := range 9 {
		outcome := ok
		if i%2 == 1 {
			outcome = ko
		}
		if !do(b, "n1", outcome, t0) {
			t.Fatalf("call %d rejected while closed", i+1)
		}
	}
	// 4 of 9 failed; the 10th outcome, a failure, makes 5 of 10.
	if s := state(b, "n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state after 4 failures in 9 = %v, want closed", s)
	}
	do(b, "n1", ko, t0)
	if s := state(b, "n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 5 failures in 10 = %v, want open", s)
	}
}

func TestRatioBelowThreshold(t *testing.T) {
	b := mustNew(t, config(t, `{"failure_ratio": 0.5, "min_requests": 4, "consecutive_failures": 0}`))
	// 1 failure in 3, then the ratio stays under a half for 30 calls.
	for i := range 30 {
		outcome := ok
		if i%3 == 2 {
			outcome = ko
		}
		do(b, "n1", outcome, t0)
		if s := state(b, "n1", t0); s != gobreaker.StateClosed {
			t.Fatalf("state after call %d = %v, want closed at a third failing", i+1, s)
		}
	}
}

func TestStaysClosedBelowMinRequests(t *testing.T) {
	b := mustNew(t, config(t, `{"failure_ratio": 0.5, "min_requests": 10, "consecutive_failures": 0}`))
	for i := range 9 {
		do(b, "n1", ko, t0)
		if s := state(b, "n1", t0); s != gobreaker.StateClosed {
			t.Fatalf("state after %d failures = %v, want closed below min_requests 10", i+1, s)
		}
	}
	do(b, "n1", ko, t0)
	if s := state(b, "n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 10 failures = %v, want open", s)
	}
}

func TestTripsOnConsecutive(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 3, "min_requests": 1000}`))
	for range 20 {
		do(b, "n1", ok, t0)
	}
	do(b, "n1", ko, t0)
	do(b, "n1", ko, t0)
	do(b, "n1", ok, t0) // breaks the run
	do(b, "n1", ko, t0)
	do(b, "n1", ko, t0)
	if s := state(b, "n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state after runs of 2 failures = %v, want closed", s)
	}
	do(b, "n1", ko, t0)
	if s := state(b, "n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 3 failures in a row = %v, want open", s)
	}
}

func TestOpenRejects(t *testing.T) {
	t.Run("node_endpoint", func(t *testing.T) {
		b := mustNew(t, config(t, `{"key": "node_endpoint", "consecutive_failures": 1, "cooldown": "1h"}`))
		do(b, "n1", ko, t0)
		d := b.OnRequest(on("n1", ok), t0)
		want := Decision{NodeOnly: true, Message: "breaker open for node n1, endpoint Greeter.Hello"}
		if d != want {
			t.Fatalf("decision = %+v, want %+v", d, want)
		}
	})
	t.Run("node", func(t *testing.T) {
		b := mustNew(t, config(t, `{"key": "node", "consecutive_failures": 1, "cooldown": "1h"}`))
		do(b, "n1", ko, t0)
		// Every endpoint of the node is refused.
		d := b.OnRequest(on("n1", call{endpoint: "Greeter.Other"}), t0)
		want := Decision{NodeOnly: true, Message: "breaker open for node n1"}
		if d != want {
			t.Fatalf("decision = %+v, want %+v", d, want)
		}
	})
	t.Run("service", func(t *testing.T) {
		b := mustNew(t, config(t, `{"key": "service", "consecutive_failures": 1, "cooldown": "1h"}`))
		do(b, "n1", ko, t0)
		// Every node of the service is refused.
		d := b.OnRequest(on("n2", ok), t0)
		want := Decision{Status: 503, Message: "breaker open for service greeter"}
		if d != want {
			t.Fatalf("decision = %+v, want %+v", d, want)
		}
		if d := b.OnRequest(call{service: "other", node: "n1"}, t0); !d.Allowed {
			t.Fatalf("another service was refused: %+v", d)
		}
	})
}

// With the default key, a node's failing endpoint trips a breaker that refuses that node
// for that endpoint only: the node serves its other endpoints, and other nodes serve it.
func TestPerNodeEndpointIsolation(t *testing.T) {
	if DefaultConfig().Key != KeyNodeEndpoint {
		t.Fatalf("default key %q, want %q", DefaultConfig().Key, KeyNodeEndpoint)
	}
	b := mustNew(t, config(t, `{"consecutive_failures": 2, "cooldown": "1h"}`))
	bad := call{endpoint: "Greeter.Fail"}
	failing := bad
	failing.status, failing.fault = 500, true
	do(b, "n1", failing, t0)
	do(b, "n1", failing, t0)
	if s := b.State(on("n1", bad), t0); s != gobreaker.StateOpen {
		t.Fatalf("n1 for Greeter.Fail = %v, want open", s)
	}
	d := b.OnRequest(on("n1", bad), t0)
	if want := (Decision{NodeOnly: true, Message: "breaker open for node n1, endpoint Greeter.Fail"}); d != want {
		t.Fatalf("decision = %+v, want %+v", d, want)
	}
	if !do(b, "n1", ok, t0) {
		t.Fatal("n1 refused for Greeter.Hello after its Greeter.Fail breaker tripped")
	}
	if !do(b, "n2", bad, t0) {
		t.Fatal("n2 refused for Greeter.Fail after n1's breaker for it tripped")
	}
	if b.Len() != 3 {
		t.Fatalf("Len = %d, want 3 breakers: (n1, Greeter.Fail), (n1, Greeter.Hello), (n2, Greeter.Fail)", b.Len())
	}
}

func TestPerNodeIsolation(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 2, "cooldown": "1h"}`))
	do(b, "n1", ko, t0)
	do(b, "n1", ko, t0)
	if !do(b, "n2", ok, t0) {
		t.Fatal("n2 refused after n1 tripped")
	}
	do(b, "n2", ko, t0) // one failure on n2 is not two
	if s := state(b, "n2", t0); s != gobreaker.StateClosed {
		t.Fatalf("n2 = %v, want closed", s)
	}
	if b.OnRequest(on("n1", ok), t0).Allowed {
		t.Fatal("n1 allowed while open")
	}
}

func TestHalfOpenProbeSuccessCloses(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 1, "cooldown": "20ms", "half_open_max": 1}`))
	do(b, "n1", ko, t0)
	th := halfOpenAt(t, b, "n1", t0, 20*time.Millisecond)

	probe := on("n1", ok)
	if d := b.OnRequest(probe, th); !d.Allowed {
		t.Fatalf("probe refused: %+v", d)
	}
	d := b.OnRequest(on("n1", ok), th)
	if d.Allowed || !strings.Contains(d.Message, "half-open") || !d.NodeOnly {
		t.Fatalf("a second call while the probe is in flight: %+v, want a node rejection", d)
	}
	b.OnResponse(probe, th)
	if s := state(b, "n1", th); s != gobreaker.StateClosed {
		t.Fatalf("state after a good probe = %v, want closed", s)
	}
	if !do(b, "n1", ok, th) {
		t.Fatal("refused after closing")
	}
}

func TestHalfOpenProbeFailureReopens(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 1, "cooldown": "20ms"}`))
	do(b, "n1", ko, t0)
	th := halfOpenAt(t, b, "n1", t0, 20*time.Millisecond)
	if !do(b, "n1", call{status: 0, err: "connection refused", fault: true}, th) {
		t.Fatal("probe refused")
	}
	if s := state(b, "n1", th); s != gobreaker.StateOpen {
		t.Fatalf("state after a failed probe = %v, want open", s)
	}
	// It is half-open again after another cooldown.
	halfOpenAt(t, b, "n1", th, 20*time.Millisecond)
}

func TestHalfOpenMax(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 1, "cooldown": "20ms", "half_open_max": 3}`))
	do(b, "n1", ko, t0)
	th := halfOpenAt(t, b, "n1", t0, 20*time.Millisecond)
	probes := []call{on("n1", ok), on("n1", ok), on("n1", ok)}
	for i, p := range probes {
		if !b.OnRequest(p, th).Allowed {
			t.Fatalf("probe %d of 3 refused", i+1)
		}
	}
	if b.OnRequest(on("n1", ok), th).Allowed {
		t.Fatal("a fourth probe allowed with half_open_max 3")
	}
	for i, p := range probes {
		if s := state(b, "n1", th); s != gobreaker.StateHalfOpen {
			t.Fatalf("state after %d good probes = %v, want half-open", i, s)
		}
		b.OnResponse(p, th)
	}
	if s := state(b, "n1", th); s != gobreaker.StateClosed {
		t.Fatalf("state after 3 good probes = %v, want closed", s)
	}
}

// A slow call allowed before the breaker tripped must not be taken for the probe.
func TestStaleResponseIsNotTheProbe(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 2, "cooldown": "20ms"}`))
	slow := on("n1", call{status: 200, budget: time.Hour})
	if !b.OnRequest(slow, t0).Allowed {
		t.Fatal("slow call refused")
	}
	do(b, "n1", ko, t0.Add(time.Millisecond))
	do(b, "n1", ko, t0.Add(2*time.Millisecond))
	if s := state(b, "n1", t0.Add(2*time.Millisecond)); s != gobreaker.StateOpen {
		t.Fatalf("state = %v, want open", s)
	}
	tProbe := t0.Add(10 * time.Second)
	if s := state(b, "n1", tProbe); s != gobreaker.StateHalfOpen {
		t.Fatalf("state after the cooldown = %v, want half-open", s)
	}
	probe := on("n1", call{status: 500, latency: 5 * time.Millisecond, fault: true})
	if !b.OnRequest(probe, tProbe).Allowed {
		t.Fatal("probe refused")
	}
	// The slow call answers now, having started at t0.
	tSlow := tProbe.Add(time.Millisecond)
	slow.latency = tSlow.Sub(t0)
	b.OnResponse(slow, tSlow)
	if s := state(b, "n1", tSlow); s != gobreaker.StateHalfOpen {
		t.Fatalf("state after the stale answer = %v, want still half-open", s)
	}
	if n := waiting(b, "n1"); n != 1 {
		t.Fatalf("pending = %d, want 1 (the probe)", n)
	}
	if b.OnRequest(on("n1", ok), tSlow).Allowed {
		t.Fatal("a second probe allowed: the stale answer was taken for the probe")
	}
	// The probe's own (failed) answer reopens the breaker.
	b.OnResponse(probe, tProbe.Add(probe.latency))
	if s := state(b, "n1", tProbe.Add(probe.latency)); s != gobreaker.StateOpen {
		t.Fatalf("state after the failed probe = %v, want open", s)
	}
}

// Answers that come back in another order than their calls went out are all counted.
func TestOutOfOrderOutcomes(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 0, "failure_ratio": 1, "min_requests": 4}`))
	calls := make([]call, 4)
	for i := range calls {
		calls[i] = on("n1", call{status: 502, budget: time.Minute, fault: true})
		if !b.OnRequest(calls[i], t0.Add(time.Duration(i)*time.Millisecond)).Allowed {
			t.Fatal("refused")
		}
	}
	end := t0.Add(time.Second)
	for _, i := range []int{2, 0, 3, 1} {
		c := calls[i]
		c.latency = end.Sub(t0.Add(time.Duration(i) * time.Millisecond))
		b.OnResponse(c, end)
	}
	if n := waiting(b, "n1"); n != 0 {
		t.Fatalf("pending = %d, want 0", n)
	}
	if s := state(b, "n1", end); s != gobreaker.StateOpen {
		t.Fatalf("state after 4 of 4 failed = %v, want open", s)
	}
}

// A probe whose answer never comes is given up on after its budget, and another probe may
// go.
func TestLostProbeExpires(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 1, "cooldown": "20ms"}`))
	do(b, "n1", ko, t0)
	th := halfOpenAt(t, b, "n1", t0, 20*time.Millisecond)
	if !b.OnRequest(on("n1", call{budget: 100 * time.Millisecond}), th).Allowed {
		t.Fatal("probe refused")
	}
	if b.OnRequest(on("n1", ok), th.Add(time.Second)).Allowed {
		t.Fatal("second probe allowed within the first's budget and grace")
	}
	later := th.Add(100*time.Millisecond + pendingGrace)
	if !b.OnRequest(on("n1", ok), later).Allowed {
		t.Fatal("second probe refused after the first's budget and grace")
	}
	if s := state(b, "n1", later); s != gobreaker.StateHalfOpen {
		t.Fatalf("state = %v, want half-open (a lost probe is neither success nor failure)", s)
	}
}

// TestWhatFails checks which outcomes fail: the node's faults only, narrowed by
// failure_statuses when it is set.
func TestWhatFails(t *testing.T) {
	tests := []struct {
		statuses string
		outcome  call
		fails    bool
	}{
		{`[]`, call{status: 200}, false},
		{`[]`, call{status: 404}, false},
		{`[]`, call{status: 429}, false},
		{`[]`, call{status: 500, fault: true}, true},
		{`[]`, call{status: 504, fault: true}, true},
		{`[]`, call{status: 0, err: "connection refused", fault: true}, true},
		// Not the node's fault, whatever the status: micro's own answers, a timeout the
		// caller chose, a rejection by a later wrapper.
		{`[]`, call{status: 503}, false},
		{`[]`, call{status: 504}, false},
		{`[]`, call{status: 0, err: "context deadline exceeded"}, false},
		{`[]`, call{status: 503, err: "rejected by wrapper auth"}, false},
		{`[503]`, call{status: 500, fault: true}, false},
		{`[503]`, call{status: 503, fault: true}, true},
		{`[503]`, call{status: 0, err: "timeout", fault: true}, true},
		{`[503]`, call{status: 503}, false},
		{`[503]`, call{status: 0, err: "timeout"}, false},
	}
	for _, tt := range tests {
		b := mustNew(t, config(t, `{"consecutive_failures": 1, "cooldown": "1h", "failure_statuses": `+tt.statuses+`}`))
		do(b, "n1", tt.outcome, t0)
		if got := state(b, "n1", t0) == gobreaker.StateOpen; got != tt.fails {
			t.Errorf("failure_statuses %s, outcome %+v: counted as failure = %v, want %v", tt.statuses, tt.outcome, got, tt.fails)
		}
	}
}

// TestOutcomesThatAreNoFault checks what an outcome that is not the node's fault counts
// as: a success when the node answered, and nothing when no answer came.
func TestOutcomesThatAreNoFault(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 2, "failure_ratio": 0, "cooldown": "20ms"}`))
	// An answer breaks a run of failures, as any success does.
	do(b, "n1", ko, t0)
	do(b, "n1", call{status: 404}, t0)
	do(b, "n1", ko, t0)
	if s := state(b, "n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state after failure, 404, failure = %v, want closed", s)
	}
	// No answer does not.
	do(b, "n1", call{status: 0, err: "context deadline exceeded"}, t0)
	do(b, "n1", call{status: 429, err: "rejected by wrapper ratelimit"}, t0)
	do(b, "n1", ko, t0)
	if s := state(b, "n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after failure, two calls without an answer, failure = %v, want open", s)
	}
	// A half-open breaker's probe without an answer closes nothing, and frees its place
	// for another probe.
	th := halfOpenAt(t, b, "n1", t0, 20*time.Millisecond)
	if !do(b, "n1", call{status: 0, err: "context canceled"}, th) {
		t.Fatal("probe refused")
	}
	if s := state(b, "n1", th); s != gobreaker.StateHalfOpen {
		t.Fatalf("state after a probe without an answer = %v, want half-open", s)
	}
	if !do(b, "n1", ok, th) {
		t.Fatal("a second probe refused after the first got no answer")
	}
	if s := state(b, "n1", th); s != gobreaker.StateClosed {
		t.Fatalf("state after a good probe = %v, want closed", s)
	}
}

func TestRollingInterval(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 2, "interval": "50ms"}`))
	do(b, "n1", ko, t0)
	// The failure leaves the window once the interval has passed.
	if n := b.Counts(on("n1", ok), t0.Add(49*time.Millisecond)).ConsecutiveFailures; n != 1 {
		t.Fatalf("consecutive failures within the 50ms window = %d, want 1", n)
	}
	if n := b.Counts(on("n1", ok), t0.Add(50*time.Millisecond)).ConsecutiveFailures; n != 0 {
		t.Fatalf("consecutive failures once the 50ms window has passed = %d, want 0", n)
	}
	do(b, "n1", ko, t0.Add(50*time.Millisecond))
	if s := state(b, "n1", t0.Add(50*time.Millisecond)); s != gobreaker.StateClosed {
		t.Fatalf("state = %v, want closed: the first failure was out of the window", s)
	}
	// Two failures within the window trip it.
	do(b, "n2", ko, t0)
	do(b, "n2", ko, t0.Add(45*time.Millisecond))
	if s := state(b, "n2", t0.Add(45*time.Millisecond)); s != gobreaker.StateOpen {
		t.Fatalf("state after two failures 45ms apart = %v, want open", s)
	}
}

func TestStateChange(t *testing.T) {
	type change struct {
		name     string
		from, to gobreaker.State
	}
	var got []change
	b, err := New(config(t, `{"consecutive_failures": 1, "cooldown": "20ms"}`), func(name string, from, to gobreaker.State) {
		got = append(got, change{name, from, to})
	})
	if err != nil {
		t.Fatal(err)
	}
	do(b, "n1", ko, t0)
	th := halfOpenAt(t, b, "n1", t0, 20*time.Millisecond)
	do(b, "n1", ok, th)
	const name = "node n1, endpoint Greeter.Hello"
	want := []change{
		{name, gobreaker.StateClosed, gobreaker.StateOpen},
		{name, gobreaker.StateOpen, gobreaker.StateHalfOpen},
		{name, gobreaker.StateHalfOpen, gobreaker.StateClosed},
	}
	if len(got) != len(want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("changes = %v, want %v", got, want)
		}
	}
}

func TestMaxKeys(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 1, "cooldown": "1h", "max_keys": 2}`))
	do(b, "n1", ko, t0)
	do(b, "n2", ok, t0)
	b.OnRequest(on("n1", ok), t0) // n1 is the most recently used
	do(b, "n3", ok, t0)           // drops n2
	if b.Len() != 2 {
		t.Fatalf("Len = %d, want 2", b.Len())
	}
	if b.OnRequest(on("n1", ok), t0).Allowed {
		t.Fatal("n1 lost its open state")
	}
	// An answer for a dropped key is ignored.
	b.OnResponse(on("n9", ko), t0)
	if b.Len() != 2 {
		t.Fatalf("Len = %d after an answer for an unknown key, want 2", b.Len())
	}
}

func TestConfig(t *testing.T) {
	c := config(t, `{"key": "service", "interval": "1m", "cooldown": "250ms"}`)
	want := DefaultConfig()
	want.Key, want.Interval, want.Cooldown = "service", Duration(time.Minute), Duration(250*time.Millisecond)
	if c.Key != want.Key || c.Interval != want.Interval || c.Cooldown != want.Cooldown ||
		c.FailureRatio != want.FailureRatio || c.MinRequests != want.MinRequests ||
		c.ConsecutiveFailures != want.ConsecutiveFailures || c.HalfOpenMax != want.HalfOpenMax {
		t.Fatalf("config = %+v, want %+v", c, want)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}

	for _, tt := range []struct{ js, want string }{
		{`{"interval": 10}`, `want a duration string such as "5s", got 10`},
		{`{"cooldown": "5 seconds"}`, `invalid duration "5 seconds"`},
		{`{"treshold": 1}`, `unknown field "treshold"`},
	} {
		if _, err := decode(tt.js); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("decode %s = %v, want an error containing %q", tt.js, err, tt.want)
		}
	}

	for _, tt := range []struct{ js, want string }{
		{`{"key": "caller"}`, `key: unknown key "caller"`},
		{`{"failure_ratio": 1.5}`, "failure_ratio:"},
		{`{"failure_ratio": -0.1}`, "failure_ratio:"},
		{`{"min_requests": 0}`, "min_requests:"},
		{`{"interval": "0s"}`, "interval:"},
		{`{"interval": "-1s"}`, "interval:"},
		{`{"consecutive_failures": -1}`, "consecutive_failures:"},
		{`{"consecutive_failures": 0, "failure_ratio": 0}`, "never trip"},
		{`{"cooldown": "0s"}`, "cooldown:"},
		{`{"half_open_max": 0}`, "half_open_max:"},
		{`{"failure_statuses": [500, 42]}`, "failure_statuses[1]: 42 is not a 5xx status"},
		{`{"failure_statuses": [503, 429]}`, "failure_statuses[1]: 429 is not a 5xx status"},
		{`{"max_keys": 0}`, "max_keys:"},
	} {
		_, err := New(config(t, tt.js), nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%s) = %v, want an error containing %q", tt.js, err, tt.want)
		}
	}
}

// TestTheCallsClock checks that a breaker keeps time by the calls' times alone: an hour's
// cooldown passes at once, and a clock that goes back neither ends a cooldown nor empties
// the rolling window.
func TestTheCallsClock(t *testing.T) {
	b := mustNew(t, config(t, `{"consecutive_failures": 2, "cooldown": "1h", "interval": "10s"}`))
	do(b, "n1", ko, t0)
	do(b, "n1", ok, t0.Add(time.Second))
	do(b, "n1", ko, t0.Add(2*time.Second))
	if n := b.Counts(on("n1", ok), t0.Add(-time.Hour)); n.TotalFailures != 2 || n.TotalSuccesses != 1 {
		t.Fatalf("counts an hour back = %+v, want the 2 failures and 1 success", n)
	}
	do(b, "n1", ko, t0.Add(3*time.Second))
	if s := state(b, "n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 2 failures in a row = %v, want open", s)
	}
	if s := state(b, "n1", t0.Add(-time.Hour)); s != gobreaker.StateOpen {
		t.Fatalf("state with the clock an hour back = %v, want open", s)
	}
	th := halfOpenAt(t, b, "n1", t0.Add(3*time.Second), time.Hour)
	if !do(b, "n1", ok, th) {
		t.Fatal("the probe after an hour was refused")
	}
}

// TestNoAllocations checks that a call through a closed breaker allocates nothing: an
// allocation costs a guest its garbage collector's time.
func TestNoAllocations(t *testing.T) {
	b := mustNew(t, DefaultConfig())
	c := on("n1", call{status: 200, budget: time.Second, latency: time.Millisecond})
	p := &c // as sdk/wrapper's Request, an interface value that needs no allocation
	now := t0
	if allocs := testing.AllocsPerRun(100, func() {
		now = now.Add(time.Millisecond)
		if !b.OnRequest(p, now).Allowed {
			t.Fatal("refused")
		}
		b.OnResponse(p, now.Add(c.latency))
	}); allocs != 0 {
		t.Errorf("%v allocations per call, want 0", allocs)
	}
}

func BenchmarkRequestResponse(b *testing.B) {
	br, err := New(DefaultConfig(), nil)
	if err != nil {
		b.Fatal(err)
	}
	c := on("n1", call{status: 200, budget: time.Second, latency: time.Millisecond})
	now := t0
	for b.Loop() {
		now = now.Add(time.Millisecond)
		br.OnRequest(c, now)
		br.OnResponse(c, now.Add(time.Millisecond))
	}
}

// A call with no deadline (a huge budget) waits for its outcome, up to a bound.
func TestHugeBudget(t *testing.T) {
	b := mustNew(t, DefaultConfig())
	b.OnRequest(on("n1", call{budget: time.Duration(math.MaxInt64)}), t0)
	b.OnRequest(on("n1", call{budget: time.Second}), t0.Add(time.Minute))
	if n := waiting(b, "n1"); n != 2 {
		t.Fatalf("pending a minute on = %d, want 2", n)
	}
	b.OnRequest(on("n1", call{budget: time.Second}), t0.Add(maxPendingWait+pendingGrace))
	if n := waiting(b, "n1"); n != 1 {
		t.Fatalf("pending after the bound = %d, want 1", n)
	}
}

// Calls whose outcomes never come are given up on in batches.
func TestPendingBound(t *testing.T) {
	b := mustNew(t, DefaultConfig())
	c := on("n1", call{budget: time.Hour})
	for range maxPending {
		b.OnRequest(c, t0)
	}
	if n := waiting(b, "n1"); n != maxPending {
		t.Fatalf("pending = %d, want %d", n, maxPending)
	}
	b.OnRequest(c, t0)
	if n, want := waiting(b, "n1"), maxPending/2+1; n != want {
		t.Fatalf("pending past the bound = %d, want %d", n, want)
	}
	if s := state(b, "n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state = %v, want closed: lost outcomes are not failures", s)
	}
}
