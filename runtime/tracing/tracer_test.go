package tracing

import (
	"context"
	"net"
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

// TestSampling: new traces are sampled at the ratio; a caller's decision is followed.
func TestSampling(t *testing.T) {
	tr, err := New(Options{Service: "micro-test", SampleRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	_, s := tr.Tracer().Start(context.Background(), "unsampled")
	s.End()
	parent, _ := Parse(example) // sampled
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID(parent.Trace), SpanID: trace.SpanID(parent.Span),
		TraceFlags: trace.FlagsSampled, Remote: true})
	_, s = tr.Tracer().Start(trace.ContextWithRemoteSpanContext(context.Background(), sc), "sampled by its caller")
	s.End()
	got := tr.Store().Recent(10, false)
	if len(got) != 1 || got[0].Spans[0].Name != "sampled by its caller" {
		t.Fatalf("kept %+v, want only the span whose caller sampled it", got)
	}
	if _, err := New(Options{SampleRatio: 2}); err == nil {
		t.Error("a sample ratio of 2 was accepted")
	}
}
