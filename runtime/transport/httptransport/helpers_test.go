package httptransport

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// testTimeout bounds waits that only a bug would make long.
const testTimeout = 10 * time.Second

// serve starts a Listener on 127.0.0.1:0 whose Accept loop runs handle for each call in its
// own goroutine. Cleanup closes the listener and waits for the loop and the handlers.
func serve(t testing.TB, tr *Transport, handle func(transport.Conn)) transport.Listener {
	t.Helper()
	l, err := tr.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, transport.ErrClosed) {
					t.Errorf("accept: %v", err)
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close listener: %v", err)
		}
		wg.Wait()
	})
	return l
}

// echo answers each call with its own headers and body. The request header X-Status, when
// present, sets the response status. A request error is answered with its status.
func echo(c transport.Conn) {
	defer c.Close()
	ctx := context.Background()
	m, err := c.Recv(ctx)
	if err != nil {
		status := 500
		var re *RequestError
		if errors.As(err, &re) {
			status = re.Status
		}
		_ = c.Send(ctx, &transport.Message{
			Header: map[string]string{transport.HeaderStatus: strconv.Itoa(status), "Content-Type": "application/json"},
			Body:   []byte(`{"detail":` + strconv.Quote(err.Error()) + `}`),
		})
		return
	}
	h := make(map[string]string, len(m.Header)+1)
	for k, v := range m.Header {
		h[k] = v
	}
	if s, ok := m.Header["X-Status"]; ok {
		h[transport.HeaderStatus] = s
	}
	_ = c.Send(ctx, &transport.Message{Header: h, Body: m.Body})
}

func newTransport(t testing.TB, opts Options) *Transport {
	t.Helper()
	tr := New(opts)
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func dial(t testing.TB, tr *Transport, addr string) *clientConn {
	t.Helper()
	c, err := tr.Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*clientConn)
}

func call(ctx context.Context, c transport.Conn, m *transport.Message) (*transport.Message, error) {
	if err := c.Send(ctx, m); err != nil {
		return nil, err
	}
	return c.Recv(ctx)
}

func req(service, endpoint string, body string, kv ...string) *transport.Message {
	h := map[string]string{transport.HeaderService: service, transport.HeaderEndpoint: endpoint}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	return &transport.Message{Header: h, Body: b}
}

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
