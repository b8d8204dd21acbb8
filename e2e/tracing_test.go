package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/e2e/jaegertest"
	"github.com/microhost/micro/runtime/tracing"
)

// TestTraceAcrossMicros: with [telemetry] pointing at a real Jaeger, one call that a node
// fails and another answers is one trace in Jaeger: the caller micro's ingress span, its
// two attempts (the first failed, the second a retry), each node micro's inbound span and
// its app span, all under the caller's own traceparent.
func TestTraceAcrossMicros(t *testing.T) {
	t.Parallel()
	j := jaegertest.Start(t)
	reg, faults := t.TempDir(), t.TempDir()
	countFile := filepath.Join(t.TempDir(), "count")
	telemetry := fmt.Sprintf("\n[telemetry]\notlp_endpoint = %q\nsample_ratio = 1\n", j.OTLPHTTPEndpoint)
	rr := func(cfg string) string {
		return strings.Replace(cfg, "[client]", "[client]\nstrategy = \"round_robin\"\nhedge = { enabled = false }", 1)
	}
	startMicro(t, rr(baseConfig(reg, counterService("b", countFile, faults)+telemetry)))
	startMicro(t, rr(baseConfig(reg, counterService("c", countFile, faults)+telemetry)))
	a := startMicro(t, rr(baseConfig(reg, telemetry)))
	eventually(t, 20*time.Second, func() error {
		if n := len(mustServices(t, a)["count"]); n != 2 {
			return fmt.Errorf("%d nodes of count", n)
		}
		return nil
	})
	if err := os.WriteFile(filepath.Join(faults, "c"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Calls until one took two attempts: round robin sends every other first attempt to c.
	var traceID string
	for i := 0; i < 10 && traceID == ""; i++ {
		parent := tracing.Root(1)
		r, err := a.call("count", "Count.Safe", "{}", map[string]string{tracing.Header: parent.String(), "X-Call-Id": fmt.Sprint("t", i)})
		if err != nil || r.status != 200 {
			t.Fatalf("call %d: %v %d %s", i, err, r.status, r.body)
		}
		if r.header.Get("Micro-Attempts") == "2" {
			traceID = parent.Trace.String()
		}
	}
	if traceID == "" {
		t.Fatal("no call took two attempts")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// 1 ingress + 2 attempts + 2 inbound + 2 app spans.
	tr, err := j.WaitForTrace(ctx, traceID, 7)
	if err != nil {
		t.Fatalf("trace %s in Jaeger: %v\n%s", traceID, err, j.LogTail(20))
	}
	names := map[string]int{}
	instances := map[string]bool{}
	for _, s := range tr.Spans {
		names[s.OperationName]++
		instances[fmt.Sprint(s.ProcessTags["service.instance.id"])] = true
	}
	if names["ingress"] != 1 || names["attempt"] != 2 || names["inbound"] != 2 || names["app"] != 2 || len(instances) != 3 {
		t.Fatalf("spans %v from %d micros, want ingress, 2 attempts, 2 inbound and 2 app spans from 3 micros", names, len(instances))
	}
	var first, retry *jaegertest.Span
	for i, s := range tr.Spans {
		if s.OperationName == "attempt" {
			switch s.Tags["micro.attempt.reason"] {
			case "first":
				first = &tr.Spans[i]
			case "retry":
				retry = &tr.Spans[i]
			}
		}
	}
	if first == nil || retry == nil || first.Tags["error"] != true || retry.Tags["micro.attempt"] != int64(2) {
		t.Fatalf("attempt spans: first %+v, retry %+v", first, retry)
	}
	ingress, _ := tr.SpanNamed("ingress")
	if ingress.ParentSpanID == "" || first.ParentSpanID != ingress.SpanID || retry.ParentSpanID != ingress.SpanID {
		t.Fatalf("ingress %+v (its parent is the caller's span), attempts under it: %s, %s", ingress, first.ParentSpanID, retry.ParentSpanID)
	}
	for _, s := range tr.Spans {
		if s.OperationName == "inbound" && s.ParentSpanID != first.SpanID && s.ParentSpanID != retry.SpanID {
			t.Errorf("an inbound span's parent %s is neither attempt", s.ParentSpanID)
		}
	}

	// The caller micro kept its spans of the trace too: micro traces lists it among the
	// failed ones and draws it.
	addr := strings.TrimPrefix(a.ingress, "http://")
	out, err := exec.Command(bins.micro, "traces", "--address", addr, "--failed").CombinedOutput()
	if err != nil || !strings.Contains(string(out), traceID) {
		t.Fatalf("micro traces --failed: %v\n%s", err, out)
	}
	out, err = exec.Command(bins.micro, "traces", "--address", addr, traceID).CombinedOutput()
	if err != nil || strings.Count(string(out), "attempt") != 2 || !strings.Contains(string(out), "FAILED") || !strings.Contains(string(out), "ingress") {
		t.Fatalf("micro traces %s: %v\n%s", traceID, err, out)
	}
	t.Logf("micro traces %s:\n%s", traceID, out)
	if out, err := exec.Command(bins.micro, "traces", "--address", addr, "0123456789abcdef0123456789abcdef").CombinedOutput(); err == nil || !strings.Contains(string(out), "no trace") {
		t.Fatalf("an unknown trace: %v\n%s", err, out)
	}

	// Junk queries get clear errors; the answers are JSON, escaped.
	for q, want := range map[string]string{"?limit=zz": "limit", "?limit=100000": "limit", "?id=%00%ff<script>": "no trace"} {
		body, err := httpGet(a.ingress + "/traces" + q)
		if err != nil || !strings.Contains(body, want) || strings.Contains(body, "<script>") {
			t.Errorf("GET /traces%s: %v %s", q, err, body)
		}
	}

	// A malformed traceparent, and headers of micro's own, never reach the app: it gets a
	// traceparent of micro's (and no tracestate, which came with the bad one).
	r, err := a.call("count", "echo/x", "{}", map[string]string{tracing.Header: "00-zz-not-a-trace", tracing.HeaderState: "x=1",
		"Micro-Caller": "root", "Micro-Node": "n0"})
	if err != nil || r.status != 200 {
		t.Fatalf("echo: %v %d %s", err, r.status, r.body)
	}
	var echoed struct{ Header map[string][]string }
	if err := json.Unmarshal(r.body, &echoed); err != nil {
		t.Fatal(err)
	}
	h := http.Header(echoed.Header)
	if _, ok := tracing.Parse(h.Get(tracing.Header)); !ok || h.Get(tracing.HeaderState) != "" || h.Get("Micro-Caller") == "root" || h.Get("Micro-Node") == "n0" {
		t.Fatalf("the app got %v", h)
	}
}

// TestTracePublishDelivery: a published message carries its publish's span, and its
// delivery's span (and the delivery call's attempt and app spans) descend from it: one
// trace from the publisher to the subscriber, kept by micro and listed by /traces.
func TestTracePublishDelivery(t *testing.T) {
	t.Parallel()
	logs, state := filepath.Join(t.TempDir(), "log"), t.TempDir()
	m := startMicro(t, withBroker(baseConfig(t.TempDir(), subscriberService("orders", 1, logs, state, 0,
		map[string]string{"orders.created": "Orders.OnCreated"})+"\n[telemetry]\nsample_ratio = 0\n"), brokerSection("")))
	parent := tracing.Root(1) // sampled by the publisher, though the micro samples nothing itself
	r, err := m.post("/publish/orders.created", `{"id":1}`, map[string]string{"Content-Type": "application/json", tracing.Header: parent.String()})
	if err != nil || r.status != 202 {
		t.Fatalf("publish: %v %d %s", err, r.status, r.body)
	}
	var p struct{ ID string }
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, logs, "orders", []string{p.ID})
	var spans []tracing.SpanData
	eventually(t, 10*time.Second, func() error {
		body, err := httpGet(m.ingress + "/traces?id=" + parent.Trace.String())
		if err != nil {
			return err
		}
		var tr tracing.TraceData
		if err := json.Unmarshal([]byte(body), &tr); err != nil {
			return fmt.Errorf("%v: %s", err, body)
		}
		// The delivery's span ends after the call under it: wait for all four.
		names := map[string]bool{}
		for _, s := range tr.Spans {
			names[s.Name] = true
		}
		for _, n := range []string{"publish", "deliver", "attempt", "app"} {
			if !names[n] {
				return fmt.Errorf("no %s span yet among %d", n, len(tr.Spans))
			}
		}
		spans = tr.Spans
		return nil
	})
	byName := map[string]tracing.SpanData{}
	for _, s := range spans {
		byName[s.Name] = s
	}
	pub, del, att := byName["publish"], byName["deliver"], byName["attempt"]
	if pub.Parent != parent.Span.String() || del.Parent != pub.Span || att.Parent != del.Span ||
		pub.Attrs["messaging.message.id"] != p.ID || del.Attrs["messaging.destination.name"] != "orders.created" {
		t.Fatalf("spans %+v", spans)
	}
	if _, ok := byName["app"]; !ok {
		t.Fatalf("no app span in %+v", spans)
	}
}
