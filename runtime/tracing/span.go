package tracing

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Span is a span of a call: recorded when the call's trace is sampled, and otherwise
// nothing but the context it hands on. The zero Span records nothing.
type Span struct{ s trace.Span }

// Recording reports whether the span is recorded: whether attributes are worth making.
func (s Span) Recording() bool { return s.s != nil }

// Set adds attributes to a recorded span.
func (s Span) Set(kv ...attribute.KeyValue) {
	if s.s != nil {
		s.s.SetAttributes(kv...)
	}
}

// Fail marks a recorded span failed, with why.
func (s Span) Fail(why string) {
	if s.s != nil {
		s.s.SetStatus(codes.Error, why)
	}
}

// End ends a recorded span.
func (s Span) End() {
	if s.s != nil {
		s.s.End()
	}
}

// Server starts the span of a call that arrived with traceparent header (maybe ""):
// under the caller's span when the header is valid, following its sampling decision, and
// as the root of a new trace, sampled at the Tracer's ratio, when it is not. The returned
// context carries the span's context, which spans started under it (Client) descend from.
// A nil Tracer starts nothing. valid reports whether the header was valid: a caller's
// tracestate goes on only with a valid traceparent.
func (t *Tracer) Server(ctx context.Context, header, name string) (_ context.Context, _ Span, valid bool) {
	return t.Start(ctx, header, name, trace.SpanKindServer)
}

// Start is Server for a span of another kind: a publish (producer) or a delivery
// (consumer), under the traceparent its message carries.
func (t *Tracer) Start(ctx context.Context, header, name string, kind trace.SpanKind) (_ context.Context, _ Span, valid bool) {
	if t == nil {
		return ctx, Span{}, false
	}
	parent, valid := Parse(header)
	if !valid {
		root := Root(t.ratio)
		if !root.Sampled {
			return trace.ContextWithSpanContext(ctx, otelContext(root, false)), Span{}, false
		}
		ctx, s := t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithNewRoot())
		return ctx, Span{s}, false
	}
	if !parent.Sampled {
		return trace.ContextWithSpanContext(ctx, otelContext(parent.Child(), false)), Span{}, true
	}
	ctx = trace.ContextWithRemoteSpanContext(ctx, otelContext(parent, true))
	ctx, s := t.tracer.Start(ctx, name, trace.WithSpanKind(kind))
	return ctx, Span{s}, true
}

// Client starts the span of a request this micro makes in ctx (an attempt, a request to
// an app): recorded under the span in ctx when that is recorded, and otherwise only a new
// span ID in the same trace, for the traceparent the request carries (HeaderOf). With no
// trace in ctx it starts one, as Server does for a call without a traceparent.
func (t *Tracer) Client(ctx context.Context, name string) (context.Context, Span) {
	if t == nil {
		return ctx, Span{}
	}
	parent := trace.SpanFromContext(ctx)
	psc := parent.SpanContext()
	switch {
	case parent.IsRecording():
		ctx, s := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
		return ctx, Span{s}
	case psc.IsValid():
		c := SpanContext{Trace: TraceID(psc.TraceID()), Span: newSpanID()}
		return trace.ContextWithSpanContext(ctx, otelContext(c, false)), Span{}
	}
	root := Root(t.ratio)
	if !root.Sampled {
		return trace.ContextWithSpanContext(ctx, otelContext(root, false)), Span{}
	}
	ctx, s := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithNewRoot())
	return ctx, Span{s}
}

// Lookup returns the key and value of the traceparent header in h, a message header whose
// keys may be in any case.
func Lookup(h map[string]string) (key, value string) {
	if v, ok := h[Header]; ok {
		return Header, v
	}
	for k, v := range h {
		if strings.EqualFold(k, Header) {
			return k, v
		}
	}
	return "", ""
}

// SampledTraceID returns the hex ID of the trace in ctx when it is sampled, or "": what a
// metric's exemplar links to.
func SampledTraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsSampled() {
		return ""
	}
	return sc.TraceID().String()
}

// HeaderOf returns the traceparent header of a request made in ctx: the context of the
// span in ctx, or "" when there is none.
func HeaderOf(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return SpanContext{Trace: TraceID(sc.TraceID()), Span: SpanID(sc.SpanID()), Sampled: sc.IsSampled()}.String()
}

// otelContext is c as an OpenTelemetry span context.
func otelContext(c SpanContext, remote bool) trace.SpanContext {
	var flags trace.TraceFlags
	if c.Sampled {
		flags = trace.FlagsSampled
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID(c.Trace), SpanID: trace.SpanID(c.Span), TraceFlags: flags, Remote: remote})
}
