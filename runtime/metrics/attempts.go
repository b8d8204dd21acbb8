package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Bounds of the per-endpoint and per-node series of one service: past them, endpoints and
// nodes share the label Other, so that callers naming junk endpoints cannot grow them.
const (
	MaxEndpointsPerService = 32
	MaxNodesPerService     = 64
)

// The outcomes of Attempt.
const (
	AttemptOK        = "ok"        // the node's app answered, and not with a fault
	AttemptFailed    = "failed"    // it counts against the node
	AttemptAbandoned = "abandoned" // a hedge answered first
)

// attemptKey names the series of one service's endpoint on one node.
type attemptKey struct{ service, endpoint, node string }

// The reasons of Attempt.
const (
	ReasonFirst = "first" // a call's first attempt
	ReasonRetry = "retry" // an attempt after a failed one
	ReasonHedge = "hedge" // an attempt sent while another was still out
)

// reasons and outcomes index attemptSeries.counts.
var (
	reasons  = [...]string{ReasonFirst, ReasonRetry, ReasonHedge}
	outcomes = [...]string{AttemptOK, AttemptFailed, AttemptAbandoned}
)

// attemptSeries are the series of one attemptKey. A count's series is made on first use,
// so that /metrics lists the reasons and outcomes that happened.
type attemptSeries struct {
	labels  [3]string // service, endpoint and node, bounded
	counts  [len(reasons)][len(outcomes)]atomic.Pointer[prometheus.Counter]
	latency prometheus.Observer
	// lastExemplar is when the latency last took an exemplar, in nanoseconds of the
	// attempts' clock.
	lastExemplar atomic.Int64
}

// exemplarEvery is how often a series' latency takes the trace ID of a sampled attempt as
// an exemplar, at most. Prometheus keeps one exemplar per bucket and reads them at a
// scrape, seconds apart; taking one costs about 0.8 µs and 9 allocations, so at a sample
// ratio of 1 taking one per attempt would cost more than the attempt's spans.
const exemplarEvery = 100 * time.Millisecond

// attempts holds the per-endpoint, per-node series: micro_client_attempts_total and
// micro_client_attempt_duration_seconds.
type attempts struct {
	epoch   time.Time // the start of the clock of attemptSeries.lastExemplar
	count   *prometheus.CounterVec
	latency *prometheus.HistogramVec

	series sync.Map // attemptKey (as called) → *attemptSeries

	mu     sync.Mutex
	labels map[string]*serviceLabels // by service label
}

// serviceLabels are the endpoint and node labels one service has used.
type serviceLabels struct {
	endpoints, nodes map[string]bool
}

func newAttempts(buckets []float64) *attempts {
	return &attempts{
		epoch: time.Now(),
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameAttempts,
			Help: "Attempts of calls, by called service, endpoint, node, reason (first, retry, hedge) and outcome (ok, failed: counted against the node, abandoned: a hedge answered first).",
		}, []string{"service", "endpoint", "node", "reason", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameAttemptDuration,
			Help:    "Time attempts took, by called service, endpoint and node; exemplars carry the trace IDs of sampled calls.",
			Buckets: buckets,
		}, []string{"service", "endpoint", "node"}),
		labels: make(map[string]*serviceLabels),
	}
}

// Attempt records an attempt of a call to service's endpoint on node: why it was made (one
// of ReasonFirst, ReasonRetry, ReasonHedge), its outcome (one of AttemptOK, AttemptFailed,
// AttemptAbandoned), how long it took, and, when the call was sampled, its trace ID, which
// the latency keeps as an exemplar.
func (m *Metrics) Attempt(service, endpoint, node, reason, outcome string, d time.Duration, traceID string) {
	a := m.attempts
	key := attemptKey{service, endpoint, node}
	s, ok := a.series.Load(key)
	if !ok {
		s = a.add(key, m.service(service))
	}
	ss := s.(*attemptSeries)
	r, o := 0, 1
	switch reason {
	case ReasonRetry:
		r = 1
	case ReasonHedge:
		r = 2
	}
	switch outcome {
	case AttemptOK:
		o = 0
	case AttemptAbandoned:
		o = 2
	}
	c := ss.counts[r][o].Load()
	if c == nil {
		n := a.count.WithLabelValues(ss.labels[0], ss.labels[1], ss.labels[2], reasons[r], outcomes[o])
		c = &n
		ss.counts[r][o].Store(c)
	}
	(*c).Inc()
	if traceID != "" {
		now := int64(time.Since(a.epoch))
		last := ss.lastExemplar.Load()
		if eo, ok := ss.latency.(prometheus.ExemplarObserver); ok && (last == 0 || now-last >= int64(exemplarEvery)) &&
			ss.lastExemplar.CompareAndSwap(last, max(now, 1)) {
			eo.ObserveWithExemplar(d.Seconds(), prometheus.Labels{"trace_id": traceID})
			return
		}
	}
	ss.latency.Observe(d.Seconds())
}

// add returns the series of key, whose service has label service: the endpoint and node
// keep their names while the service has fewer than the Max of them, and are Other
// after. Only keys whose labels are all their own are kept for later calls, so junk
// cannot grow the cache.
func (a *attempts) add(key attemptKey, service string) *attemptSeries {
	a.mu.Lock()
	sl := a.labelsOf(service)
	endpoint, node := sl.bound(key.endpoint, key.node, service)
	a.mu.Unlock()
	s := &attemptSeries{labels: [3]string{service, endpoint, node}, latency: a.latency.WithLabelValues(service, endpoint, node)}
	if service == key.service && endpoint == key.endpoint && node == key.node {
		a.series.Store(key, s)
	}
	return s
}

// labelsOf returns the labels service has used, making them on first use. a.mu is held.
func (a *attempts) labelsOf(service string) *serviceLabels {
	sl := a.labels[service]
	if sl == nil {
		sl = &serviceLabels{endpoints: map[string]bool{}, nodes: map[string]bool{}}
		a.labels[service] = sl
	}
	return sl
}

// bound returns the labels of endpoint and node of the service labelled service.
func (sl *serviceLabels) bound(endpoint, node, service string) (string, string) {
	return bounded(sl.endpoints, endpoint, MaxEndpointsPerService, service), bounded(sl.nodes, node, MaxNodesPerService, service)
}

// bounded returns v as a label among those of seen: v itself when it is one of them or
// there is room for it (and service is a known one), Other otherwise.
func bounded(seen map[string]bool, v string, most int, service string) string {
	switch {
	case service == Other || v == "":
		return Other
	case seen[v]:
		return v
	case len(seen) < most:
		seen[v] = true
		return v
	}
	return Other
}
