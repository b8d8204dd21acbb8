package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// Options configures a Tracer.
type Options struct {
	// Service names the process in its spans (service.name), e.g. "micro".
	Service string
	// Instance tells this process from others of the same service (service.instance.id).
	Instance string
	// OTLPEndpoint is the host:port of an OTLP/HTTP collector (such as Jaeger's port
	// 4318) that spans are exported to; "" exports nothing.
	OTLPEndpoint string
	// SampleRatio is the share of new traces recorded; a caller's decision is followed.
	SampleRatio float64
	// KeepTraces is how many recent traces the Store keeps (DefaultKeepTraces for 0).
	KeepTraces int
	// QueueSize bounds the spans waiting to be exported; past it they are dropped.
	// 0 means 2048.
	QueueSize int
	Logger    *slog.Logger
}

// Tracer records micro's spans, keeps them in a Store and, with an OTLP endpoint, exports
// them with the OpenTelemetry SDK's OTLP exporter without ever making a call wait.
//
// The spans of calls are micro's own, not the SDK's recording spans: a span costs a call
// one small allocation and a record taken from a pool, which the Store keeps and which
// becomes the SDK's read-only span (sdktrace.ReadOnlySpan) only off the call path, in the
// export queue's goroutine. A span implements OpenTelemetry's trace.Span, and Tracer
// returns an OpenTelemetry trace.Tracer that starts them, so that code written against
// OpenTelemetry's API records alike.
type Tracer struct {
	provider provider
	tracer   otelTracer
	store    *Store
	export   *exportQueue // nil without an endpoint
	ratio    float64
	service  string
	res      *resource.Resource
	stopped  atomic.Bool // by Shutdown: nothing is recorded after it
	records  sync.Pool   // of *record, reused once the Store and the export queue let go
}

// scopeName names the instrumentation scope of micro's spans.
const scopeName = "github.com/microhost/micro"

// New returns a Tracer for opts.
func New(opts Options) (*Tracer, error) {
	if !(opts.SampleRatio >= 0 && opts.SampleRatio <= 1) {
		return nil, fmt.Errorf("tracing: sample ratio %v is not between 0 and 1", opts.SampleRatio)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Tracer{store: NewStore(opts.KeepTraces), ratio: opts.SampleRatio, service: opts.Service,
		res: resource.NewSchemaless(semconv.ServiceName(opts.Service), semconv.ServiceInstanceID(opts.Instance))}
	t.provider.t, t.tracer.t = t, t
	t.records.New = func() any { return &record{pool: &t.records} }
	if opts.OTLPEndpoint != "" {
		exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(opts.OTLPEndpoint),
			otlptracehttp.WithInsecure(), otlptracehttp.WithTimeout(5*time.Second),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
		if err != nil {
			return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", opts.OTLPEndpoint, err)
		}
		t.export = newExportQueue(exp, opts.QueueSize, t.res, opts.Logger)
	}
	return t, nil
}

// Tracer returns the OpenTelemetry tracer that starts micro's spans: under the span in
// the context, following its sampling decision, or as the root of a new trace, sampled at
// the Tracer's ratio.
func (t *Tracer) Tracer() trace.Tracer { return &t.tracer }

// Store returns the Store of recent traces.
func (t *Tracer) Store() *Store { return t.store }

// Ratio returns the share of new traces sampled.
func (t *Tracer) Ratio() float64 { return t.ratio }

// Dropped counts the spans that were not exported: the queue was full, or the collector
// failed or was out of reach.
func (t *Tracer) Dropped() int64 {
	if t.export == nil {
		return 0
	}
	return t.export.dropped.Load()
}

// Shutdown exports what is queued, within ctx, and stops the Tracer: it records nothing
// after.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t.stopped.Swap(true) || t.export == nil {
		return nil
	}
	return t.export.Shutdown(ctx)
}

// provider is a Tracer as an OpenTelemetry tracer provider: what a recorded span's
// TracerProvider returns.
type provider struct {
	embedded.TracerProvider
	t *Tracer
}

// Tracer implements trace.TracerProvider: every name has the Tracer's one tracer.
func (p *provider) Tracer(string, ...trace.TracerOption) trace.Tracer { return &p.t.tracer }

// otelTracer is a Tracer as an OpenTelemetry tracer.
type otelTracer struct {
	embedded.Tracer
	t *Tracer
}

// Start implements trace.Tracer.
func (o *otelTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	t := o.t
	c := trace.NewSpanStartConfig(opts...)
	var psc trace.SpanContext
	if !c.NewRoot() {
		psc = trace.SpanContextFromContext(ctx)
	}
	var s *span
	switch {
	case t.stopped.Load():
	case psc.IsValid() && psc.IsSampled():
		s = t.newSpan(name, c.SpanKind(), TraceID(psc.TraceID()), SpanID(psc.SpanID()), psc.IsRemote(), c.Timestamp())
	case psc.IsValid():
		psc = otelContext(SpanContext{Trace: TraceID(psc.TraceID()), Span: newSpanID()}, false)
	default:
		root := Root(t.ratio)
		if root.Sampled {
			s = t.newSpan(name, c.SpanKind(), root.Trace, SpanID{}, false, c.Timestamp())
		}
		psc = otelContext(root, false)
	}
	if s == nil {
		ctx = trace.ContextWithSpanContext(ctx, psc)
		return ctx, trace.SpanFromContext(ctx)
	}
	s.set(c.Attributes())
	for _, l := range c.Links() {
		s.AddLink(l)
	}
	return trace.ContextWithSpan(ctx, s), s
}

// exportQueue hands ended spans to an exporter in batches from a goroutine of its own,
// which makes them the SDK's read-only spans. enqueue never waits: when the queue is full,
// the span is dropped and counted, and so are the spans of a batch the exporter failed.
type exportQueue struct {
	exp     sdktrace.SpanExporter
	res     *resource.Resource
	logger  *slog.Logger
	queue   chan *record
	dropped atomic.Int64
	flush   chan chan struct{}
	done    chan struct{}
	stop    sync.Once

	lastErr atomic.Int64 // unix nanoseconds of the last export error logged
}

// Batching of exportQueue.
const (
	exportBatch    = 512
	exportInterval = time.Second
)

func newExportQueue(exp sdktrace.SpanExporter, size int, res *resource.Resource, logger *slog.Logger) *exportQueue {
	if size <= 0 {
		size = 2048
	}
	q := &exportQueue{exp: exp, res: res, logger: logger, queue: make(chan *record, size),
		flush: make(chan chan struct{}), done: make(chan struct{})}
	go q.run()
	return q
}

// enqueue queues the record of an ended span, or drops it.
func (q *exportQueue) enqueue(r *record) {
	select {
	case q.queue <- r:
	default:
		q.dropped.Add(1)
		r.release()
	}
}

// run exports batches until Shutdown.
func (q *exportQueue) run() {
	tick := time.NewTicker(exportInterval)
	defer tick.Stop()
	batch := make([]sdktrace.ReadOnlySpan, 0, exportBatch)
	held := make([]*record, 0, exportBatch) // what batch was made of
	send := func() {
		if len(batch) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := q.exp.ExportSpans(ctx, batch)
		cancel()
		if err != nil {
			q.dropped.Add(int64(len(batch)))
			// At most one line every 10s, so a collector that is down does not flood.
			if now := time.Now().UnixNano(); now-q.lastErr.Load() > int64(10*time.Second) {
				q.lastErr.Store(now)
				q.logger.Warn("tracing: spans not exported; dropped", "spans", len(batch), "err", err)
			}
		}
		clear(batch)
		batch = batch[:0]
		for _, r := range held {
			r.release()
		}
		clear(held)
		held = held[:0]
	}
	add := func(r *record) {
		batch, held = append(batch, r.readOnly(q.res)), append(held, r)
		if len(batch) == exportBatch {
			send()
		}
	}
	for {
		select {
		case r := <-q.queue:
			add(r)
		case <-tick.C:
			send()
		case ack := <-q.flush:
			for drained := false; !drained; {
				select {
				case r := <-q.queue:
					add(r)
				default:
					drained = true
				}
			}
			send()
			close(ack)
		case <-q.done:
			return
		}
	}
}

// ForceFlush exports what is queued, within ctx.
func (q *exportQueue) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case q.flush <- ack:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.done:
		return errors.New("tracing: export queue stopped")
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown flushes, within ctx, and stops.
func (q *exportQueue) Shutdown(ctx context.Context) error {
	err := q.ForceFlush(ctx)
	q.stop.Do(func() { close(q.done) })
	return errors.Join(err, q.exp.Shutdown(ctx))
}
