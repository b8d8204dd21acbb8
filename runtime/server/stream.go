package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"
)

// headerBinary marks a stream message that was a binary WebSocket message.
const headerBinary = "Micro-Binary"

// Streamer opens streams by service name; *client.Client is one.
type Streamer interface {
	Stream(ctx context.Context, req *client.Request) (transport.Conn, string, *client.Response, error)
}

// isWebSocket reports whether r asks to upgrade to a WebSocket.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// stream serves a WebSocket on /{service}/{endpoint}: it opens a stream to the service
// within the call's budget, then carries messages both ways until either side closes.
// An opening that fails answers the upgrade request with the JSON error.
func (in *Ingress) stream(w http.ResponseWriter, r *http.Request, service, endpoint string) int {
	if in.cfg.Streamer == nil {
		e := callerr.New(IngressID, http.StatusNotImplemented, "streams are not supported here")
		e.Write(w)
		return e.Code
	}
	ctx := r.Context()
	if v := r.Header.Get(transport.HeaderTimeout); v != "" {
		d, err := budget.Parse(v)
		if err != nil {
			e := callerr.New(IngressID, http.StatusBadRequest, "%v", err)
			e.Write(w)
			return e.Code
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	h := CopyHeader(r.Header)
	for _, k := range []string{"Upgrade", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions", "Sec-Websocket-Protocol"} {
		delete(h, k)
	}
	conn, node, resp, err := in.cfg.Streamer.Stream(ctx, &client.Request{Service: service, Endpoint: endpoint, Header: h})
	if err != nil {
		e := callerr.As(IngressID, err)
		e.Write(w)
		return e.Code
	}
	if conn == nil {
		for k, v := range resp.Header {
			if !hopByHop(k) {
				w.Header().Set(k, v)
			}
		}
		w.WriteHeader(resp.Status)
		_, _ = w.Write(resp.Body)
		return resp.Status
	}
	defer conn.Close()
	w.Header().Set(transport.HeaderNode, node)
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return http.StatusBadRequest // Accept has answered
	}
	ws.SetReadLimit(in.maxBody.Load())
	pump(context.WithoutCancel(r.Context()), ws, conn, false)
	return http.StatusSwitchingProtocols
}

// pump carries messages between a WebSocket and a stream Conn until one side ends. When the
// stream ends with an error message, the WebSocket is closed with status 1011 and the
// error's detail; when the WebSocket ends abnormally and report is set, an error message
// goes down the stream first.
func pump(ctx context.Context, ws *websocket.Conn, conn transport.Conn, report bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { // stream → WebSocket
		defer close(done)
		defer cancel()
		for {
			m, err := conn.Recv(ctx)
			if err != nil {
				if errors.Is(err, io.EOF) {
					ws.Close(websocket.StatusNormalClosure, "")
				} else if ctx.Err() == nil {
					ws.Close(websocket.StatusInternalError, closeReason("stream failed: "+err.Error()))
				}
				return
			}
			if st := m.Header[transport.HeaderStatus]; st != "" {
				detail := "stream ended with status " + st
				if e, ok := callerr.Parse(m.Body); ok {
					detail = e.Detail
				}
				ws.Close(websocket.StatusInternalError, closeReason(detail))
				return
			}
			typ := websocket.MessageText
			if m.Header[headerBinary] == "1" {
				typ = websocket.MessageBinary
			}
			if err := ws.Write(ctx, typ, m.Body); err != nil {
				return
			}
		}
	}()
	for { // WebSocket → stream
		typ, b, err := ws.Read(ctx)
		if err != nil {
			status := websocket.CloseStatus(err)
			if report && ctx.Err() == nil && status != websocket.StatusNormalClosure && status != websocket.StatusGoingAway {
				e := callerr.New(InboundID, http.StatusBadGateway, "the app closed the stream: %v", err)
				_ = conn.Send(ctx, errorMessage(e))
			}
			break
		}
		h := map[string]string{}
		if typ == websocket.MessageBinary {
			h[headerBinary] = "1"
		}
		if err := conn.Send(ctx, &transport.Message{Header: h, Body: b}); err != nil {
			break
		}
	}
	conn.Close()
	cancel()
	<-done
	ws.CloseNow()
}

// closeReason fits s into a WebSocket close frame's reason (at most 123 bytes).
func closeReason(s string) string {
	if len(s) > 123 {
		return s[:120] + "..."
	}
	return s
}

// stream serves a stream that another micro opened: it runs the server wrappers, opens a
// WebSocket to the app's endpoint within the budget, answers status 101, and carries
// messages both ways until either side ends.
func (in *Inbound) stream(ctx context.Context, conn transport.Conn, req *transport.Message, start time.Time) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	fail := func(e *callerr.Error, reply map[string]string) {
		m := errorMessage(e)
		for k, v := range reply {
			m.Header[k] = v
		}
		in.cfg.Recorder.Inbound(service, e.Code, time.Since(start))
		_ = conn.Send(ctx, m)
	}
	if err := checkName("service", service, false); err != nil {
		fail(callerr.New(InboundID, http.StatusBadRequest, "%v", err), nil)
		return
	}
	if err := checkName("endpoint", endpoint, true); err != nil {
		fail(callerr.New(InboundID, http.StatusBadRequest, "%v", err), nil)
		return
	}
	tv := req.Header[transport.HeaderTimeout]
	d, err := budget.Parse(tv)
	if err != nil {
		fail(callerr.New(InboundID, http.StatusBadRequest, "%v", err), nil)
		return
	}
	openCtx, cancel := context.WithDeadline(ctx, start.Add(d))
	defer cancel()

	chain := in.chain.Acquire()
	call := wrapper.Call{Service: service, Endpoint: endpoint, Node: req.Header[transport.HeaderNode],
		Caller: req.Header[transport.HeaderCaller], Header: req.Header, Deadline: start.Add(d)}
	var ran wrapper.Ran
	v := chain.OnRequest(openCtx, &call, &ran)
	if v.Action != wrapper.Continue {
		status := v.RejectStatus()
		chain.OnResponse(openCtx, &call, &wrapper.Result{Status: status, Err: v.Message}, &ran)
		chain.Release()
		fail(callerr.New(InboundID, status, "%s", v.Message), v.ReplyHeader)
		return
	}
	base, ok := in.cfg.Apps.Resolve(service, req.Header[transport.HeaderNode])
	var ws *websocket.Conn
	if ok {
		h := http.Header{}
		for k, val := range req.Header {
			switch k {
			case transport.HeaderService, transport.HeaderEndpoint, transport.HeaderNode, transport.HeaderStatus, transport.HeaderStream:
			default:
				if !hopByHop(k) {
					h.Set(k, val)
				}
			}
		}
		for k, val := range v.Header {
			h.Set(k, val)
		}
		h.Set(transport.HeaderTimeout, budget.Format(time.Until(start.Add(d))))
		ws, _, err = websocket.Dial(openCtx, "ws"+strings.TrimPrefix(base, "http")+"/"+endpoint, &websocket.DialOptions{HTTPHeader: h, HTTPClient: in.cfg.HTTP})
	}
	r := wrapper.Result{Status: http.StatusSwitchingProtocols, Latency: time.Since(start)}
	var e *callerr.Error
	switch {
	case !ok:
		e = callerr.New(InboundID, http.StatusServiceUnavailable, "service %q has no ready instance here", service)
	case err != nil && openCtx.Err() != nil:
		e = callerr.New(InboundID, http.StatusGatewayTimeout, "budget of %s spent opening the stream to %s.%s", tv, service, endpoint)
	case err != nil:
		e = callerr.New(InboundID, http.StatusBadGateway, "opening a stream to the app of %q at %s: %v", service, base, err)
	}
	if e != nil {
		r.Status, r.Err = 0, e.Detail
	}
	chain.OnResponse(openCtx, &call, &r, &ran)
	chain.Release()
	if e != nil {
		fail(e, nil)
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(in.maxBody.Load())
	open := &transport.Message{Header: map[string]string{transport.HeaderStatus: strconv.Itoa(http.StatusSwitchingProtocols)}}
	if err := conn.Send(ctx, open); err != nil {
		return
	}
	in.cfg.Recorder.Inbound(service, http.StatusSwitchingProtocols, time.Since(start))
	pump(ctx, ws, conn, true)
}
