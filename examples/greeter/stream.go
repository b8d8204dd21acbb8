package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

const (
	// streamEndpoint is the name of the streaming endpoint, served as a WebSocket.
	streamEndpoint = "Greeter.Stream"
	// streamWriteTimeout bounds writing one reply to a stream whose peer stopped reading.
	streamWriteTimeout = 10 * time.Second
)

// streamRequest is the JSON form of a Greeter.Stream message.
type streamRequest struct {
	Name string `json:"name"`
	// Die makes the greeter drop the connection at once, without a close frame, so that
	// tests can make the app side of a stream die mid-stream.
	Die bool `json:"die"`
}

// streamReply is what Greeter.Stream sends for each message it receives. Seq counts the
// messages of the stream, from 1. Error replaces Greeting when the message was unusable.
type streamReply struct {
	Greeting string `json:"greeting,omitempty"`
	Error    string `json:"error,omitempty"`
	Instance string `json:"instance"`
	Seq      int64  `json:"seq"`
}

// stream serves Greeter.Stream: it upgrades to a WebSocket and answers each message with a
// greeting, until the client closes the stream (or the greeter stops, or a message asks it
// to die).
func (s *server) stream(w http.ResponseWriter, r *http.Request) {
	if !isWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		writeError(w, http.StatusUpgradeRequired, streamEndpoint+" is a WebSocket: send GET with Upgrade: websocket")
		return
	}
	if !s.streamStarted() {
		writeError(w, http.StatusServiceUnavailable, "greeter "+s.instance+" is stopping")
		return
	}
	defer s.streams.Done()

	c, err := websocket.Accept(w, r, nil) // on failure, Accept has answered the request
	if err != nil {
		s.logger.Warn("stream upgrade failed", "instance", s.instance, "err", err)
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(maxBody)
	// When the greeter stops, it ends the stream with a close frame saying so.
	stopClosing := context.AfterFunc(s.stopping, func() {
		_ = c.Close(websocket.StatusGoingAway, "greeter "+s.instance+" is stopping")
	})
	defer stopClosing()

	budget := r.Header.Get(timeoutHeader)
	s.logger.Info("stream opened", "instance", s.instance, "budget", budget)
	// The request's context is not cancelled while the handler runs (the connection is
	// hijacked), so it bounds nothing here; it carries the request's values.
	ctx := r.Context()
	var seq int64
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			switch status := websocket.CloseStatus(err); status {
			case websocket.StatusNormalClosure, websocket.StatusGoingAway:
				s.logger.Info("stream closed", "instance", s.instance, "messages", seq, "status", status)
			default:
				s.logger.Warn("stream ended", "instance", s.instance, "messages", seq, "err", err)
			}
			return
		}
		req, perr := parseStreamMessage(data)
		if req.Die {
			s.logger.Warn("dying mid-stream, as a message asked", "instance", s.instance, "messages", seq)
			_ = c.CloseNow() // closes the TCP connection with no close frame
			return
		}
		seq++
		rep := streamReply{Instance: s.instance, Seq: seq}
		if perr != nil {
			rep.Error = perr.Error()
		} else {
			rep.Greeting = "Hello, " + req.Name + "!"
		}
		out, err := json.Marshal(rep)
		if err != nil {
			s.logger.Error("encoding a stream reply", "instance", s.instance, "err", err)
			return
		}
		wctx, cancel := context.WithTimeout(ctx, streamWriteTimeout)
		err = c.Write(wctx, websocket.MessageText, out)
		cancel()
		if err != nil {
			s.logger.Warn("stream write failed", "instance", s.instance, "seq", seq, "err", err)
			return
		}
	}
}

// parseStreamMessage reads one Greeter.Stream message: a JSON object {"name":…} (or
// {"die":true}), or else any text, which is the name itself.
func parseStreamMessage(data []byte) (streamRequest, error) {
	var req streamRequest
	text := bytes.TrimSpace(data)
	if len(text) > 0 && text[0] == '{' {
		if err := json.Unmarshal(text, &req); err != nil {
			return streamRequest{}, errors.New("invalid JSON message: " + err.Error())
		}
		if req.Name == "" && !req.Die {
			return req, errors.New(`"name" is required`)
		}
		return req, nil
	}
	if len(text) == 0 {
		return req, errors.New(`empty message: send a name, or {"name":…}`)
	}
	req.Name = string(text)
	return req, nil
}

// isWebSocketUpgrade reports whether r asks for a WebSocket.
func isWebSocketUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		for p := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "websocket") {
				return true
			}
		}
	}
	return false
}

// streamStarted counts a new stream, unless the greeter is stopping; then it reports
// false. A true answer must be matched by s.streams.Done.
func (s *server) streamStarted() bool {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	if s.stopping.Err() != nil {
		return false
	}
	s.streams.Add(1)
	return true
}

// endStreams closes the open streams with 1001 (going away) and refuses new ones. It
// returns at once; close waits for the streams to end.
func (s *server) endStreams() {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	s.stop()
}
