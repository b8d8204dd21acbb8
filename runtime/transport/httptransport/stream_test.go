package httptransport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/transport"
)

// openStream dials addr and sends the first message of a stream.
func openStream(t testing.TB, tr *Transport, addr, body string) *clientConn {
	t.Helper()
	c := dial(t, tr, addr)
	if err := c.Send(context.Background(), req("greeter", "Greeter.Chat", body, transport.HeaderStream, "1")); err != nil {
		t.Fatalf("open stream: %v", err)
	}
	if c.Reusable() {
		t.Error("a stream conn reports Reusable")
	}
	return c
}

func msg(body string, kv ...string) *transport.Message {
	h := make(map[string]string)
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	return &transport.Message{Header: h, Body: []byte(body)}
}

func mustSend(t testing.TB, c transport.Conn, m *transport.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := c.Send(ctx, m); err != nil {
		t.Fatalf("send %q: %v", m.Body, err)
	}
}

func mustRecv(t testing.TB, c transport.Conn, want string) *transport.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	m, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("recv (want %q): %v", want, err)
	}
	if string(m.Body) != want {
		t.Fatalf("recv: body %q, want %q", m.Body, want)
	}
	return m
}

func recvEOF(t testing.TB, c transport.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	m, err := c.Recv(ctx)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("recv: got %v, %v; want io.EOF", m, err)
	}
}

// run runs f in a goroutine whose t.Fatal is reported; the returned wait joins it.
func run(f func() error) (wait func() error) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(testTimeout):
			return errors.New("timed out")
		}
	}
}

func TestStreamInterleaved(t *testing.T) {
	tr := newTransport(t, Options{})
	serverEOF := make(chan error, 1)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		first, err := c.Recv(ctx)
		if err != nil || string(first.Body) != "hello" || first.Header[transport.HeaderStream] != "1" ||
			first.Header[transport.HeaderEndpoint] != "Greeter.Chat" {
			serverEOF <- fmt.Errorf("first message %v, %v", first, err)
			return
		}
		// Alternate, then a burst each way.
		for range 5 {
			m, err := c.Recv(ctx)
			if err != nil {
				serverEOF <- err
				return
			}
			if err := c.Send(ctx, msg("re:"+string(m.Body), "X-Seq", m.Header["X-Seq"])); err != nil {
				serverEOF <- err
				return
			}
		}
		for i := range 3 {
			if err := c.Send(ctx, msg("burst"+strconv.Itoa(i))); err != nil {
				serverEOF <- err
				return
			}
		}
		for range 3 {
			if _, err := c.Recv(ctx); err != nil {
				serverEOF <- err
				return
			}
		}
		_, err = c.Recv(ctx)
		serverEOF <- err
	})
	c := openStream(t, tr, l.Addr(), "hello")
	for i := range 5 {
		s := strconv.Itoa(i)
		mustSend(t, c, msg("m"+s, "X-Seq", s))
		m := mustRecv(t, c, "re:m"+s)
		if m.Header["X-Seq"] != s {
			t.Fatalf("header X-Seq = %q, want %q", m.Header["X-Seq"], s)
		}
	}
	for i := range 3 {
		mustSend(t, c, msg("up"+strconv.Itoa(i)))
	}
	for i := range 3 {
		mustRecv(t, c, "burst"+strconv.Itoa(i))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-serverEOF:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("server's Recv after the client closed: %v, want io.EOF", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("server's Recv did not return after the client closed")
	}
}

func TestStreamAfterPlainCall(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		ctx := context.Background()
		m, err := c.Recv(ctx)
		if err != nil || m.Header[transport.HeaderStream] != "1" {
			_ = c.Send(ctx, msg("plain"))
			_ = c.Close()
			return
		}
		defer c.Close()
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				return
			}
			if err := c.Send(ctx, m); err != nil {
				return
			}
		}
	})
	c := dial(t, tr, l.Addr())
	m, err := call(context.Background(), c, req("greeter", "Greeter.Hello", "x"))
	if err != nil || string(m.Body) != "plain" {
		t.Fatalf("plain call: %v, %v", m, err)
	}
	if !c.Reusable() {
		t.Fatal("conn not reusable after a plain call")
	}
	mustSend(t, c, req("greeter", "Greeter.Chat", "", transport.HeaderStream, "1"))
	mustSend(t, c, msg("echo me"))
	mustRecv(t, c, "echo me")
}

func TestStreamServerCloses(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		_ = c.Send(ctx, msg("one"))
		_ = c.Send(ctx, msg("two"))
	})
	c := openStream(t, tr, l.Addr(), "")
	mustRecv(t, c, "one")
	mustRecv(t, c, "two")
	recvEOF(t, c)
	recvEOF(t, c)
}

func TestStreamServerClosesAtOnce(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		if _, err := c.Recv(context.Background()); err == nil {
			_ = c.Close()
		}
	})
	c := openStream(t, tr, l.Addr(), "x")
	recvEOF(t, c)
}

func TestStreamFailingSideSendsStatus(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		_ = c.Send(ctx, msg("ok"))
		_ = c.Send(ctx, msg(`{"detail":"app died"}`, transport.HeaderStatus, "502"))
	})
	c := openStream(t, tr, l.Addr(), "")
	mustRecv(t, c, "ok")
	m := mustRecv(t, c, `{"detail":"app died"}`)
	if m.Header[transport.HeaderStatus] != "502" {
		t.Fatalf("status %q, want 502", m.Header[transport.HeaderStatus])
	}
	recvEOF(t, c)
}

func TestStreamRefused(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		_ = c.Send(ctx, msg(`{"detail":"no node"}`, transport.HeaderStatus, "503", "Content-Type", "application/json"))
	})
	c := openStream(t, tr, l.Addr(), "")
	m := mustRecv(t, c, `{"detail":"no node"}`)
	if m.Header[transport.HeaderStatus] != "503" || m.Header["Content-Type"] != "application/json" {
		t.Fatalf("header %v, want status 503 and the Content-Type", m.Header)
	}
	recvEOF(t, c)
	if err := c.Send(context.Background(), msg("more")); err == nil {
		t.Fatal("Send on a refused stream succeeded")
	}
	if c.Reusable() {
		t.Fatal("a refused stream conn reports Reusable")
	}
}

func TestStreamWithoutUpgradeIsBadRequest(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, echo)
	nc, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _ = io.WriteString(nc, "POST /greeter/Greeter.Chat HTTP/1.1\r\nHost: x\r\nMicro-Stream: 1\r\nContent-Length: 0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
}

// rawStream writes a stream's upgrade request followed by early bytes, and returns the
// connection and a reader positioned after the 101 response.
func rawStream(t *testing.T, addr string, early []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	r := "POST /greeter/Greeter.Chat HTTP/1.1\r\nHost: x\r\nMicro-Stream: 1\r\nConnection: Upgrade\r\nUpgrade: " +
		upgradeToken + "\r\nContent-Length: 0\r\n\r\n"
	if _, err := nc.Write(append([]byte(r), early...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	_ = nc.SetReadDeadline(time.Now().Add(testTimeout))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	_ = nc.SetReadDeadline(time.Time{})
	return nc, br
}

// recvServer serves streams whose second Recv's result goes to the returned channel.
func recvServer(t *testing.T, tr *Transport) (transport.Listener, chan error) {
	got := make(chan error, 1)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if _, err := c.Recv(ctx); err != nil {
			got <- err
			return
		}
		m, err := c.Recv(ctx)
		if err == nil {
			err = fmt.Errorf("no error; message %q", m.Body)
		}
		got <- err
	})
	return l, got
}

func frame(payload []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

func TestStreamBadFrames(t *testing.T) {
	tr := newTransport(t, Options{MaxBody: 1 << 10, MaxHeaderBytes: 256})
	l, got := recvServer(t, tr)
	for _, tc := range []struct {
		name  string
		bytes []byte
		want  error
	}{
		{"oversize", binary.BigEndian.AppendUint32(nil, 1<<20), ErrFrameTooLarge},
		{"header count overruns", frame([]byte{9, 1, 'a'}), errMalformed},
		{"bad varint", frame([]byte{0xff}), errMalformed},
		{"value overruns", frame([]byte{1, 1, 'A', 5, 'x'}), errMalformed},
		{"bad header name", frame([]byte{1, 1, ' ', 0}), errMalformed},
		{"torn", frame([]byte{0, 'b', 'o', 'd', 'y'})[:6], io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, _ := rawStream(t, l.Addr(), nil)
			if _, err := nc.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			_ = nc.Close() // ends a torn frame; the others fail before reading on
			select {
			case err := <-got:
				if !errors.Is(err, tc.want) {
					t.Fatalf("server Recv: %v, want %v", err, tc.want)
				}
				t.Log(err)
			case <-time.After(testTimeout):
				t.Fatal("server Recv did not return")
			}
		})
	}
}

func TestStreamEarlyFramesKept(t *testing.T) {
	tr := newTransport(t, Options{})
	got := make(chan string, 4)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				close(got)
				return
			}
			got <- string(m.Body)
		}
	})
	f1, _ := appendFrame(nil, msg("a", "K", "v"), 256, 1024)
	f2, _ := appendFrame(nil, msg("b"), 256, 1024)
	nc, _ := rawStream(t, l.Addr(), append(f1, f2...))
	_ = nc.(*net.TCPConn).CloseWrite()
	var bodies []string
	for b := range got {
		bodies = append(bodies, b)
	}
	if fmt.Sprint(bodies) != "[ a b]" {
		t.Fatalf("server received %q, want the first message and then a, b", bodies)
	}
}

func TestStreamFrameTooLargeToSend(t *testing.T) {
	tr := newTransport(t, Options{MaxBody: 1 << 10})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		for {
			m, err := c.Recv(ctx)
			if err != nil {
				return
			}
			if err := c.Send(ctx, m); err != nil {
				return
			}
		}
	})
	c := openStream(t, tr, l.Addr(), "")
	err := c.Send(context.Background(), msg(string(make([]byte, 2<<10))))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversize Send: %v, want ErrFrameTooLarge", err)
	}
	err = c.Send(context.Background(), msg("x", "Bad Name", "v"))
	if err == nil {
		t.Fatal("Send with a bad header name succeeded")
	}
	// Nothing was written: the stream still works.
	mustSend(t, c, msg("fine"))
	mustRecv(t, c, "fine")
}

func TestStreamRecvDeadline(t *testing.T) {
	tr := newTransport(t, Options{})
	release := make(chan struct{})
	serverErr := make(chan error, 1)
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		if _, err := c.Recv(context.Background()); err != nil {
			return
		}
		// The server's own Recv deadline: nothing comes.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := c.Recv(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			serverErr <- fmt.Errorf("server Recv: %v, want DeadlineExceeded", err)
			return
		}
		<-release
		serverErr <- c.Send(context.Background(), msg("late"))
	})
	c := openStream(t, tr, l.Addr(), "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := c.Recv(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client Recv: %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	wait := run(func() error { _, err := c.Recv(ctx); return err })
	cancel()
	if err := wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("client Recv after cancel: %v, want Canceled", err)
	}
	// A Recv that timed out before a frame began leaves the stream usable.
	close(release)
	mustRecv(t, c, "late")
	if err := <-serverErr; err != nil {
		t.Fatal(err)
	}
}

func TestStreamConcurrentSendRecv(t *testing.T) {
	const senders, each = 4, 50
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		if _, err := c.Recv(ctx); err != nil {
			return
		}
		// Echo, with receiving and sending on different goroutines.
		ch := make(chan *transport.Message, 8)
		go func() {
			defer close(ch)
			for {
				m, err := c.Recv(ctx)
				if err != nil {
					return
				}
				ch <- m
			}
		}()
		for m := range ch {
			if err := c.Send(ctx, m); err != nil {
				return
			}
		}
	})
	c := openStream(t, tr, l.Addr(), "")
	var wg sync.WaitGroup
	errs := make(chan error, senders+1)
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				if err := c.Send(context.Background(), msg(fmt.Sprintf("%d-%d", s, i))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	seen := make(map[string]bool)
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		for range senders * each {
			m, err := c.Recv(ctx)
			if err != nil {
				errs <- err
				return
			}
			seen[string(m.Body)] = true
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != senders*each {
		t.Fatalf("received %d distinct messages, want %d", len(seen), senders*each)
	}
	_ = c.Close()
	if err := c.Send(context.Background(), msg("x")); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
}

func TestStreamCloseUnblocksRecv(t *testing.T) {
	tr := newTransport(t, Options{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if _, err := c.Recv(ctx); err == nil {
			_, _ = c.Recv(ctx)
		}
	})
	c := openStream(t, tr, l.Addr(), "")
	mustSend(t, c, msg("x")) // the server's Recv switches to the stream
	wait := run(func() error { _, err := c.Recv(context.Background()); return err })
	_ = c.Close()
	if err := wait(); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Recv during Close: %v, want ErrClosed", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, m := range []*transport.Message{
		msg(""), msg("body"), msg("x", "Micro-Status", "503", "K", ""),
	} {
		b, err := appendFrame(nil, m, 256, 1024)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0, 0, 0, 1, 0xff})
	f.Add([]byte{0, 0, 0, 3, 1, 1, 'a'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readFrame(bytes.NewReader(b), 256, 1024)
		if err != nil {
			return
		}
		if len(m.Body) > 1024 {
			t.Fatalf("body of %d bytes passed the limit", len(m.Body))
		}
		again, err := appendFrame(nil, m, 256, 1024)
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		m2, err := readFrame(bytes.NewReader(again), 256, 1024)
		if err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		if !bytes.Equal(m.Body, m2.Body) || fmt.Sprint(m.Header) != fmt.Sprint(m2.Header) {
			t.Fatalf("round trip: %v then %v", m, m2)
		}
	})
}

// BenchmarkStreamOneWay measures messages per second sent one way on one stream: 64-byte
// bodies with one header, the server receiving.
func BenchmarkStreamOneWay(b *testing.B) {
	tr := newTransport(b, Options{})
	done := make(chan int, 1)
	l := serve(b, tr, func(c transport.Conn) {
		defer c.Close()
		ctx := context.Background()
		n := 0
		for {
			if _, err := c.Recv(ctx); err != nil {
				done <- n - 1 // the first message opened the stream
				return
			}
			n++
		}
	})
	c := openStream(b, tr, l.Addr(), "")
	m := msg(string(make([]byte, 64)), "X-Seq", "1")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.Send(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.Close()
	n := <-done
	b.StopTimer()
	if n != b.N {
		b.Fatalf("server received %d messages, want %d", n, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func TestStreamSendDeadline(t *testing.T) {
	tr := newTransport(t, Options{})
	release := make(chan struct{})
	l := serve(t, tr, func(c transport.Conn) {
		defer c.Close()
		if _, err := c.Recv(context.Background()); err == nil {
			<-release // read nothing more: the client's writes back up
		}
	})
	defer close(release)
	c := openStream(t, tr, l.Addr(), "")
	big := msg(string(make([]byte, 1<<20)))
	var err error
	for range 1000 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err = c.Send(ctx, big)
		cancel()
		if err != nil {
			break
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send to a peer that does not read: %v, want DeadlineExceeded", err)
	}
	// Part of a frame may be out: the write side is done.
	if err := c.Send(context.Background(), msg("x")); err == nil {
		t.Fatal("Send after a failed Send succeeded")
	}
}
