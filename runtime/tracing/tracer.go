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

// Tracer records micro's spans: an OpenTelemetry tracer provider that keeps them in a
// Store and, with an OTLP endpoint, exports them without ever making a call wait.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	store    *Store
	export   *exportQueue // nil without an endpoint
	ratio    float64
}

// New returns a Tracer for opts.
func New(opts Options) (*Tracer, error) {
	if !(opts.SampleRatio >= 0 && opts.SampleRatio <= 1) {
		return nil, fmt.Errorf("tracing: sample ratio %v is not between 0 and 1", opts.SampleRatio)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Tracer{store: NewStore(opts.KeepTraces), ratio: opts.SampleRatio}
	res := resource.NewSchemaless(semconv.ServiceName(opts.Service), semconv.ServiceInstanceID(opts.Instance))
	po := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		// The sampling decision is Server's and Client's, made before any SDK span starts,
		// so that calls that are not sampled make none; what reaches the SDK is sampled.
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(t.store),
	}
	if opts.OTLPEndpoint != "" {
		exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(opts.OTLPEndpoint),
			otlptracehttp.WithInsecure(), otlptracehttp.WithTimeout(5*time.Second),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
		if err != nil {
			return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", opts.OTLPEndpoint, err)
		}
		t.export = newExportQueue(exp, opts.QueueSize, opts.Logger)
		po = append(po, sdktrace.WithSpanProcessor(t.export))
	}
	t.provider = sdktrace.NewTracerProvider(po...)
	t.tracer = t.provider.Tracer("github.com/microhost/micro")
	return t, nil
}

// Tracer returns the OpenTelemetry tracer that starts micro's spans.
func (t *Tracer) Tracer() trace.Tracer { return t.tracer }

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

// Shutdown exports what is queued, within ctx, and stops the Tracer.
func (t *Tracer) Shutdown(ctx context.Context) error { return t.provider.Shutdown(ctx) }

// exportQueue is a span processor that hands ended spans to an exporter in batches from
// a goroutine of its own. OnEnd never waits: when the queue is full, the span is dropped
// and counted, and so are the spans of a batch the exporter failed.
type exportQueue struct {
	exp     sdktrace.SpanExporter
	logger  *slog.Logger
	queue   chan sdktrace.ReadOnlySpan
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

func newExportQueue(exp sdktrace.SpanExporter, size int, logger *slog.Logger) *exportQueue {
	if size <= 0 {
		size = 2048
	}
	q := &exportQueue{exp: exp, logger: logger, queue: make(chan sdktrace.ReadOnlySpan, size),
		flush: make(chan chan struct{}), done: make(chan struct{})}
	go q.run()
	return q
}

// OnStart implements sdktrace.SpanProcessor.
func (q *exportQueue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor: it queues a sampled span, or drops it.
func (q *exportQueue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case q.queue <- s:
	default:
		q.dropped.Add(1)
	}
}

// run exports batches until Shutdown.
func (q *exportQueue) run() {
	tick := time.NewTicker(exportInterval)
	defer tick.Stop()
	batch := make([]sdktrace.ReadOnlySpan, 0, exportBatch)
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
	}
	for {
		select {
		case s := <-q.queue:
			if batch = append(batch, s); len(batch) == exportBatch {
				send()
			}
		case <-tick.C:
			send()
		case ack := <-q.flush:
			for drained := false; !drained; {
				select {
				case s := <-q.queue:
					if batch = append(batch, s); len(batch) == exportBatch {
						send()
					}
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

// ForceFlush implements sdktrace.SpanProcessor: it exports what is queued, within ctx.
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

// Shutdown implements sdktrace.SpanProcessor: it flushes, within ctx, and stops.
func (q *exportQueue) Shutdown(ctx context.Context) error {
	err := q.ForceFlush(ctx)
	q.stop.Do(func() { close(q.done) })
	return errors.Join(err, q.exp.Shutdown(ctx))
}
