package tracing

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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

// TestOpenTelemetryAPI: spans started through OpenTelemetry's API, as a wrapper starts
// them from the span in its context, are micro's records: under the span in the context
// and following its sampling, with their attributes, kept in the Store; and nothing is
// recorded once the Tracer is shut down.
func TestOpenTelemetryAPI(t *testing.T) {
	tr, err := New(Options{Service: "micro-test", SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, in, _ := tr.Server(context.Background(), "", "ingress")
	otr := trace.SpanFromContext(ctx).TracerProvider().Tracer("github.com/microhost/micro")
	wctx, w := otr.Start(ctx, "wrapper limit", trace.WithAttributes(attribute.String("micro.wrapper", "limit")))
	if !w.IsRecording() || HeaderOf(wctx) == HeaderOf(ctx) {
		t.Fatalf("the wrapper span: recording %v, traceparent %q", w.IsRecording(), HeaderOf(wctx))
	}
	w.SetAttributes(attribute.String("micro.wrapper.verdict", "reject"), attribute.String("micro.wrapper.verdict", "continue"))
	w.SetStatus(codes.Ok, "")
	w.SetStatus(codes.Error, "too late: Ok is final")
	w.End()
	w.SetAttributes(attribute.String("after", "end"))
	w.End()
	if w.IsRecording() {
		t.Error("an ended span is recording")
	}
	in.End()
	id := trace.SpanContextFromContext(ctx).TraceID().String()
	kept, _ := tr.Store().Trace(id)
	if len(kept.Spans) != 2 {
		t.Fatalf("kept %+v", kept)
	}
	ws := kept.Spans[0]
	want := map[string]string{"micro.wrapper": "limit", "micro.wrapper.verdict": "continue"}
	if ws.Name != "wrapper limit" || ws.Kind != "internal" || ws.Parent != kept.Spans[1].Span || ws.Failed ||
		ws.Service != "micro-test" || len(ws.Attrs) != 2 || ws.Attrs["micro.wrapper.verdict"] != want["micro.wrapper.verdict"] ||
		ws.Attrs["micro.wrapper"] != want["micro.wrapper"] || ws.End.Before(ws.Start) {
		t.Fatalf("the wrapper span %+v", ws)
	}

	// Under a span that is not sampled: nothing recorded, a new span ID in the trace.
	unsampled := trace.ContextWithRemoteSpanContext(context.Background(), otelContext(SpanContext{Trace: TraceID{1}, Span: SpanID{2}}, true))
	uctx, u := tr.Tracer().Start(unsampled, "x")
	if h, _ := Parse(HeaderOf(uctx)); u.IsRecording() || h.Trace != (TraceID{1}) || h.Span == (SpanID{2}) || h.Sampled {
		t.Fatalf("under an unsampled span: recording %v, %q", u.IsRecording(), HeaderOf(uctx))
	}

	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, s, _ := tr.Server(context.Background(), "", "ingress"); s.Recording() {
		t.Error("a Tracer that was shut down records")
	}
	if _, s := tr.Tracer().Start(context.Background(), "x"); s.IsRecording() {
		t.Error("a Tracer that was shut down records through OpenTelemetry's API")
	}
}

// TestReadOnly: what the exporter gets of a record is what the SDK would have made of
// the span: its IDs, its remote parent, kind, times, attributes, status, events and
// links, the process's resource and micro's instrumentation scope.
func TestReadOnly(t *testing.T) {
	tr, err := New(Options{Service: "micro-test", Instance: "i1", SampleRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	ctx, s, _ := tr.Start(context.Background(), example, "deliver", trace.SpanKindConsumer)
	s.Set(attribute.String("messaging.destination.name", "orders"), attribute.Int("messaging.delivery.count", 2))
	s.Fail("the subscriber answered 500")
	sp := trace.SpanFromContext(ctx)
	sp.RecordError(errors.New("boom"))
	link := otelContext(SpanContext{Trace: TraceID{3}, Span: SpanID{4}, Sampled: true}, true)
	sp.AddLink(trace.Link{SpanContext: link})
	r := s.s.r // the Store holds it once the span ended
	s.End()
	if s.s.r != nil || sp.IsRecording() {
		t.Fatal("an ended span holds its record")
	}

	ro := r.readOnly(tr.res)
	sc := ro.SpanContext()
	if ro.Name() != "deliver" || ro.SpanKind() != trace.SpanKindConsumer || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" ||
		!sc.IsSampled() || sc.SpanID() != sp.SpanContext().SpanID() {
		t.Fatalf("read-only span %+v", ro)
	}
	if p := ro.Parent(); p.SpanID().String() != "00f067aa0ba902b7" || !p.IsRemote() || p.TraceID() != sc.TraceID() {
		t.Fatalf("parent %+v", p)
	}
	if st := ro.Status(); st.Code != codes.Error || st.Description != "the subscriber answered 500" {
		t.Fatalf("status %+v", st)
	}
	if len(ro.Attributes()) != 2 || ro.Attributes()[1].Value.AsInt64() != 2 || ro.EndTime().Before(ro.StartTime()) {
		t.Fatalf("attributes %v, %v to %v", ro.Attributes(), ro.StartTime(), ro.EndTime())
	}
	if ev := ro.Events(); len(ev) != 1 || ev[0].Name != "exception" || len(ev[0].Attributes) != 2 {
		t.Fatalf("events %+v", ev)
	}
	if l := ro.Links(); len(l) != 1 || l[0].SpanContext.TraceID() != link.TraceID() {
		t.Fatalf("links %+v", l)
	}
	if v, _ := ro.Resource().Set().Value("service.instance.id"); v.AsString() != "i1" || ro.InstrumentationScope().Name != scopeName {
		t.Fatalf("resource %v, scope %v", ro.Resource(), ro.InstrumentationScope())
	}
}

// TestRecordsReused: records go back to their pool only once the Store, its readers and
// the export queue are all done with them: under the race detector, calls that record
// spans, readers of the Store and an exporter, at once, with a Store so small that it lets
// go of traces all the time, never see a record that another span is filling.
func TestRecordsReused(t *testing.T) {
	tr, err := New(Options{Service: "micro-test", SampleRatio: 1, KeepTraces: 2})
	if err != nil {
		t.Fatal(err)
	}
	exp := &checker{t: t}
	tr.export = newExportQueue(exp, 8, tr.res, nil)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 500 {
				hop(tr)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 500 {
				for _, d := range tr.Store().Recent(10, false) {
					for _, s := range d.Spans {
						if s.Trace != d.ID || s.Service != "micro-test" || len(s.Attrs) == 0 {
							t.Errorf("trace %s has span %+v", d.ID, s)
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if exp.n.Load()+tr.Dropped() != 4*500*3 {
		t.Errorf("%d spans exported and %d dropped, of %d", exp.n.Load(), tr.Dropped(), 4*500*3)
	}
}

// checker is an exporter that checks what it gets: spans of hop, whole.
type checker struct {
	t *testing.T
	n atomic.Int64
}

func (c *checker) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	for _, s := range spans {
		c.n.Add(1)
		want := map[string]int{"ingress": 4, "attempt": 5, "app": 1}[s.Name()]
		if want == 0 || len(s.Attributes()) != want || !s.SpanContext().IsValid() {
			c.t.Errorf("exported %s with %d attributes", s.Name(), len(s.Attributes()))
		}
	}
	return nil
}

func (c *checker) Shutdown(context.Context) error { return nil }
