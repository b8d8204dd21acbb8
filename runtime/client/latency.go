package client

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// The latency histograms: log-linear buckets over microseconds, exact below 16 µs and
// then eight buckets per power of two (12.5% wide), up to about 18 minutes.
const (
	exactBuckets = 16
	subBuckets   = 8
	maxMicros    = 1 << 30
	numBuckets   = exactBuckets + (30-4)*subBuckets
	// windowSamples and windowAge end a window: the distribution is that of the current
	// window and the one before, so it follows a change within one or two windows.
	windowSamples = 10000
	windowAge     = 10 * time.Second
	// estimateEvery is how many samples, at most, an estimate serves before it is worked
	// out again; estimateAge is how long.
	estimateEvery = 64
	estimateAge   = 250 * time.Millisecond
	// maxRoutes bounds the routes (service and endpoint) whose latencies are kept; calls
	// to more get no adaptive timeout and no hedging.
	maxRoutes = 1024
)

// bucketOf returns the histogram bucket of latency d.
func bucketOf(d time.Duration) int {
	us := uint64(max(d, 0) / time.Microsecond)
	if us < exactBuckets {
		return int(us)
	}
	us = min(us, maxMicros-1)
	e := bits.Len64(us) - 1 // 4 ≤ e < 30
	m := (us >> (e - 3)) & (subBuckets - 1)
	return exactBuckets + (e-4)*subBuckets + int(m)
}

// bucketCeil returns the upper bound of bucket i: the latency a quantile that falls in it
// is taken to be, so that estimates err long rather than short.
func bucketCeil(i int) time.Duration {
	if i < exactBuckets {
		return time.Duration(i+1) * time.Microsecond
	}
	i -= exactBuckets
	e, m := i/subBuckets+4, i%subBuckets
	return time.Duration(uint64(subBuckets+m+1)<<(e-3)) * time.Microsecond
}

// window counts latencies over a span of time.
type window struct {
	start   time.Time
	count   atomic.Int64
	buckets [numBuckets]atomic.Uint32
}

// route keeps the latency distribution of one service's endpoint: the answers its nodes'
// apps gave, not the attempts that failed or were given up, so that a hung node does not
// stretch the timeout that is meant to cut it short.
type route struct {
	cur, prev atomic.Pointer[window]
	est       atomic.Pointer[estimate]
	mu        sync.Mutex // rotates windows and works estimates out
}

// estimate is a route's quantiles as of a moment.
type estimate struct {
	at      time.Time
	samples int64 // the current window's count when it was made
	// q1, q2 are the quantiles asked for, and v1, v2 their values; 0 when the route has
	// too few samples.
	q1, q2 float64
	v1, v2 time.Duration
}

func newRoute(now time.Time) *route {
	r := new(route)
	r.cur.Store(&window{start: now})
	r.prev.Store(new(window))
	return r
}

// record adds latency d, seen at now.
func (r *route) record(d time.Duration, now time.Time) {
	w := r.cur.Load()
	w.buckets[bucketOf(d)].Add(1)
	if n := w.count.Add(1); n >= windowSamples || now.Sub(w.start) >= windowAge {
		if r.mu.TryLock() {
			if r.cur.Load() == w {
				r.prev.Store(w)
				r.cur.Store(&window{start: now})
			}
			r.mu.Unlock()
		}
	}
}

// quantiles returns the latencies under which shares q1 and q2 of the route's answers
// came, or 0 for each while it has fewer than minSamples. Estimates are kept and worked
// out again every estimateEvery samples or estimateAge; while a route has too few samples,
// at each call.
func (r *route) quantiles(q1, q2 float64, minSamples int, now time.Time) (time.Duration, time.Duration) {
	cur := r.cur.Load()
	if e := r.est.Load(); e != nil && e.q1 == q1 && e.q2 == q2 && (e.v1 > 0 || e.v2 > 0) &&
		cur.count.Load()-e.samples < estimateEvery && now.Sub(e.at) < estimateAge && e.samples <= cur.count.Load() {
		return e.v1, e.v2
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, prev := r.cur.Load(), r.prev.Load()
	e := &estimate{at: now, samples: cur.count.Load(), q1: q1, q2: q2}
	var counts [numBuckets]uint32
	total := int64(0)
	for i := range counts {
		counts[i] = cur.buckets[i].Load() + prev.buckets[i].Load()
		total += int64(counts[i])
	}
	if total >= int64(max(minSamples, 1)) {
		e.v1, e.v2 = quantile(&counts, total, q1), quantile(&counts, total, q2)
	}
	r.est.Store(e)
	return e.v1, e.v2
}

// quantile returns the upper bound of the bucket that holds the q-th share of total
// samples, or 0 when q is not in (0, 1].
func quantile(counts *[numBuckets]uint32, total int64, q float64) time.Duration {
	if q <= 0 || q > 1 {
		return 0
	}
	rank := int64(q*float64(total) + 0.999999)
	seen := int64(0)
	for i, n := range counts {
		if seen += int64(n); seen >= rank {
			return bucketCeil(i)
		}
	}
	return bucketCeil(numBuckets - 1)
}

// latencies keeps a route per service and endpoint, up to maxRoutes.
type latencies struct {
	mu     sync.RWMutex
	routes map[string]map[string]*route // service → endpoint → route
	n      int
}

// of returns the route of service's endpoint, made at now when there is none yet and
// fewer than maxRoutes are kept; nil otherwise. A lookup allocates nothing.
func (l *latencies) of(service, endpoint string, now time.Time) *route {
	l.mu.RLock()
	r := l.routes[service][endpoint]
	l.mu.RUnlock()
	if r != nil {
		return r
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r = l.routes[service][endpoint]; r != nil || l.n >= maxRoutes {
		return r
	}
	if l.routes == nil {
		l.routes = make(map[string]map[string]*route)
	}
	eps := l.routes[service]
	if eps == nil {
		eps = make(map[string]*route)
		l.routes[service] = eps
	}
	r = newRoute(now)
	eps[endpoint] = r
	l.n++
	return r
}
