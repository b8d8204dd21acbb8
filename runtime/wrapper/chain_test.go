package wrapper_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/wrapper"
)

// verdictWrapper answers every call with its verdict.
type verdictWrapper struct {
	name string
	v    wrapper.Verdict
}

func (w verdictWrapper) Name() string { return w.name }
func (w verdictWrapper) OnRequest(context.Context, *wrapper.Call) wrapper.Verdict {
	return w.v
}
func (w verdictWrapper) OnResponse(context.Context, *wrapper.Call, *wrapper.Result) {}
func (w verdictWrapper) Close(context.Context) error                                { return nil }

// TestChainTraced: under a recorded span, each wrapper's OnRequest is a span of its own
// with its verdict; under none, no span is made.
func TestChainTraced(t *testing.T) {
	store := tracing.NewStore(10)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(store))
	defer tp.Shutdown(context.Background())
	chain := wrapper.NewChain([]wrapper.Link{
		{Wrapper: verdictWrapper{name: "pass"}},
		{Wrapper: verdictWrapper{name: "limit", v: wrapper.Verdict{Action: wrapper.Reject, Status: 429, Message: "rate limit"}}},
	})
	ctx, root := tp.Tracer("test").Start(context.Background(), "ingress")
	var ran wrapper.Ran
	if v := chain.OnRequest(ctx, &wrapper.Call{Service: "svc"}, &ran); v.Action != wrapper.Reject {
		t.Fatalf("verdict %+v", v)
	}
	root.End()
	tr, _ := store.Trace(root.SpanContext().TraceID().String())
	got := map[string]map[string]string{}
	for _, s := range tr.Spans {
		got[s.Name] = s.Attrs
	}
	if got["wrapper pass"]["micro.wrapper.verdict"] != "continue" || got["wrapper limit"]["micro.wrapper.verdict"] != "reject" ||
		got["wrapper limit"]["http.response.status_code"] != "429" || got["wrapper limit"]["micro.wrapper.message"] != "rate limit" {
		t.Fatalf("spans %+v", got)
	}

	// No recorded span: no wrapper spans.
	chain.OnRequest(context.Background(), &wrapper.Call{Service: "svc"}, &ran)
	if n := len(store.Recent(10, false)); n != 1 {
		t.Fatalf("%d traces, want only the first", n)
	}
}
