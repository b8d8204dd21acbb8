package tracing

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of a Store.
const (
	// DefaultKeepTraces is how many traces a Store keeps when asked for 0.
	DefaultKeepTraces = 200
	// MaxSpansPerTrace bounds the spans a Store keeps of one trace; later ones are counted
	// in the trace's Dropped.
	MaxSpansPerTrace = 256
	// maxAttrLen cuts attribute values a Store keeps.
	maxAttrLen = 256
)

// SpanData is what a Store keeps of a finished span.
type SpanData struct {
	Trace, Span, Parent string // hex IDs; Parent is "" for a root
	Name                string
	Kind                string
	Service             string // the service.name of the process that recorded it
	Start, End          time.Time
	// Failed is set when the span's status is an error, and Status holds its description.
	Failed bool
	Status string
	// Attrs are the span's attributes as strings, values cut at 256 bytes.
	Attrs map[string]string
}

// TraceData is what a Store keeps of one trace: its spans in the order they ended.
type TraceData struct {
	ID    string
	Spans []SpanData
	// Failed is set when any span failed.
	Failed bool
	// Dropped counts spans past MaxSpansPerTrace.
	Dropped int
	// Last is when its last span ended.
	Last time.Time
}

// Store keeps the most recent traces that this micro recorded, in memory and bounded:
// what `micro traces` and the dashboard read, whether or not spans are exported. It keeps
// the spans a Tracer recorded as they are, and makes SpanData of them only when they are
// read, so that keeping a span costs a call next to nothing. It is also an
// sdktrace.SpanProcessor, which keeps the spans of an OpenTelemetry SDK tracer provider.
// It is safe for concurrent use.
type Store struct {
	keep int

	mu     sync.Mutex
	traces map[TraceID]*kept
	order  kept // the list of the kept traces: order.next is the least recently touched
}

// kept is a trace as the Store keeps it.
type kept struct {
	prev, next *kept // in Store.order
	id         TraceID
	spans      []*record // first[:0] at first
	failed     bool
	dropped    int
	last       time.Time
	first      [4]*record
}

// NewStore returns a Store that keeps the keep most recent traces (DefaultKeepTraces when
// keep is 0).
func NewStore(keep int) *Store {
	if keep <= 0 {
		keep = DefaultKeepTraces
	}
	s := &Store{keep: keep, traces: make(map[TraceID]*kept, keep)}
	s.order.prev, s.order.next = &s.order, &s.order
	return s
}

// OnStart implements sdktrace.SpanProcessor; a Store keeps spans once they end.
func (s *Store) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor: it keeps span, when sampled, as add does.
func (s *Store) OnEnd(span sdktrace.ReadOnlySpan) {
	sc := span.SpanContext()
	if !sc.IsSampled() {
		return
	}
	r := &record{traceID: TraceID(sc.TraceID()), spanID: SpanID(sc.SpanID()), kind: span.SpanKind(),
		start: span.StartTime(), took: span.EndTime().Sub(span.StartTime()), name: span.Name(),
		status: span.Status().Code, desc: span.Status().Description, attrs: span.Attributes()}
	r.refs.Store(1)
	if p := span.Parent(); p.IsValid() {
		r.parentID, r.remote = SpanID(p.SpanID()), p.IsRemote()
	}
	if res := span.Resource(); res != nil {
		if v, ok := res.Set().Value(semconv.ServiceNameKey); ok {
			r.service = v.String()
		}
	}
	s.add(r)
}

// add keeps r, which has ended, in its trace, and makes the trace the most recent one. The
// Store holds r until it lets go of it (release) when the trace is no longer kept, or
// at once when its trace has too many spans.
func (s *Store) add(r *record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.traces[r.traceID]
	if t != nil {
		t.unlink()
	} else {
		for len(s.traces) >= s.keep {
			// The oldest goes, and what kept it keeps the new one: a Store that is
			// full allocates nothing for a new trace.
			t = s.order.next
			t.unlink()
			delete(s.traces, t.id)
			for _, r := range t.spans {
				r.release()
			}
		}
		if t == nil || cap(t.spans) > 4*len(t.first) {
			t = new(kept)
		}
		clear(t.spans)
		*t = kept{id: r.traceID, spans: t.first[:0]}
		s.traces[r.traceID] = t
	}
	// The most recent last.
	t.prev, t.next = s.order.prev, &s.order
	t.prev.next, s.order.prev = t, t
	if len(t.spans) >= MaxSpansPerTrace {
		t.dropped++
		r.release()
		return
	}
	t.spans = append(t.spans, r)
	t.failed = t.failed || r.status == codes.Error
	if end := r.finish(); end.After(t.last) {
		t.last = end
	}
}

// unlink takes t out of its Store's order.
func (t *kept) unlink() {
	t.prev.next, t.next.prev = t.next, t.prev
	t.prev, t.next = nil, nil
}

// Recent returns up to n of the kept traces, the most recent first; only failed ones when
// failed is set.
func (s *Store) Recent(n int, failed bool) []TraceData {
	s.mu.Lock()
	var picked []kept
	for t := s.order.prev; t != &s.order && len(picked) < n; t = t.prev {
		if !failed || t.failed {
			picked = append(picked, t.copy())
		}
	}
	s.mu.Unlock()
	out := make([]TraceData, len(picked))
	for i := range picked {
		out[i] = picked[i].data()
	}
	return out
}

// Trace returns the kept trace with hex ID id.
func (s *Store) Trace(id string) (TraceData, bool) {
	tid, err := trace.TraceIDFromHex(id)
	if err != nil {
		return TraceData{}, false
	}
	s.mu.Lock()
	t, ok := s.traces[TraceID(tid)]
	var c kept
	if ok {
		c = t.copy()
	}
	s.mu.Unlock()
	if !ok {
		return TraceData{}, false
	}
	return c.data(), true
}

// copy returns what data needs of t, which may change once the Store's lock is let go,
// and holds its spans' records until data lets go of them.
func (t *kept) copy() kept {
	for _, r := range t.spans {
		r.refs.Add(1)
	}
	return kept{id: t.id, spans: slices.Clone(t.spans), failed: t.failed, dropped: t.dropped, last: t.last}
}

// data makes the TraceData of t, a copy, and lets go of its records.
func (t *kept) data() TraceData {
	d := TraceData{ID: t.id.String(), Failed: t.failed, Dropped: t.dropped, Last: t.last, Spans: make([]SpanData, len(t.spans))}
	for i, r := range t.spans {
		d.Spans[i] = r.data()
		r.release()
	}
	return d
}

// data makes the SpanData of r, which has ended.
func (r *record) data() SpanData {
	sp := SpanData{
		Trace: r.traceID.String(), Span: r.spanID.String(),
		Name: r.name, Kind: r.kind.String(), Service: r.service,
		Start: r.start, End: r.finish(),
		Failed: r.status == codes.Error, Status: r.desc,
	}
	if r.parentID != (SpanID{}) {
		sp.Parent = r.parentID.String()
	}
	if len(r.attrs) > 0 {
		sp.Attrs = make(map[string]string, len(r.attrs))
		for _, kv := range r.attrs {
			v := kv.Value.String()
			if len(v) > maxAttrLen {
				v = v[:maxAttrLen]
			}
			sp.Attrs[string(kv.Key)] = v
		}
	}
	return sp
}

// Shutdown implements sdktrace.SpanProcessor.
func (s *Store) Shutdown(context.Context) error { return nil }

// ForceFlush implements sdktrace.SpanProcessor.
func (s *Store) ForceFlush(context.Context) error { return nil }
