package tracing

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// Span is a span of a call: recorded when the call's trace is sampled, and otherwise
// nothing but the context it hands on. The zero Span records nothing.
type Span struct{ s *span }

// Recording reports whether the span is recorded: whether attributes are worth making.
func (s Span) Recording() bool { return s.s != nil }

// Set adds attributes to a recorded span; a value replaces an earlier one of its key.
func (s Span) Set(kv ...attribute.KeyValue) {
	if s.s != nil {
		s.s.set(kv)
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
		s.s.end(time.Time{})
	}
}

// Limits of a record, as the OpenTelemetry SDK's defaults.
const (
	inlineAttrs = 5   // attributes a record holds without allocating more
	maxAttrs    = 128 // attributes past it are dropped and counted
	maxEvents   = 128
	maxLinks    = 128
)

// span is a recorded span as contexts and Span hold it: micro's own, cheaper than the SDK's
// recording span, which it replaces on the call path. It implements trace.Span, so that
// code written against OpenTelemetry's API (a wrapper's span, tests) records into it as
// well. What it records is in a record until it ends, when the record goes to the Store
// and the export queue, and the span keeps nothing but its IDs: records are reused (see
// record), spans never are, so that a context that outlives its span is never wrong.
type span struct {
	embedded.Span

	tracer  *Tracer
	traceID TraceID
	spanID  SpanID

	mu sync.Mutex
	r  *record // nil once the span ended
}

// record is what a span records. It is what a Store keeps and what the export queue turns
// into the SDK's read-only form (readOnly), off the call path. Its span's mu guards it
// until the span ends; it never changes after, and is put back in its Tracer's pool when
// the last of the Store, the export queue and the Store's readers lets go of it (release).
type record struct {
	refs     atomic.Int32 // of an ended record: who holds it
	traceID  TraceID
	spanID   SpanID
	parentID SpanID // zero for a root
	remote   bool   // the parent is another process's
	status   codes.Code
	kind     trace.SpanKind
	start    time.Time
	took     time.Duration // from start to end
	name     string
	desc     string
	attrs    []attribute.KeyValue // inline[:0] at first
	more     *more                // what few spans have
	inline   [inlineAttrs]attribute.KeyValue
	service  string     // the service.name of the process that recorded it
	pool     *sync.Pool // where it goes back to; nil for one that is not reused
}

// more is what a record holds that micro's own spans seldom have.
type more struct {
	dropped int // attributes past maxAttrs
	events  []sdktrace.Event
	links   []sdktrace.Link
}

// extra returns r.more, made when r has none.
func (r *record) extra() *more {
	if r.more == nil {
		r.more = new(more)
	}
	return r.more
}

// finish is when r ended.
func (r *record) finish() time.Time { return r.start.Add(r.took) }

// release lets go of r, which has ended: the last holder puts it back in its pool.
func (r *record) release() {
	if r.refs.Add(-1) != 0 || r.pool == nil {
		return
	}
	pool := r.pool
	clear(r.inline[:])
	*r = record{pool: pool}
	pool.Put(r)
}

// newSpan starts a span named name, in trace id, under parent (zero for a root), at start
// (now when zero).
func (t *Tracer) newSpan(name string, kind trace.SpanKind, id TraceID, parent SpanID, remote bool, start time.Time) *span {
	if kind == trace.SpanKindUnspecified {
		kind = trace.SpanKindInternal
	}
	if start.IsZero() {
		start = time.Now()
	}
	r := t.records.Get().(*record)
	s := &span{tracer: t, traceID: id, spanID: newSpanID(), r: r}
	r.traceID, r.spanID, r.parentID, r.remote, r.kind, r.name, r.start = id, s.spanID, parent, remote, kind, name, start
	r.attrs, r.service = r.inline[:0], t.service
	return s
}

// set adds kv to s's attributes, a value replacing an earlier one of its key; an
// attribute that is not valid (no key) is left out, as the SDK leaves it.
func (s *span) set(kv []attribute.KeyValue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.r
	if r == nil {
		return
	}
next:
	for _, a := range kv {
		if !a.Valid() {
			continue
		}
		for i := range r.attrs {
			if r.attrs[i].Key == a.Key {
				r.attrs[i] = a
				continue next
			}
		}
		if len(r.attrs) >= maxAttrs {
			r.extra().dropped++
			continue
		}
		r.attrs = append(r.attrs, a)
	}
}

// end ends s at at (now when zero) and hands its record to the Store and the export queue.
func (s *span) end(at time.Time) {
	s.mu.Lock()
	r := s.r
	s.r = nil
	s.mu.Unlock()
	if r == nil {
		return
	}
	if at.IsZero() {
		r.took = time.Since(r.start) // on the monotonic clock alone: cheaper than time.Now
	} else {
		r.took = at.Sub(r.start)
	}
	t := s.tracer
	if t.export == nil {
		r.refs.Store(1)
		t.store.add(r)
		return
	}
	r.refs.Store(2)
	t.store.add(r)
	t.export.enqueue(r)
}

// spanContext is s's context, as OpenTelemetry has it.
func (s *span) spanContext() trace.SpanContext {
	return otelContext(SpanContext{Trace: s.traceID, Span: s.spanID, Sampled: true}, false)
}

// End implements trace.Span.
func (s *span) End(options ...trace.SpanEndOption) {
	var at time.Time
	if len(options) > 0 {
		c := trace.NewSpanEndConfig(options...)
		at = c.Timestamp()
	}
	s.end(at)
}

// AddEvent implements trace.Span.
func (s *span) AddEvent(name string, options ...trace.EventOption) {
	s.addEvent(name, trace.NewEventConfig(options...))
}

func (s *span) addEvent(name string, c trace.EventConfig) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.r; r != nil && (r.more == nil || len(r.more.events) < maxEvents) {
		m := r.extra()
		m.events = append(m.events, sdktrace.Event{Name: name, Attributes: c.Attributes(), Time: c.Timestamp()})
	}
}

// AddLink implements trace.Span.
func (s *span) AddLink(link trace.Link) {
	if !link.SpanContext.IsValid() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.r; r != nil && (r.more == nil || len(r.more.links) < maxLinks) {
		m := r.extra()
		m.links = append(m.links, sdktrace.Link{SpanContext: link.SpanContext, Attributes: link.Attributes})
	}
}

// IsRecording implements trace.Span: a span is recording until it ends.
func (s *span) IsRecording() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r != nil
}

// RecordError implements trace.Span: an "exception" event, as the SDK records it.
func (s *span) RecordError(err error, options ...trace.EventOption) {
	if err == nil {
		return
	}
	options = append(options, trace.WithAttributes(
		attribute.String("exception.type", typeName(err)),
		attribute.String("exception.message", err.Error())))
	s.addEvent("exception", trace.NewEventConfig(options...))
}

// typeName names the type of err as the SDK does.
func typeName(err error) string {
	t := reflect.TypeOf(err)
	if t.PkgPath() == "" && t.Name() == "" {
		return t.String() // a pointer, say
	}
	return t.PkgPath() + "." + t.Name()
}

// SpanContext implements trace.Span.
func (s *span) SpanContext() trace.SpanContext { return s.spanContext() }

// SetStatus implements trace.Span: as the SDK's, Ok is final, and Unset changes nothing;
// only an Error keeps its description.
func (s *span) SetStatus(code codes.Code, description string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.r
	if r == nil || r.status > code {
		return
	}
	r.status, r.desc = code, ""
	if code == codes.Error {
		r.desc = description
	}
}

// SetName implements trace.Span.
func (s *span) SetName(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil {
		s.r.name = name
	}
}

// SetAttributes implements trace.Span.
func (s *span) SetAttributes(kv ...attribute.KeyValue) { s.set(kv) }

// TracerProvider implements trace.Span: the provider of s's Tracer.
func (s *span) TracerProvider() trace.TracerProvider { return &s.tracer.provider }

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
		if !root.Sampled || t.stopped.Load() {
			return trace.ContextWithSpanContext(ctx, otelContext(root, false)), Span{}, false
		}
		s := t.newSpan(name, kind, root.Trace, SpanID{}, false, time.Time{})
		return trace.ContextWithSpan(ctx, s), Span{s}, false
	}
	if !parent.Sampled || t.stopped.Load() {
		return trace.ContextWithSpanContext(ctx, otelContext(parent.Child(), false)), Span{}, true
	}
	s := t.newSpan(name, kind, parent.Trace, parent.Span, true, time.Time{})
	return trace.ContextWithSpan(ctx, s), Span{s}, true
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
	if p, ok := parent.(*span); ok && p.IsRecording() && !t.stopped.Load() {
		s := t.newSpan(name, trace.SpanKindClient, p.traceID, p.spanID, false, time.Time{})
		return trace.ContextWithSpan(ctx, s), Span{s}
	}
	psc := parent.SpanContext()
	switch {
	case parent.IsRecording() && !t.stopped.Load():
		s := t.newSpan(name, trace.SpanKindClient, TraceID(psc.TraceID()), SpanID(psc.SpanID()), psc.IsRemote(), time.Time{})
		return trace.ContextWithSpan(ctx, s), Span{s}
	case psc.IsValid():
		c := SpanContext{Trace: TraceID(psc.TraceID()), Span: newSpanID()}
		return trace.ContextWithSpanContext(ctx, otelContext(c, false)), Span{}
	}
	root := Root(t.ratio)
	if !root.Sampled || t.stopped.Load() {
		return trace.ContextWithSpanContext(ctx, otelContext(root, false)), Span{}
	}
	s := t.newSpan(name, trace.SpanKindClient, root.Trace, SpanID{}, false, time.Time{})
	return trace.ContextWithSpan(ctx, s), Span{s}
}

// Lookup returns the key and value of header name (Header or HeaderState) in h, a
// message header whose keys may be in any case.
func Lookup(h map[string]string, name string) (key, value string) {
	if v, ok := h[name]; ok {
		return name, v
	}
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return k, v
		}
	}
	return "", ""
}

// Del removes header name (Header or HeaderState) from h, a message header whose keys may
// be in any case, in every case it is there in.
func Del(h map[string]string, name string) {
	for k := range h {
		if strings.EqualFold(k, name) {
			delete(h, k)
		}
	}
}

// SampledTraceID returns the hex ID of the trace in ctx when it is sampled, or "": what a
// metric's exemplar links to.
func SampledTraceID(ctx context.Context) string {
	if s, ok := trace.SpanFromContext(ctx).(*span); ok {
		return s.traceID.String()
	}
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsSampled() {
		return ""
	}
	return sc.TraceID().String()
}

// HeaderOf returns the traceparent header of a request made in ctx: the context of the
// span in ctx, or "" when there is none.
func HeaderOf(ctx context.Context) string {
	s := trace.SpanFromContext(ctx)
	if s, ok := s.(*span); ok {
		return SpanContext{Trace: s.traceID, Span: s.spanID, Sampled: true}.String()
	}
	sc := s.SpanContext()
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

// readOnly makes the SDK's read-only span of r, which has ended, for an exporter; res
// describes the process that recorded it.
func (r *record) readOnly(res *resource.Resource) sdktrace.ReadOnlySpan {
	var parent trace.SpanContext
	if r.parentID != (SpanID{}) {
		parent = otelContext(SpanContext{Trace: r.traceID, Span: r.parentID, Sampled: true}, r.remote)
	}
	stub := tracetest.SpanStub{
		Name: r.name, SpanContext: otelContext(SpanContext{Trace: r.traceID, Span: r.spanID, Sampled: true}, false),
		Parent: parent, SpanKind: r.kind,
		StartTime: r.start, EndTime: r.finish(), Attributes: r.attrs,
		Status:   sdktrace.Status{Code: r.status, Description: r.desc},
		Resource: res, InstrumentationScope: instrumentation.Scope{Name: scopeName},
	}
	if m := r.more; m != nil {
		stub.Events, stub.Links, stub.DroppedAttributes = m.events, m.links, m.dropped
	}
	return stub.Snapshot()
}
