package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcService declares the gRPC test app as service "grpc", with instances instances that
// fail while a file named after them exists in faultDir.
func grpcService(instances int, faultDir string) string {
	return fmt.Sprintf(`
[services.grpc]
command = [%q]
instances = %d
env = { FAULT_DIR = %q }
`, bins.grpcapp, instances, faultDir)
}

// grpcClient dials m's ingress with service as the authority, as a gRPC app that calls a
// service through micro does.
func grpcClient(t *testing.T, m *micro, service string) testgrpc.TestServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(m.ingress, "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(service))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// TestGRPC: a real gRPC client calls a real gRPC app through micro over HTTP/2 without
// TLS: unary, server-streaming, client-streaming and bidirectional calls, through the
// app's own micro (the local path) and through another (the remote path), with selection
// over two nodes, deadlines, and the app's statuses passed through; both shipped wrappers
// run on every call (the rate limit where the app is, the breaker where the call starts).
func TestGRPC(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	limited := strings.Replace(baseConfig(reg, grpcService(2, t.TempDir())), "[server]\n", "[server]\nwrappers = [\"ratelimit\"]\n", 1) +
		strings.Replace(rateLimit(bins.ratelimit, 100000), `services = ["greeter"]`, `services = ["grpc"]`, 1)
	b := startMicro(t, limited)
	a := startMicro(t, strings.Replace(baseConfig(reg, fmt.Sprintf("\n[wrappers.breaker]\npath = %q\n", bins.breaker)),
		"[client]", "[client]\nwrappers = [\"breaker\"]", 1))
	eventually(t, 20*time.Second, func() error {
		if n := len(mustServices(t, a)["grpc"]); n != 2 {
			return fmt.Errorf("%d nodes of grpc", n)
		}
		return nil
	})
	for _, tc := range []struct {
		name string
		m    *micro
	}{{"local", b}, {"remote", a}} {
		t.Run(tc.name, func(t *testing.T) {
			c := grpcClient(t, tc.m, "grpc")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			// Unary, over both nodes.
			served := map[string]int{}
			for range 20 {
				var hdr metadata.MD
				resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Header(&hdr))
				if err != nil {
					t.Fatalf("UnaryCall: %v", err)
				}
				served[resp.GetServerId()]++
				if got := hdr.Get("instance"); len(got) != 1 || got[0] != resp.GetServerId() {
					t.Fatalf("header metadata instance %q, payload from %q", got, resp.GetServerId())
				}
				if len(hdr.Get("micro-node")) != 1 {
					t.Fatalf("no micro-node header metadata: %v", hdr)
				}
			}
			if len(served) != 2 {
				t.Errorf("20 calls went to %v, want both instances", served)
			}

			// The caller's deadline reaches the app (as its grpc-timeout), less what passed.
			dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
			var hdr metadata.MD
			_, err := c.UnaryCall(dctx, &testgrpc.SimpleRequest{}, grpc.Header(&hdr))
			dcancel()
			if err != nil {
				t.Fatal(err)
			}
			left := hdr.Get("deadline-left-ms")
			if ms, err := strconv.Atoi(strings.Join(left, "")); err != nil || ms <= 0 || ms > 3000 {
				t.Errorf("the app's deadline was %q ms away, want at most the caller's 3s", left)
			}
			// A deadline shorter than the app takes ends the call with DEADLINE_EXCEEDED.
			dctx, dcancel = context.WithTimeout(ctx, 50*time.Millisecond)
			_, err = c.UnaryCall(dctx, &testgrpc.SimpleRequest{FillServerId: true})
			dcancel()
			if status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("a call past its deadline: %v, want DeadlineExceeded", err)
			}

			// The app's own status passes as it is, message included.
			_, err = c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "no such user: ada"}})
			if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "no such user: ada" {
				t.Errorf("app status: %v, want NotFound with the app's message", err)
			}

			// Server streaming: every response, in order, as the app sends them.
			params := make([]*testgrpc.ResponseParameters, 5)
			for i := range params {
				params[i] = &testgrpc.ResponseParameters{Size: int32(100<<10 + i)}
			}
			out, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
			if err != nil {
				t.Fatal(err)
			}
			for i := range params {
				resp, err := out.Recv()
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				if len(resp.GetPayload().GetBody()) != 100<<10+i {
					t.Fatalf("response %d: %d bytes", i, len(resp.GetPayload().GetBody()))
				}
			}
			if _, err := out.Recv(); err != io.EOF {
				t.Fatalf("after the last response: %v, want EOF", err)
			}

			// Client streaming: 8 MiB, far more than the retry buffer, streams through.
			in, err := c.StreamingInputCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			chunk := make([]byte, 64<<10)
			for range 128 {
				if err := in.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: chunk}}); err != nil {
					t.Fatal(err)
				}
			}
			sum, err := in.CloseAndRecv()
			if err != nil {
				t.Fatal(err)
			}
			if sum.GetAggregatedPayloadSize() != 8<<20 {
				t.Errorf("the app got %d bytes, want 8 MiB", sum.GetAggregatedPayloadSize())
			}

			// Bidirectional: each request answered before the next is sent.
			duplex, err := c.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				if err := duplex.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: int32(i + 1)}}}); err != nil {
					t.Fatal(err)
				}
				resp, err := duplex.Recv()
				if err != nil {
					t.Fatalf("round trip %d: %v", i, err)
				}
				if len(resp.GetPayload().GetBody()) != i+1 {
					t.Fatalf("round trip %d: %d bytes", i, len(resp.GetPayload().GetBody()))
				}
			}
			if err := duplex.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := duplex.Recv(); err != io.EOF {
				t.Fatalf("after CloseSend: %v, want EOF", err)
			}

			// A service that is not registered: UNIMPLEMENTED, naming it.
			_, err = grpcClient(t, tc.m, "nosuch").EmptyCall(ctx, &testgrpc.Empty{})
			if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), `"nosuch"`) {
				t.Errorf("unknown service: %v, want Unimplemented naming it", err)
			}
		})
	}
}

// TestGRPCRetries: a node whose app answers UNAVAILABLE (trailers-only) is retried on
// another node when the call is safe to repeat (Micro-Idempotent), and not otherwise: the
// call may have run.
func TestGRPCRetries(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	faults := t.TempDir()
	startMicro(t, baseConfig(reg, grpcService(2, faults)))
	// Round robin, no ejection and room in the retry budget: every other call is
	// picked to the failing node.
	a := startMicro(t, strings.Replace(baseConfig(reg, `
[client.retry_budget]
min_per_second = 1000

[client.ejection]
consecutive_failures = 1000
`), "[client]\n", "[client]\nstrategy = \"round_robin\"\n", 1))
	eventually(t, 20*time.Second, func() error {
		if n := len(mustServices(t, a)["grpc"]); n != 2 {
			return fmt.Errorf("%d nodes of grpc", n)
		}
		return nil
	})
	c := grpcClient(t, a, "grpc")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	served := map[string]int{}
	for range 20 {
		resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		served[resp.GetServerId()]++
	}
	instances := slices.Sorted(maps.Keys(served))
	if len(instances) != 2 {
		t.Fatalf("calls went to %v, want two instances", served)
	}
	failing := instances[0]
	if err := os.WriteFile(filepath.Join(faults, failing), nil, 0o644); err != nil {
		t.Fatal(err)
	}

	idem := metadata.AppendToOutgoingContext(ctx, "micro-idempotent", "true")
	for i := range 20 {
		resp, err := c.UnaryCall(idem, &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatalf("idempotent call %d: %v", i, err)
		}
		if resp.GetServerId() == failing {
			t.Fatalf("idempotent call %d answered by the failing instance", i)
		}
	}
	unavailable := 0
	for range 20 {
		_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		switch st := status.Convert(err); st.Code() {
		case codes.OK:
		case codes.Unavailable:
			unavailable++
			if !strings.Contains(st.Message(), failing) {
				t.Errorf("UNAVAILABLE %q, want the app's own, naming %s", st.Message(), failing)
			}
		default:
			t.Fatalf("call: %v", err)
		}
	}
	if unavailable == 0 {
		t.Error("no call that may have run was answered UNAVAILABLE: the failing node was never picked, or the call was retried")
	}
}

// TestGRPCRateLimited: a server wrapper's rejection reaches a gRPC caller as a gRPC status:
// the rate limit's 429 as RESOURCE_EXHAUSTED, with the wrapper's reason.
func TestGRPCRateLimited(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(baseConfig(t.TempDir(), grpcService(1, t.TempDir())), "[server]\n", "[server]\nwrappers = [\"ratelimit\"]\n", 1) +
		strings.Replace(rateLimit(bins.ratelimit, 3), `services = ["greeter"]`, `services = ["grpc"]`, 1)
	m := startMicro(t, cfg)
	c := grpcClient(t, m, "grpc")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ok, limited := 0, 0
	for range 6 {
		_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		switch st := status.Convert(err); st.Code() {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
			limited++
			if st.Message() == "" {
				t.Error("RESOURCE_EXHAUSTED without the wrapper's reason")
			}
		default:
			t.Fatalf("call: %v", err)
		}
	}
	if ok != 3 || limited != 3 {
		t.Errorf("%d calls passed and %d were limited, want 3 and 3 (burst 3)", ok, limited)
	}
}
