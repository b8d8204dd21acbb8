package wrappertest_test

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

// start starts an instance of h, or ends the test.
func start(t *testing.T, h wrapper.Handler, config string) *wrappertest.Instance {
	t.Helper()
	inst, err := wrappertest.New(h, config)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// TestVerdicts checks each of OnRequest's decisions and the headers that come with it.
func TestVerdicts(t *testing.T) {
	inst := start(t, wrapper.Handler{OnRequest: func(r wrapper.Request) wrapper.Result {
		r.SetHeader("x-seen-by", "test")
		switch v, _ := r.Header("X-Want"); v {
		case "reject":
			wrapper.SetReplyHeader("retry-after", "3")
			return wrapper.Reject(429, "slow down")
		case "reject 0":
			return wrapper.Reject(0, "")
		case "node":
			return wrapper.RejectNode("not this node")
		}
		return wrapper.Continue()
	}}, "")
	for _, tc := range []struct {
		want string
		res  wrappertest.Result
	}{
		{"", wrappertest.Result{Verdict: wrappertest.Continued, Header: map[string]string{"X-Seen-By": "test"}}},
		{"reject", wrappertest.Result{Verdict: wrappertest.Rejected, Status: 429, Message: "slow down",
			Header: map[string]string{"X-Seen-By": "test"}, ReplyHeader: map[string]string{"Retry-After": "3"}}},
		{"reject 0", wrappertest.Result{Verdict: wrappertest.Rejected, Status: 503, Header: map[string]string{"X-Seen-By": "test"}}},
		{"node", wrappertest.Result{Verdict: wrappertest.RejectedNode, Status: 503, Message: "not this node", Header: map[string]string{"X-Seen-By": "test"}}},
	} {
		req := wrappertest.NewRequest("greeter", "Greeter.Hello")
		req.Header["x-want"] = tc.want // found ignoring case
		got := inst.Request(req)
		if got.String() != tc.res.String() || got.Status != tc.res.Status || !maps.Equal(got.Header, tc.res.Header) ||
			!maps.Equal(got.ReplyHeader, tc.res.ReplyHeader) || got.Err != nil {
			t.Errorf("X-Want %q: %v, want %v", tc.want, got, tc.res)
		}
	}
}

// TestCall checks that the handler sees the request's fields, the clock, the budget and
// then the outcome, and that fields changed between calls are seen changed.
func TestCall(t *testing.T) {
	var seen []string
	record := func(r wrapper.Request) {
		seen = append(seen, fmt.Sprintf("%s %s %s %s %v %s", r.Service(), r.Endpoint(), r.Node(), r.Caller(),
			r.Budget(), wrapper.Now().Format(time.TimeOnly)))
	}
	inst := start(t, wrapper.Handler{
		OnRequest: func(r wrapper.Request) wrapper.Result { record(r); return wrapper.Continue() },
		OnResponse: func(o wrapper.Response) {
			record(o)
			seen = append(seen, fmt.Sprintf("%d %q %v %v", o.Status(), o.Err(), o.Latency(), o.Fault()))
		},
	}, "")
	inst.Clock.Set(time.Date(2026, 5, 6, 7, 0, 0, 0, time.UTC))
	req := &wrappertest.Request{Service: "greeter", Endpoint: "Greeter.Hello", Node: "n1", Caller: "ada",
		Deadline: inst.Clock.Now().Add(2 * time.Second)}
	inst.Request(req)
	inst.Clock.Advance(1500 * time.Millisecond)
	if err := inst.Response(req, wrappertest.Outcome{Status: 502, Latency: 1500 * time.Millisecond, Fault: true}); err != nil {
		t.Fatal(err)
	}
	req.Node, req.Deadline = "n2", time.Time{}
	inst.Request(req)
	inst.Response(req, wrappertest.Outcome{Err: "connection refused", Fault: true})
	want := []string{
		"greeter Greeter.Hello n1 ada 2s 07:00:00",
		"greeter Greeter.Hello n1 ada 500ms 07:00:01",
		`502 "" 1.5s true`,
		"greeter Greeter.Hello n2 ada 2562047h47m16.854775807s 07:00:01",
		"greeter Greeter.Hello n2 ada 2562047h47m16.854775807s 07:00:01",
		`0 "connection refused" 0s true`,
	}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("the handler saw\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
}

// TestInit checks the config that Init gets, and that its errors fail New.
func TestInit(t *testing.T) {
	var got []byte
	h := wrapper.Handler{
		Init: func(config []byte) error {
			got = config
			var c struct {
				Rate float64 `json:"rate"`
			}
			return wrapper.DecodeConfig(config, &c)
		},
		OnRequest: func(wrapper.Request) wrapper.Result { return wrapper.Continue() },
	}
	start(t, h, "")
	if string(got) != "{}" {
		t.Errorf("config without a table: %q, want {} as micro gives it", got)
	}
	start(t, h, `{"rate": 2}`)
	if string(got) != `{"rate": 2}` {
		t.Errorf("config: %q", got)
	}
	_, err := wrappertest.New(h, `{"rtae": 2}`)
	if err == nil || err.Error() != `init with config {"rtae": 2}: config: json: unknown field "rtae"` {
		t.Errorf("a bad config: %v", err)
	}
	if _, err := wrappertest.New(wrapper.Handler{}, ""); err == nil || !strings.Contains(err.Error(), "OnRequest is nil") {
		t.Errorf("no OnRequest: %v", err)
	}
}

// TestTraps checks that what micro traps a guest for fails here too, and that the
// instance goes on.
func TestTraps(t *testing.T) {
	var do func(wrapper.Request)
	inst := start(t, wrapper.Handler{
		OnRequest: func(r wrapper.Request) wrapper.Result {
			do(r)
			return wrapper.Continue()
		},
		OnResponse: func(o wrapper.Response) { do(o) },
	}, "")
	for _, tc := range []struct {
		name string
		do   func(wrapper.Request)
		want string
	}{
		{"micro's header", func(r wrapper.Request) { r.SetHeader("Micro-Timeout", "1s") },
			`bad call to micro.set_header: header "Micro-Timeout" is micro's own`},
		{"a bad name", func(r wrapper.Request) { r.SetHeader("X Y", "1") }, `header name "X Y" has a character`},
		{"a control character", func(wrapper.Request) { wrapper.SetReplyHeader("X-A", "1\n2") },
			"bad call to micro.set_reply_header: value of header \"X-A\" has a control character at byte 1"},
		{"a panic", func(wrapper.Request) { panic(errors.New("boom")) }, "panic in OnRequest: boom"},
	} {
		do = tc.do
		res := inst.Request(wrappertest.NewRequest("s", "E"))
		if res.Verdict != wrappertest.Failed || res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) {
			t.Errorf("%s: %v, want a failure with %q", tc.name, res, tc.want)
		}
	}
	if logs := inst.Logs(); len(logs) != 1 || logs[0].Level != slog.LevelError || !strings.Contains(logs[0].Message, "goroutine") {
		t.Errorf("the panic's log: %v, want its stack", logs)
	}
	do = func(r wrapper.Request) { r.SetHeader("X-Late", "1") }
	if err := inst.Response(wrappertest.NewRequest("s", "E"), wrappertest.Outcome{Status: 200}); err == nil ||
		err.Error() != "bad call to micro.set_header: not valid in on_response" {
		t.Errorf("a header set in OnResponse: %v", err)
	}
	do = func(wrapper.Request) {}
	if res := inst.Request(wrappertest.NewRequest("s", "E")); res.Verdict != wrappertest.Continued {
		t.Errorf("after the failures: %v", res)
	}
	bad := start(t, wrapper.Handler{OnRequest: func(wrapper.Request) wrapper.Result { return wrapper.Reject(200, "fine") }}, "")
	if res := bad.Request(wrappertest.NewRequest("s", "E")); res.Err == nil || res.Err.Error() != "bad call to micro.set_reject: status 200 is not 0 or in [400, 599]" {
		t.Errorf("status 200: %v", res)
	}
}

// TestNoResponsePhase checks that a wrapper without OnResponse is not called with
// outcomes.
func TestNoResponsePhase(t *testing.T) {
	calls := 0
	inst := start(t, wrapper.Handler{OnRequest: func(wrapper.Request) wrapper.Result { calls++; return wrapper.Continue() }}, "")
	req := wrappertest.NewRequest("s", "E")
	inst.Request(req)
	if err := inst.Response(req, wrappertest.Outcome{Status: 200}); err != nil || calls != 1 {
		t.Errorf("Response: %v, %d calls", err, calls)
	}
}

// counter is a wrapper whose state is its own: it counts calls per service, and rejects
// past a limit.
func counter(limit int) wrapper.Handler {
	n := map[string]int{}
	return wrapper.Handler{OnRequest: func(r wrapper.Request) wrapper.Result {
		n[r.Service()]++
		if n[r.Service()] > limit {
			return wrapper.Reject(429, fmt.Sprintf("%s: call %d", r.Service(), n[r.Service()]))
		}
		return wrapper.Continue()
	}}
}

// TestInstances checks that instances keep their own state and values, called in turn
// and from many goroutines at once.
func TestInstances(t *testing.T) {
	a, b := start(t, counter(1), ""), start(t, counter(1), "")
	ra, rb := wrappertest.NewRequest("alpha", "E"), wrappertest.NewRequest("beta", "E")
	a.Request(ra)
	b.Request(rb)
	if res := a.Request(ra); res.Message != "alpha: call 2" {
		t.Errorf("a's second call: %v", res)
	}
	if res := b.Request(rb); res.Message != "beta: call 2" {
		t.Errorf("b's second call: %v, want b's own service", res)
	}

	const goroutines, calls = 8, 50
	c := start(t, counter(goroutines/2*calls), "")
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			inst := c
			if g%2 == 1 {
				inst = start(t, counter(calls), "")
			}
			for range calls {
				if res := inst.Request(wrappertest.NewRequest("s", "E")); res.Verdict != wrappertest.Continued {
					t.Errorf("goroutine %d: %v", g, res)
				}
			}
		})
	}
	wg.Wait()
	if res := c.Request(wrappertest.NewRequest("s", "E")); res.Message != fmt.Sprintf("s: call %d", goroutines/2*calls+1) {
		t.Errorf("after the goroutines: %v", res)
	}
}

func TestClock(t *testing.T) {
	c := wrappertest.NewClock(wrappertest.Start())
	if got := c.Advance(-time.Hour); !got.Equal(wrappertest.Start().Add(-time.Hour)) || !c.Now().Equal(got) {
		t.Errorf("Advance back an hour: %v, now %v", got, c.Now())
	}
}

// TestLeases checks that wrapper.Lease gets the Instance's Leases, which record the
// demand, that leases can be granted, revoked and shared, and that a bad resource name
// fails the call as micro traps it.
func TestLeases(t *testing.T) {
	resource, demand := "api", uint64(3)
	type answer struct {
		rate float64
		held bool
	}
	var got answer
	h := wrapper.Handler{OnRequest: func(wrapper.Request) wrapper.Result {
		got.rate, got.held = wrapper.Lease(resource, demand)
		return wrapper.Continue()
	}}
	inst := start(t, h, "")
	ask := func() answer {
		t.Helper()
		if res := inst.Request(wrappertest.NewRequest("s", "E")); res.Verdict != wrappertest.Continued {
			t.Fatalf("asking for %q: %v", resource, res)
		}
		return got
	}
	if a := ask(); a != (answer{0, false}) {
		t.Errorf("no lease granted: %v, want 0 and not held", a)
	}
	inst.Leases.Grant("api", 120)
	if a := ask(); a != (answer{120, true}) {
		t.Errorf("granted 120/s: %v", a)
	}
	demand = 0
	inst.Leases.Grant("api", 0)
	if a := ask(); a != (answer{0, true}) {
		t.Errorf("granted 0/s: %v, want a lease of 0", a)
	}
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1)} {
		inst.Leases.Grant("api", bad)
		if a := ask(); a != (answer{0, false}) {
			t.Errorf("granted %v: %v, want no lease, as micro gives a guest", bad, a)
		}
	}
	inst.Leases.Revoke("api")
	if a := ask(); a != (answer{0, false}) {
		t.Errorf("revoked: %v", a)
	}
	if asks, want := inst.Leases.Asks("api"), []uint64{3, 3, 0, 0, 0, 0, 0}; !slices.Equal(asks, want) {
		t.Errorf("asks %v, want %v", asks, want)
	}
	if d := inst.Leases.Demand("api"); d != 6 {
		t.Errorf("demand %d, want 6", d)
	}
	if asks := inst.Leases.Asks("other"); asks != nil {
		t.Errorf("asks of a resource never named: %v", asks)
	}

	// Two instances share one quota.
	shared := wrappertest.NewLeases()
	shared.Grant("api", 50)
	other := start(t, h, "")
	inst.Leases, other.Leases = shared, shared
	demand = 2
	inst.Request(wrappertest.NewRequest("s", "E"))
	other.Request(wrappertest.NewRequest("s", "E"))
	if got != (answer{50, true}) || shared.Demand("api") != 4 {
		t.Errorf("shared: %v, demand %d; want 50/s held and demand 4", got, shared.Demand("api"))
	}
	// No quota service at all.
	inst.Leases = nil
	if a := ask(); a != (answer{0, false}) {
		t.Errorf("nil Leases: %v", a)
	}

	for name, want := range map[string]string{
		"":                       "bad call to micro.get_lease: empty resource name",
		"api v2":                 `bad call to micro.get_lease: resource name "api v2" has a byte at 3 that is not allowed`,
		"api/v2":                 `resource name "api/v2" has a byte at 3`,
		"é":                      `resource name "é" has a byte at 0`,
		strings.Repeat("a", 129): "bad call to micro.get_lease: resource name of 129 bytes is longer than the limit of 128",
	} {
		resource = name
		res := inst.Request(wrappertest.NewRequest("s", "E"))
		if res.Verdict != wrappertest.Failed || !strings.Contains(res.Err.Error(), want) {
			t.Errorf("resource %q: %v, want a failure with %q", name, res, want)
		}
	}
	resource = strings.Repeat("a", 128)
	if res := inst.Request(wrappertest.NewRequest("s", "E")); res.Verdict != wrappertest.Continued {
		t.Errorf("a name of 128 bytes: %v", res)
	}
	resource = "Api_v2.write-1"
	if res := inst.Request(wrappertest.NewRequest("s", "E")); res.Verdict != wrappertest.Continued {
		t.Errorf("a name with every kind of byte: %v", res)
	}
}

// TestStates checks that wrapper.SetState reaches the Instance's States, which keep the
// last value per scope, delete on an empty value, can be shared, drop new scopes past
// micro's bound, and that a bad string fails the call as micro traps it.
func TestStates(t *testing.T) {
	var service, endpoint, node, value string
	h := wrapper.Handler{
		Init: func([]byte) error { wrapper.SetState("", "", "", "ready"); return nil },
		OnRequest: func(r wrapper.Request) wrapper.Result {
			wrapper.SetState(service, endpoint, node, value)
			return wrapper.Continue()
		},
	}
	inst := start(t, h, "")
	set := func(s, e, n, v string) wrappertest.Result {
		t.Helper()
		service, endpoint, node, value = s, e, n, v
		return inst.Request(wrappertest.NewRequest("s", "E"))
	}
	set("", "", "n1", "open")
	set("greeter", "Greeter.Hello", "", "closed")
	set("", "", "n1", "half-open") // replaces
	set("", "", "n2", "open")
	set("", "", "n2", "") // deletes
	set("", "", "n3", "") // deletes nothing
	want := []wrappertest.State{
		{Value: "ready"},
		{Node: "n1", Value: "half-open"},
		{Service: "greeter", Endpoint: "Greeter.Hello", Value: "closed"},
	}
	if got := inst.States.All(); !slices.Equal(got, want) {
		t.Errorf("states %v, want %v", got, want)
	}
	if v, ok := inst.States.Get("", "", "n1"); v != "half-open" || !ok {
		t.Errorf("Get n1: %q, %v", v, ok)
	}
	if v, ok := inst.States.Get("", "", "n2"); v != "" || ok {
		t.Errorf("Get of a deleted state: %q, %v", v, ok)
	}

	for _, tc := range []struct{ s, e, n, v, want string }{
		{"", "", "", strings.Repeat("v", 257), "bad call to micro.set_state: value of 257 bytes is longer than the limit of 256"},
		{strings.Repeat("s", 257), "", "", "v", "service of 257 bytes is longer than the limit of 256"},
		{"", "", "n\n1", "v", `node "n\n1" has a control character at byte 1`},
		{"", "E\xff", "", "v", `endpoint "E\xff" is not valid UTF-8`},
	} {
		if res := set(tc.s, tc.e, tc.n, tc.v); res.Verdict != wrappertest.Failed || !strings.Contains(res.Err.Error(), tc.want) {
			t.Errorf("set_state(%q, %q, %q, %q): %v, want a failure with %q", tc.s, tc.e, tc.n, tc.v, res, tc.want)
		}
	}
	if res := set(strings.Repeat("s", 256), "é", "", strings.Repeat("v", 256)); res.Verdict != wrappertest.Continued {
		t.Errorf("strings at the limits: %v", res)
	}

	// Two instances share one wrapper's states; the bound drops new scopes only.
	shared := wrappertest.NewStates()
	other := start(t, h, "")
	inst.States, other.States = shared, shared
	for i := range abi.MaxStates + 2 {
		service, endpoint, node, value = "", "", fmt.Sprint("n", i), "open"
		[]*wrappertest.Instance{inst, other}[i%2].Request(wrappertest.NewRequest("s", "E"))
	}
	if n := len(shared.All()); n != abi.MaxStates || shared.Dropped() != 2 {
		t.Errorf("%d states, %d dropped; want %d and 2", n, shared.Dropped(), abi.MaxStates)
	}
	set("", "", "n0", "closed")
	if v, _ := shared.Get("", "", "n0"); v != "closed" {
		t.Errorf("a known scope at the bound: %q, want it changed", v)
	}
	// Without States, states go nowhere.
	inst.States = nil
	if res := set("", "", "n1", "open"); res.Verdict != wrappertest.Continued {
		t.Errorf("nil States: %v", res)
	}
}
