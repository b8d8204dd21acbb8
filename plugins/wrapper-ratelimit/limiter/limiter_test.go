package limiter

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// start runs the wrapper as micro does, with a config (JSON), its clock at t0; it returns
// the instance and its Limiter.
func start(t *testing.T, config string) (*wrappertest.Instance, *Limiter) {
	t.Helper()
	l := new(Limiter)
	inst, err := wrappertest.New(l.Handler(), config)
	if err != nil {
		t.Fatalf("config %s: %v", config, err)
	}
	inst.Clock.Set(t0)
	return inst, l
}

// at runs the wrapper's OnRequest for r at time now, and reports whether the call may go
// on. It checks that a rejection is a 429 with a Retry-After header.
func at(t *testing.T, inst *wrappertest.Instance, r *wrappertest.Request, now time.Time) (bool, wrappertest.Result) {
	t.Helper()
	inst.Clock.Set(now)
	res := inst.Request(r)
	switch {
	case res.Verdict == wrappertest.Continued:
		return true, res
	case res.Verdict != wrappertest.Rejected || res.Status != 429 || res.ReplyHeader["Retry-After"] == "":
		t.Fatalf("a call over the limit: %v, want a 429 with Retry-After", res)
	}
	return false, res
}

// to returns a request to a service.
func to(service string) *wrappertest.Request { return wrappertest.NewRequest(service, "Greeter.Hello") }

// retryAfter returns a rejection's Retry-After, in seconds.
func retryAfter(t *testing.T, res wrappertest.Result) int {
	t.Helper()
	n, err := strconv.Atoi(res.ReplyHeader["Retry-After"])
	if err != nil {
		t.Fatalf("Retry-After of %v: %v", res, err)
	}
	return n
}

func TestBurstThenReject(t *testing.T) {
	inst, _ := start(t, `{"rate": 2, "burst": 5}`)
	c := to("greeter")
	for i := range 5 {
		if ok, res := at(t, inst, c, t0); !ok {
			t.Fatalf("call %d of the burst rejected: %v", i+1, res)
		}
	}
	for i := range 3 {
		ok, res := at(t, inst, c, t0)
		if ok {
			t.Fatalf("call %d past the burst allowed", i+1)
		}
		if want := `rate limit of 2/s exceeded for service "greeter"`; res.Message != want {
			t.Errorf("message = %q, want %q", res.Message, want)
		}
		if n := retryAfter(t, res); n != 1 {
			t.Errorf("Retry-After = %d, want 1", n)
		}
	}
}

func TestRefill(t *testing.T) {
	inst, _ := start(t, `{"rate": 10, "burst": 3}`)
	c := to("s")
	allowed := func(now time.Time) bool { ok, _ := at(t, inst, c, now); return ok }
	for range 3 {
		allowed(t0)
	}
	if allowed(t0) {
		t.Fatal("allowed with an empty bucket")
	}
	// 10/s: a token every 100ms.
	if allowed(t0.Add(99 * time.Millisecond)) {
		t.Fatal("allowed 99ms after emptying, before a token was back")
	}
	if !allowed(t0.Add(100 * time.Millisecond)) {
		t.Fatal("rejected 100ms after emptying, with a token back")
	}
	if allowed(t0.Add(100 * time.Millisecond)) {
		t.Fatal("allowed a second call on one refilled token")
	}
	// Long idle: the bucket refills to burst, no more.
	later := t0.Add(time.Hour)
	n := 0
	for range 10 {
		if allowed(later) {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("after an hour idle, %d calls allowed at once, want the burst 3", n)
	}
}

func TestSteadyRate(t *testing.T) {
	// 5/s, burst 1, calls every 50ms for 10s: 50 allowed (one per 200ms).
	inst, _ := start(t, `{"rate": 5, "burst": 1}`)
	c := to("s")
	allowed := 0
	for i := range 200 {
		if ok, _ := at(t, inst, c, t0.Add(time.Duration(i)*50*time.Millisecond)); ok {
			allowed++
		}
	}
	if allowed != 50 {
		t.Fatalf("allowed %d of 200 calls over 10s at 5/s, want 50", allowed)
	}
}

func TestPerKeyIsolation(t *testing.T) {
	type call = wrappertest.Request
	h := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		key   string
		a, b  call // different keys
		same  call // same key as a
		descA string
	}{
		{"service", call{Service: "a"}, call{Service: "b"}, call{Service: "a", Endpoint: "x", Caller: "z"}, `service "a"`},
		{"", call{Service: "a"}, call{Service: "b"}, call{Service: "a", Caller: "z"}, `service "a"`},
		{"endpoint", call{Service: "s", Endpoint: "E.A"}, call{Service: "s", Endpoint: "E.B"}, call{Service: "s", Endpoint: "E.A", Caller: "z"}, `endpoint "s/E.A"`},
		{"endpoint", call{Service: "s", Endpoint: "E"}, call{Service: "t", Endpoint: "E"}, call{Service: "s", Endpoint: "E"}, `endpoint "s/E"`},
		{"caller", call{Caller: "ada"}, call{Caller: "bob"}, call{Service: "other", Caller: "ada"}, `caller "ada"`},
		{"header:X-User", call{Header: h("X-User", "ada")}, call{Header: h("X-User", "bob")}, call{Service: "o", Header: h("x-user", "ada", "Y", "1")}, `header X-User "ada"`},
		// Calls without the header share the bucket of the empty value.
		{"header:X-User", call{}, call{Header: h("X-User", "bob")}, call{Header: h("X-User", "")}, `header X-User ""`},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			inst, _ := start(t, fmt.Sprintf(`{"rate": 1, "burst": 1, "key": %q}`, tt.key))
			if ok, _ := at(t, inst, &tt.a, t0); !ok {
				t.Fatal("first call of key a rejected")
			}
			ok, res := at(t, inst, &tt.same, t0)
			if ok {
				t.Fatal("second call of key a allowed")
			}
			if !strings.HasSuffix(res.Message, "for "+tt.descA) {
				t.Errorf("message %q does not end with %q", res.Message, "for "+tt.descA)
			}
			if ok, _ := at(t, inst, &tt.b, t0); !ok {
				t.Fatal("key b rejected after key a ran out")
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		rate    float64
		burst   int
		elapsed time.Duration // after emptying the bucket
		want    int
	}{
		{rate: 10, burst: 1, want: 1},                                    // 100ms rounds up to 1
		{rate: 0.5, burst: 1, want: 2},                                   // a token every 2s
		{rate: 0.1, burst: 2, want: 10},                                  // a token every 10s
		{rate: 0.1, burst: 2, elapsed: 3 * time.Second, want: 7},         // 7s to go
		{rate: 0.1, burst: 2, elapsed: 3500 * time.Millisecond, want: 7}, // 6.5s rounds up
		{rate: 1.0 / 3600, burst: 1, want: 3600},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%g/s+%v", tt.rate, tt.elapsed), func(t *testing.T) {
			inst, _ := start(t, fmt.Sprintf(`{"rate": %v, "burst": %d}`, tt.rate, tt.burst))
			c := to("s")
			for range tt.burst {
				if ok, _ := at(t, inst, c, t0); !ok {
					t.Fatal("burst rejected")
				}
			}
			ok, res := at(t, inst, c, t0.Add(tt.elapsed))
			if ok {
				t.Fatal("allowed with an empty bucket")
			}
			n := retryAfter(t, res)
			if n != tt.want {
				t.Fatalf("Retry-After = %d, want %d", n, tt.want)
			}
			// The advice is right: a call after Retry-After seconds is allowed.
			if ok, _ := at(t, inst, c, t0.Add(tt.elapsed+time.Duration(n)*time.Second)); !ok {
				t.Fatalf("rejected after waiting Retry-After = %ds", n)
			}
		})
	}
}

func TestRejectionTakesNoToken(t *testing.T) {
	// Rejected calls must not push the next token further away.
	inst, _ := start(t, `{"rate": 1, "burst": 1}`)
	c := to("s")
	at(t, inst, c, t0)
	for i := range 100 {
		if ok, _ := at(t, inst, c, t0.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatal("allowed within the first second")
		}
	}
	if ok, _ := at(t, inst, c, t0.Add(time.Second)); !ok {
		t.Fatal("rejected after a second: rejections took tokens")
	}
}

func TestDefaultBurst(t *testing.T) {
	for _, tt := range []struct {
		rate float64
		want int
	}{{0.2, 1}, {1, 1}, {2.5, 3}, {100, 100}} {
		inst, _ := start(t, fmt.Sprintf(`{"rate": %v}`, tt.rate))
		n := 0
		for {
			if ok, _ := at(t, inst, to("s"), t0); !ok {
				break
			}
			n++
		}
		if n != tt.want {
			t.Errorf("rate %g with no burst: %d allowed at once, want %d", tt.rate, n, tt.want)
		}
	}
}

func TestMaxKeys(t *testing.T) {
	inst, l := start(t, `{"rate": 1, "burst": 1, "key": "caller", "max_keys": 3}`)
	from := func(who string) bool {
		r := to("s")
		r.Caller = who
		ok, _ := at(t, inst, r, t0)
		return ok
	}
	for _, who := range []string{"a", "b", "c"} {
		from(who)
	}
	// Touch a, so b is the least recently used.
	if from("a") {
		t.Fatal("a allowed twice")
	}
	from("d") // evicts b
	if l.Len() != 3 {
		t.Fatalf("Len = %d, want 3", l.Len())
	}
	if from("a") || from("c") {
		t.Fatal("a kept key lost its state")
	}
	if !from("b") {
		t.Fatal("the evicted key b should start again with a full bucket")
	}
	if l.Len() != 3 {
		t.Fatalf("Len = %d, want 3", l.Len())
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		c    Config
		want string
	}{
		{Config{}, "rate:"},
		{Config{Rate: -1}, "rate:"},
		{Config{Rate: 1, Burst: -1}, "burst:"},
		{Config{Rate: 1, MaxKeys: -5}, "max_keys:"},
		{Config{Rate: 1, Key: "node"}, `key: unknown key "node"`},
		{Config{Rate: 1, Key: "header:"}, "key:"},
		{Config{Rate: 1, Key: "header:X User"}, "key:"},
	}
	for _, tt := range tests {
		_, err := New(tt.c)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tt.c, err, tt.want)
		}
	}
	// All the faults are named at once.
	_, err := New(Config{Rate: 0, Burst: -1, Key: "x"})
	for _, field := range []string{"rate:", "burst:", "key:"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("error %v does not name %s", err, field)
		}
	}
	// The wrapper refuses to load with the error, as micro shows it.
	for config, want := range map[string]string{
		`{"rate": 0}`:             `init with config {"rate": 0}: ratelimit config: rate: 0 is not a rate`,
		`{"rate": 1, "burts": 2}`: `init with config {"rate": 1, "burts": 2}: config: json: unknown field "burts"`,
		``:                        `init with config {}: ratelimit config: rate: 0 is not a rate`,
	} {
		if _, err := wrappertest.New(new(Limiter).Handler(), config); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("config %s: %v, want an error starting %q", config, err, want)
		}
	}
}

// TestLogsConfig checks that the wrapper logs its config at debug level when it loads.
func TestLogsConfig(t *testing.T) {
	inst, _ := start(t, `{"rate": 2, "key": "caller"}`)
	if logs := inst.Logs(); len(logs) != 1 || logs[0].Message != "ratelimit: {Rate:2 Burst:0 Key:caller MaxKeys:0}" {
		t.Errorf("logs: %v", logs)
	}
	inst, _ = start(t, `{"scope": "global", "resource": "api", "fallback_rate": 2.5}`)
	if logs := inst.Logs(); len(logs) != 1 || logs[0].Message != `ratelimit: global scope, resource "api", fallback_rate 2.5/s, burst default (200ms of the rate)` {
		t.Errorf("logs: %v", logs)
	}
}

// TestMatchesXTimeRate checks the buckets against x/time/rate's Limiter, call by call:
// the same decisions, and a wait that is that Limiter's rounded up to whole nanoseconds.
func TestMatchesXTimeRate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		rate  float64
		burst int
	}{{10, 3}, {5, 1}, {0.5, 2}, {1.0 / 3600, 1}, {1e4, 100}, {3.3, 7}, {1e12, 1e9}} {
		l, err := New(Config{Rate: tc.rate, Burst: tc.burst, Key: "caller"})
		if err != nil {
			t.Fatal(err)
		}
		ref := map[string]*rate.Limiter{}
		now := t0
		for i := range 20000 {
			// Mostly small steps, some large, a few back in time.
			step := time.Duration(rng.ExpFloat64() * float64(time.Second) / tc.rate / 3)
			if rng.IntN(50) == 0 {
				step = -time.Duration(rng.Int64N(int64(time.Second)))
			}
			now = now.Add(step)
			key := []string{"a", "b", "c"}[rng.IntN(3)]
			r := ref[key]
			if r == nil {
				r = rate.NewLimiter(rate.Limit(tc.rate), tc.burst)
				ref[key] = r
			}
			want := r.AllowN(now, 1)
			ok, wait := l.Allow(key, now)
			if ok != want {
				t.Fatalf("rate %g burst %d, call %d (key %s at %v): allowed %v, x/time/rate %v", tc.rate, tc.burst, i, key, now.Sub(t0), ok, want)
			}
			if !ok {
				refWait := time.Duration(math.Ceil((1 - r.TokensAt(now)) / tc.rate * float64(time.Second)))
				if wait != refWait {
					t.Fatalf("rate %g burst %d, call %d: wait %v, x/time/rate's %v", tc.rate, tc.burst, i, wait, refWait)
				}
			}
		}
	}
}

// TestNoAllocations checks that an allowed call allocates nothing, for every kind of key:
// an allocation costs a guest its garbage collector's time. The wrapper runs under
// wrappertest, whose own allocations a handler that does nothing measures.
func TestNoAllocations(t *testing.T) {
	idle, err := wrappertest.New(wrapper.Handler{OnRequest: func(wrapper.Request) wrapper.Result { return wrapper.Continue() }}, "")
	if err != nil {
		t.Fatal(err)
	}
	c := &wrappertest.Request{Service: "greeter", Endpoint: "Greeter.Hello", Caller: "ada", Header: map[string]string{"X-User": "ada"}}
	base := testing.AllocsPerRun(100, func() { idle.Request(c) })
	for _, key := range []string{"service", "endpoint", "caller", "header:X-User"} {
		inst, _ := start(t, fmt.Sprintf(`{"rate": 1e9, "burst": 1000000000, "key": %q}`, key))
		if allocs := testing.AllocsPerRun(100, func() {
			inst.Clock.Advance(time.Microsecond)
			if res := inst.Request(c); res.Verdict != wrappertest.Continued {
				t.Fatalf("limited: %v", res)
			}
		}); allocs != base {
			t.Errorf("key %s: %v allocations per call, %v without the wrapper: want as many", key, allocs, base)
		}
	}
}
