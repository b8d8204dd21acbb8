package limiter

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

// global starts the wrapper in global scope on resource "api", with a fallback rate and
// more of the config, its clock at t0.
func global(t *testing.T, fallback float64, more string) *wrappertest.Instance {
	t.Helper()
	inst, _ := start(t, fmt.Sprintf(`{"scope": "global", "resource": "api", "fallback_rate": %v%s}`, fallback, more))
	return inst
}

// calls makes n calls at now, and returns how many were allowed and the last rejection.
func calls(t *testing.T, inst *wrappertest.Instance, n int, now time.Time) (int, wrappertest.Result) {
	t.Helper()
	allowed := 0
	var last wrappertest.Result
	for range n {
		ok, res := at(t, inst, to("greeter"), now)
		if ok {
			allowed++
		} else {
			last = res
		}
	}
	return allowed, last
}

// TestGlobalAsksNowAndThen checks that the wrapper asks for its lease on its first call,
// then on the first call after each 100 ms of call time, not per call, and that it
// reports every call it saw since it last asked.
func TestGlobalAsksNowAndThen(t *testing.T) {
	inst := global(t, 0, "")
	inst.Leases.Grant("api", 1e6)
	// A call every ms for a second: 10 asks.
	for i := range 1000 {
		if ok, res := at(t, inst, to("greeter"), t0.Add(time.Duration(i)*time.Millisecond)); !ok {
			t.Fatalf("call %d: %v", i, res)
		}
	}
	want := []uint64{1, 100, 100, 100, 100, 100, 100, 100, 100, 100}
	if asks := inst.Leases.Asks("api"); !slices.Equal(asks, want) {
		t.Fatalf("asks %v, want %v", asks, want)
	}
	// Many calls at one time: no ask.
	calls(t, inst, 500, t0.Add(999*time.Millisecond))
	if n := len(inst.Leases.Asks("api")); n != 10 {
		t.Errorf("%d asks after calls within 100 ms of the last, want 10", n)
	}
	// The next ask reports all of them, and the call that asks.
	at(t, inst, to("greeter"), t0.Add(time.Second))
	if asks := inst.Leases.Asks("api"); asks[len(asks)-1] != 99+500+1 {
		t.Errorf("demand %d, want %d", asks[len(asks)-1], 99+500+1)
	}
	// A clock that went back asks at once.
	at(t, inst, to("greeter"), t0.Add(time.Second-time.Millisecond))
	if asks := inst.Leases.Asks("api"); len(asks) != 12 || asks[11] != 1 {
		t.Errorf("asks after the clock went back: %v, want one more with demand 1", asks)
	}
	if d := inst.Leases.Demand("api"); d != 1000+500+1+1 {
		t.Errorf("demand %d reported in all, want every call: %d", d, 1000+500+1+1)
	}
}

// TestGlobalDemandCountsRejections checks that rejected calls count as demand: the quota
// service splits by what the micros want, not by what they got.
func TestGlobalDemandCountsRejections(t *testing.T) {
	inst := global(t, 0, "")
	inst.Leases.Grant("api", 10) // burst 2
	if allowed, _ := calls(t, inst, 10, t0); allowed != 2 {
		t.Fatalf("%d of 10 calls allowed at once with a lease of 10/s, want the burst 2", allowed)
	}
	at(t, inst, to("greeter"), t0.Add(AskInterval))
	if asks := inst.Leases.Asks("api"); !slices.Equal(asks, []uint64{1, 10}) {
		t.Errorf("asks %v, want [1 10]: the first call, then the 9 after it and the one that asks", asks)
	}
}

// TestGlobalFollowsLease checks that the bucket's rate and burst follow the lease, with
// the tokens until a change counted at the old rate and cut to the new burst.
func TestGlobalFollowsLease(t *testing.T) {
	inst := global(t, 1, "")
	inst.Leases.Grant("api", 10)
	allowed, res := calls(t, inst, 5, t0)
	if want := `global rate limit on resource "api" exceeded (this micro's share: 10/s)`; allowed != 2 || res.Message != want {
		t.Fatalf("lease of 10/s: %d allowed, %v; want the burst of 200 ms, 2, and %q", allowed, res, want)
	}
	if n := retryAfter(t, res); n != 1 {
		t.Errorf("Retry-After %d, want 1", n)
	}

	// 100 ms later, a lease of 100/s: 1 token came at 10/s, and the burst is now 20.
	inst.Leases.Grant("api", 100)
	allowed, res = calls(t, inst, 5, t0.Add(100*time.Millisecond))
	if allowed != 1 || !strings.HasSuffix(res.Message, "(this micro's share: 100/s)") {
		t.Errorf("the ask that raised the rate: %d allowed, %v; want 1 and the new share", allowed, res)
	}
	if allowed, _ = calls(t, inst, 15, t0.Add(200*time.Millisecond)); allowed != 10 {
		t.Errorf("100 ms at 100/s: %d allowed, want 10", allowed)
	}
	// A long pause refills to the new burst, 200 ms of 100/s.
	if allowed, _ = calls(t, inst, 50, t0.Add(time.Hour)); allowed != 20 {
		t.Errorf("after an hour at 100/s: %d allowed at once, want the burst 20", allowed)
	}

	// A lower lease cuts the tokens to its burst.
	inst.Leases.Grant("api", 33.3333333)
	next := t0.Add(2 * time.Hour)
	allowed, res = calls(t, inst, 20, next)
	if want := `global rate limit on resource "api" exceeded (this micro's share: 33.33/s)`; allowed != 7 || res.Message != want {
		t.Errorf("a lease of 33.33/s after a pause: %d allowed, %v; want 7 (ceil of 200 ms) and %q", allowed, res, want)
	}
	// Steady: a call every ms for 10 s at 33.33/s lets about 333 through.
	inst.Leases.Grant("api", 50)
	allowed = 0
	for i := range 10000 {
		if ok, _ := at(t, inst, to("greeter"), next.Add(time.Hour+time.Duration(i)*time.Millisecond)); ok {
			allowed++
		}
	}
	if allowed < 500 || allowed > 500+10 {
		t.Errorf("10 s of calls at a lease of 50/s: %d allowed, want 500 and the burst of 10", allowed)
	}
}

// TestGlobalFallback checks the safe share while the micro holds no lease: at first,
// after a lease expired, and 0, which rejects every call.
func TestGlobalFallback(t *testing.T) {
	inst := global(t, 5, "")
	allowed, res := calls(t, inst, 3, t0)
	if want := `global rate limit on resource "api" exceeded (no lease; safe share: 5/s)`; allowed != 1 || res.Message != want {
		t.Errorf("no lease yet: %d allowed, %v; want 1 and %q", allowed, res, want)
	}
	// A lease keeps the tokens there are (the one of the safe share's burst), and fills
	// the bucket at its rate from then on.
	inst.Leases.Grant("api", 50)
	if allowed, _ := calls(t, inst, 20, t0.Add(time.Minute)); allowed != 1 {
		t.Errorf("a lease of 50/s, at once: %d allowed, want the 1 token there was", allowed)
	}
	if allowed, _ := calls(t, inst, 20, t0.Add(time.Minute+time.Second)); allowed != 10 {
		t.Errorf("a second into a lease of 50/s: %d allowed, want its burst 10", allowed)
	}
	inst.Leases.Revoke("api")
	allowed, res = calls(t, inst, 20, t0.Add(2*time.Minute))
	if allowed != 1 || !strings.HasSuffix(res.Message, "(no lease; safe share: 5/s)") {
		t.Errorf("the lease expired: %d allowed, %v; want the safe share", allowed, res)
	}
	logs := inst.Logs()
	if want := []wrappertest.Log{
		{Level: slog.LevelInfo, Message: `ratelimit: holds a lease for resource "api": 50/s`},
		{Level: slog.LevelWarn, Message: `ratelimit: lost the lease for resource "api": applying the safe share of 5/s`},
	}; len(logs) < 2 || !slices.Equal(logs[len(logs)-2:], want) {
		t.Errorf("logs %v, want the lease gained and lost", logs)
	}

	// fallback_rate 0 fails closed, and a lease of 0 lets nothing through either.
	closed := global(t, 0, "")
	allowed, res = calls(t, closed, 3, t0.Add(time.Hour))
	if want := `global rate limit on resource "api" exceeded (no lease; safe share: 0/s)`; allowed != 0 || res.Message != want {
		t.Errorf("fallback 0: %d allowed, %v; want none and %q", allowed, res, want)
	}
	if n := retryAfter(t, res); n != 1 {
		t.Errorf("Retry-After at the rate 0: %d, want 1", n)
	}
	closed.Leases.Grant("api", 0)
	if allowed, _ := calls(t, closed, 3, t0.Add(2*time.Hour)); allowed != 0 {
		t.Errorf("a lease of 0: %d allowed", allowed)
	}
	closed.Leases.Grant("api", 20)
	if allowed, _ := calls(t, closed, 10, t0.Add(3*time.Hour)); allowed != 0 {
		t.Errorf("a lease of 20/s after 0, at once: %d allowed, want none: the bucket was empty", allowed)
	}
	if allowed, _ := calls(t, closed, 10, t0.Add(3*time.Hour+time.Second)); allowed != 4 {
		t.Errorf("a second into a lease of 20/s after 0: %d allowed, want the burst 4", allowed)
	}
	// Without a quota service at all (no Leases), the safe share.
	none := global(t, 5, "")
	none.Leases = nil
	if allowed, _ := calls(t, none, 3, t0); allowed != 1 {
		t.Errorf("no quota service: %d allowed, want the safe share's 1", allowed)
	}
}

// TestGlobalBurst checks the default burst, 200 ms of the rate rounded up and at least 1,
// and a configured one, which stays as the rate changes.
func TestGlobalBurst(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		more  string
		burst int
	}{
		{120, "", 24}, {3, "", 1}, {0.1, "", 1}, {11, "", 3}, {1e4, "", 2000},
		{120, `, "burst": 5`, 5}, {3, `, "burst": 5`, 5}, {0, `, "burst": 5`, 0},
	} {
		inst := global(t, 0, tc.more)
		inst.Leases.Grant("api", tc.rate)
		if allowed, _ := calls(t, inst, tc.burst+5, t0); allowed != tc.burst {
			t.Errorf("lease %g%s: %d allowed at once, want %d", tc.rate, tc.more, allowed, tc.burst)
		}
	}
}

func TestGlobalConfigErrors(t *testing.T) {
	for config, want := range map[string][]string{
		`{"scope": "global"}`: {"resource: missing", "fallback_rate: missing"},
		`{"scope": "global", "resource": "api v2", "fallback_rate": 1}`:                           {`resource: "api v2" is not a resource name`},
		`{"scope": "global", "resource": "` + strings.Repeat("a", 129) + `", "fallback_rate": 1}`: {"resource:"},
		`{"scope": "global", "resource": "api", "fallback_rate": -1}`:                             {"fallback_rate: -1 is not a rate"},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "rate": 10}`:                  {"rate: not used in global scope: the rate is this micro's share"},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "rate": 0}`:                   {"rate: not used in global scope"},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "key": "caller"}`:             {"key: not used in global scope: all calls share the one bucket"},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "key": ""}`:                   {"key: not used in global scope"},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "max_keys": 5}`:               {"max_keys: not used in global scope"},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "burst": -1}`:                 {"burst: -1 is negative"},
		`{"scope": "planet", "rate": 1}`:                                                          {`scope: unknown scope "planet" (want "local", the default, or "global")`},
		`{"rate": 1, "resource": "api"}`:                                                          {`resource: only for scope "global"`},
		`{"scope": "local", "rate": 1, "fallback_rate": 1}`:                                       {`fallback_rate: only for scope "global"`},
		`{"scope": "global", "resource": "api", "fallback_rate": 1, "rate": 5, "key": "caller"}`:  {"rate:", "key:"},
	} {
		_, err := wrappertest.New(new(Limiter).Handler(), config)
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), "ratelimit config: ") || !strings.Contains(err.Error(), w) {
				t.Errorf("config %s: %v, want an error with %q", config, err, w)
			}
		}
	}
	// And through New, for a Config built in Go.
	one := 1.0
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Scope: ScopeGlobal, Resource: "api"}, "fallback_rate: missing"},
		{Config{Scope: ScopeGlobal, FallbackRate: &one}, "resource: missing"},
		{Config{Scope: ScopeGlobal, Resource: "api", FallbackRate: &one, Rate: 2}, "rate:"},
		{Config{Scope: ScopeGlobal, Resource: "api", FallbackRate: &one, Key: "caller"}, "key:"},
	} {
		if _, err := New(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tc.c, err, tc.want)
		}
	}
	if _, err := New(Config{Scope: ScopeGlobal, Resource: "api", FallbackRate: &one}); err != nil {
		t.Errorf("a good global config: %v", err)
	}
}

// TestGlobalNoAllocations checks that an allowed call that does not ask allocates
// nothing, and that one that asks allocates nothing in the wrapper either.
func TestGlobalNoAllocations(t *testing.T) {
	idle, err := wrappertest.New(wrapper.Handler{OnRequest: func(wrapper.Request) wrapper.Result { return wrapper.Continue() }}, "")
	if err != nil {
		t.Fatal(err)
	}
	c := to("greeter")
	base := testing.AllocsPerRun(100, func() { idle.Request(c) })
	inst := global(t, 0, `, "burst": 1000000000`)
	inst.Leases.Grant("api", 1e12)
	if allocs := testing.AllocsPerRun(100, func() {
		inst.Clock.Advance(time.Microsecond)
		if res := inst.Request(c); res.Verdict != wrappertest.Continued {
			t.Fatalf("limited: %v", res)
		}
	}); allocs != base {
		t.Errorf("%v allocations per call, %v without the wrapper: want as many", allocs, base)
	}
}
