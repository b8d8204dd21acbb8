package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestAttempts: attempts are counted per service, endpoint, node, reason and outcome; a sampled
// attempt's trace ID is an exemplar of its latency, which an OpenMetrics scrape shows.
func TestAttempts(t *testing.T) {
	m := New(Options{KnownService: func(n string) bool { return n == "greeter" }})
	m.Attempt("greeter", "Greeter.Hello", "n1", ReasonFirst, AttemptOK, 2*time.Millisecond, "4bf92f3577b34da6a3ce929d0e0e4736")
	m.Attempt("greeter", "Greeter.Hello", "n1", ReasonFirst, AttemptOK, 3*time.Millisecond, "")
	m.Attempt("greeter", "Greeter.Hello", "n2", ReasonRetry, AttemptFailed, time.Second, "")
	m.Attempt("greeter", "Greeter.Hello", "n2", ReasonHedge, AttemptAbandoned, 5*time.Millisecond, "")
	want := `
# HELP micro_client_attempts_total Attempts of calls, by called service, endpoint, node, reason (first, retry, hedge) and outcome (ok, failed: counted against the node, abandoned: a hedge answered first).
# TYPE micro_client_attempts_total counter
micro_client_attempts_total{endpoint="Greeter.Hello",node="n1",outcome="ok",reason="first",service="greeter"} 2
micro_client_attempts_total{endpoint="Greeter.Hello",node="n2",outcome="abandoned",reason="hedge",service="greeter"} 1
micro_client_attempts_total{endpoint="Greeter.Hello",node="n2",outcome="failed",reason="retry",service="greeter"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "micro_client_attempts_total"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.002`) {
		t.Fatalf("no exemplar in the OpenMetrics scrape:\n%s", grep(string(body), "micro_client_attempt_duration_seconds_bucket"))
	}
}

// TestAttemptsBounded: junk endpoints and nodes of a known service, and any of an unknown
// one, cannot grow the series past their bounds.
func TestAttemptsBounded(t *testing.T) {
	m := New(Options{KnownService: func(n string) bool { return n == "greeter" }})
	for i := range 5000 {
		m.Attempt("greeter", fmt.Sprint("junk", i), fmt.Sprint("node", i%200), ReasonFirst, AttemptOK, time.Millisecond, "")
		m.Attempt(fmt.Sprint("svc", i), "E", "n", ReasonRetry, AttemptFailed, time.Millisecond, "")
	}
	// (32 endpoints + other) × (64 nodes + other) × 3 reasons × 3 outcomes, at most, and
	// the unknown services' one set of other, other, other.
	most := (MaxEndpointsPerService+1)*(MaxNodesPerService+1)*9 + 9
	if n := testutil.CollectAndCount(m.Registry(), "micro_client_attempts_total"); n > most {
		t.Fatalf("%d series after junk, want at most %d", n, most)
	}
	n := 0
	m.attempts.series.Range(func(any, any) bool { n++; return true })
	if n > MaxEndpointsPerService*MaxNodesPerService {
		t.Fatalf("%d cached keys after junk", n)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// BenchmarkAttempt is the cost an attempt pays for its series.
func BenchmarkAttempt(b *testing.B) {
	m := New(Options{KnownService: func(n string) bool { return n == "greeter" }})
	b.ReportAllocs()
	for b.Loop() {
		m.Attempt("greeter", "Greeter.Hello", "n1", ReasonFirst, AttemptOK, time.Millisecond, "")
	}
}

// BenchmarkAttemptSampled is the cost of an attempt of a sampled call: its trace ID is an
// exemplar of the latency at most every exemplarEvery.
func BenchmarkAttemptSampled(b *testing.B) {
	m := New(Options{KnownService: func(n string) bool { return n == "greeter" }})
	b.ReportAllocs()
	for b.Loop() {
		m.Attempt("greeter", "Greeter.Hello", "n1", ReasonFirst, AttemptOK, time.Millisecond, "4bf92f3577b34da6a3ce929d0e0e4736")
	}
}
