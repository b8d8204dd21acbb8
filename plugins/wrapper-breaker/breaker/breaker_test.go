package breaker

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

var (
	t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ok = wrappertest.Outcome{Status: 200}
	ko = wrappertest.Outcome{Status: 500, Fault: true}
)

// fixture is the breaker wrapper, run as micro runs it.
type fixture struct {
	t    *testing.T
	b    *Breakers
	inst *wrappertest.Instance
}

// start runs the wrapper with a config (JSON, over the defaults).
func start(t *testing.T, config string) *fixture {
	t.Helper()
	return startWith(t, config, nil)
}

// startWith runs the wrapper with a config, telling onChange of every state change.
func startWith(t *testing.T, config string, onChange StateChange) *fixture {
	t.Helper()
	b := &Breakers{OnChange: onChange}
	inst, err := wrappertest.New(b.Handler(), config)
	if err != nil {
		t.Fatalf("config %s: %v", config, err)
	}
	return &fixture{t: t, b: b, inst: inst}
}

// on returns a call to node, of service greeter, to endpoint Greeter.Hello, without a
// deadline.
func on(node string) *wrappertest.Request {
	r := wrappertest.NewRequest("greeter", "Greeter.Hello")
	r.Node = node
	return r
}

// request runs the wrapper's OnRequest for r at now.
func (f *fixture) request(r *wrappertest.Request, now time.Time) wrappertest.Result {
	f.t.Helper()
	f.inst.Clock.Set(now)
	res := f.inst.Request(r)
	if res.Verdict == wrappertest.Failed {
		f.t.Fatalf("OnRequest failed: %v", res.Err)
	}
	return res
}

// allowed reports whether the wrapper lets r through at now.
func (f *fixture) allowed(r *wrappertest.Request, now time.Time) bool {
	f.t.Helper()
	return f.request(r, now).Verdict == wrappertest.Continued
}

// response runs the wrapper's OnResponse for r, with the outcome o that came at now.
func (f *fixture) response(r *wrappertest.Request, o wrappertest.Outcome, now time.Time) {
	f.t.Helper()
	f.inst.Clock.Set(now)
	if err := f.inst.Response(r, o); err != nil {
		f.t.Fatalf("OnResponse failed: %v", err)
	}
}

// do runs one whole call to node, to Greeter.Hello unless endpoint names another, at now:
// its request, and if it was allowed its outcome o, o.Latency later. It reports whether
// the call was allowed.
func (f *fixture) do(node string, o wrappertest.Outcome, now time.Time, endpoint ...string) bool {
	f.t.Helper()
	r := on(node)
	if len(endpoint) > 0 {
		r.Endpoint = endpoint[0]
	}
	if !f.allowed(r, now) {
		return false
	}
	f.response(r, o, now.Add(o.Latency))
	return true
}

// state returns the state at time at of the breaker of a call to node's Greeter.Hello.
func (f *fixture) state(node string, at time.Time) gobreaker.State {
	return f.b.State("greeter", "Greeter.Hello", node, at)
}

// waiting returns how many calls to node's Greeter.Hello wait for their outcome.
func (f *fixture) waiting(node string) int { return f.b.Pending("greeter", "Greeter.Hello", node) }

// halfOpenAt checks that the breaker of node, open since opened, is still open just
// before the cooldown has passed and half-open once it has, and returns that time.
func (f *fixture) halfOpenAt(node string, opened time.Time, cooldown time.Duration) time.Time {
	f.t.Helper()
	at := opened.Add(cooldown)
	if s := f.state(node, at.Add(-time.Nanosecond)); s != gobreaker.StateOpen {
		f.t.Fatalf("state of %s a nanosecond before the cooldown has passed = %v, want open", node, s)
	}
	if s := f.state(node, at); s != gobreaker.StateHalfOpen {
		f.t.Fatalf("state of %s once the cooldown has passed = %v, want half-open", node, s)
	}
	return at
}

func TestTripsOnRatio(t *testing.T) {
	f := start(t, `{"failure_ratio": 0.5, "min_requests": 10, "consecutive_failures": 0}`)
	for i := range 9 {
		outcome := ok
		if i%2 == 1 {
			outcome = ko
		}
		if !f.do("n1", outcome, t0) {
			t.Fatalf("call %d rejected while closed", i+1)
		}
	}
	// 4 of 9 failed; the 10th outcome, a failure, makes 5 of 10.
	if s := f.state("n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state after 4 failures in 9 = %v, want closed", s)
	}
	f.do("n1", ko, t0)
	if s := f.state("n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 5 failures in 10 = %v, want open", s)
	}
}

func TestRatioBelowThreshold(t *testing.T) {
	f := start(t, `{"failure_ratio": 0.5, "min_requests": 4, "consecutive_failures": 0}`)
	// 1 failure in 3, then the ratio stays under a half for 30 calls.
	for i := range 30 {
		outcome := ok
		if i%3 == 2 {
			outcome = ko
		}
		f.do("n1", outcome, t0)
		if s := f.state("n1", t0); s != gobreaker.StateClosed {
			t.Fatalf("state after call %d = %v, want closed at a third failing", i+1, s)
		}
	}
}

func TestStaysClosedBelowMinRequests(t *testing.T) {
	f := start(t, `{"failure_ratio": 0.5, "min_requests": 10, "consecutive_failures": 0}`)
	for i := range 9 {
		f.do("n1", ko, t0)
		if s := f.state("n1", t0); s != gobreaker.StateClosed {
			t.Fatalf("state after %d failures = %v, want closed below min_requests 10", i+1, s)
		}
	}
	f.do("n1", ko, t0)
	if s := f.state("n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 10 failures = %v, want open", s)
	}
}

func TestTripsOnConsecutive(t *testing.T) {
	f := start(t, `{"consecutive_failures": 3, "min_requests": 1000}`)
	for range 20 {
		f.do("n1", ok, t0)
	}
	f.do("n1", ko, t0)
	f.do("n1", ko, t0)
	f.do("n1", ok, t0) // breaks the run
	f.do("n1", ko, t0)
	f.do("n1", ko, t0)
	if s := f.state("n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state after runs of 2 failures = %v, want closed", s)
	}
	f.do("n1", ko, t0)
	if s := f.state("n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 3 failures in a row = %v, want open", s)
	}
}

func TestOpenRejects(t *testing.T) {
	t.Run("node_endpoint", func(t *testing.T) {
		f := start(t, `{"key": "node_endpoint", "consecutive_failures": 1, "cooldown": "1h"}`)
		f.do("n1", ko, t0)
		res := f.request(on("n1"), t0)
		if want := `rejected node "breaker open for node n1, endpoint Greeter.Hello"`; res.String() != want {
			t.Fatalf("result = %v, want %s", res, want)
		}
	})
	t.Run("node", func(t *testing.T) {
		f := start(t, `{"key": "node", "consecutive_failures": 1, "cooldown": "1h"}`)
		f.do("n1", ko, t0)
		// Every endpoint of the node is refused.
		r := on("n1")
		r.Endpoint = "Greeter.Other"
		if res, want := f.request(r, t0), `rejected node "breaker open for node n1"`; res.String() != want {
			t.Fatalf("result = %v, want %s", res, want)
		}
	})
	t.Run("service", func(t *testing.T) {
		f := start(t, `{"key": "service", "consecutive_failures": 1, "cooldown": "1h"}`)
		f.do("n1", ko, t0)
		// Every node of the service is refused.
		if res, want := f.request(on("n2"), t0), `rejected 503 "breaker open for service greeter"`; res.String() != want {
			t.Fatalf("result = %v, want %s", res, want)
		}
		other := on("n1")
		other.Service = "other"
		if res := f.request(other, t0); res.Verdict != wrappertest.Continued {
			t.Fatalf("another service was refused: %v", res)
		}
	})
}

// With the default key, a node's failing endpoint trips a breaker that refuses that node
// for that endpoint only: the node serves its other endpoints, and other nodes serve it.
func TestPerNodeEndpointIsolation(t *testing.T) {
	if DefaultConfig().Key != KeyNodeEndpoint {
		t.Fatalf("default key %q, want %q", DefaultConfig().Key, KeyNodeEndpoint)
	}
	f := start(t, `{"consecutive_failures": 2, "cooldown": "1h"}`)
	f.do("n1", ko, t0, "Greeter.Fail")
	f.do("n1", ko, t0, "Greeter.Fail")
	if s := f.b.State("greeter", "Greeter.Fail", "n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("n1 for Greeter.Fail = %v, want open", s)
	}
	bad := on("n1")
	bad.Endpoint = "Greeter.Fail"
	if res, want := f.request(bad, t0), `rejected node "breaker open for node n1, endpoint Greeter.Fail"`; res.String() != want {
		t.Fatalf("result = %v, want %s", res, want)
	}
	if !f.do("n1", ok, t0) {
		t.Fatal("n1 refused for Greeter.Hello after its Greeter.Fail breaker tripped")
	}
	if !f.do("n2", ok, t0, "Greeter.Fail") {
		t.Fatal("n2 refused for Greeter.Fail after n1's breaker for it tripped")
	}
	if f.b.Len() != 3 {
		t.Fatalf("Len = %d, want 3 breakers: (n1, Greeter.Fail), (n1, Greeter.Hello), (n2, Greeter.Fail)", f.b.Len())
	}
}

func TestPerNodeIsolation(t *testing.T) {
	f := start(t, `{"consecutive_failures": 2, "cooldown": "1h"}`)
	f.do("n1", ko, t0)
	f.do("n1", ko, t0)
	if !f.do("n2", ok, t0) {
		t.Fatal("n2 refused after n1 tripped")
	}
	f.do("n2", ko, t0) // one failure on n2 is not two
	if s := f.state("n2", t0); s != gobreaker.StateClosed {
		t.Fatalf("n2 = %v, want closed", s)
	}
	if f.allowed(on("n1"), t0) {
		t.Fatal("n1 allowed while open")
	}
}

func TestHalfOpenProbeSuccessCloses(t *testing.T) {
	f := start(t, `{"consecutive_failures": 1, "cooldown": "20ms", "half_open_max": 1}`)
	f.do("n1", ko, t0)
	th := f.halfOpenAt("n1", t0, 20*time.Millisecond)

	probe := on("n1")
	if res := f.request(probe, th); res.Verdict != wrappertest.Continued {
		t.Fatalf("probe refused: %v", res)
	}
	res := f.request(on("n1"), th)
	if res.Verdict != wrappertest.RejectedNode || !strings.Contains(res.Message, "half-open") {
		t.Fatalf("a second call while the probe is in flight: %v, want a node rejection", res)
	}
	f.response(probe, ok, th)
	if s := f.state("n1", th); s != gobreaker.StateClosed {
		t.Fatalf("state after a good probe = %v, want closed", s)
	}
	if !f.do("n1", ok, th) {
		t.Fatal("refused after closing")
	}
}

func TestHalfOpenProbeFailureReopens(t *testing.T) {
	f := start(t, `{"consecutive_failures": 1, "cooldown": "20ms"}`)
	f.do("n1", ko, t0)
	th := f.halfOpenAt("n1", t0, 20*time.Millisecond)
	if !f.do("n1", wrappertest.Outcome{Err: "connection refused", Fault: true}, th) {
		t.Fatal("probe refused")
	}
	if s := f.state("n1", th); s != gobreaker.StateOpen {
		t.Fatalf("state after a failed probe = %v, want open", s)
	}
	// It is half-open again after another cooldown.
	f.halfOpenAt("n1", th, 20*time.Millisecond)
}

func TestHalfOpenMax(t *testing.T) {
	f := start(t, `{"consecutive_failures": 1, "cooldown": "20ms", "half_open_max": 3}`)
	f.do("n1", ko, t0)
	th := f.halfOpenAt("n1", t0, 20*time.Millisecond)
	probes := []*wrappertest.Request{on("n1"), on("n1"), on("n1")}
	for i, p := range probes {
		if !f.allowed(p, th) {
			t.Fatalf("probe %d of 3 refused", i+1)
		}
	}
	if f.allowed(on("n1"), th) {
		t.Fatal("a fourth probe allowed with half_open_max 3")
	}
	for i, p := range probes {
		if s := f.state("n1", th); s != gobreaker.StateHalfOpen {
			t.Fatalf("state after %d good probes = %v, want half-open", i, s)
		}
		f.response(p, ok, th)
	}
	if s := f.state("n1", th); s != gobreaker.StateClosed {
		t.Fatalf("state after 3 good probes = %v, want closed", s)
	}
}

// A slow call allowed before the breaker tripped must not be taken for the probe.
func TestStaleResponseIsNotTheProbe(t *testing.T) {
	f := start(t, `{"consecutive_failures": 2, "cooldown": "20ms"}`)
	slow := on("n1")
	slow.Deadline = t0.Add(time.Hour)
	if !f.allowed(slow, t0) {
		t.Fatal("slow call refused")
	}
	f.do("n1", ko, t0.Add(time.Millisecond))
	f.do("n1", ko, t0.Add(2*time.Millisecond))
	if s := f.state("n1", t0.Add(2*time.Millisecond)); s != gobreaker.StateOpen {
		t.Fatalf("state = %v, want open", s)
	}
	tProbe := t0.Add(10 * time.Second)
	if s := f.state("n1", tProbe); s != gobreaker.StateHalfOpen {
		t.Fatalf("state after the cooldown = %v, want half-open", s)
	}
	probe := on("n1")
	if !f.allowed(probe, tProbe) {
		t.Fatal("probe refused")
	}
	// The slow call answers now, having started at t0.
	tSlow := tProbe.Add(time.Millisecond)
	f.response(slow, wrappertest.Outcome{Status: 200, Latency: tSlow.Sub(t0)}, tSlow)
	if s := f.state("n1", tSlow); s != gobreaker.StateHalfOpen {
		t.Fatalf("state after the stale answer = %v, want still half-open", s)
	}
	if n := f.waiting("n1"); n != 1 {
		t.Fatalf("pending = %d, want 1 (the probe)", n)
	}
	if f.allowed(on("n1"), tSlow) {
		t.Fatal("a second probe allowed: the stale answer was taken for the probe")
	}
	// The probe's own (failed) answer reopens the breaker.
	failed := wrappertest.Outcome{Status: 500, Latency: 5 * time.Millisecond, Fault: true}
	f.response(probe, failed, tProbe.Add(failed.Latency))
	if s := f.state("n1", tProbe.Add(failed.Latency)); s != gobreaker.StateOpen {
		t.Fatalf("state after the failed probe = %v, want open", s)
	}
}

// Answers that come back in another order than their calls went out are all counted.
func TestOutOfOrderOutcomes(t *testing.T) {
	f := start(t, `{"consecutive_failures": 0, "failure_ratio": 1, "min_requests": 4}`)
	calls := make([]*wrappertest.Request, 4)
	for i := range calls {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		calls[i] = on("n1")
		calls[i].Deadline = at.Add(time.Minute)
		if !f.allowed(calls[i], at) {
			t.Fatal("refused")
		}
	}
	end := t0.Add(time.Second)
	for _, i := range []int{2, 0, 3, 1} {
		f.response(calls[i], wrappertest.Outcome{Status: 502, Latency: end.Sub(t0.Add(time.Duration(i) * time.Millisecond)), Fault: true}, end)
	}
	if n := f.waiting("n1"); n != 0 {
		t.Fatalf("pending = %d, want 0", n)
	}
	if s := f.state("n1", end); s != gobreaker.StateOpen {
		t.Fatalf("state after 4 of 4 failed = %v, want open", s)
	}
}

// A probe whose answer never comes is given up on after its budget, and another probe may
// go.
func TestLostProbeExpires(t *testing.T) {
	f := start(t, `{"consecutive_failures": 1, "cooldown": "20ms"}`)
	f.do("n1", ko, t0)
	th := f.halfOpenAt("n1", t0, 20*time.Millisecond)
	probe := on("n1")
	probe.Deadline = th.Add(100 * time.Millisecond)
	if !f.allowed(probe, th) {
		t.Fatal("probe refused")
	}
	if f.allowed(on("n1"), th.Add(time.Second)) {
		t.Fatal("second probe allowed within the first's budget and grace")
	}
	later := th.Add(100*time.Millisecond + pendingGrace)
	if !f.allowed(on("n1"), later) {
		t.Fatal("second probe refused after the first's budget and grace")
	}
	if s := f.state("n1", later); s != gobreaker.StateHalfOpen {
		t.Fatalf("state = %v, want half-open (a lost probe is neither success nor failure)", s)
	}
}

// TestWhatFails checks which outcomes fail: the node's faults only, narrowed by
// failure_statuses when it is set.
func TestWhatFails(t *testing.T) {
	type outcome = wrappertest.Outcome
	tests := []struct {
		statuses string
		outcome  outcome
		fails    bool
	}{
		{`[]`, outcome{Status: 200}, false},
		{`[]`, outcome{Status: 404}, false},
		{`[]`, outcome{Status: 429}, false},
		{`[]`, outcome{Status: 500, Fault: true}, true},
		{`[]`, outcome{Status: 504, Fault: true}, true},
		{`[]`, outcome{Err: "connection refused", Fault: true}, true},
		// Not the node's fault, whatever the status: micro's own answers, a timeout the
		// caller chose, a rejection by a later wrapper.
		{`[]`, outcome{Status: 503}, false},
		{`[]`, outcome{Status: 504}, false},
		{`[]`, outcome{Err: "context deadline exceeded"}, false},
		{`[]`, outcome{Status: 503, Err: "rejected by wrapper auth"}, false},
		{`[503]`, outcome{Status: 500, Fault: true}, false},
		{`[503]`, outcome{Status: 503, Fault: true}, true},
		{`[503]`, outcome{Err: "timeout", Fault: true}, true},
		{`[503]`, outcome{Status: 503}, false},
		{`[503]`, outcome{Err: "timeout"}, false},
	}
	for _, tt := range tests {
		f := start(t, `{"consecutive_failures": 1, "cooldown": "1h", "failure_statuses": `+tt.statuses+`}`)
		f.do("n1", tt.outcome, t0)
		if got := f.state("n1", t0) == gobreaker.StateOpen; got != tt.fails {
			t.Errorf("failure_statuses %s, outcome %+v: counted as failure = %v, want %v", tt.statuses, tt.outcome, got, tt.fails)
		}
	}
}

// TestOutcomesThatAreNoFault checks what an outcome that is not the node's fault counts
// as: a success when the node answered, and nothing when no answer came.
func TestOutcomesThatAreNoFault(t *testing.T) {
	f := start(t, `{"consecutive_failures": 2, "failure_ratio": 0, "cooldown": "20ms"}`)
	// An answer breaks a run of failures, as any success does.
	f.do("n1", ko, t0)
	f.do("n1", wrappertest.Outcome{Status: 404}, t0)
	f.do("n1", ko, t0)
	if s := f.state("n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state after failure, 404, failure = %v, want closed", s)
	}
	// No answer does not.
	f.do("n1", wrappertest.Outcome{Err: "context deadline exceeded"}, t0)
	f.do("n1", wrappertest.Outcome{Status: 429, Err: "rejected by wrapper ratelimit"}, t0)
	f.do("n1", ko, t0)
	if s := f.state("n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after failure, two calls without an answer, failure = %v, want open", s)
	}
	// A half-open breaker's probe without an answer closes nothing, and frees its place
	// for another probe.
	th := f.halfOpenAt("n1", t0, 20*time.Millisecond)
	if !f.do("n1", wrappertest.Outcome{Err: "context canceled"}, th) {
		t.Fatal("probe refused")
	}
	if s := f.state("n1", th); s != gobreaker.StateHalfOpen {
		t.Fatalf("state after a probe without an answer = %v, want half-open", s)
	}
	if !f.do("n1", ok, th) {
		t.Fatal("a second probe refused after the first got no answer")
	}
	if s := f.state("n1", th); s != gobreaker.StateClosed {
		t.Fatalf("state after a good probe = %v, want closed", s)
	}
}

func TestRollingInterval(t *testing.T) {
	f := start(t, `{"consecutive_failures": 2, "interval": "50ms"}`)
	failures := func(node string, at time.Time) uint32 {
		return f.b.Counts("greeter", "Greeter.Hello", node, at).ConsecutiveFailures
	}
	f.do("n1", ko, t0)
	// The failure leaves the window once the interval has passed.
	if n := failures("n1", t0.Add(49*time.Millisecond)); n != 1 {
		t.Fatalf("consecutive failures within the 50ms window = %d, want 1", n)
	}
	if n := failures("n1", t0.Add(50*time.Millisecond)); n != 0 {
		t.Fatalf("consecutive failures once the 50ms window has passed = %d, want 0", n)
	}
	f.do("n1", ko, t0.Add(50*time.Millisecond))
	if s := f.state("n1", t0.Add(50*time.Millisecond)); s != gobreaker.StateClosed {
		t.Fatalf("state = %v, want closed: the first failure was out of the window", s)
	}
	// Two failures within the window trip it.
	f.do("n2", ko, t0)
	f.do("n2", ko, t0.Add(45*time.Millisecond))
	if s := f.state("n2", t0.Add(45*time.Millisecond)); s != gobreaker.StateOpen {
		t.Fatalf("state after two failures 45ms apart = %v, want open", s)
	}
}

// TestStateChange checks that the wrapper logs each change of a breaker's state, at warn
// level when it opens.
func TestStateChange(t *testing.T) {
	f := startWith(t, `{"consecutive_failures": 1, "cooldown": "20ms"}`, LogChange)
	f.do("n1", ko, t0)
	f.do("n1", ok, t0.Add(20*time.Millisecond)) // half-open at the call, then closed
	const name = "node n1, endpoint Greeter.Hello"
	want := []wrappertest.Log{
		{Level: slog.LevelWarn, Message: "breaker for " + name + ": closed -> open"},
		{Level: slog.LevelInfo, Message: "breaker for " + name + ": open -> half-open"},
		{Level: slog.LevelInfo, Message: "breaker for " + name + ": half-open -> closed"},
	}
	if got := f.inst.Logs(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("logs = %v, want %v", got, want)
	}
}

func TestMaxKeys(t *testing.T) {
	f := start(t, `{"consecutive_failures": 1, "cooldown": "1h", "max_keys": 2}`)
	f.do("n1", ko, t0)
	f.do("n2", ok, t0)
	f.request(on("n1"), t0) // n1 is the most recently used
	f.do("n3", ok, t0)      // drops n2
	if f.b.Len() != 2 {
		t.Fatalf("Len = %d, want 2", f.b.Len())
	}
	if f.allowed(on("n1"), t0) {
		t.Fatal("n1 lost its open state")
	}
	// An answer for a dropped key is ignored.
	f.response(on("n9"), ko, t0)
	if f.b.Len() != 2 {
		t.Fatalf("Len = %d after an answer for an unknown key, want 2", f.b.Len())
	}
}

func TestConfig(t *testing.T) {
	c := start(t, `{"key": "service", "interval": "1m", "cooldown": "250ms"}`).b.cfg
	want := DefaultConfig()
	want.Key, want.Interval, want.Cooldown = "service", Duration(time.Minute), Duration(250*time.Millisecond)
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Fatalf("config = %+v, want %+v", c, want)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if got, err := Duration(1500 * time.Millisecond).MarshalJSON(); string(got) != `"1.5s"` || err != nil {
		t.Errorf("a Duration in JSON: %s, %v", got, err)
	}

	// A config that the wrapper refuses, as micro shows it.
	for _, tt := range []struct{ js, want string }{
		{`{"interval": 10}`, `want a duration string such as "5s", got 10`},
		{`{"cooldown": "5 seconds"}`, `invalid duration "5 seconds"`},
		{`{"treshold": 1}`, `config: json: unknown field "treshold"`},
		{`{"key": "caller"}`, `breaker config: key: unknown key "caller"`},
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
		_, err := wrappertest.New(new(Breakers).Handler(), tt.js)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.js) {
			t.Errorf("config %s: %v, want an error that names it and contains %q", tt.js, err, tt.want)
		}
	}
	if _, err := New(Config{}, nil); err == nil || !strings.Contains(err.Error(), "key:") {
		t.Errorf("New with an empty config: %v", err)
	}
}

// TestTheCallsClock checks that a breaker keeps time by the calls' times alone: an hour's
// cooldown passes at once, and a clock that goes back neither ends a cooldown nor empties
// the rolling window.
func TestTheCallsClock(t *testing.T) {
	f := start(t, `{"consecutive_failures": 2, "cooldown": "1h", "interval": "10s"}`)
	f.do("n1", ko, t0)
	f.do("n1", ok, t0.Add(time.Second))
	f.do("n1", ko, t0.Add(2*time.Second))
	if n := f.b.Counts("greeter", "Greeter.Hello", "n1", t0.Add(-time.Hour)); n.TotalFailures != 2 || n.TotalSuccesses != 1 {
		t.Fatalf("counts an hour back = %+v, want the 2 failures and 1 success", n)
	}
	f.do("n1", ko, t0.Add(3*time.Second))
	if s := f.state("n1", t0); s != gobreaker.StateOpen {
		t.Fatalf("state after 2 failures in a row = %v, want open", s)
	}
	if s := f.state("n1", t0.Add(-time.Hour)); s != gobreaker.StateOpen {
		t.Fatalf("state with the clock an hour back = %v, want open", s)
	}
	th := f.halfOpenAt("n1", t0.Add(3*time.Second), time.Hour)
	if !f.do("n1", ok, th) {
		t.Fatal("the probe after an hour was refused")
	}
}

// TestNoAllocations checks that a call through a closed breaker allocates nothing: an
// allocation costs a guest its garbage collector's time. The wrapper runs under
// wrappertest, whose own allocations a handler that does nothing measures.
func TestNoAllocations(t *testing.T) {
	idle, err := wrappertest.New(wrapper.Handler{
		OnRequest:  func(wrapper.Request) wrapper.Result { return wrapper.Continue() },
		OnResponse: func(wrapper.Response) {},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	r := on("n1")
	o := wrappertest.Outcome{Status: 200, Latency: time.Millisecond}
	call := func(inst *wrappertest.Instance) {
		r.Deadline = inst.Clock.Advance(time.Millisecond).Add(time.Second)
		if res := inst.Request(r); res.Verdict != wrappertest.Continued {
			t.Fatalf("refused: %v", res)
		}
		inst.Clock.Advance(o.Latency)
		if err := inst.Response(r, o); err != nil {
			t.Fatal(err)
		}
	}
	base := testing.AllocsPerRun(100, func() { call(idle) })
	f := start(t, "")
	if allocs := testing.AllocsPerRun(100, func() { call(f.inst) }); allocs != base {
		t.Errorf("%v allocations per call, %v without the wrapper: want as many", allocs, base)
	}
}

// A call with no deadline waits for its outcome, up to a bound.
func TestHugeBudget(t *testing.T) {
	f := start(t, "")
	f.request(on("n1"), t0)
	soon := on("n1")
	soon.Deadline = t0.Add(time.Minute + time.Second)
	f.request(soon, t0.Add(time.Minute))
	if n := f.waiting("n1"); n != 2 {
		t.Fatalf("pending a minute on = %d, want 2", n)
	}
	at := t0.Add(maxPendingWait + pendingGrace)
	soon.Deadline = at.Add(time.Second)
	f.request(soon, at)
	if n := f.waiting("n1"); n != 1 {
		t.Fatalf("pending after the bound = %d, want 1", n)
	}
}

// Calls whose outcomes never come are given up on in batches.
func TestPendingBound(t *testing.T) {
	f := start(t, "")
	r := on("n1")
	r.Deadline = t0.Add(time.Hour)
	for range maxPending {
		f.request(r, t0)
	}
	if n := f.waiting("n1"); n != maxPending {
		t.Fatalf("pending = %d, want %d", n, maxPending)
	}
	f.request(r, t0)
	if n, want := f.waiting("n1"), maxPending/2+1; n != want {
		t.Fatalf("pending past the bound = %d, want %d", n, want)
	}
	if s := f.state("n1", t0); s != gobreaker.StateClosed {
		t.Fatalf("state = %v, want closed: lost outcomes are not failures", s)
	}
}

// TestStates checks that each breaker publishes its state through wrapper.SetState, for
// the fields of its key: nothing while it has been closed since it was made, then every
// change, its recovery included, a deletion once it has been closed for a whole interval
// again, and a deletion when it is dropped past max_keys.
func TestStates(t *testing.T) {
	for _, tc := range []struct {
		key   string
		scope wrappertest.State // the scope of n1's breaker
	}{
		{KeyNodeEndpoint, wrappertest.State{Endpoint: "Greeter.Hello", Node: "n1"}},
		{KeyNode, wrappertest.State{Node: "n1"}},
		{KeyService, wrappertest.State{Service: "greeter"}},
	} {
		t.Run(tc.key, func(t *testing.T) {
			b := &Breakers{OnChange: LogChange, OnState: wrapper.SetState}
			inst, err := wrappertest.New(b.Handler(),
				`{"key": "`+tc.key+`", "consecutive_failures": 1, "cooldown": "20ms", "max_keys": 1}`)
			if err != nil {
				t.Fatal(err)
			}
			f := &fixture{t: t, b: b, inst: inst}
			states := func() []wrappertest.State { return f.inst.States.All() }
			with := func(v string) []wrappertest.State {
				s := tc.scope
				s.Value = v
				return []wrappertest.State{s}
			}
			f.do("n1", ok, t0)
			if got := states(); got != nil {
				t.Fatalf("a breaker closed since it was made: states %v, want none", got)
			}
			for _, step := range []struct {
				what string
				do   func()
				want []wrappertest.State
			}{
				{"a failure", func() { f.do("n1", ko, t0) }, with("open")},
				{"in its cooldown", func() { f.request(on("n1"), t0.Add(10*time.Millisecond)) }, with("open")},
				{"a probe in flight", func() { f.request(on("n1"), t0.Add(20*time.Millisecond)) }, with("half-open")},
				{"the probe's success", func() { f.response(on("n1"), ok, t0.Add(21*time.Millisecond)) }, with("closed")},
				{"within the interval after", func() { f.do("n1", ok, t0.Add(9*time.Second)) }, with("closed")},
				{"closed for an interval", func() { f.do("n1", ok, t0.Add(10*time.Second+30*time.Millisecond)) }, nil},
				{"a failure again", func() { f.do("n1", ko, t0.Add(11*time.Second)) }, with("open")},
			} {
				step.do()
				if got := states(); !slices.Equal(got, step.want) {
					t.Fatalf("%s: states %v, want %v", step.what, got, step.want)
				}
			}
			if tc.key == KeyService {
				return // one service, one breaker
			}
			// Another key drops n1's breaker (max_keys 1), and its state with it.
			f.do("n2", ok, t0.Add(12*time.Second))
			if got := states(); got != nil {
				t.Fatalf("after n1's breaker was dropped: states %v, want none", got)
			}
			if got := f.inst.Logs(); len(got) != 4 {
				t.Errorf("logs %v: LogChange still logs each change", got)
			}
		})
	}
}
