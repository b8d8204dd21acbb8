package tracing

import (
	"container/list"
	"context"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
// are exported. It is safe for concurrent use.
type Store struct {
	keep int

	mu     sync.Mutex
	traces map[string]*list.Element // of *TraceData, in order
	order  list.List                // least recently touched first
}

// NewStore returns a Store that keeps the keep most recent traces (DefaultKeepTraces when
// keep is 0).
func NewStore(keep int) *Store {
	if keep <= 0 {
		keep = DefaultKeepTraces
	}
	return &Store{keep: keep, traces: make(map[string]*list.Element)}
}

// OnStart implements sdktrace.SpanProcessor; a Store keeps spans once they end.
func (s *Store) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor: it keeps span.
func (s *Store) OnEnd(span sdktrace.ReadOnlySpan) {
	sc := span.SpanContext()
	if !sc.IsSampled() {
		return
	}
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
	s.add(sp)
}

// add keeps sp in its trace, making the trace the most recent one.
func (s *Store) add(sp SpanData) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t *TraceData
	if e := s.traces[sp.Trace]; e != nil {
		s.order.MoveToBack(e)
		t = e.Value.(*TraceData)
	} else {
		for s.order.Len() >= s.keep {
			oldest := s.order.Front()
			delete(s.traces, oldest.Value.(*TraceData).ID)
			s.order.Remove(oldest)
		}
		t = &TraceData{ID: sp.Trace}
		s.traces[sp.Trace] = s.order.PushBack(t)
	}
	if len(t.Spans) >= MaxSpansPerTrace {
		t.Dropped++
		return
	}
	t.Spans = append(t.Spans, sp)
	t.Failed = t.Failed || sp.Failed
	if sp.End.After(t.Last) {
		t.Last = sp.End
	}
}

// Recent returns up to n of the kept traces, the most recent first; only failed ones when
// failed is set. The traces are copies.
func (s *Store) Recent(n int, failed bool) []TraceData {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []TraceData
	for e := s.order.Back(); e != nil && len(out) < n; e = e.Prev() {
		if t := e.Value.(*TraceData); !failed || t.Failed {
			out = append(out, t.clone())
		}
	}
	return out
}

// Trace returns a copy of the kept trace with hex ID id.
func (s *Store) Trace(id string) (TraceData, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.traces[id]
	if !ok {
		return TraceData{}, false
	}
	return e.Value.(*TraceData).clone(), true
}

func (t *TraceData) clone() TraceData {
	c := *t
	c.Spans = slices.Clone(t.Spans)
	return c
}

// Shutdown implements sdktrace.SpanProcessor.
func (s *Store) Shutdown(context.Context) error { return nil }

// ForceFlush implements sdktrace.SpanProcessor.
func (s *Store) ForceFlush(context.Context) error { return nil }
