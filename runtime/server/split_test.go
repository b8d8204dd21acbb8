package server

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestSplit: each connection goes to the listener its first bytes ask for, and whoever gets
// it reads those bytes again.
func TestSplit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls := Split(ln, 200*time.Millisecond, 1<<10)
	defer ls.Fast.Close()
	for _, tc := range []struct {
		name, send string
		want       net.Listener
	}{
		{"plain request", "POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", ls.Fast},
		{"upgrade", "GET /a/b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUPGRADE: websocket\r\n\r\n", ls.Upgrade},
		{"h2c", h2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", ls.H2},
		{"the start of the h2c preface only", "PRI * HTTP/2.0\r\n\r\n", ls.Fast},
		{"a header named like upgrade", "GET / HTTP/1.1\r\nX-Upgrade: no\r\n\r\n", ls.Fast},
		{"too slow", "GET / HT", ls.Fast},
		{"too long", "GET /" + strings.Repeat("a", 2000), ls.Fast},
		{"not http", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ls.Fast},
	} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, tc.send); err != nil {
			t.Fatal(err)
		}
		want := tc.want
		got := make(chan net.Conn, 1)
		go func() {
			if a, err := want.Accept(); err == nil {
				got <- a
			}
		}()
		select {
		case a := <-got:
			b := make([]byte, len(tc.send))
			_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(a, b); err != nil || string(b) != tc.send {
				t.Errorf("%s: read %q, %v; want the bytes sent", tc.name, b, err)
			}
			a.Close()
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not routed where it belongs", tc.name)
		}
		c.Close()
	}
	// Closing one listener closes the shared one: the other stops accepting.
	ls.Fast.Close()
	for _, l := range []net.Listener{ls.Upgrade, ls.H2} {
		if _, err := l.Accept(); err == nil {
			t.Error("another listener accepts after Close")
		}
	}
}
