package metrics

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/microhost/micro/runtime/wrapper"
)

// TestWrapperMetrics checks the series of the wrappers' reports, read at each scrape.
func TestWrapperMetrics(t *testing.T) {
	var scrapes atomic.Int64
	breaker := NamedReport{Name: "breaker", Side: "client", Report: wrapper.Report{
		Instances: 2, Calls: 10, Rejects: 3, Faults: 1, Time: 1500 * time.Millisecond,
		States: []wrapper.State{{Node: "n1", Value: "open"}, {Endpoint: "Greeter.Hello", Node: "n2", Value: "half-open"}},
	}}
	m := New(Options{})
	m.WatchWrappers(func() []NamedReport {
		scrapes.Add(1)
		return []NamedReport{
			breaker,
			{Name: "auth", Side: "server", Report: wrapper.Report{Instances: 1, Calls: 4, DroppedStates: 5}},
			{Name: "breaker", Side: "client"}, // again: exported once, as it came first
		}
	})
	if scrapes.Load() != 0 {
		t.Fatal("the reports were read before a scrape")
	}
	want := `
# HELP micro_wrapper_calls_total Calls a wrapper decided about (continued or rejected), the ones its guest failed on included.
# TYPE micro_wrapper_calls_total counter
micro_wrapper_calls_total{side="client",wrapper="breaker"} 10
micro_wrapper_calls_total{side="server",wrapper="auth"} 4
# HELP micro_wrapper_faults_total Calls into a wrapper's guest that trapped, failed or ran out of time, on requests and responses.
# TYPE micro_wrapper_faults_total counter
micro_wrapper_faults_total{side="client",wrapper="breaker"} 1
micro_wrapper_faults_total{side="server",wrapper="auth"} 0
# HELP micro_wrapper_instances Working instances of a wrapper: its configured number, less those being replaced or that could not start.
# TYPE micro_wrapper_instances gauge
micro_wrapper_instances{side="client",wrapper="breaker"} 2
micro_wrapper_instances{side="server",wrapper="auth"} 1
# HELP micro_wrapper_rejects_total Calls a wrapper rejected, or whose node it refused.
# TYPE micro_wrapper_rejects_total counter
micro_wrapper_rejects_total{side="client",wrapper="breaker"} 3
micro_wrapper_rejects_total{side="server",wrapper="auth"} 0
# HELP micro_wrapper_seconds_total Time spent in a wrapper's guest, on requests and responses (estimated from a sample of its calls).
# TYPE micro_wrapper_seconds_total counter
micro_wrapper_seconds_total{side="client",wrapper="breaker"} 1.5
micro_wrapper_seconds_total{side="server",wrapper="auth"} 0
# HELP micro_wrapper_state 1 for each state a wrapper reported for a scope (a service, an endpoint, a node, or a mix; empty labels are not part of it), such as a circuit breaker's: at most 256 series per wrapper, the first by service, endpoint and node.
# TYPE micro_wrapper_state gauge
micro_wrapper_state{endpoint="",node="n1",service="",side="client",state="open",wrapper="breaker"} 1
micro_wrapper_state{endpoint="Greeter.Hello",node="n2",service="",side="client",state="half-open",wrapper="breaker"} 1
# HELP micro_wrapper_states_dropped_total States a wrapper reported for new scopes while it held as many as it may keep.
# TYPE micro_wrapper_states_dropped_total counter
micro_wrapper_states_dropped_total{side="client",wrapper="breaker"} 0
micro_wrapper_states_dropped_total{side="server",wrapper="auth"} 5
`
	names := []string{"micro_wrapper_instances", "micro_wrapper_calls_total", "micro_wrapper_rejects_total",
		"micro_wrapper_faults_total", "micro_wrapper_seconds_total", "micro_wrapper_state", "micro_wrapper_states_dropped_total"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if scrapes.Load() != 1 {
		t.Errorf("%d reads of the reports for one scrape, want 1", scrapes.Load())
	}
	// The next scrape reads them again.
	breaker.Calls, breaker.States = 11, nil
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP micro_wrapper_calls_total Calls a wrapper decided about (continued or rejected), the ones its guest failed on included.
# TYPE micro_wrapper_calls_total counter
micro_wrapper_calls_total{side="client",wrapper="breaker"} 11
micro_wrapper_calls_total{side="server",wrapper="auth"} 4
`), "micro_wrapper_calls_total", "micro_wrapper_state"); err != nil {
		t.Error(err)
	}
}

// TestWrapperStatesBounded checks that a wrapper's states make at most
// MaxWrapperStateSeries series, and that label values that are not UTF-8 do not break a
// scrape.
func TestWrapperStatesBounded(t *testing.T) {
	var states []wrapper.State
	for i := range 1000 {
		states = append(states, wrapper.State{Node: fmt.Sprintf("node-%04d", i), Value: "open"})
	}
	bad := wrapper.State{Service: "\xff", Value: "open\xfe"}
	c := NewWrapperCollector(func() []NamedReport {
		return []NamedReport{
			{Name: "breaker", Side: "client", Report: wrapper.Report{States: states}},
			{Name: "breaker", Side: "server", Report: wrapper.Report{States: states[:3]}},
			{Name: "odd\xff", Side: "client", Report: wrapper.Report{States: []wrapper.State{bad}}},
		}
	})
	if n := testutil.CollectAndCount(c, "micro_wrapper_state"); n != MaxWrapperStateSeries+3+1 {
		t.Errorf("%d state series, want %d", n, MaxWrapperStateSeries+3+1)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP micro_wrapper_instances Working instances of a wrapper: its configured number, less those being replaced or that could not start.
# TYPE micro_wrapper_instances gauge
micro_wrapper_instances{side="client",wrapper="breaker"} 0
`+"micro_wrapper_instances{side=\"client\",wrapper=\"odd\uFFFD\"} 0\n"+`micro_wrapper_instances{side="server",wrapper="breaker"} 0
`), "micro_wrapper_instances"); err != nil {
		t.Error(err)
	}
	if _, err := testutil.CollectAndLint(c); err != nil {
		t.Errorf("lint: %v", err)
	}
}
