package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLabelsBounded: services the runtime does not know, and status codes that are no HTTP
// status, share one label, whatever bytes they hold.
func TestLabelsBounded(t *testing.T) {
	m := New(Options{KnownService: func(n string) bool { return n == "greeter" }})
	m.Call("greeter", 200, time.Millisecond)
	for i := range 1000 {
		name := strings.Repeat("x", i%50) + string(rune(i))
		m.Call(name, 200+i%700, time.Millisecond)
		m.Inbound(name, 200, time.Millisecond)
		m.Retry(name)
		m.Eject(name, name, name)
		m.Eject("greeter", "", fmt.Sprint("node", i))
	}
	m.Inbound("\xff", 499, time.Millisecond)
	if _, err := m.Registry().Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	for name, most := range map[string]int{
		"micro_client_calls_total":     64, // greeter/200, and other × the known statuses
		"micro_inbound_calls_total":    2,
		"micro_client_retries_total":   1,
		"micro_client_ejections_total": 1 + MaxNodesPerService + 1, // other's; greeter's nodes and other
	} {
		if n := testutil.CollectAndCount(m.Registry(), name); n > most {
			t.Errorf("%s has %d series after junk, want at most %d", name, n, most)
		}
	}
	want := `micro_client_retries_total{service="other"} 1000`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader("# HELP micro_client_retries_total Attempts beyond the first, by called service.\n# TYPE micro_client_retries_total counter\n"+want+"\n"), "micro_client_retries_total"); err != nil {
		t.Error(err)
	}
}

// BenchmarkRecord: what recording a finished call costs, on both sides.
func BenchmarkRecord(b *testing.B) {
	m := New(Options{KnownService: func(n string) bool { return n == "greeter" }})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Call("greeter", 200, time.Millisecond)
			m.Inbound("greeter", 200, time.Millisecond)
		}
	})
}
