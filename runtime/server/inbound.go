package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"
)

// InboundID names the inbound server in the errors it returns.
const InboundID = "micro.inbound"

// Apps finds the app instance that serves a call to a fronted service.
type Apps interface {
	// Resolve returns the base URL of the app instance for nodeID of service, or of any
	// ready instance of service when nodeID is not one of them. It reports false when the
	// service has no ready instance here.
	Resolve(service, nodeID string) (baseURL string, ok bool)
}

// InboundConfig wires an Inbound server.
type InboundConfig struct {
	Apps     Apps
	Recorder Recorder
	Logger   *slog.Logger
	// HTTP is the client that reaches the apps.
	HTTP *http.Client
	// MaxBody bounds the app's response bodies; the transport bounds request bodies.
	MaxBody int64
}

// Inbound serves calls that other micro processes send to the services fronted here: it
// checks the budget and forwards each call to its app as POST {app}/{endpoint}.
type Inbound struct {
	cfg     InboundConfig
	maxBody atomic.Int64
	chain   wrapper.Current
	wg      sync.WaitGroup
}

// NewInbound returns an inbound server; Serve runs it on a listener.
func NewInbound(cfg InboundConfig) *Inbound {
	in := &Inbound{cfg: cfg}
	in.maxBody.Store(cfg.MaxBody)
	return in
}

// SetChain makes chain the server wrappers of later calls and returns the chain it
// replaces, which the caller retires.
func (in *Inbound) SetChain(chain *wrapper.Chain) *wrapper.Chain { return in.chain.Store(chain) }

// SetMaxBody changes the response body limit.
func (in *Inbound) SetMaxBody(n int64) { in.maxBody.Store(n) }

// Serve accepts calls from l until it is closed. Calls already accepted go on; Wait waits
// for them.
func (in *Inbound) Serve(ctx context.Context, l transport.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, transport.ErrClosed) {
				return nil
			}
			return fmt.Errorf("inbound accept on %s: %w", l.Addr(), err)
		}
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			defer conn.Close()
			in.handle(ctx, conn)
		}()
	}
}

// Wait blocks until every accepted call has been answered, or ctx ends.
func (in *Inbound) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { in.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("inbound drain: %w", ctx.Err())
	}
}

func (in *Inbound) handle(ctx context.Context, conn transport.Conn) {
	start := time.Now()
	req, err := conn.Recv(ctx)
	if err != nil {
		status := http.StatusBadRequest
		if se, ok := err.(interface{ StatusCode() int }); ok {
			status = se.StatusCode()
		}
		in.reply(ctx, conn, callerr.New(InboundID, status, "%v", err))
		return
	}
	if req.Header[transport.HeaderStream] == "1" {
		in.stream(ctx, conn, req, start)
		return
	}
	service := req.Header[transport.HeaderService]
	code, resp := in.forward(ctx, req, start)
	in.cfg.Recorder.Inbound(service, code, time.Since(start))
	if err := conn.Send(ctx, resp); err != nil {
		in.cfg.Logger.Debug("inbound reply not delivered", "service", service, "err", err)
	}
}

// forward passes req to its app and returns the app's answer as a response message.
func (in *Inbound) forward(ctx context.Context, req *transport.Message, start time.Time) (int, *transport.Message) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	fail := func(e *callerr.Error) (int, *transport.Message) { return e.Code, errorMessage(e) }

	if err := checkName("service", service, false); err != nil {
		return fail(callerr.New(InboundID, http.StatusBadRequest, "%v", err))
	}
	if err := checkName("endpoint", endpoint, true); err != nil {
		return fail(callerr.New(InboundID, http.StatusBadRequest, "%v", err))
	}
	tv, ok := req.Header[transport.HeaderTimeout]
	if !ok {
		return fail(callerr.New(InboundID, http.StatusBadRequest, "missing %s header", transport.HeaderTimeout))
	}
	d, err := budget.Parse(tv)
	if err != nil {
		return fail(callerr.New(InboundID, http.StatusBadRequest, "%v", err))
	}
	// The budget counts from when the call arrived here.
	ctx, cancel := context.WithDeadline(ctx, start.Add(d))
	defer cancel()
	remaining := time.Until(start.Add(d))
	if remaining < time.Millisecond {
		return fail(callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s for %s.%s is spent", tv, service, endpoint))
	}
	chain := in.chain.Acquire()
	defer chain.Release()
	call := wrapper.Call{
		Service: service, Endpoint: endpoint, Node: req.Header[transport.HeaderNode],
		Caller: req.Header[transport.HeaderCaller], Header: req.Header, Deadline: start.Add(d),
	}
	var ran wrapper.Ran
	switch v := chain.OnRequest(ctx, &call, &ran); v.Action {
	case wrapper.Continue:
		for k, val := range v.Header {
			req.Header[k] = val
		}
	default:
		status := v.RejectStatus()
		chain.OnResponse(ctx, &call, &wrapper.Result{Status: status, Err: v.Message}, &ran)
		m := errorMessage(callerr.New(InboundID, status, "%s", v.Message))
		for k, val := range v.ReplyHeader {
			m.Header[k] = val
		}
		return status, m
	}
	code, m, failure := in.toApp(ctx, req, service, endpoint, tv, start.Add(d))
	if chain != nil {
		r := wrapper.Result{Status: code, Err: failure, Latency: time.Since(start)}
		if failure != "" {
			r.Status = 0 // no answer from the app
		}
		chain.OnResponse(ctx, &call, &r, &ran)
	}
	return code, m
}

// toApp forwards req to an instance of its service's app and returns the app's answer.
func (in *Inbound) toApp(ctx context.Context, req *transport.Message, service, endpoint, tv string, deadline time.Time) (code int, reply *transport.Message, failure string) {
	fail := func(e *callerr.Error) (int, *transport.Message, string) { return e.Code, errorMessage(e), e.Detail }
	base, ok := in.cfg.Apps.Resolve(service, req.Header[transport.HeaderNode])
	if !ok {
		return fail(callerr.New(InboundID, http.StatusServiceUnavailable, "service %q has no ready instance here", service))
	}

	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/"+endpoint, bytes.NewReader(req.Body))
	if err != nil {
		return fail(callerr.New(InboundID, http.StatusBadRequest, "building request to %s: %v", base, err))
	}
	for k, v := range req.Header {
		switch k {
		case transport.HeaderService, transport.HeaderEndpoint, transport.HeaderNode, transport.HeaderStatus:
		default:
			if !hopByHop(k) {
				hr.Header.Set(k, v)
			}
		}
	}
	hr.Header.Set(transport.HeaderTimeout, budget.Format(time.Until(deadline)))
	hresp, err := in.cfg.HTTP.Do(hr)
	if err != nil {
		if ctx.Err() != nil {
			return fail(callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s spent waiting for %s.%s", tv, service, endpoint))
		}
		return fail(callerr.New(InboundID, http.StatusBadGateway, "app of %q at %s: %v", service, base, err))
	}
	defer hresp.Body.Close()
	limit := in.maxBody.Load()
	body, err := io.ReadAll(io.LimitReader(hresp.Body, limit+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return fail(callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s spent reading the reply of %s.%s", tv, service, endpoint))
	case err != nil:
		return fail(callerr.New(InboundID, http.StatusBadGateway, "reading the reply of %q at %s: %v", service, base, err))
	case int64(len(body)) > limit:
		return fail(callerr.New(InboundID, http.StatusBadGateway, "the reply of %s.%s exceeds the limit of %d bytes (server.max_body)", service, endpoint, limit))
	}
	h := make(map[string]string, len(hresp.Header)+1)
	for k, v := range hresp.Header {
		if len(v) > 0 && !hopByHop(k) {
			h[k] = v[0]
		}
	}
	h[transport.HeaderStatus] = strconv.Itoa(hresp.StatusCode)
	return hresp.StatusCode, &transport.Message{Header: h, Body: body}, ""
}

func (in *Inbound) reply(ctx context.Context, conn transport.Conn, e *callerr.Error) {
	if err := conn.Send(ctx, errorMessage(e)); err != nil {
		in.cfg.Logger.Debug("inbound error reply not delivered", "err", err)
	}
}

func errorMessage(e *callerr.Error) *transport.Message {
	return &transport.Message{
		Header: map[string]string{
			transport.HeaderStatus: strconv.Itoa(e.Code),
			"Content-Type":         "application/json",
		},
		Body: e.JSON(),
	}
}
