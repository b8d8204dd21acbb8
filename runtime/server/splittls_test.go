package server

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/security"
)

// TestSplitTLS: a connection reaches a listener only after a TLS handshake within the
// timeout and an identification that accepts it; plaintext, a silent client, one that
// vanishes mid-handshake and one identify refuses are closed and reported, and never
// routed.
func TestSplitTLS(t *testing.T) {
	ca, err := security.OpenLocalCA(t.TempDir(), security.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.Issue(security.IdentitySpec{Micro: "server"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := ca.Issue(security.IdentitySpec{Services: []string{"frontend"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reported []string
	cfg := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13}
	identify := func(cs tls.ConnectionState) (Peer, error) {
		if cs.PeerCertificates[0].URIs[0].Path == "/service/refused" {
			return Peer{}, errors.New("not of this trust domain")
		}
		return Peer{ID: cs.PeerCertificates[0].URIs[0].String(), Services: []string{"frontend"}}, nil
	}
	ls := SplitTLS(ln, 300*time.Millisecond, 1<<10, cfg, identify, func(_ net.Addr, err error) {
		mu.Lock()
		reported = append(reported, err.Error())
		mu.Unlock()
	})
	defer ls.Fast.Close()
	routed := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ls.Fast.Accept()
			if err != nil {
				return
			}
			routed <- c
		}
	}()
	addr := ln.Addr().String()

	// Refused connections: each is closed by the server, and reported.
	refusedCert, err := ca.Issue(security.IdentitySpec{Services: []string{"refused"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		talk func(c net.Conn)
	}{
		{"plaintext", func(c net.Conn) {
			_, _ = io.WriteString(c, "POST /a/b HTTP/1.1\r\nHost: x\r\nMicro-Caller: forged\r\n\r\n")
		}},
		{"silent", func(net.Conn) {}},
		{"half a hello, then gone", func(c net.Conn) { _, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) }},
		{"no certificate", func(c net.Conn) {
			_ = tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake()
		}},
		{"refused by identify", func(c net.Conn) {
			_ = tls.Client(c, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{refusedCert}}).Handshake()
		}},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		tc.talk(c)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c) // until the server closes it
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the server kept the connection open", tc.name)
		}
		c.Close()
	}
	select {
	case c := <-routed:
		t.Fatalf("a refused connection was routed: %v", c.RemoteAddr())
	default:
	}
	// The splitter reports a refusal once it has closed the connection, so the report
	// may come just after the client saw the close.
	refusals := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(reported)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(refusals()) < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := refusals(); len(got) != 5 {
		t.Errorf("%d refusals reported, want 5: %v", len(got), got)
	}

	// A caller of the trust domain is routed, with what it proved.
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{clientCert}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-routed:
		defer a.Close()
		if p := PeerOf(a); !strings.HasSuffix(p.ID, "/service/frontend") || p.Name() != "frontend" {
			t.Errorf("the routed connection proved %+v", p)
		}
		b := make([]byte, len(req))
		if _, err := io.ReadFull(a, b); err != nil || string(b) != req {
			t.Errorf("read %q, %v; want the request sent", b, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a caller of the trust domain was not routed")
	}
}
