package tracing

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// newProvider returns a tracer provider that samples everything into a Store of keep.
func newProvider(t *testing.T, keep int) (*sdktrace.TracerProvider, *Store) {
	t.Helper()
	st := NewStore(keep)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(st),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("micro-test"))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, st
}

// TestStoreKeepsTraces: spans end up in their traces, with parents, attributes and the
// failure of a span; the most recent traces come first, and failed ones can be picked.
func TestStoreKeepsTraces(t *testing.T) {
	tp, st := newProvider(t, 10)
	tr := tp.Tracer("micro")
	ctx, root := tr.Start(context.Background(), "ingress")
	_, child := tr.Start(ctx, "attempt", trace.WithAttributes(attribute.String("node", "n1"), attribute.String("long", strings.Repeat("x", 1000))))
	child.SetStatus(codes.Error, "node n1 failed")
	child.End()
	root.End()
	_, ok := tr.Start(context.Background(), "fine")
	ok.End()

	got := st.Recent(10, false)
	if len(got) != 2 || got[0].Spans[0].Name != "fine" || got[1].ID != root.SpanContext().TraceID().String() {
		t.Fatalf("Recent: %+v", got)
	}
	failed := st.Recent(10, true)
	if len(failed) != 1 || !failed[0].Failed || len(failed[0].Spans) != 2 {
		t.Fatalf("failed traces: %+v", failed)
	}
	a := failed[0].Spans[0]
	if a.Name != "attempt" || a.Parent != root.SpanContext().SpanID().String() || a.Attrs["node"] != "n1" ||
		len(a.Attrs["long"]) != maxAttrLen || a.Status != "node n1 failed" || a.Service != "micro-test" {
		t.Fatalf("the attempt span: %+v", a)
	}
	if tr, ok := st.Trace(a.Trace); !ok || len(tr.Spans) != 2 {
		t.Fatalf("Trace(%s): %+v %v", a.Trace, tr, ok)
	}
}

// TestStoreBounded: a Store keeps its most recent traces and a bounded number of spans
// of each.
func TestStoreBounded(t *testing.T) {
	tp, st := newProvider(t, 3)
	tr := tp.Tracer("micro")
	for i := range 10 {
		_, s := tr.Start(context.Background(), fmt.Sprint("t", i))
		s.End()
	}
	got := st.Recent(100, false)
	if len(got) != 3 || got[0].Spans[0].Name != "t9" || got[2].Spans[0].Name != "t7" {
		t.Fatalf("kept %+v, want t9, t8, t7", got)
	}
	ctx, root := tr.Start(context.Background(), "big")
	for range MaxSpansPerTrace + 5 {
		_, s := tr.Start(ctx, "child")
		s.End()
	}
	root.End()
	big, _ := st.Trace(root.SpanContext().TraceID().String())
	if len(big.Spans) != MaxSpansPerTrace || big.Dropped != 6 {
		t.Fatalf("a trace of %d spans kept %d, dropped %d", MaxSpansPerTrace+6, len(big.Spans), big.Dropped)
	}
}
