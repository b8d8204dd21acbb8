package security

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// quietLogger discards what a Source logs.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestCA makes a CA of trust domain td in a new directory.
func newTestCA(t testing.TB, td string) *CA {
	t.Helper()
	ca, err := CreateCA(filepath.Join(t.TempDir(), "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// localSource returns a Source in local CA mode on the CA in dir.
func localSource(t testing.TB, dir, td, instance string, services ...string) *Source {
	t.Helper()
	s, err := NewSource(context.Background(), Options{
		TrustDomain: td, Dir: dir, Instance: instance, Services: services, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// testServer accepts TLS connections; to each client whose handshake succeeds it writes
// the client's identity, as PeerIdentity reads it, and a newline.
type testServer struct {
	addr   string
	errs   chan error // handshake errors, as many as fit
	failed atomic.Int64
}

func serve(t testing.TB, cfg *tls.Config, src *Source) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ts := &testServer{addr: ln.Addr().String(), errs: make(chan error, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := tc.HandshakeContext(ctx)
				var id Identity
				if err == nil {
					id, err = src.PeerIdentity(tc.ConnectionState())
				}
				if err != nil {
					ts.failed.Add(1)
					select {
					case ts.errs <- err:
					default:
					}
					return
				}
				io.WriteString(tc, id.String()+"\n")
			}()
		}
	}()
	return ts
}

// nextErr returns the next handshake error of the server.
func (ts *testServer) nextErr(t testing.TB) error {
	t.Helper()
	select {
	case err := <-ts.errs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the server reported no handshake error")
		return nil
	}
}

// dial makes a TLS connection to addr and returns the identity the server read from the
// client's certificate, and whether the session was resumed.
func dial(addr string, cfg *tls.Config) (id string, resumed bool, err error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", false, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	// In TLS 1.3 the client's handshake ends before the server has checked the client's
	// certificate: a refusal shows on the first read.
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		return "", false, err
	}
	return line[:len(line)-1], tc.ConnectionState().DidResume, nil
}

// writeFile writes a file, failing the test on error.
func writeFile(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
}

// marshal encodes cert and key in PEM.
func marshal(t testing.TB, cert tls.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	c, k, err := MarshalPEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

// errContains reports whether err's message contains s.
func errContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
