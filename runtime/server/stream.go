package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"
	"github.com/microhost/micro/runtime/wrapper"
)

// Streamer opens streams by service name; *client.Client is one.
type Streamer interface {
	Stream(ctx context.Context, req *client.Request) (transport.Conn, string, *client.Response, error)
}

// isWebSocket reports whether r asks to upgrade to a WebSocket.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// stream serves a WebSocket on /{service}/{endpoint}: it opens a stream to the service
// within the call's budget, then carries messages both ways until either side closes or
// the stream idles for Settings.StreamIdle. An opening that fails answers the upgrade
// request with the JSON error.
func (in *Ingress) stream(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, st *Settings, service, endpoint, target string) (code int) {
	fail := func(e *callerr.Error) int {
		e.Write(w)
		return e.Code
	}
	if in.cfg.Streamer == nil {
		return fail(callerr.New(IngressID, http.StatusNotImplemented, "streams are not supported here"))
	}
	ctx, cancel, idempotent, e := callOptions(r, st)
	if e != nil {
		return fail(e)
	}
	defer cancel()
	ctx, span := in.traceCall(ctx, r.Header, r.Header.Get(tracing.Header), r.Method, service, endpoint)
	if span.Recording() {
		defer func() { endCall(span, code) }()
	}
	h := CopyHeader(r.Header)
	// The WebSocket handshake is between the caller and micro; micro checked the Origin.
	for _, k := range []string{"Origin", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions", "Sec-Websocket-Protocol"} {
		delete(h, k)
	}
	conn, node, resp, err := in.cfg.Streamer.Stream(ctx, &client.Request{Service: service, Endpoint: endpoint, Method: r.Method, Target: target, Header: h, Idempotent: idempotent})
	if err != nil {
		return fail(callerr.As(IngressID, err))
	}
	if conn == nil {
		setHeader(w.Header(), resp.Header)
		w.WriteHeader(resp.Status)
		_, _ = w.Write(resp.Body)
		return resp.Status
	}
	defer conn.Close()
	w.Header().Set(transport.HeaderNode, node)
	// The connection outlives this request: no deadline of the request may stay on it.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	// The origin was checked above, by the rules of Settings.CheckOrigin.
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return http.StatusBadRequest // Accept has answered
	}
	ws.SetReadLimit(st.MaxBody)
	pump(context.WithoutCancel(r.Context()), in.log, ws, conn, st.StreamIdle, false)
	return http.StatusSwitchingProtocols
}

// pump carries messages between a WebSocket and a stream Conn until one side ends, or no
// message passed either way for idle. When the stream ends with an error message, the
// WebSocket is closed with status 1011 and the error's detail; when the WebSocket ends
// abnormally and report is set, an error message goes down the stream first.
func pump(ctx context.Context, logger *slog.Logger, ws *websocket.Conn, conn transport.Conn, idle time.Duration, report bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(idle, func() {
		ws.Close(websocket.StatusGoingAway, closeReason(fmt.Sprintf("no message for %v (server.stream_idle_timeout)", idle)))
		conn.Close()
		cancel()
	})
	defer timer.Stop()
	done := make(chan struct{})
	go func() { // stream → WebSocket
		defer close(done)
		defer cancel()
		defer func() {
			if p := recover(); p != nil {
				recovered(logger, p, "a stream")
				ws.CloseNow()
			}
		}()
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
			timer.Reset(idle)
			if st := m.Header[transport.HeaderStatus]; st != "" {
				detail := "stream ended with status " + st
				if e, ok := callerr.Parse(m.Body); ok {
					detail = e.Detail
				}
				ws.Close(websocket.StatusInternalError, closeReason(detail))
				return
			}
			typ := websocket.MessageText
			if m.Header[transport.HeaderBinary] == "1" {
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
				_ = conn.Send(ctx, errorMessage(e, transport.ErrorApp))
			}
			break
		}
		timer.Reset(idle)
		h := map[string]string{}
		if typ == websocket.MessageBinary {
			h[transport.HeaderBinary] = "1"
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
// messages both ways until either side ends. An app that refuses the WebSocket for the
// request's own reasons (a 4xx) has its answer passed back as it is.
func (in *Inbound) stream(ctx context.Context, conn transport.Conn, req *transport.Message, start time.Time) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	st := in.settings.load()
	answer := func(m *transport.Message) {
		code, _ := strconv.Atoi(m.Header[transport.HeaderStatus])
		in.cfg.Recorder.Inbound(service, code, time.Since(start))
		_ = conn.Send(ctx, m)
	}
	fail := func(e *callerr.Error, kind string, reply map[string]string) {
		m := errorMessage(e, kind)
		for k, v := range reply {
			m.Header[k] = v
		}
		answer(m)
	}
	caller := peerOfConn(conn)
	d, e := checkCall(req, st)
	if e == nil {
		e = admit(st, service, caller)
	}
	if e != nil {
		fail(e, transport.ErrorCaller, nil)
		return
	}
	deadline := start.Add(d)
	openCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	openCtx, span := in.traceCall(openCtx, req.Header, service, endpoint)
	code := 0 // how the stream ended, for its span
	if span.Recording() {
		defer func() { endCall(span, code) }()
	}

	chain := in.chain.Acquire()
	call := wrapper.Call{Service: service, Endpoint: endpoint, Node: req.Header[transport.HeaderNode],
		Caller: caller.Name(), Header: req.Header, Deadline: deadline}
	// The opening goes through the server wrappers as a call does: its send step dials
	// the app.
	var ws *websocket.Conn
	var refusal *transport.Message
	code, kind, _, rejected := in.wrapApp(openCtx, chain, &call, start, func(v *wrapper.Verdict) (int, string, string) {
		var k string
		ws, refusal, e, k = in.dialApp(openCtx, req, v.Header, deadline, caller)
		switch {
		case refusal != nil: // the app's own answer to the upgrade
			status, _ := strconv.Atoi(refusal.Header[transport.HeaderStatus])
			return status, "", ""
		case e != nil:
			return e.Code, k, e.Detail
		}
		return http.StatusSwitchingProtocols, "", ""
	})
	chain.Release()
	switch {
	case rejected != nil:
		fail(callerr.New(InboundID, code, "%s", rejected.Message), kind, rejected.ReplyHeader)
		return
	case refusal != nil:
		answer(refusal)
		return
	case e != nil:
		fail(e, kind, nil)
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(st.MaxBody)
	open := &transport.Message{Header: map[string]string{transport.HeaderStatus: strconv.Itoa(http.StatusSwitchingProtocols)}}
	if err := conn.Send(ctx, open); err != nil {
		return
	}
	in.cfg.Recorder.Inbound(service, http.StatusSwitchingProtocols, time.Since(start))
	pump(ctx, in.cfg.Logger, ws, conn, st.StreamIdle, true)
}

// dialApp opens a WebSocket to the app that serves req, with the headers extra that server
// wrappers set. When the app answers the upgrade with anything but 101, refusal is its
// answer as a message; when no answer came, e is the error and kind its transport.Error
// value.
func (in *Inbound) dialApp(ctx context.Context, req *transport.Message, extra map[string]string, deadline time.Time, caller Peer) (ws *websocket.Conn, refusal *transport.Message, e *callerr.Error, kind string) {
	service, endpoint := req.Header[transport.HeaderService], req.Header[transport.HeaderEndpoint]
	base, ok := in.cfg.Apps.Resolve(service, req.Header[transport.HeaderNode])
	if !ok {
		return nil, nil, callerr.New(InboundID, http.StatusServiceUnavailable, "service %q has no ready instance here", service), transport.ErrorUnavailable
	}
	h := appHeader(req.Header, extra, deadline, caller)
	setTraceparent(ctx, h)
	_, target := requestLine(req.Header)
	ws, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+target, &websocket.DialOptions{HTTPHeader: h, HTTPClient: in.cfg.HTTP})
	switch {
	case err == nil:
		return ws, nil, nil, ""
	case resp != nil && resp.StatusCode != http.StatusSwitchingProtocols:
		// The app answered the upgrade with a refusal of its own.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		m := &transport.Message{Header: filterHeader(resp.Header), Body: body}
		m.Header[transport.HeaderStatus] = strconv.Itoa(resp.StatusCode)
		return nil, m, nil, ""
	case errors.Is(ctx.Err(), context.Canceled):
		return nil, nil, callerr.New(InboundID, callerr.StatusClientClosed, "the caller went away while opening a stream to %s.%s", service, endpoint), transport.ErrorCaller
	case ctx.Err() != nil:
		return nil, nil, callerr.New(InboundID, http.StatusGatewayTimeout, "budget spent opening the stream to %s.%s", service, endpoint), transport.ErrorTimeout
	case transport.IsConnectError(err):
		return nil, nil, callerr.New(InboundID, http.StatusServiceUnavailable, "opening a stream to the app of %q at %s: %v", service, base, err), transport.ErrorUnavailable
	}
	return nil, nil, callerr.New(InboundID, http.StatusBadGateway, "opening a stream to the app of %q at %s: %v", service, base, err), transport.ErrorApp
}
