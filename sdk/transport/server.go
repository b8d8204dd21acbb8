package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// claimTimeout is how long an accepted Conn waits for micro's Serve stream before the
// server closes it.
const claimTimeout = time.Minute

// NewServer returns the gRPC side of t: a transportpb.TransportServer that calls t. Serve
// uses it; it is exported for plugins that test their Transport over gRPC in process.
//
// A Dial error becomes UNAVAILABLE (micro reports a connect error), a context's error
// becomes CANCELED or DEADLINE_EXCEEDED, an error that carries a gRPC status keeps it, and
// any other error becomes UNKNOWN with the error's text. A Conn's Recv that returns io.EOF
// ends the connection cleanly. Messages over transportpb.MaxMessageSize are refused either
// way with RESOURCE_EXHAUSTED, and frames out of order with INVALID_ARGUMENT.
func NewServer(t Transport) transportpb.TransportServer {
	return &server{t: t, pending: map[uint64]Conn{}}
}

type server struct {
	transportpb.UnimplementedTransportServer
	t       Transport
	nextID  atomic.Uint64
	mu      sync.Mutex
	pending map[uint64]Conn // accepted, not yet claimed by a Serve stream
}

func (s *server) Init(ctx context.Context, req *transportpb.InitRequest) (*transportpb.InitResponse, error) {
	c := Config{
		URL:             req.GetUrl(),
		CredentialsFile: req.GetCredentialsFile(), NkeySeedFile: req.GetNkeySeedFile(),
		TokenFile: req.GetTokenFile(), User: req.GetUser(), PasswordFile: req.GetPasswordFile(),
		TLSCAFile: req.GetTlsCaFile(), TLSCertFile: req.GetTlsCertFile(), TLSKeyFile: req.GetTlsKeyFile(),
		TLSRequired: req.GetTlsRequired(),
	}
	if err := s.t.Init(ctx, c); err != nil {
		return nil, toStatus(err, codes.Unknown)
	}
	return &transportpb.InitResponse{}, nil
}

func (s *server) Dial(stream transportpb.Transport_DialServer) error {
	f, err := stream.Recv()
	if err != nil {
		return err
	}
	a, ok := f.GetFrame().(*transportpb.DialFrame_Addr)
	if !ok {
		return status.Errorf(codes.InvalidArgument, "dial: the first frame is %s, want the address", frameKind(f.GetFrame()))
	}
	conn, err := s.t.Dial(stream.Context(), a.Addr)
	if err != nil {
		return toStatus(fmt.Errorf("dial %s: %w", a.Addr, err), codes.Unavailable)
	}
	defer conn.Close()
	if err := stream.Send(&transportpb.Frame{Frame: &transportpb.Frame_Connected{Connected: &transportpb.Connected{}}}); err != nil {
		return err
	}
	return pump(stream.Context(), conn, func() (*transportpb.Message, error) {
		f, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		m, ok := f.GetFrame().(*transportpb.DialFrame_Message)
		if !ok || m.Message == nil {
			return nil, status.Errorf(codes.InvalidArgument, "dial: frame is %s, want a message", frameKind(f.GetFrame()))
		}
		return m.Message, nil
	}, stream.Send)
}

func (s *server) Listen(req *transportpb.ListenRequest, stream transportpb.Transport_ListenServer) error {
	ctx := stream.Context()
	l, err := s.t.Listen(ctx, req.GetAddr())
	if err != nil {
		return toStatus(fmt.Errorf("listen %s: %w", req.GetAddr(), err), codes.Unknown)
	}
	defer l.Close()
	if err := stream.Send(&transportpb.Accepted{Addr: l.Addr()}); err != nil {
		return err
	}
	for {
		c, err := l.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return toStatus(fmt.Errorf("accept on %s: %w", l.Addr(), err), codes.Unknown)
		}
		id := s.nextID.Add(1)
		s.park(id, c)
		if err := stream.Send(&transportpb.Accepted{ConnId: id}); err != nil {
			if c := s.claim(id); c != nil {
				c.Close()
			}
			return err
		}
	}
}

func (s *server) Serve(stream transportpb.Transport_ServeServer) error {
	f, err := stream.Recv()
	if err != nil {
		return err
	}
	id, ok := f.GetFrame().(*transportpb.ServeFrame_ConnId)
	if !ok {
		return status.Errorf(codes.InvalidArgument, "serve: the first frame is %s, want the conn_id", frameKind(f.GetFrame()))
	}
	conn := s.claim(id.ConnId)
	if conn == nil {
		return status.Errorf(codes.NotFound, "serve: no accepted connection %d", id.ConnId)
	}
	defer conn.Close()
	if err := stream.Send(&transportpb.Frame{Frame: &transportpb.Frame_Connected{Connected: &transportpb.Connected{}}}); err != nil {
		return err
	}
	return pump(stream.Context(), conn, func() (*transportpb.Message, error) {
		f, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		m, ok := f.GetFrame().(*transportpb.ServeFrame_Message)
		if !ok || m.Message == nil {
			return nil, status.Errorf(codes.InvalidArgument, "serve: frame is %s, want a message", frameKind(f.GetFrame()))
		}
		return m.Message, nil
	}, stream.Send)
}

// park keeps an accepted conn for Serve to claim, and closes it if none does in time.
func (s *server) park(id uint64, c Conn) {
	s.mu.Lock()
	s.pending[id] = c
	s.mu.Unlock()
	time.AfterFunc(claimTimeout, func() {
		if c := s.claim(id); c != nil {
			c.Close()
		}
	})
}

// claim takes the accepted conn id, or returns nil.
func (s *server) claim(id uint64) Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.pending[id]
	delete(s.pending, id)
	return c
}

// pump carries messages between micro's stream (recv, send) and conn until either side
// ends. It returns nil when conn's peer closed it (Recv returned io.EOF), or when micro
// closed its side of the stream, after which pump closes conn.
func pump(ctx context.Context, conn Conn, recv func() (*transportpb.Message, error), send func(*transportpb.Frame) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inErr := make(chan error, 1)
	var microClosed atomic.Bool
	go func() {
		// micro → conn.
		for {
			m, err := recv()
			if errors.Is(err, io.EOF) {
				// micro closed the conn, after every message it sent: close it here.
				microClosed.Store(true)
				conn.Close()
				return
			}
			if err != nil {
				inErr <- err
				cancel()
				return
			}
			if err := transportpb.CheckSize(m); err != nil {
				inErr <- status.Errorf(codes.ResourceExhausted, "message from micro refused: %v", err)
				cancel()
				return
			}
			if err := conn.Send(ctx, &Message{Header: m.GetHeader(), Body: m.GetBody()}); err != nil {
				inErr <- toStatus(fmt.Errorf("send: %w", err), codes.Unknown)
				cancel()
				return
			}
		}
	}()
	// conn → micro.
	for {
		m, err := conn.Recv(ctx)
		if err != nil {
			select {
			case e := <-inErr:
				return e
			default:
			}
			if errors.Is(err, io.EOF) || microClosed.Load() {
				return nil
			}
			return toStatus(fmt.Errorf("recv: %w", err), codes.Unknown)
		}
		if m == nil {
			return status.Error(codes.Internal, "recv: the transport returned a nil message")
		}
		pm := &transportpb.Message{Header: m.Header, Body: m.Body}
		if err := transportpb.CheckSize(pm); err != nil {
			return status.Errorf(codes.ResourceExhausted, "message from the peer refused: %v", err)
		}
		if err := send(&transportpb.Frame{Frame: &transportpb.Frame_Message{Message: pm}}); err != nil {
			return err
		}
	}
}

// frameKind names a frame's oneof field for errors.
func frameKind(f any) string {
	switch f.(type) {
	case nil:
		return "empty"
	case *transportpb.DialFrame_Addr:
		return "an address"
	case *transportpb.ServeFrame_ConnId:
		return "a conn_id"
	case *transportpb.DialFrame_Message, *transportpb.ServeFrame_Message, *transportpb.Frame_Message:
		return "a message"
	case *transportpb.Frame_Connected:
		return "connected"
	}
	return fmt.Sprintf("%T", f)
}

// toStatus turns a Transport's error into the gRPC status that micro reads; def is the
// code of an error that carries none.
func toStatus(err error, def codes.Code) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.Error(status.FromContextError(err).Code(), err.Error())
	}
	return status.Error(def, err.Error())
}
