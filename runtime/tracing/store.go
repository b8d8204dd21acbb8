package tracing

import (
	"container/list"
	"context"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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

// Store keeps the most recent traces that this micro recorded, in memory and bounded: a
// sdktrace.SpanProcessor that `micro traces` and the dashboard read, whether or not spans
// are exported. It keeps the SDK's read-only spans as they are, and makes SpanData of
// them only when they are read, so that keeping a span costs a call next to nothing. It is
// safe for concurrent use.
type Store struct {
	keep int

	mu     sync.Mutex
	traces map[trace.TraceID]*list.Element // of *kept, in order
	order  list.List                       // least recently touched first
}

// kept is a trace as the Store keeps it.
type kept struct {
	id      trace.TraceID
	spans   []sdktrace.ReadOnlySpan
	failed  bool
	dropped int
	last    time.Time
}

// NewStore returns a Store that keeps the keep most recent traces (DefaultKeepTraces when
// keep is 0).
func NewStore(keep int) *Store {
	if keep <= 0 {
		keep = DefaultKeepTraces
	}
	return &Store{keep: keep, traces: make(map[trace.TraceID]*list.Element)}
}

// OnStart implements sdktrace.SpanProcessor; a Store keeps spans once they end.
func (s *Store) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor: it keeps span in its trace, and makes the
// trace the most recent one.
func (s *Store) OnEnd(span sdktrace.ReadOnlySpan) {
	sc := span.SpanContext()
	if !sc.IsSampled() {
		return
	}
	id := sc.TraceID()
	s.mu.Lock()
	defer s.mu.Unlock()
	var t *kept
	if e := s.traces[id]; e != nil {
		s.order.MoveToBack(e)
		t = e.Value.(*kept)
	} else {
		for s.order.Len() >= s.keep {
			oldest := s.order.Front()
			delete(s.traces, oldest.Value.(*kept).id)
			s.order.Remove(oldest)
		}
		t = &kept{id: id}
		s.traces[id] = s.order.PushBack(t)
	}
	if len(t.spans) >= MaxSpansPerTrace {
		t.dropped++
		return
	}
	t.spans = append(t.spans, span)
	t.failed = t.failed || span.Status().Code == codes.Error
	if end := span.EndTime(); end.After(t.last) {
		t.last = end
	}
}

// Recent returns up to n of the kept traces, the most recent first; only failed ones when
// failed is set.
func (s *Store) Recent(n int, failed bool) []TraceData {
	s.mu.Lock()
	var picked []kept
	for e := s.order.Back(); e != nil && len(picked) < n; e = e.Prev() {
		if t := e.Value.(*kept); !failed || t.failed {
			c := *t
			c.spans = slices.Clone(t.spans)
			picked = append(picked, c)
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
	e, ok := s.traces[tid]
	var c kept
	if ok {
		c = *e.Value.(*kept)
		c.spans = slices.Clone(c.spans)
	}
	s.mu.Unlock()
	if !ok {
		return TraceData{}, false
	}
	return c.data(), true
}

// data makes t's TraceData.
func (t *kept) data() TraceData {
	d := TraceData{ID: t.id.String(), Failed: t.failed, Dropped: t.dropped, Last: t.last, Spans: make([]SpanData, len(t.spans))}
	for i, span := range t.spans {
		d.Spans[i] = spanData(span)
	}
	return d
}

// spanData makes the SpanData of span.
func spanData(span sdktrace.ReadOnlySpan) SpanData {
	sc := span.SpanContext()
	sp := SpanData{
		Trace: sc.TraceID().String(), Span: sc.SpanID().String(),
		Name: span.Name(), Kind: span.SpanKind().String(),
		Start: span.StartTime(), End: span.EndTime(),
		Failed: span.Status().Code == codes.Error, Status: span.Status().Description,
	}
	if p := span.Parent(); p.IsValid() {
		sp.Parent = p.SpanID().String()
	}
	if r := span.Resource(); r != nil {
		if v, ok := r.Set().Value("service.name"); ok {
			sp.Service = v.String()
		}
	}
	if attrs := span.Attributes(); len(attrs) > 0 {
		sp.Attrs = make(map[string]string, len(attrs))
		for _, kv := range attrs {
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
