package registry

import (
	"context"
	"errors"
	"time"

	"github.com/microhost/micro/abi/registrypb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// NewServer returns the gRPC side of r: a registrypb.RegistryServer that calls r. Serve
// uses it; it is exported for plugins that test their Registry over gRPC in process. When r
// is also an Elector, it serves Campaign and Leader; otherwise they answer UNIMPLEMENTED.
//
// ErrNotFound becomes NOT_FOUND, a context's error becomes CANCELED or
// DEADLINE_EXCEEDED, an error that carries a gRPC status keeps it, and any other error
// becomes UNKNOWN with the error's text.
func NewServer(r Registry) registrypb.RegistryServer {
	return &server{r: r}
}

type server struct {
	registrypb.UnimplementedRegistryServer
	r Registry
}

func (s *server) Init(ctx context.Context, req *registrypb.InitRequest) (*registrypb.InitResponse, error) {
	err := s.r.Init(ctx, Config{
		Address:    req.GetAddress(),
		Datacenter: req.GetDatacenter(),
		Token:      req.GetToken(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &registrypb.InitResponse{}, nil
}

func (s *server) Register(ctx context.Context, req *registrypb.RegisterRequest) (*registrypb.RegisterResponse, error) {
	svc, err := serviceFromProto(req.GetService())
	if err != nil {
		return nil, err
	}
	if req.GetTtl() == nil {
		return nil, status.Error(codes.InvalidArgument, "register: no ttl")
	}
	if err := req.GetTtl().CheckValid(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "register: ttl: %v", err)
	}
	ttl := req.GetTtl().AsDuration()
	if ttl <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "register: ttl %v is not positive", ttl)
	}
	if err := s.r.Register(ctx, svc, ttl); err != nil {
		return nil, toStatus(err)
	}
	return &registrypb.RegisterResponse{}, nil
}

func (s *server) Deregister(ctx context.Context, req *registrypb.DeregisterRequest) (*registrypb.DeregisterResponse, error) {
	svc, err := serviceFromProto(req.GetService())
	if err != nil {
		return nil, err
	}
	if err := s.r.Deregister(ctx, svc); err != nil {
		return nil, toStatus(err)
	}
	return &registrypb.DeregisterResponse{}, nil
}

func (s *server) GetService(ctx context.Context, req *registrypb.GetServiceRequest) (*registrypb.GetServiceResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "get service: empty name")
	}
	svc, err := s.r.GetService(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	if svc == nil {
		return nil, status.Errorf(codes.NotFound, "service %q not found", req.GetName())
	}
	return &registrypb.GetServiceResponse{Service: serviceToProto(svc)}, nil
}

func (s *server) ListServices(ctx context.Context, _ *registrypb.ListServicesRequest) (*registrypb.ListServicesResponse, error) {
	svcs, err := s.r.ListServices(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &registrypb.ListServicesResponse{Services: make([]*registrypb.Service, 0, len(svcs))}
	for _, svc := range svcs {
		if svc != nil {
			resp.Services = append(resp.Services, serviceToProto(svc))
		}
	}
	return resp, nil
}

// Watch runs the Registry's Watch with the stream's context and forwards its events. The
// response headers go out first, to tell the client that the watch runs.
func (s *server) Watch(_ *registrypb.WatchRequest, stream registrypb.Registry_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	events := make(chan Event)
	done := make(chan error, 1)
	go func() { done <- s.r.Watch(ctx, events) }()
	// finish stops the Registry's Watch and waits for it, draining events in case it
	// sends without watching ctx.
	finish := func() error {
		cancel()
		for {
			select {
			case <-events:
			case err := <-done:
				return err
			}
		}
	}
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		finish()
		return err
	}
	for {
		select {
		case ev := <-events:
			if err := stream.Send(eventToProto(ev)); err != nil {
				finish()
				return err
			}
		case err := <-done:
			if err == nil {
				err = errors.New("watch ended")
			}
			return toStatus(err)
		}
	}
}

// resignTimeout bounds the Resign that the server calls when micro ends a Campaign stream.
const resignTimeout = 10 * time.Second

// Campaign runs the Elector's Campaign with the stream's context, sends one elected event
// when it wins, and holds the leadership until micro cancels the stream, which resigns it,
// or the leadership is lost, which ends the stream with ABORTED. A Registry that is no
// Elector answers UNIMPLEMENTED.
func (s *server) Campaign(req *registrypb.CampaignRequest, stream registrypb.Registry_CampaignServer) error {
	e, ok := s.r.(Elector)
	if !ok {
		return errNoElector
	}
	name := req.GetName()
	if name == "" {
		return status.Error(codes.InvalidArgument, "campaign: empty election name")
	}
	ctx := stream.Context()
	l, err := e.Campaign(ctx, name, req.GetValue())
	if err != nil {
		return toStatus(err)
	}
	if l == nil {
		return status.Errorf(codes.Internal, "campaign %q: the registry returned no leadership", name)
	}
	resign := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resignTimeout)
		defer cancel()
		l.Resign(rctx) // micro is gone or stopped listening: nobody to tell of an error
	}
	if err := stream.Send(&registrypb.CampaignEvent{Elected: true}); err != nil {
		resign()
		return err
	}
	select {
	case <-ctx.Done():
		resign()
		return status.FromContextError(ctx.Err()).Err()
	case <-l.Lost():
		return status.Errorf(codes.Aborted, "leadership of %q lost", name)
	}
}

// Leader asks the Elector for the leader of a name; ErrNoLeader is a response with found
// unset. A Registry that is no Elector answers UNIMPLEMENTED.
func (s *server) Leader(ctx context.Context, req *registrypb.LeaderRequest) (*registrypb.LeaderResponse, error) {
	e, ok := s.r.(Elector)
	if !ok {
		return nil, errNoElector
	}
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "leader: empty election name")
	}
	value, err := e.Leader(ctx, req.GetName())
	if errors.Is(err, ErrNoLeader) {
		return &registrypb.LeaderResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &registrypb.LeaderResponse{Found: true, Value: value}, nil
}

// errNoElector is the answer to Campaign and Leader of a Registry that is no Elector.
var errNoElector = status.Error(codes.Unimplemented, "this registry plugin does not elect leaders (its Registry is no sdk/registry.Elector)")

// toStatus turns a Registry's error into the gRPC status that micro reads.
func toStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unknown, err.Error())
}

// serviceFromProto converts a request's Service, which must have a name.
func serviceFromProto(p *registrypb.Service) (*Service, error) {
	if p.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "no service name")
	}
	s := &Service{Name: p.GetName(), Nodes: make([]*Node, 0, len(p.GetNodes()))}
	for _, n := range p.GetNodes() {
		if n != nil {
			s.Nodes = append(s.Nodes, nodeFromProto(n))
		}
	}
	return s, nil
}

// serviceToProto converts a Service to its protocol form.
func serviceToProto(s *Service) *registrypb.Service {
	p := &registrypb.Service{Name: s.Name, Nodes: make([]*registrypb.Node, 0, len(s.Nodes))}
	for _, n := range s.Nodes {
		if n != nil {
			p.Nodes = append(p.Nodes, nodeToProto(n))
		}
	}
	return p
}

func nodeFromProto(p *registrypb.Node) *Node {
	return &Node{
		ID:         p.GetId(),
		Address:    p.GetAddress(),
		Version:    p.GetVersion(),
		Metadata:   p.GetMetadata(),
		Endpoints:  p.GetEndpoints(),
		Idempotent: p.GetIdempotent(),
	}
}

func nodeToProto(n *Node) *registrypb.Node {
	return &registrypb.Node{
		Id:         n.ID,
		Address:    n.Address,
		Version:    n.Version,
		Metadata:   n.Metadata,
		Endpoints:  n.Endpoints,
		Idempotent: n.Idempotent,
	}
}

func eventToProto(ev Event) *registrypb.Event {
	p := &registrypb.Event{Service: ev.Service}
	switch ev.Type {
	case EventUpdate:
		p.Type = registrypb.EventType_EVENT_TYPE_UPDATE
	case EventDelete:
		p.Type = registrypb.EventType_EVENT_TYPE_DELETE
	}
	if ev.Node != nil {
		p.Node = nodeToProto(ev.Node)
	}
	return p
}
