package tracing

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// hop makes the spans of one sampled call through micro, as the ingress, the client and
// the inbound side make them: ingress, an attempt and the app's, each with its
// attributes, and the traceparent of each request.
func hop(tr *Tracer) {
	ctx, in, _ := tr.Server(context.Background(), "", "ingress")
	in.Set(attribute.String("micro.service", "greeter"), attribute.String("micro.endpoint", "Greeter.Hello"),
		attribute.String("http.request.method", "POST"))
	actx, at := tr.Client(ctx, "attempt")
	_ = SampledTraceID(actx)
	at.Set(attribute.String("micro.node", "greeter-1"), attribute.Int("micro.attempt", 1),
		attribute.String("micro.attempt.reason", "first"), attribute.Int64("micro.budget_ms", 5000))
	pctx, app := tr.Client(actx, "app")
	_ = HeaderOf(pctx)
	app.Set(attribute.Int("http.response.status_code", 200))
	app.End()
	at.Set(attribute.Int("http.response.status_code", 200))
	at.End()
	in.Set(attribute.Int("http.response.status_code", 200))
	in.End()
}

// BenchmarkHop: the three spans of a sampled call, kept in the Store; with an exporter
// queue behind, which a goroutine drains.
func BenchmarkHop(b *testing.B) {
	for _, ratio := range []float64{0, 1} {
		b.Run(map[float64]string{0: "ratio=0", 1: "ratio=1"}[ratio], func(b *testing.B) {
			tr, err := New(Options{Service: "bench", SampleRatio: ratio})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				hop(tr)
			}
		})
	}
	b.Run("ratio=1,export", func(b *testing.B) {
		tr, err := New(Options{Service: "bench", SampleRatio: 1})
		if err != nil {
			b.Fatal(err)
		}
		tr.export = newExportQueue(discard{}, 0, tr.res, nil)
		defer tr.Shutdown(context.Background())
		b.ReportAllocs()
		for b.Loop() {
			hop(tr)
		}
	})
}

// BenchmarkHopSDK: the same three spans as the OpenTelemetry SDK's recording spans, kept
// by a Store as a span processor: what Tracer did before it made records of its own.
func BenchmarkHopSDK(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(NewStore(0)),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("bench"))))
	defer tp.Shutdown(context.Background())
	tr := tp.Tracer("bench")
	b.ReportAllocs()
	for b.Loop() {
		ctx, in := tr.Start(context.Background(), "ingress", trace.WithSpanKind(trace.SpanKindServer))
		in.SetAttributes(attribute.String("micro.service", "greeter"), attribute.String("micro.endpoint", "Greeter.Hello"),
			attribute.String("http.request.method", "POST"))
		actx, at := tr.Start(ctx, "attempt", trace.WithSpanKind(trace.SpanKindClient))
		_ = SampledTraceID(actx)
		at.SetAttributes(attribute.String("micro.node", "greeter-1"), attribute.Int("micro.attempt", 1),
			attribute.String("micro.attempt.reason", "first"), attribute.Int64("micro.budget_ms", 5000))
		pctx, app := tr.Start(actx, "app", trace.WithSpanKind(trace.SpanKindClient))
		_ = HeaderOf(pctx)
		app.SetAttributes(attribute.Int("http.response.status_code", 200))
		app.End()
		at.SetAttributes(attribute.Int("http.response.status_code", 200))
		at.End()
		in.SetAttributes(attribute.Int("http.response.status_code", 200))
		in.End()
	}
}

// BenchmarkReadOnly: what the export queue's goroutine does to each span before the
// exporter has it.
func BenchmarkReadOnly(b *testing.B) {
	tr, err := New(Options{Service: "bench", SampleRatio: 1})
	if err != nil {
		b.Fatal(err)
	}
	_, s, _ := tr.Server(context.Background(), "", "ingress")
	s.Set(attribute.String("micro.service", "greeter"), attribute.Int("http.response.status_code", 500))
	s.s.SetStatus(codes.Error, "failed")
	r := s.s.r // the Store holds it once the span ended
	s.End()
	b.ReportAllocs()
	for b.Loop() {
		_ = r.readOnly(tr.res)
	}
}

// discard is an exporter that exports nowhere.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }
