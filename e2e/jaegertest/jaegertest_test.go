package jaegertest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/microhost/micro/e2e/jaegertest"
)

// TestSmoke sends a parent and a child span over OTLP/HTTP with the OpenTelemetry SDK and
// finds them through the query API: the trace, the parent link, names, service and tags.
func TestSmoke(t *testing.T) {
	j := jaegertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Before anything is sent: no traces, and an unknown trace is ErrNotFound.
	const service = "jaegertest-smoke"
	if got, err := j.Traces(ctx, service); err != nil || len(got) != 0 {
		t.Fatalf("Traces before export = %d traces, %v; want none, nil", len(got), err)
	}
	if _, err := j.Trace(ctx, "0123456789abcdef0123456789abcdef"); !errors.Is(err, jaegertest.ErrNotFound) {
		t.Fatalf("Trace(unknown) error = %v, want ErrNotFound", err)
	}
	// The OTLP/gRPC receiver listens too.
	if c, err := net.DialTimeout("tcp", j.OTLPGRPCEndpoint, 5*time.Second); err != nil {
		t.Fatalf("OTLP gRPC endpoint %s: %v", j.OTLPGRPCEndpoint, err)
	} else {
		c.Close()
	}

	exp, err := otlptracehttp.New(ctx,
		otlptracehttp.WithEndpoint(j.OTLPHTTPEndpoint), otlptracehttp.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(
			attribute.String("service.name", service),
			attribute.String("service.version", "v0.0.0-test"),
		)),
	)
	defer func() { _ = tp.Shutdown(context.Background()) }()
	tracer := tp.Tracer("github.com/microhost/micro/e2e/jaegertest")

	// Explicit timestamps, so that the durations and offsets read back are known exactly.
	t0 := time.Now().Truncate(time.Millisecond)
	pctx, parent := tracer.Start(ctx, "call greeter.Hello",
		trace.WithTimestamp(t0),
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("micro.service", "greeter"), attribute.Int64("micro.attempt", 2)))
	_, child := tracer.Start(pctx, "attempt node-1",
		trace.WithTimestamp(t0.Add(time.Millisecond)),
		trace.WithAttributes(attribute.Bool("micro.retry", true)))
	child.End(trace.WithTimestamp(t0.Add(3 * time.Millisecond)))
	parent.End(trace.WithTimestamp(t0.Add(5 * time.Millisecond)))
	if err := tp.ForceFlush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	traceID := parent.SpanContext().TraceID().String()
	parentID := parent.SpanContext().SpanID().String()
	childID := child.SpanContext().SpanID().String()

	// Spans reach the store asynchronously: poll the search until the trace is complete.
	var found jaegertest.Trace
	eventually(t, 30*time.Second, func() error {
		traces, err := j.Traces(ctx, service)
		if err != nil {
			return err
		}
		for _, tr := range traces {
			if tr.TraceID == traceID && len(tr.Spans) == 2 {
				found = tr
				return nil
			}
		}
		return fmt.Errorf("trace %s with 2 spans not among %d traces of %s", traceID, len(traces), service)
	})
	checkTrace(t, found, traceID, parentID, childID, service, t0)

	// The same trace by ID, directly and through WaitForTrace.
	byID, err := j.Trace(ctx, traceID)
	if err != nil {
		t.Fatalf("Trace(%s): %v", traceID, err)
	}
	checkTrace(t, byID, traceID, parentID, childID, service, t0)
	waited, err := j.WaitForTrace(ctx, traceID, 2)
	if err != nil {
		t.Fatal(err)
	}
	checkTrace(t, waited, traceID, parentID, childID, service, t0)
}

func checkTrace(t *testing.T, tr jaegertest.Trace, traceID, parentID, childID, service string, t0 time.Time) {
	t.Helper()
	if tr.TraceID != traceID {
		t.Errorf("TraceID = %q, want %q", tr.TraceID, traceID)
	}
	if len(tr.Spans) != 2 {
		t.Fatalf("got %d spans, want 2: %+v", len(tr.Spans), tr.Spans)
	}
	p, ok := tr.SpanNamed("call greeter.Hello")
	if !ok {
		t.Fatalf("no parent span in %+v", tr.Spans)
	}
	c, ok := tr.SpanNamed("attempt node-1")
	if !ok {
		t.Fatalf("no child span in %+v", tr.Spans)
	}
	if tr.Spans[0].SpanID != parentID {
		t.Errorf("first span = %s, want the parent %s (spans are ordered by start)", tr.Spans[0].SpanID, parentID)
	}
	if p.SpanID != parentID || p.ParentSpanID != "" {
		t.Errorf("parent: SpanID %q ParentSpanID %q, want %q and none", p.SpanID, p.ParentSpanID, parentID)
	}
	if c.SpanID != childID || c.ParentSpanID != parentID {
		t.Errorf("child: SpanID %q ParentSpanID %q, want %q and %q", c.SpanID, c.ParentSpanID, childID, parentID)
	}
	for _, s := range []jaegertest.Span{p, c} {
		if s.ServiceName != service {
			t.Errorf("span %q: ServiceName %q, want %q", s.OperationName, s.ServiceName, service)
		}
		if s.ProcessTags["service.version"] != "v0.0.0-test" {
			t.Errorf("span %q: ProcessTags %v, want service.version v0.0.0-test", s.OperationName, s.ProcessTags)
		}
	}
	if !p.StartTime.Equal(t0) || p.Duration != 5*time.Millisecond {
		t.Errorf("parent: StartTime %v Duration %v, want %v and 5ms", p.StartTime, p.Duration, t0)
	}
	if c.StartTime.Sub(t0) != time.Millisecond || c.Duration != 2*time.Millisecond {
		t.Errorf("child: starts %v after the parent and lasts %v, want 1ms and 2ms", c.StartTime.Sub(t0), c.Duration)
	}
	if p.Tags["micro.service"] != "greeter" || p.Tags["micro.attempt"] != int64(2) || p.Tags["span.kind"] != "client" {
		t.Errorf("parent tags = %v, want micro.service=greeter micro.attempt=2 span.kind=client", p.Tags)
	}
	if c.Tags["micro.retry"] != true {
		t.Errorf("child tags = %v, want micro.retry=true", c.Tags)
	}
}

// eventually calls cond until it returns nil, failing the test with cond's last error if
// that does not happen within timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		time.Sleep(delay)
	}
}
