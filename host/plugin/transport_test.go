package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"github.com/microhost/micro/runtime/pool"
	"github.com/microhost/micro/runtime/transport"
)

// tcpBin is the test transport plugin (testdata/tcpplugin), built by TestMain.
var tcpBin string

// openTransport opens the test transport plugin with cfg (Name and Path default to the
// test plugin) and closes it when the test ends.
func openTransport(t testing.TB, cfg TransportConfig) (*Transport, *logBuffer) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "tcp"
	}
	if cfg.Path == "" {
		cfg.Path = tcpBin
	}
	log, buf := newLogger()
	tr, err := OpenTransport(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("OpenTransport: %v\nlog:\n%s", err, buf)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, buf
}

// echo serves l until it closes: each conn answers every request with its body and an
// "Echo" header, until the peer closes it. A request with header "Hold" waits for hold to
// be closed first; got receives every request.
type echo struct {
	hold chan struct{}
	got  chan *transport.Message
	wg   sync.WaitGroup
}

func serveEcho(t testing.TB, l transport.Listener) *echo {
	e := &echo{hold: make(chan struct{}), got: make(chan *transport.Message, 100)}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, transport.ErrClosed) {
					t.Errorf("Accept: %v", err)
				}
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				ctx := context.Background()
				for {
					m, err := c.Recv(ctx)
					if err != nil {
						return
					}
					select {
					case e.got <- m:
					default:
					}
					if m.Header["Hold"] != "" {
						<-e.hold
					}
					if err := c.Send(ctx, &transport.Message{Header: map[string]string{"Echo": m.Header["N"]}, Body: m.Body}); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		e.wg.Wait()
	})
	return e
}

// call sends one request with header N=n on c and checks the echo.
func call(ctx context.Context, c transport.Conn, n int) error {
	body := fmt.Sprintf("hello %d", n)
	if err := c.Send(ctx, &transport.Message{Header: map[string]string{"N": fmt.Sprint(n)}, Body: []byte(body)}); err != nil {
		return err
	}
	m, err := c.Recv(ctx)
	if err != nil {
		return err
	}
	if m.Header["Echo"] != fmt.Sprint(n) || string(m.Body) != body {
		return fmt.Errorf("reply %v %q, want Echo=%d %q", m.Header, m.Body, n, body)
	}
	return nil
}

// pair opens a client and a server transport plugin process, and an echo listener on the
// server's.
func pair(t *testing.T, cfg TransportConfig) (client, server *Transport, l transport.Listener, e *echo) {
	t.Helper()
	client, _ = openTransport(t, cfg)
	server, _ = openTransport(t, cfg)
	l, err := server.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	return client, server, l, serveEcho(t, l)
}

func TestTransportRoundTrip(t *testing.T) {
	client, _, l, _ := pair(t, TransportConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	for i := range 5 { // sequential calls on one conn
		if err := call(ctx, c, i); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if !c.(pool.Reusable).Reusable() {
			t.Fatalf("conn not reusable after call %d", i)
		}
	}
	// Several conns at once.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c, err := client.Dial(ctx, l.Addr())
			if err != nil {
				t.Errorf("Dial %d: %v", i, err)
				return
			}
			defer c.Close()
			if err := call(ctx, c, 100+i); err != nil {
				t.Errorf("conn %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Send(ctx, &transport.Message{}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after Close = %v, want ErrClosed", err)
	}
}

func TestTransportDialUnreachable(t *testing.T) {
	client, _ := openTransport(t, TransportConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = client.Dial(ctx, addr)
	if !transport.IsConnectError(err) {
		t.Fatalf("Dial to a closed port = %v, want a connect error", err)
	}
	t.Logf("dial error: %v", err)
}

func TestTransportRecvDeadline(t *testing.T) {
	client, _, l, e := pair(t, TransportConfig{})
	defer close(e.hold)
	c, err := client.Dial(context.Background(), l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(context.Background(), &transport.Message{Header: map[string]string{"Hold": "1"}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Recv(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv past its deadline = %v, want DeadlineExceeded", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Recv did not return after its deadline")
	}
	// The conn has failed; it says so.
	if _, err := c.Recv(context.Background()); err == nil {
		t.Fatal("Recv on a conn that timed out succeeded")
	}
}

// waitRestart waits until tr runs a plugin process other than old.
func waitRestart(t *testing.T, tr *Transport, old int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if pid := tr.pid(); pid != 0 && pid != old {
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the plugin (pid %d) was not restarted", old)
	return 0
}

// callOnce dials addr and makes one call.
func callOnce(ctx context.Context, tr *Transport, addr string, n int) error {
	c, err := tr.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return call(ctx, c, n)
}

func TestTransportPluginKilled(t *testing.T) {
	cfg := TransportConfig{restartMin: 20 * time.Millisecond, restartMax: 200 * time.Millisecond}
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			client, server, l, e := pair(t, cfg)
			addr := l.Addr()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Send(ctx, &transport.Message{Header: map[string]string{"Hold": "1"}}); err != nil {
				t.Fatal(err)
			}
			<-e.got // the server holds the call
			victim := server
			if side == "client" {
				victim = client
			}
			old := victim.pid()
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// The call in flight fails, well before ctx's deadline.
			start := time.Now()
			_, err = c.Recv(ctx)
			if err == nil {
				t.Fatal("Recv succeeded after the plugin was killed")
			}
			if ctx.Err() != nil {
				t.Fatalf("Recv hung until its deadline: %v", err)
			}
			t.Logf("in-flight call failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			close(e.hold)

			waitRestart(t, victim, old)
			// New calls work, and the listener accepts again, on the same address.
			deadline := time.Now().Add(30 * time.Second)
			for {
				err := callOnce(ctx, client, addr, 7)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no call succeeded after the restart: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got := l.Addr(); got != addr {
				t.Fatalf("listener address after restart = %s, want %s", got, addr)
			}
		})
	}
}

func TestTransportOversize(t *testing.T) {
	client, _, l, _ := pair(t, TransportConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := &transport.Message{Header: map[string]string{"K": "v"}, Body: make([]byte, transportpb.MaxMessageSize)}
	err = c.Send(ctx, big)
	want := fmt.Sprintf("message of %d bytes exceeds the limit of %d", transportpb.MaxMessageSize+2, transportpb.MaxMessageSize)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Send of an oversized message = %v, want %q", err, want)
	}
	// Nothing was sent; the conn still works.
	if err := call(ctx, c, 1); err != nil {
		t.Fatalf("call after a refused Send: %v", err)
	}

	// The plugin's own transport hands the sdk a message over the limit: the sdk refuses
	// it, and micro says why.
	server, _ := openTransport(t, TransportConfig{env: []string{"TCPPLUGIN_BIG_REPLY=1"}})
	bl, err := server.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	errc := make(chan error, 1)
	go func() {
		sc, err := bl.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer sc.Close()
		_, err = sc.Recv(ctx)
		errc <- err
	}()
	c2, err := client.Dial(ctx, bl.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Send(ctx, &transport.Message{Body: []byte("small")}); err != nil {
		t.Fatal(err)
	}
	err = <-errc
	if err == nil || !strings.Contains(err.Error(), "exceeds the limit of") {
		t.Fatalf("Recv of an oversized message from the plugin = %v", err)
	}
	t.Logf("server side: %v", err)
}

func TestTransportMalformed(t *testing.T) {
	for _, tc := range []struct {
		mode, want string
	}{
		{"oversize", fmt.Sprintf("exceeds the limit of %d", transportpb.MaxMessageSize)},
		{"hugeframe", "exceeds the limit of"},
		{"empty", "malformed frame from the plugin: an empty frame"},
		{"twice", "malformed frame from the plugin: connected, on an established connection"},
		{"early", "malformed frame from the plugin: a message, want connected"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			tr, _ := openTransport(t, TransportConfig{env: []string{"TCPPLUGIN_RAW=" + tc.mode}})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := tr.Dial(ctx, "127.0.0.1:1")
			if err == nil {
				defer c.Close()
				_, err = c.Recv(ctx)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if ctx.Err() != nil {
				t.Fatal("the error came only at the deadline")
			}
			t.Logf("%v", err)
		})
	}
}

func TestTransportProtocolMismatch(t *testing.T) {
	_, err := OpenTransport(context.Background(), TransportConfig{Name: "tcp", Path: tcpBin, env: []string{"TCPPLUGIN_PROTOCOL=2"}}, nil)
	want := `transport plugin "tcp" speaks protocol 2, micro speaks 1`
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "sdk/transport") {
		t.Fatalf("OpenTransport of a protocol 2 plugin = %v, want %q", err, want)
	}
}

func TestTransportInitFails(t *testing.T) {
	_, err := OpenTransport(context.Background(), TransportConfig{Name: "tcp", Path: tcpBin, URL: "tcp://nowhere", env: []string{"TCPPLUGIN_INIT_FAIL=1"}}, nil)
	want := `transport plugin "tcp": init: backend "tcp://nowhere" unreachable`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("OpenTransport = %v, want %q", err, want)
	}
}

func TestTransportConfigRedactsURL(t *testing.T) {
	c := TransportConfig{Name: "nats", URL: "nats://user:secret@127.0.0.1:4222"}
	for _, s := range []string{c.String(), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c)} {
		if strings.Contains(s, "secret") {
			t.Fatalf("%q shows the password", s)
		}
	}
}

func TestTransportCloseEndsPeer(t *testing.T) {
	client, _ := openTransport(t, TransportConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The server side closes after its reply: the client reads the reply, then io.EOF.
	server2, _ := openTransport(t, TransportConfig{})
	l2, err := server2.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	go func() {
		c, err := l2.Accept()
		if err != nil {
			return
		}
		m, err := c.Recv(ctx)
		if err == nil {
			c.Send(ctx, m)
		}
		c.Close()
	}()
	c, err := client.Dial(ctx, l2.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(ctx, &transport.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Recv(ctx); err != nil || string(m.Body) != "x" {
		t.Fatalf("Recv = %v, %v", m, err)
	}
	// The pool learns that the conn cannot carry another call.
	for deadline := time.Now().Add(10 * time.Second); c.(pool.Reusable).Reusable(); {
		if time.Now().After(deadline) {
			t.Fatal("conn still reusable after the peer closed it")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := c.Recv(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after the peer closed = %v, want io.EOF", err)
	}
}
