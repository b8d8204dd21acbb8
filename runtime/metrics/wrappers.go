package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microhost/micro/runtime/wrapper"
)

// MaxWrapperStateSeries bounds the micro_wrapper_state series of one wrapper: a wrapper
// may report many states (a breaker's per node and endpoint), and past this bound the
// states after the first MaxWrapperStateSeries, in the order of their service, endpoint
// and node, are not exported.
const MaxWrapperStateSeries = 256

// NamedReport is the report of one wrapper (runtime/wrapper.Reporter), with what names it.
type NamedReport struct {
	// Name is the wrapper's name in micro.toml.
	Name string
	// Side is where the wrapper runs: "client" (outgoing calls) or "server" (inbound
	// calls).
	Side string
	wrapper.Report
}

// wrapperCollector exports wrappers' reports. It does its work when it is collected, at a
// scrape, and none per call.
type wrapperCollector struct {
	reports func() []NamedReport

	instances, calls, rejects, faults, seconds, dropped, state *prometheus.Desc
}

// NewWrapperCollector returns a collector of the wrappers' reports that reports returns
// at each collection, the wrappers in use at the time:
//
//   - micro_wrapper_instances{wrapper,side}, a gauge: the working instances;
//   - micro_wrapper_calls_total, micro_wrapper_rejects_total and
//     micro_wrapper_faults_total{wrapper,side}: the calls the wrapper decided about, those
//     it rejected, and its failed guest calls;
//   - micro_wrapper_seconds_total{wrapper,side}: the time spent in the wrapper's guest;
//   - micro_wrapper_states_dropped_total{wrapper,side}: states not kept past the bound of
//     states per wrapper;
//   - micro_wrapper_state{wrapper,side,service,endpoint,node,state} = 1 for each state the
//     wrapper reported (a breaker's "open" for a node, say), at most
//     MaxWrapperStateSeries per wrapper.
//
// A wrapper whose name and side come again in the same collection is exported once, as
// it came first. The counters start at 0 when a wrapper is loaded again (a reload).
func NewWrapperCollector(reports func() []NamedReport) prometheus.Collector {
	labels := []string{"wrapper", "side"}
	return &wrapperCollector{
		reports: reports,
		instances: prometheus.NewDesc("micro_wrapper_instances",
			"Working instances of a wrapper: its configured number, less those being replaced or that could not start.", labels, nil),
		calls: prometheus.NewDesc("micro_wrapper_calls_total",
			"Calls a wrapper decided about (continued or rejected), the ones its guest failed on included.", labels, nil),
		rejects: prometheus.NewDesc("micro_wrapper_rejects_total",
			"Calls a wrapper rejected, or whose node it refused.", labels, nil),
		faults: prometheus.NewDesc("micro_wrapper_faults_total",
			"Calls into a wrapper's guest that trapped, failed or ran out of time, on requests and responses.", labels, nil),
		seconds: prometheus.NewDesc("micro_wrapper_seconds_total",
			"Time spent in a wrapper's guest, on requests and responses (estimated from a sample of its calls).", labels, nil),
		dropped: prometheus.NewDesc("micro_wrapper_states_dropped_total",
			"States a wrapper reported for new scopes while it held as many as it may keep.", labels, nil),
		state: prometheus.NewDesc("micro_wrapper_state",
			"1 for each state a wrapper reported for a scope (a service, an endpoint, a node, or a mix; empty labels are not part of it), "+
				"such as a circuit breaker's: at most 256 series per wrapper, the first by service, endpoint and node.",
			[]string{"wrapper", "side", "service", "endpoint", "node", "state"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *wrapperCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.instances, c.calls, c.rejects, c.faults, c.seconds, c.dropped, c.state} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *wrapperCollector) Collect(ch chan<- prometheus.Metric) {
	type id struct{ name, side string }
	seen := make(map[id]bool)
	for _, r := range c.reports() {
		name, side := label(r.Name), label(r.Side)
		if seen[id{name, side}] {
			continue
		}
		seen[id{name, side}] = true
		for _, m := range []struct {
			desc *prometheus.Desc
			typ  prometheus.ValueType
			v    float64
		}{
			{c.instances, prometheus.GaugeValue, float64(r.Instances)},
			{c.calls, prometheus.CounterValue, float64(r.Calls)},
			{c.rejects, prometheus.CounterValue, float64(r.Rejects)},
			{c.faults, prometheus.CounterValue, float64(r.Faults)},
			{c.seconds, prometheus.CounterValue, r.Time.Seconds()},
			{c.dropped, prometheus.CounterValue, float64(r.DroppedStates)},
		} {
			ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.v, name, side)
		}
		for i, s := range r.States {
			if i == MaxWrapperStateSeries {
				break
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, 1, name, side,
				label(s.Service), label(s.Endpoint), label(s.Node), label(s.Value))
		}
	}
}

// label makes s a valid label value: valid UTF-8.
func label(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// WatchWrappers exports the reports of the wrappers that reports returns, read at each
// scrape, on the metrics' registry: see NewWrapperCollector. Call it once.
func (m *Metrics) WatchWrappers(reports func() []NamedReport) {
	m.reg.MustRegister(NewWrapperCollector(reports))
}
