package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// testCtx is a context for one step of a test: generous, so that only a hang trips it.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// dialStream opens Greeter.Stream on the server at base (http://host:port).
func dialStream(t *testing.T, base string, budget string) *websocket.Conn {
	t.Helper()
	opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
	if budget != "" {
		opts.HTTPHeader.Set(timeoutHeader, budget)
	}
	c, resp, err := websocket.Dial(testCtx(t), base+"/"+streamEndpoint, opts)
	if err != nil {
		t.Fatalf("dialing %s: %v (response %v)", streamEndpoint, err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// exchange sends msg as a text message and decodes the reply.
func exchange(t *testing.T, c *websocket.Conn, msg string) streamReply {
	t.Helper()
	ctx := testCtx(t)
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("sending %q: %v", msg, err)
	}
	typ, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("reading the reply to %q: %v", msg, err)
	}
	if typ != websocket.MessageText {
		t.Errorf("reply to %q is a %v message, want text", msg, typ)
	}
	var rep streamReply
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("reply to %q: %q is not JSON: %v", msg, data, err)
	}
	return rep
}

func TestStream(t *testing.T) {
	ts := testServer(t, "", false)
	c := dialStream(t, ts.URL, "2s")
	for i, tc := range []struct {
		msg, greeting, errPart string
	}{
		{`{"name":"Ada"}`, "Hello, Ada!", ""},
		{"Grace", "Hello, Grace!", ""},
		{`{}`, "", `"name" is required`},
		{`{"name":`, "", "invalid JSON"},
		{"  ", "", "empty message"},
		{` {"name":"Linus"} `, "Hello, Linus!", ""},
	} {
		rep := exchange(t, c, tc.msg)
		if rep.Seq != int64(i+1) || rep.Instance != "greeter-1" {
			t.Errorf("reply to %q: seq %d instance %q, want seq %d instance greeter-1", tc.msg, rep.Seq, rep.Instance, i+1)
		}
		if rep.Greeting != tc.greeting || (tc.errPart == "") != (rep.Error == "") || !strings.Contains(rep.Error, tc.errPart) {
			t.Errorf("reply to %q: %+v, want greeting %q, error with %q", tc.msg, rep, tc.greeting, tc.errPart)
		}
	}
	// A binary message is read like a text one; the reply is text.
	if err := c.Write(testCtx(t), websocket.MessageBinary, []byte("Bin")); err != nil {
		t.Fatal(err)
	}
	if typ, data, err := c.Read(testCtx(t)); err != nil || typ != websocket.MessageText || !strings.Contains(string(data), "Hello, Bin!") {
		t.Errorf("reply to a binary message: %v %q %v", typ, data, err)
	}
	// The client closes; the greeter answers the close handshake with the same status.
	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		t.Errorf("normal close: %v, want a clean close handshake", err)
	}

	// A second stream counts its own messages.
	c2 := dialStream(t, ts.URL, "")
	if rep := exchange(t, c2, "Ada"); rep.Seq != 1 {
		t.Errorf("first reply of a second stream: seq %d, want 1", rep.Seq)
	}
	if err := c2.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("normal close of the second stream: %v", err)
	}
}

// TestStreamDie: {"die":true} drops the connection with no close frame and no reply.
func TestStreamDie(t *testing.T) {
	ts := testServer(t, "", false)
	c := dialStream(t, ts.URL, "")
	if rep := exchange(t, c, "Ada"); rep.Greeting != "Hello, Ada!" {
		t.Fatalf("reply before dying: %+v", rep)
	}
	if err := c.Write(testCtx(t), websocket.MessageText, []byte(`{"die":true}`)); err != nil {
		t.Fatal(err)
	}
	_, data, err := c.Read(testCtx(t))
	if err == nil {
		t.Fatalf("read after die: got %q, want an error", data)
	}
	if status := websocket.CloseStatus(err); status != -1 {
		t.Errorf("read after die: close status %v (%v), want none: the greeter sends no close frame", status, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read after die: %v, want the connection to end, not the test's deadline", err)
	}
}

// TestStreamRefused: in the failing mode (SetFail, GREETER_FAIL, GREETER_FAIL_DIR) the
// upgrade is refused with micro-style JSON 500; a GET without Upgrade gets 426 and a POST 405.
func TestStreamRefused(t *testing.T) {
	refused := func(t *testing.T, base, want string) {
		t.Helper()
		c, resp, err := websocket.Dial(testCtx(t), base+"/"+streamEndpoint, nil)
		if err == nil {
			c.CloseNow()
			t.Fatal("dial succeeded, want the upgrade refused")
		}
		if resp == nil {
			t.Fatalf("dial: %v with no HTTP response, want a 500", err)
		}
		body, _ := io.ReadAll(resp.Body)
		var out map[string]string
		if resp.StatusCode != 500 || json.Unmarshal(body, &out) != nil || !strings.Contains(out["error"], want) {
			t.Errorf("refused upgrade: %d %q, want 500 with an error naming %q", resp.StatusCode, body, want)
		}
	}
	t.Run("GREETER_FAIL", func(t *testing.T) {
		refused(t, testServer(t, "", true).URL, "failing mode")
	})
	t.Run("SetFail", func(t *testing.T) {
		ts := testServer(t, "", false)
		if status, _ := post(t, ts.URL+"/Greeter.SetFail", `{"fail":true}`, ""); status != 200 {
			t.Fatalf("SetFail: %d", status)
		}
		refused(t, ts.URL, "failing mode")
		if status, _ := post(t, ts.URL+"/Greeter.SetFail", `{"fail":false}`, ""); status != 200 {
			t.Fatalf("SetFail: %d", status)
		}
		exchange(t, dialStream(t, ts.URL, ""), "Ada")
	})
	t.Run("GREETER_FAIL_DIR", func(t *testing.T) {
		dir := t.TempDir()
		s := newServer("greeter-1", "", false, slog.New(slog.DiscardHandler))
		s.failDir = dir
		ts := httptest.NewServer(s.handler())
		t.Cleanup(func() { ts.Close(); s.close() })
		if err := os.WriteFile(filepath.Join(dir, "greeter-1"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		refused(t, ts.URL, "failing mode")
	})
	t.Run("not an upgrade", func(t *testing.T) {
		ts := testServer(t, "", false)
		resp, err := http.Get(ts.URL + "/" + streamEndpoint)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired || !strings.Contains(string(body), "WebSocket") {
			t.Errorf("GET without Upgrade: %d %q, want 426 naming WebSocket", resp.StatusCode, body)
		}
		status, out := post(t, ts.URL+"/"+streamEndpoint, `{"name":"Ada"}`, "")
		if status != http.StatusMethodNotAllowed || !strings.Contains(out["error"].(string), "WebSocket") {
			t.Errorf("POST %s: %d %v, want 405", streamEndpoint, status, out)
		}
	})
}

// TestStreamStop: stopping the greeter closes the open streams with 1001, and close waits
// for them; a stream opened after the stop is refused.
func TestStreamStop(t *testing.T) {
	s := newServer("greeter-1", "", false, slog.New(slog.DiscardHandler))
	ts := httptest.NewServer(s.handler())
	defer ts.Close()
	c := dialStream(t, ts.URL, "")
	exchange(t, c, "Ada")

	// The client keeps reading, so that it answers the greeter's close handshake.
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.Read(testCtx(t))
		readErr <- err
	}()
	s.close() // returns only when the stream's handler has
	err := <-readErr
	if status := websocket.CloseStatus(err); status != websocket.StatusGoingAway {
		t.Errorf("read during the stop: %v, want close status 1001", err)
	}

	_, resp, err := websocket.Dial(testCtx(t), ts.URL+"/"+streamEndpoint, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after the stop: %v %v, want 503", resp, err)
	}
}
