package client

import (
	"testing"
	"time"
)

// TestBuckets: buckets grow with latency, and each bucket's ceiling is at most 12.5% above
// any latency it holds, so that quantiles err long by less than that.
func TestBuckets(t *testing.T) {
	prev := 0
	for d := time.Duration(0); d < 20*time.Minute; d = d*9/8 + time.Microsecond {
		b := bucketOf(d)
		if b < prev || b >= numBuckets {
			t.Fatalf("bucketOf(%v) = %d after %d", d, b, prev)
		}
		prev = b
		ceil := bucketCeil(b)
		if d < maxMicros*time.Microsecond && (ceil <= d.Truncate(time.Microsecond) || float64(ceil) > float64(d)*1.125+float64(time.Microsecond)) {
			t.Fatalf("bucketCeil(bucketOf(%v)) = %v", d, ceil)
		}
	}
}

// TestQuantiles: a route's quantiles come from its two windows, need MinSamples, and follow
// a change in latency once the old window has gone.
func TestQuantiles(t *testing.T) {
	now := time.Unix(1000, 0)
	r := newRoute(now)
	for i := range 99 {
		r.record(time.Duration(i+1)*time.Millisecond, now)
	}
	if a, b := r.quantiles(0.5, 0.9, 100, now); a != 0 || b != 0 {
		t.Fatalf("with 99 of 100 samples: %v %v, want none", a, b)
	}
	r.record(100*time.Millisecond, now)
	p50, p90 := r.quantiles(0.5, 0.9, 100, now)
	if p50 < 50*time.Millisecond || p50 > 57*time.Millisecond || p90 < 90*time.Millisecond || p90 > 102*time.Millisecond {
		t.Fatalf("p50 %v, p90 %v of 1..100ms", p50, p90)
	}
	// Two windows later, only the new latencies count.
	for w := 1; w <= 2; w++ {
		now = now.Add(windowAge)
		for range 200 {
			r.record(time.Millisecond, now)
		}
	}
	if p90, _ := r.quantiles(0.9, 0.5, 100, now.Add(time.Second)); p90 > 2*time.Millisecond {
		t.Fatalf("p90 %v after the latency fell to 1ms", p90)
	}
}

// TestRoutesBounded: past maxRoutes, new routes get no latencies.
func TestRoutesBounded(t *testing.T) {
	var l latencies
	now := time.Now()
	for i := range maxRoutes + 10 {
		r := l.of("svc", string(rune('a'+i%26))+string(rune(i)), now)
		if (r == nil) != (i >= maxRoutes) {
			t.Fatalf("route %d: %v", i, r)
		}
	}
}
