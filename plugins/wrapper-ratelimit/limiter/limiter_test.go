package limiter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// call is a wrapper.Request with fixed fields.
type call struct {
	service, endpoint, caller string
	header                    map[string]string
}

func (c call) Service() string  { return c.service }
func (c call) Endpoint() string { return c.endpoint }
func (c call) Caller() string   { return c.caller }
func (c call) Header(name string) (string, bool) {
	v, ok := c.header[name]
	return v, ok
}

// The rest of wrapper.Request, which the limiter does not read.
func (c call) Node() string             { return "" }
func (c call) Budget() time.Duration    { return 0 }
func (c call) SetHeader(string, string) {}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func mustNew(t *testing.T, c Config) *Limiter {
	t.Helper()
	l, err := New(c)
	if err != nil {
		t.Fatalf("New(%+v): %v", c, err)
	}
	return l
}

// decode reads a config as the guest does: JSON with unknown fields refused.
func decode(t *testing.T, s string) Config {
	t.Helper()
	var c Config
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return c
}

func TestBurstThenReject(t *testing.T) {
	l := mustNew(t, decode(t, `{"rate": 2, "burst": 5}`))
	c := call{service: "greeter"}
	for i := range 5 {
		if d := l.Check(c, t0); !d.Allowed {
			t.Fatalf("call %d of the burst rejected: %+v", i+1, d)
		}
	}
	for i := range 3 {
		d := l.Check(c, t0)
		if d.Allowed {
			t.Fatalf("call %d past the burst allowed", i+1)
		}
		if want := `rate limit of 2/s exceeded for service "greeter"`; d.Message != want {
			t.Errorf("message = %q, want %q", d.Message, want)
		}
	}
}

func TestRefill(t *testing.T) {
	l := mustNew(t, Config{Rate: 10, Burst: 3})
	c := call{service: "s"}
	for range 3 {
		l.Check(c, t0)
	}
	if l.Check(c, t0).Allowed {
		t.Fatal("allowed with an empty bucket")
	}
	// 10/s: a token every 100ms.
	if l.Check(c, t0.Add(99*time.Millisecond)).Allowed {
		t.Fatal("allowed 99ms after emptying, before a token was back")
	}
	if !l.Check(c, t0.Add(100*time.Millisecond)).Allowed {
		t.Fatal("rejected 100ms after emptying, with a token back")
	}
	if l.Check(c, t0.Add(100*time.Millisecond)).Allowed {
		t.Fatal("allowed a second call on one refilled token")
	}
	// Long idle: the bucket refills to burst, no more.
	later := t0.Add(time.Hour)
	allowed := 0
	for range 10 {
		if l.Check(c, later).Allowed {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("after an hour idle, %d calls allowed at once, want the burst 3", allowed)
	}
}

func TestSteadyRate(t *testing.T) {
	// 5/s, burst 1, calls every 50ms for 10s: 50 allowed (one per 200ms).
	l := mustNew(t, Config{Rate: 5, Burst: 1})
	c := call{service: "s"}
	allowed := 0
	for i := range 200 {
		if l.Check(c, t0.Add(time.Duration(i)*50*time.Millisecond)).Allowed {
			allowed++
		}
	}
	if allowed != 50 {
		t.Fatalf("allowed %d of 200 calls over 10s at 5/s, want 50", allowed)
	}
}

func TestPerKeyIsolation(t *testing.T) {
	tests := []struct {
		key   string
		a, b  call // different keys
		same  call // same key as a
		descA string
	}{
		{"service", call{service: "a"}, call{service: "b"}, call{service: "a", endpoint: "x", caller: "z"}, `service "a"`},
		{"", call{service: "a"}, call{service: "b"}, call{service: "a", caller: "z"}, `service "a"`},
		{"endpoint", call{service: "s", endpoint: "E.A"}, call{service: "s", endpoint: "E.B"}, call{service: "s", endpoint: "E.A", caller: "z"}, `endpoint "s/E.A"`},
		{"endpoint", call{service: "s", endpoint: "E"}, call{service: "t", endpoint: "E"}, call{service: "s", endpoint: "E"}, `endpoint "s/E"`},
		{"caller", call{caller: "ada"}, call{caller: "bob"}, call{service: "other", caller: "ada"}, `caller "ada"`},
		{"header:X-User", call{header: map[string]string{"X-User": "ada"}}, call{header: map[string]string{"X-User": "bob"}}, call{service: "o", header: map[string]string{"X-User": "ada", "Y": "1"}}, `header X-User "ada"`},
		// Calls without the header share the bucket of the empty value.
		{"header:X-User", call{}, call{header: map[string]string{"X-User": "bob"}}, call{header: map[string]string{"X-User": ""}}, `header X-User ""`},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			l := mustNew(t, Config{Rate: 1, Burst: 1, Key: tt.key})
			if !l.Check(tt.a, t0).Allowed {
				t.Fatal("first call of key a rejected")
			}
			d := l.Check(tt.same, t0)
			if d.Allowed {
				t.Fatal("second call of key a allowed")
			}
			if !strings.HasSuffix(d.Message, "for "+tt.descA) {
				t.Errorf("message %q does not end with %q", d.Message, "for "+tt.descA)
			}
			if !l.Check(tt.b, t0).Allowed {
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
			l := mustNew(t, Config{Rate: tt.rate, Burst: tt.burst})
			c := call{service: "s"}
			for range tt.burst {
				if !l.Check(c, t0).Allowed {
					t.Fatal("burst rejected")
				}
			}
			d := l.Check(c, t0.Add(tt.elapsed))
			if d.Allowed {
				t.Fatal("allowed with an empty bucket")
			}
			if d.RetryAfter != tt.want {
				t.Fatalf("RetryAfter = %d, want %d", d.RetryAfter, tt.want)
			}
			// The advice is right: a call after RetryAfter seconds is allowed.
			if !l.Check(c, t0.Add(tt.elapsed+time.Duration(d.RetryAfter)*time.Second)).Allowed {
				t.Fatalf("rejected after waiting RetryAfter = %ds", d.RetryAfter)
			}
		})
	}
}

func TestRejectionTakesNoToken(t *testing.T) {
	// Rejected calls must not push the next token further away.
	l := mustNew(t, Config{Rate: 1, Burst: 1})
	c := call{service: "s"}
	l.Check(c, t0)
	for i := range 100 {
		if l.Check(c, t0.Add(time.Duration(i)*time.Millisecond)).Allowed {
			t.Fatal("allowed within the first second")
		}
	}
	if !l.Check(c, t0.Add(time.Second)).Allowed {
		t.Fatal("rejected after a second: rejections took tokens")
	}
}

func TestDefaultBurst(t *testing.T) {
	for _, tt := range []struct {
		rate float64
		want int
	}{{0.2, 1}, {1, 1}, {2.5, 3}, {100, 100}} {
		l := mustNew(t, Config{Rate: tt.rate})
		n := 0
		for l.Check(call{}, t0).Allowed {
			n++
		}
		if n != tt.want {
			t.Errorf("rate %g with no burst: %d allowed at once, want %d", tt.rate, n, tt.want)
		}
	}
}

func TestMaxKeys(t *testing.T) {
	l := mustNew(t, Config{Rate: 1, Burst: 1, Key: "caller", MaxKeys: 3})
	for _, who := range []string{"a", "b", "c"} {
		l.Check(call{caller: who}, t0)
	}
	// Touch a, so b is the least recently used.
	if l.Check(call{caller: "a"}, t0).Allowed {
		t.Fatal("a allowed twice")
	}
	l.Check(call{caller: "d"}, t0) // evicts b
	if l.Len() != 3 {
		t.Fatalf("Len = %d, want 3", l.Len())
	}
	if l.Check(call{caller: "a"}, t0).Allowed || l.Check(call{caller: "c"}, t0).Allowed {
		t.Fatal("a kept key lost its state")
	}
	if !l.Check(call{caller: "b"}, t0).Allowed {
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
}

// TestMatchesXTimeRate checks the buckets against x/time/rate's Limiter, call by call:
// the same decisions, and a wait that is that Limiter's rounded up to whole nanoseconds.
func TestMatchesXTimeRate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		rate  float64
		burst int
	}{{10, 3}, {5, 1}, {0.5, 2}, {1.0 / 3600, 1}, {1e4, 100}, {3.3, 7}, {1e12, 1e9}} {
		l := mustNew(t, Config{Rate: tc.rate, Burst: tc.burst, Key: "caller"})
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
// an allocation costs a guest its garbage collector's time.
func TestNoAllocations(t *testing.T) {
	c := call{service: "greeter", endpoint: "Greeter.Hello", caller: "ada", header: map[string]string{"X-User": "ada"}}
	for _, key := range []string{"service", "endpoint", "caller", "header:X-User"} {
		l := mustNew(t, Config{Rate: 1e9, Burst: 1e9, Key: key})
		p := &c // as sdk/wrapper's Request, an interface value that needs no allocation
		now := t0
		if allocs := testing.AllocsPerRun(100, func() {
			now = now.Add(time.Microsecond)
			if !l.Check(p, now).Allowed {
				t.Fatal("limited")
			}
		}); allocs != 0 {
			t.Errorf("key %s: %v allocations per call, want 0", key, allocs)
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	l, err := New(Config{Rate: 1e9, Burst: 1e9, Key: "caller"})
	if err != nil {
		b.Fatal(err)
	}
	c := call{service: "greeter", caller: "ada"}
	now := t0
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.Check(c, now)
	}
}
