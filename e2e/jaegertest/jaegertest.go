// Package jaegertest runs a real Jaeger for tests: the Jaeger v2 binary (built on the
// OpenTelemetry collector) with in-memory storage, bound to loopback on free ports, with
// OTLP gRPC and OTLP HTTP receivers and the query HTTP API, stopped when the test ends.
// It also reads traces back through the query API (/api/traces), so a test can check
// what an OTLP exporter sent.
//
// The jaeger binary is $JAEGER_BIN if set, else <repo>/.cache/bin/jaeger, which
// `bash tools/jaeger/build.sh` builds (several minutes; CI runs it before the tests).
// When neither exists, Start fails the test: it never skips.
package jaegertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/internal/tooltest"
)

// How long Jaeger may take to become ready, and to exit after SIGTERM.
const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
)

// storeName is the name of the in-memory trace store in the generated config.
const storeName = "memstore"

// ErrNotFound is returned (wrapped) by Trace when Jaeger has no trace with that ID.
var ErrNotFound = errors.New("jaegertest: trace not found")

// Jaeger is a running (or stopped) Jaeger started by Start.
type Jaeger struct {
	// OTLPHTTPEndpoint is host:port of the OTLP/HTTP receiver (traces go to
	// http://<OTLPHTTPEndpoint>/v1/traces), e.g. "127.0.0.1:41234".
	OTLPHTTPEndpoint string
	// OTLPGRPCEndpoint is host:port of the OTLP/gRPC receiver (plaintext).
	OTLPGRPCEndpoint string
	// QueryURL is the base URL of the query HTTP API, without a trailing slash,
	// e.g. "http://127.0.0.1:41235"; the traces are under QueryURL+"/api/traces".
	QueryURL string

	healthURL string // healthcheckv2's /status
	logPath   string
	client    *http.Client

	proc tooltest.Running
}

// Start runs Jaeger and waits until its pipeline and query API are ready. Jaeger is
// stopped when the test ends, and is killed by the kernel if the test process dies first
// (on Linux). Start fails the test if there is no binary or Jaeger does not come up.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Binary(t)
	return tooltest.Start(t, "jaegertest", 5, func(dir string, ports []int) (*Jaeger, error) {
		addr := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])) }
		j := &Jaeger{
			OTLPGRPCEndpoint: addr(0),
			OTLPHTTPEndpoint: addr(1),
			QueryURL:         "http://" + addr(2),
			healthURL:        "http://" + addr(4) + "/status",
			logPath:          filepath.Join(dir, "jaeger.log"),
			client:           &http.Client{Timeout: 10 * time.Second},
		}
		cfgPath := filepath.Join(dir, "jaeger.yaml")
		cfg := config(j.OTLPGRPCEndpoint, j.OTLPHTTPEndpoint, addr(2), addr(3), addr(4))
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			return j, err
		}
		return j, j.start(bin, cfgPath)
	})
}

// config is the Jaeger v2 configuration (an OpenTelemetry collector config with Jaeger's
// extensions): OTLP receivers straight into an in-memory store, the query API on it, a
// health endpoint that answers 200 only once every pipeline has started, and none of the
// all-in-one's other listeners (no Jaeger/Zipkin receivers, sampling, metrics, pprof).
// Jaeger's own tracing of its query API is off, so the store holds only what a test sent.
func config(otlpGRPC, otlpHTTP, queryHTTP, queryGRPC, health string) string {
	return fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      %[6]s:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: %[6]s
    enable_tracing: false
    http:
      endpoint: %[3]q
    grpc:
      endpoint: %[4]q
  healthcheckv2:
    use_v2: true
    http:
      endpoint: %[5]q

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[1]q
      http:
        endpoint: %[2]q

exporters:
  jaeger_storage_exporter:
    trace_storage: %[6]s
`, otlpGRPC, otlpHTTP, queryHTTP, queryGRPC, health, storeName)
}

// Stop stops Jaeger (SIGTERM, then SIGKILL after a while) and waits for it to exit; its
// in-memory traces are gone. Stopping a stopped Jaeger does nothing.
func (j *Jaeger) Stop() { j.proc.Stop(stopTimeout) }

// LogTail returns up to the last n bytes of Jaeger's output.
func (j *Jaeger) LogTail(n int) string { return tooltest.LogTail(j.logPath, n) }

// start runs the Jaeger process, without the OTEL_* variables that would reconfigure the
// collector's own SDK and without JAEGER_* ones, and waits until its pipeline has started
// (healthcheckv2 answers 503 before that) and its query API answers.
func (j *Jaeger) start(bin, cfgPath string) error {
	proc, err := tooltest.Run(bin, []string{"--config", cfgPath}, []string{"OTEL_", "JAEGER_"}, j.logPath)
	if err != nil {
		return err
	}
	j.proc.Set(proc)
	if err := proc.WaitReady(readyTimeout, j.ready); err != nil {
		return fmt.Errorf("jaeger (query %s): %w\nlog tail:\n%s", j.QueryURL, err, j.LogTail(4096))
	}
	return nil
}

func (j *Jaeger) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := j.get(ctx, j.healthURL); err != nil {
		return fmt.Errorf("health: %w", err)
	}
	if _, err := j.get(ctx, j.QueryURL+"/api/services"); err != nil {
		return fmt.Errorf("query API: %w", err)
	}
	return nil
}

// Trace is one trace as Jaeger's query API returns it.
type Trace struct {
	// TraceID is the trace ID in lowercase hex, 32 digits (as trace.TraceID.String of
	// the OpenTelemetry API prints it).
	TraceID string
	// Spans are the trace's spans, ordered by start time (then span ID).
	Spans []Span
}

// Span is one span of a Trace.
type Span struct {
	// SpanID is the span ID in lowercase hex, 16 digits.
	SpanID string
	// ParentSpanID is the span ID of the parent (the span's CHILD_OF reference within
	// the same trace), or "" for a root span.
	ParentSpanID string
	// OperationName is the span's name.
	OperationName string
	// ServiceName is the service.name of the process (OTLP resource) that sent the span.
	ServiceName string
	// Tags are the span's attributes, plus those Jaeger derives from the OTLP span
	// (such as "span.kind" and "otel.status_code"). Values are string, bool, int64 or
	// float64; binary values are as Jaeger encodes them (a string).
	Tags map[string]any
	// ProcessTags are the attributes of the process (OTLP resource) other than
	// service.name, such as "telemetry.sdk.language".
	ProcessTags map[string]any
	// StartTime is when the span started (microsecond precision).
	StartTime time.Time
	// Duration is how long the span took (microsecond precision).
	Duration time.Duration
}

// SpanNamed returns the first span (in Spans order) whose OperationName is name.
func (tr Trace) SpanNamed(name string) (Span, bool) {
	for _, s := range tr.Spans {
		if s.OperationName == name {
			return s, true
		}
	}
	return Span{}, false
}

// Traces returns the traces that have at least one span of service, as
// GET /api/traces?service=... finds them (Jaeger's default lookback and limit of 100).
// It returns no traces and no error when there are none (yet).
func (j *Jaeger) Traces(ctx context.Context, service string) ([]Trace, error) {
	q := url.Values{"service": {service}}
	body, err := j.get(ctx, j.QueryURL+"/api/traces?"+q.Encode())
	if err != nil {
		return nil, err
	}
	return decodeTraces(body)
}

// Trace returns the trace with the given ID (hex, as the OpenTelemetry API prints it)
// from GET /api/traces/{id}. It returns an error wrapping ErrNotFound when Jaeger has
// no such trace (yet).
func (j *Jaeger) Trace(ctx context.Context, traceID string) (Trace, error) {
	body, err := j.get(ctx, j.QueryURL+"/api/traces/"+url.PathEscape(traceID))
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return Trace{}, fmt.Errorf("%w: %s", ErrNotFound, traceID)
	}
	if err != nil {
		return Trace{}, err
	}
	traces, err := decodeTraces(body)
	if err != nil {
		return Trace{}, err
	}
	if len(traces) == 0 {
		return Trace{}, fmt.Errorf("%w: %s", ErrNotFound, traceID)
	}
	return traces[0], nil
}

// WaitForTrace polls Trace until the trace has at least minSpans spans, and returns it.
// Spans reach the store asynchronously (and not necessarily together), so a test that
// has flushed its exporter waits with this. It returns the last error (or the trace as
// far as it got) when ctx ends first.
func (j *Jaeger) WaitForTrace(ctx context.Context, traceID string, minSpans int) (Trace, error) {
	var last error
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		tr, err := j.Trace(ctx, traceID)
		if err == nil && len(tr.Spans) >= minSpans {
			return tr, nil
		}
		if err == nil {
			last = fmt.Errorf("trace %s has %d spans, want at least %d", traceID, len(tr.Spans), minSpans)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return tr, fmt.Errorf("jaegertest: waiting for trace %s: %w (last: %v)", traceID, ctx.Err(), last)
		case <-time.After(delay):
		}
	}
}

// statusError is a non-200 answer of the query API.
type statusError struct {
	url  string
	code int
	body string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("GET %s: %d %s: %s", e.url, e.code, http.StatusText(e.code), e.body)
}

// get returns the body of a 200 answer to GET u.
func (j *Jaeger) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &statusError{url: u, code: resp.StatusCode, body: strings.TrimSpace(string(body))}
	}
	return body, nil
}

// The wire form of the query API's answers (Jaeger's "UI model").
type (
	apiResponse struct {
		Data   []apiTrace `json:"data"`
		Errors []struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		} `json:"errors"`
	}
	apiTrace struct {
		TraceID   string                `json:"traceID"`
		Spans     []apiSpan             `json:"spans"`
		Processes map[string]apiProcess `json:"processes"`
	}
	apiSpan struct {
		TraceID       string `json:"traceID"`
		SpanID        string `json:"spanID"`
		ParentSpanID  string `json:"parentSpanID"` // deprecated; references carry it
		OperationName string `json:"operationName"`
		References    []struct {
			RefType string `json:"refType"`
			TraceID string `json:"traceID"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
		StartTime uint64        `json:"startTime"` // microseconds since the Unix epoch
		Duration  uint64        `json:"duration"`  // microseconds
		Tags      []apiKeyValue `json:"tags"`
		ProcessID string        `json:"processID"`
	}
	apiProcess struct {
		ServiceName string        `json:"serviceName"`
		Tags        []apiKeyValue `json:"tags"`
	}
	apiKeyValue struct {
		Key   string          `json:"key"`
		Type  string          `json:"type"`
		Value json.RawMessage `json:"value"`
	}
)

func decodeTraces(body []byte) ([]Trace, error) {
	var resp apiResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("jaegertest: decode query answer: %w", err)
	}
	if len(resp.Errors) > 0 {
		return nil, fmt.Errorf("jaegertest: query API error %d: %s", resp.Errors[0].Code, resp.Errors[0].Msg)
	}
	traces := make([]Trace, 0, len(resp.Data))
	for _, at := range resp.Data {
		tr, err := decodeTrace(at)
		if err != nil {
			return nil, err
		}
		traces = append(traces, tr)
	}
	return traces, nil
}

func decodeTrace(at apiTrace) (Trace, error) {
	tr := Trace{TraceID: padHex(at.TraceID, 32), Spans: make([]Span, 0, len(at.Spans))}
	for _, as := range at.Spans {
		s := Span{
			SpanID:        padHex(as.SpanID, 16),
			OperationName: as.OperationName,
			StartTime:     time.UnixMicro(int64(as.StartTime)),
			Duration:      time.Duration(as.Duration) * time.Microsecond,
		}
		for _, ref := range as.References {
			if ref.RefType == "CHILD_OF" && (ref.TraceID == "" || padHex(ref.TraceID, 32) == tr.TraceID) {
				s.ParentSpanID = padHex(ref.SpanID, 16)
				break
			}
		}
		if s.ParentSpanID == "" && as.ParentSpanID != "" {
			s.ParentSpanID = padHex(as.ParentSpanID, 16)
		}
		var err error
		if s.Tags, err = decodeTags(as.Tags); err != nil {
			return Trace{}, fmt.Errorf("jaegertest: span %s: %w", as.SpanID, err)
		}
		if p, ok := at.Processes[as.ProcessID]; ok {
			s.ServiceName = p.ServiceName
			if s.ProcessTags, err = decodeTags(p.Tags); err != nil {
				return Trace{}, fmt.Errorf("jaegertest: process %s: %w", as.ProcessID, err)
			}
		}
		tr.Spans = append(tr.Spans, s)
	}
	sort.SliceStable(tr.Spans, func(a, b int) bool {
		sa, sb := tr.Spans[a], tr.Spans[b]
		if !sa.StartTime.Equal(sb.StartTime) {
			return sa.StartTime.Before(sb.StartTime)
		}
		return sa.SpanID < sb.SpanID
	})
	return tr, nil
}

// decodeTags turns Jaeger's typed key-values into a map of Go values.
func decodeTags(kvs []apiKeyValue) (map[string]any, error) {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		var v any
		var err error
		switch kv.Type {
		case "bool":
			var b bool
			err = json.Unmarshal(kv.Value, &b)
			v = b
		case "int64":
			var n int64
			err = json.Unmarshal(kv.Value, &n)
			v = n
		case "float64":
			var f float64
			err = json.Unmarshal(kv.Value, &f)
			v = f
		case "string", "binary":
			var s string
			err = json.Unmarshal(kv.Value, &s)
			v = s
		default:
			dec := json.NewDecoder(bytes.NewReader(kv.Value))
			err = dec.Decode(&v)
		}
		if err != nil {
			return nil, fmt.Errorf("tag %q (%s): %w", kv.Key, kv.Type, err)
		}
		m[kv.Key] = v
	}
	return m, nil
}

// padHex left-pads a hex ID with zeros to n digits and lowercases it (Jaeger drops the
// high half of a trace ID that is zero).
func padHex(id string, n int) string {
	id = strings.ToLower(id)
	if len(id) < n {
		id = strings.Repeat("0", n-len(id)) + id
	}
	return id
}

// Binary returns the path of the jaeger binary: $JAEGER_BIN, <repo>/.cache/bin/jaeger, or
// jaeger on PATH; when there is none it builds the pinned version with
// <repo>/tools/jaeger/build.sh (minutes, once). It never skips: the tests that need it
// must run.
func Binary(t testing.TB) string {
	t.Helper()
	return tooltest.Binary(t, "jaeger", "JAEGER_BIN")
}
