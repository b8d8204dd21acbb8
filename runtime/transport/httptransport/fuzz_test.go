package httptransport

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// panicWatch is a slog.Handler that remembers whether net/http logged a recovered panic.
type panicWatch struct {
	mu   sync.Mutex
	seen []string
}

func (h *panicWatch) Enabled(context.Context, slog.Level) bool { return true }
func (h *panicWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		h.mu.Lock()
		h.seen = append(h.seen, r.Message)
		h.mu.Unlock()
	}
	return nil
}
func (h *panicWatch) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *panicWatch) WithGroup(string) slog.Handler      { return h }

// FuzzServerRequest writes raw bytes as an HTTP request to a real listener whose Accept
// loop echoes, and checks that nothing panics on either side.
func FuzzServerRequest(f *testing.F) {
	for _, s := range []string{
		"POST /greeter/Greeter.Hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a%zz/b HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
		"POST http://h/a/b HTTP/1.1\r\nHost: x\r\nMicro-Service: other\r\nX: 1\r\nX: 2\r\n\r\n",
		"POST * HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n",
		"POST /a/b HTTP/1.0\r\n\r\n",
		"\x00\xff garbage",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nMicro-Stream: 1\r\nConnection: Upgrade\r\nUpgrade: micro-stream/1\r\nContent-Length: 0\r\n\r\n\x00\x00\x00\x01\x00",
		"POST /a/b HTTP/1.1\r\nHost: x\r\nMicro-Stream: 1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: micro-stream/1\r\nContent-Length: 2\r\n\r\n{}\xff\xff\xff\xff",
	} {
		f.Add([]byte(s))
	}
	watch := &panicWatch{}
	tr := New(Options{MaxBody: 1 << 10, Logger: slog.New(watch), ReadHeaderTimeout: time.Second, BodyTimeout: time.Second})
	defer tr.Close()
	l := serve(f, tr, echo)
	f.Fuzz(func(t *testing.T, raw []byte) {
		nc, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, err := nc.Write(raw); err != nil {
			return // the server may close early on garbage
		}
		_ = nc.(*net.TCPConn).CloseWrite()
		_ = nc.SetReadDeadline(time.Now().Add(testTimeout))
		var out bytes.Buffer
		_, _ = io.Copy(&out, nc)
		watch.mu.Lock()
		defer watch.mu.Unlock()
		if len(watch.seen) > 0 {
			t.Fatalf("request %q: server logged %v", raw, watch.seen)
		}
	})
}
