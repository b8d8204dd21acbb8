// Package metrics holds micro's Prometheus metrics, per service: calls and their status
// codes, latency, retries and ejections, on the client side and the inbound side.
//
// Label values come from callers (a service name in a path, a status from an app), so they
// are bounded: a service is its own label only when Options.KnownService knows it, and a
// status code only when it is a known HTTP status; everything else shares the label
// Other. Junk traffic cannot grow the number of series.
package metrics

import (
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Other is the label value of every service or status code that is not known.
const Other = "other"

// Options configures Metrics.
type Options struct {
	// KnownService reports whether a service name is real (registered, or fronted here),
	// so that it may be a label value. Nil knows none.
	KnownService func(name string) bool
}

// Metrics is one micro process's set of metrics, on a registry of its own.
type Metrics struct {
	reg   *prometheus.Registry
	known func(name string) bool

	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	retries   *prometheus.CounterVec
	ejections *prometheus.CounterVec
	inCalls   *prometheus.CounterVec
	inLatency *prometheus.HistogramVec

	client, inbound side
	attempts        *attempts
}

// side holds the series of finished calls on one side, client or inbound, looked up once
// per service and status code rather than per call.
type side struct {
	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec

	mu     sync.Mutex                                // serializes additions to series
	series atomic.Pointer[map[string]*serviceSeries] // by label value; copied on write
}

// serviceSeries are the series of one service's calls.
type serviceSeries struct {
	label   string
	latency prometheus.Observer
	codes   [600]atomic.Pointer[prometheus.Counter] // by status code, filled on first use
}

// Names of the client's series that the dashboard reads (runtime/status).
const (
	NameCalls           = "micro_client_calls_total"
	NameCallDuration    = "micro_client_call_duration_seconds"
	NameEjections       = "micro_client_ejections_total"
	NameAttempts        = "micro_client_attempts_total"
	NameAttemptDuration = "micro_client_attempt_duration_seconds"
)

// New registers micro's metrics, and the Go and process collectors, on a new registry.
func New(opts Options) *Metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		reg:   prometheus.NewRegistry(),
		known: opts.KnownService,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameCalls,
			Help: "Calls made through the ingress, by called service and final HTTP status code.",
		}, []string{"service", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameCallDuration,
			Help:    "Time from a call's arrival at the ingress to its answer, retries included.",
			Buckets: buckets,
		}, []string{"service"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_client_retries_total",
			Help: "Attempts beyond the first, by called service.",
		}, []string{"service"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameEjections,
			Help: "Nodes taken out of selection after consecutive failures, by service, endpoint (empty when the node is out for all of them) and node.",
		}, []string{"service", "endpoint", "node"}),
		inCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_inbound_calls_total",
			Help: "Calls received from other micro processes for services fronted here, by service and HTTP status code.",
		}, []string{"service", "code"}),
		inLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "micro_inbound_call_duration_seconds",
			Help:    "Time inbound calls took, the app's time included.",
			Buckets: buckets,
		}, []string{"service"}),
	}
	m.client = side{calls: m.calls, latency: m.latency}
	m.inbound = side{calls: m.inCalls, latency: m.inLatency}
	m.attempts = newAttempts(buckets)
	m.reg.MustRegister(m.calls, m.latency, m.retries, m.ejections, m.inCalls, m.inLatency,
		m.attempts.count, m.attempts.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format, or in OpenMetrics (with the
// exemplars that link latencies to traces) to a scraper that asks for it.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}

// WatchTracer exports micro_trace_spans_dropped_total: the spans that dropped counts (a
// tracer's spans that were not exported). Call it once.
func (m *Metrics) WatchTracer(dropped func() int64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "micro_trace_spans_dropped_total",
		Help: "Spans not exported: the export queue was full, or the OTLP collector failed or was out of reach.",
	}, func() float64 { return float64(dropped()) }))
}

// Registry returns the Prometheus registry the metrics live on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Call records a finished client call.
func (m *Metrics) Call(service string, code int, d time.Duration) {
	m.client.record(m.seriesOf(&m.client, service), code, d)
}

// Retry records an attempt beyond the first.
func (m *Metrics) Retry(service string) { m.retries.WithLabelValues(m.service(service)).Inc() }

// Eject records a node's ejection, for endpoint, or as a whole when endpoint is "".
func (m *Metrics) Eject(service, endpoint, node string) {
	label := m.service(service)
	a := m.attempts
	a.mu.Lock()
	ep, n := a.labelsOf(label).bound(endpoint, node, label)
	a.mu.Unlock()
	if endpoint == "" {
		ep = ""
	}
	m.ejections.WithLabelValues(label, ep, n).Inc()
}

// Inbound records a finished inbound call.
func (m *Metrics) Inbound(service string, code int, d time.Duration) {
	m.inbound.record(m.seriesOf(&m.inbound, service), code, d)
}

// seriesOf returns the series of service on side s: its own once KnownService knows it,
// Other's otherwise. Only known names are kept, so junk cannot grow the cache.
func (m *Metrics) seriesOf(s *side, service string) *serviceSeries {
	if p := s.series.Load(); p != nil {
		if ss, ok := (*p)[service]; ok {
			return ss
		}
	}
	return s.add(m.service(service))
}

// add returns the series of label, adding them when they are new.
func (s *side) add(label string) *serviceSeries {
	s.mu.Lock()
	defer s.mu.Unlock()
	var old map[string]*serviceSeries
	if p := s.series.Load(); p != nil {
		old = *p
	}
	if ss, ok := old[label]; ok {
		return ss
	}
	next := make(map[string]*serviceSeries, len(old)+1)
	maps.Copy(next, old)
	ss := &serviceSeries{label: label, latency: s.latency.WithLabelValues(label)}
	next[label] = ss
	s.series.Store(&next)
	return ss
}

// record counts a call of the service whose series are ss.
func (s *side) record(ss *serviceSeries, code int, d time.Duration) {
	ss.latency.Observe(d.Seconds())
	if code < 0 || code >= len(ss.codes) {
		s.calls.WithLabelValues(ss.label, Other).Inc()
		return
	}
	c := ss.codes[code].Load()
	if c == nil {
		n := s.calls.WithLabelValues(ss.label, codeLabel(code))
		c = &n
		ss.codes[code].Store(c)
	}
	(*c).Inc()
}

// service is the label value of a service name.
func (m *Metrics) service(name string) string {
	if name == "" || m.known == nil || !m.known(name) {
		return Other
	}
	return name
}

// codeLabel is the label value of a status code: the code, when it is a known HTTP status.
func codeLabel(code int) string {
	if http.StatusText(code) == "" && code != 499 {
		return Other
	}
	return strconv.Itoa(code)
}
