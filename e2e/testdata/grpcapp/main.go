// Command grpcapp is a gRPC app for micro's end-to-end tests: grpc-go's interop
// TestService, served over HTTP/2 without TLS on MICRO_APP_ADDR.
//
// Every answer carries the header metadata "instance" (MICRO_INSTANCE), and UnaryCall
// answers with its instance as the payload's body and the milliseconds its deadline (its
// grpc-timeout) was away as the header metadata "deadline-left-ms", or "none". While the file FAULT_DIR/MICRO_INSTANCE exists, every call
// fails with UNAVAILABLE, trailers-only. UnaryCall honours the request's ResponseStatus
// (after its header metadata went out, so in the trailers), and with FillServerId set it
// sleeps for 200ms first.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

func main() {
	lis, err := net.Listen("tcp", os.Getenv("MICRO_APP_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcapp:", err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, &server{instance: os.Getenv("MICRO_INSTANCE"), faults: os.Getenv("FAULT_DIR")})
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "grpcapp:", err)
		os.Exit(1)
	}
}

type server struct {
	testgrpc.UnimplementedTestServiceServer
	instance, faults string
}

// begin fails the call while the instance's fault file exists, with no header metadata, so
// that the failure is a trailers-only answer; otherwise it sets the instance's header
// metadata.
func (s *server) begin(ctx context.Context) error {
	if s.faults != "" {
		if _, err := os.Stat(filepath.Join(s.faults, s.instance)); err == nil {
			return status.Errorf(codes.Unavailable, "instance %s is failing", s.instance)
		}
	}
	return grpc.SetHeader(ctx, metadata.Pairs("instance", s.instance))
}

func (s *server) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	return &testgrpc.Empty{}, nil
}

func (s *server) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	left := "none"
	if dl, ok := ctx.Deadline(); ok {
		left = strconv.FormatInt(time.Until(dl).Milliseconds(), 10)
	}
	if req.GetFillServerId() {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs("deadline-left-ms", left)); err != nil {
		return nil, err
	}
	if st := req.GetResponseStatus(); st != nil && st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: []byte(s.instance)}, ServerId: s.instance}, nil
}

// StreamingOutputCall sends one response per ResponseParameters, each of the size asked,
// after the pause asked.
func (s *server) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	if err := s.begin(stream.Context()); err != nil {
		return err
	}
	for _, p := range req.GetResponseParameters() {
		time.Sleep(time.Duration(p.GetIntervalUs()) * time.Microsecond)
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

// StreamingInputCall answers the total size of the payloads it received.
func (s *server) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	if err := s.begin(stream.Context()); err != nil {
		return err
	}
	total := 0
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(req.GetPayload().GetBody())
	}
}

// FullDuplexCall answers each request at once with one response per ResponseParameters.
func (s *server) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	if err := s.begin(stream.Context()); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range req.GetResponseParameters() {
			if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
				return err
			}
		}
	}
}
