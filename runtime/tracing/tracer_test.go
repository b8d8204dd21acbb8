package tracing

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/microhost/micro/e2e/jaegertest"
)

// TestExportToJaeger: with an OTLP endpoint, spans reach a real Jaeger, and the Store
// keeps them too.
func TestExportToJaeger(t *testing.T) {
	j := jaegertest.Start(t)
	tr, err := New(Options{Service: "micro-test", Instance: "i1", OTLPEndpoint: j.OTLPHTTPEndpoint, SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, root := tr.Tracer().Start(context.Background(), "ingress", trace.WithSpanKind(trace.SpanKindServer))
	_, child := tr.Tracer().Start(ctx, "attempt", trace.WithSpanKind(trace.SpanKindClient))
	child.End()
	root.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	id := root.SpanContext().TraceID().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := j.WaitForTrace(ctx, id, 2)
	if err != nil {
		t.Fatal(err)
	}
	a, ok := got.SpanNamed("attempt")
	if !ok || a.ParentSpanID != root.SpanContext().SpanID().String() || a.ServiceName != "micro-test" {
		t.Fatalf("Jaeger has %+v", got)
	}
	if kept, ok := tr.Store().Trace(id); !ok || len(kept.Spans) != 2 {
		t.Fatalf("the Store kept %+v", kept)
	}
	if n := tr.Dropped(); n != 0 {
		t.Errorf("%d spans dropped", n)
	}
}

// TestExportDownDrops: with a collector that is not there, ending a span never waits, and
// every span is counted as dropped, whether the queue was full or the export failed.
func TestExportDownDrops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	tr, err := New(Options{Service: "micro-test", OTLPEndpoint: addr, SampleRatio: 1, QueueSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		_, s := tr.Tracer().Start(context.Background(), "call")
		s.End()
	}
	_ = tr.Shutdown(context.Background())
	if n := tr.Dropped(); n != 100 {
		t.Fatalf("%d of 100 spans counted as dropped", n)
	}
	if got := tr.Store().Recent(1000, false); len(got) != 100 {
		t.Fatalf("the Store kept %d traces, want the 100, exported or not", len(got))
	}
}

// TestServerAndClient: a call with a valid traceparent continues its trace and follows
// its sampling; one without (or with a malformed one) starts a trace sampled at the ratio;
// spans under a recorded span are recorded, and the traceparent a request carries names
// the span in its context.
func TestServerAndClient(t *testing.T) {
	tr, err := New(Options{Service: "micro-test", SampleRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	ctx := context.Background()

	// Sampled by its caller: recorded, under the caller's span.
	sctx, in, valid := tr.Server(ctx, example, "ingress")
	if !valid || !in.Recording() {
		t.Fatalf("a sampled traceparent: valid %v, recording %v", valid, in.Recording())
	}
	actx, attempt := tr.Client(sctx, "attempt")
	h, ok := Parse(HeaderOf(actx))
	if !attempt.Recording() || !ok || !h.Sampled || h.Trace.String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("the attempt's traceparent %q", HeaderOf(actx))
	}
	attempt.End()
	in.End()
	kept, _ := tr.Store().Trace("4bf92f3577b34da6a3ce929d0e0e4736")
	if len(kept.Spans) != 2 || kept.Spans[1].Parent != "00f067aa0ba902b7" || kept.Spans[0].Span != h.Span.String() {
		t.Fatalf("kept %+v", kept)
	}

	// Not sampled by its caller: nothing recorded, the trace goes on with new span IDs.
	unsampled := strings.Replace(example, "-01", "-00", 1)
	sctx, in, _ = tr.Server(ctx, unsampled, "ingress")
	actx, attempt = tr.Client(sctx, "attempt")
	h, ok = Parse(HeaderOf(actx))
	if in.Recording() || attempt.Recording() || !ok || h.Sampled || h.Span.String() == "00f067aa0ba902b7" || h.Trace.String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("unsampled: recording %v %v, traceparent %q", in.Recording(), attempt.Recording(), HeaderOf(actx))
	}

	// A malformed traceparent: a new trace, at the ratio (0: not sampled).
	sctx, in, valid = tr.Server(ctx, "00-zz", "ingress")
	if h, ok := Parse(HeaderOf(sctx)); valid || in.Recording() || !ok || h.Sampled || h.Trace.String() == "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("malformed: valid %v, recording %v, %q", valid, in.Recording(), HeaderOf(sctx))
	}
	if n := len(tr.Store().Recent(10, false)); n != 1 {
		t.Fatalf("%d traces kept, want only the sampled one", n)
	}

	// At ratio 1, a call without a traceparent is recorded, as a root.
	all, err := New(Options{Service: "micro-test", SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Shutdown(context.Background())
	if _, in, _ := all.Server(ctx, "", "ingress"); !in.Recording() {
		t.Fatal("ratio 1: a new trace is not recorded")
	}
	var none *Tracer
	if c, s, _ := none.Server(ctx, example, "x"); c != ctx || s.Recording() {
		t.Fatal("a nil Tracer started something")
	}
	if _, err := New(Options{SampleRatio: 2}); err == nil {
		t.Error("a sample ratio of 2 was accepted")
	}
}
