package security

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHandshakeSameTrustDomain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	server := localSource(t, dir, "", "m1", "greeter")
	client := localSource(t, dir, "", "m2", "frontend", "billing")
	ts := serve(t, server.ServerConfig(), server)
	ccfg := client.ClientConfig()

	id, resumed, err := dial(ts.addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	want := "spiffe://micro.local/micro/m2, spiffe://micro.local/service/frontend, spiffe://micro.local/service/billing"
	if id != want || resumed {
		t.Fatalf("server saw %q (resumed %v), want %q (full handshake)", id, resumed, want)
	}
	if _, resumed, err = dial(ts.addr, ccfg); err != nil || !resumed {
		t.Fatalf("second connection: resumed %v, err %v; want a resumed session", resumed, err)
	}
	got := client.Identity()
	if got.TrustDomain != "micro.local" || got.Micro != "m2" || strings.Join(got.Services, ",") != "frontend,billing" {
		t.Errorf("client's own identity = %+v", got)
	}
}

func TestPeerIdentityOfServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	server := localSource(t, dir, "", "m1", "greeter")
	client := localSource(t, dir, "", "m2")
	ts := serve(t, server.ServerConfig(), server)
	c, err := tls.Dial("tcp", ts.addr, client.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	id, err := client.PeerIdentity(c.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	if id.Micro != "m1" || !id.HasService("greeter") || id.HasService("other") {
		t.Errorf("server identity = %+v", id)
	}
	if _, err := client.PeerIdentity(tls.ConnectionState{}); !errContains(err, "no peer certificate") {
		t.Errorf("PeerIdentity of no certificate: %v", err)
	}
}

// TestHandshakeRefused checks the errors on both sides when a client is not of the trust
// domain: a rogue client that does not check the server, so that the server's check is
// what refuses it, and a micro configured with another CA or trust domain, which refuses
// the server first.
func TestHandshakeRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	server := localSource(t, dir, "", "m1", "greeter")
	ts := serve(t, server.ServerConfig(), server)

	otherCA := newTestCA(t, "micro.local")
	otherTD := newTestCA(t, "other.example")
	issue := func(ca *CA) tls.Certificate {
		c, err := ca.Issue(IdentitySpec{Micro: "rogue", Services: []string{"greeter"}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rogue := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, Certificates: certs, MinVersion: tls.VersionTLS13}
	}
	for _, tc := range []struct {
		name       string
		cfg        *tls.Config
		serverErr  string
		clientErrs string
	}{
		{"no certificate", rogue(), "client didn't provide a certificate", "certificate required"},
		{"another CA", rogue(issue(otherCA)), "client certificate is not signed by the trust domain's CA", "bad certificate"},
		{"another trust domain", rogue(issue(otherTD)), "client certificate's trust domain is other.example, not micro.local", "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := dial(ts.addr, tc.cfg)
			if !errContains(err, tc.clientErrs) {
				t.Errorf("client error = %v, want one that says %q", err, tc.clientErrs)
			}
			if err := ts.nextErr(t); !errContains(err, tc.serverErr) {
				t.Errorf("server error = %v, want one that says %q", err, tc.serverErr)
			}
		})
	}

	for _, tc := range []struct {
		name, td, clientErr string
	}{
		{"micro of another CA", "micro.local", "server certificate is not signed by the trust domain's CA"},
		{"micro of another trust domain", "other.example", "server certificate's trust domain is micro.local, not other.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := localSource(t, filepath.Join(t.TempDir(), "ca"), tc.td, "m2")
			_, _, err := dial(ts.addr, client.ClientConfig())
			if !errContains(err, tc.clientErr) {
				t.Errorf("client error = %v, want one that says %q", err, tc.clientErr)
			}
			if err := ts.nextErr(t); !errContains(err, "bad certificate") {
				t.Errorf("server error = %v, want the client's alert", err)
			}
		})
	}

	t.Run("plaintext", func(t *testing.T) {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /greeter/hello HTTP/1.1\r\nHost: x\r\n\r\n")
		if err := ts.nextErr(t); !errContains(err, "does not look like a TLS handshake") {
			t.Errorf("server error = %v", err)
		}
	})
}

// TestRenewalUnderLoad makes connections, new and resumed, while both sides renew their
// certificates every second or so: no connection may fail.
func TestRenewalUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs through several renewals")
	}
	dir := filepath.Join(t.TempDir(), "ca")
	src := func(instance string) *Source {
		s, err := NewSource(t.Context(), Options{Dir: dir, Instance: instance, TTL: 3 * time.Second,
			renewFraction: 0.4, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	server, client := src("server"), src("client")
	ts := serve(t, server.ServerConfig(), server)
	ccfg := client.ClientConfig()
	const renewals = 4
	serverCerts, clientCerts := map[*tls.Certificate]bool{}, map[*tls.Certificate]bool{}
	var n, resumed int
	for len(serverCerts) <= renewals || len(clientCerts) <= renewals {
		serverCerts[server.Certificate()] = true
		clientCerts[client.Certificate()] = true
		id, r, err := dial(ts.addr, ccfg)
		if err != nil {
			t.Fatalf("connection %d failed: %v", n, err)
		}
		if id != "spiffe://micro.local/micro/client" {
			t.Fatalf("server saw %q", id)
		}
		n++
		if r {
			resumed++
		}
		if err := server.Health(); err != nil {
			t.Fatalf("server health: %v", err)
		}
	}
	if f := ts.failed.Load(); f != 0 {
		t.Fatalf("%d handshakes failed on the server", f)
	}
	if resumed == 0 || resumed == n {
		t.Errorf("%d of %d connections resumed; want some of each", resumed, n)
	}
	t.Logf("%d connections (%d resumed) through %d server and %d client certificates",
		n, resumed, len(serverCerts), len(clientCerts))
}

// TestSetServices checks that a new certificate names the new services at once, and that
// a resumed session does not carry the old identity to the server.
func TestSetServices(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	server := localSource(t, dir, "", "m1", "greeter")
	client := localSource(t, dir, "", "m2", "a")
	ts := serve(t, server.ServerConfig(), server)
	ccfg := client.ClientConfig()
	if id, _, err := dial(ts.addr, ccfg); err != nil || id != "spiffe://micro.local/micro/m2, spiffe://micro.local/service/a" {
		t.Fatalf("first call: %q, %v", id, err)
	}
	if err := client.SetServices([]string{"b", "c"}); err != nil {
		t.Fatal(err)
	}
	id, resumed, err := dial(ts.addr, ccfg)
	if err != nil || resumed || id != "spiffe://micro.local/micro/m2, spiffe://micro.local/service/b, spiffe://micro.local/service/c" {
		t.Fatalf("after SetServices: %q (resumed %v), %v", id, resumed, err)
	}
	if err := client.SetServices([]string{"Bad/name"}); !errContains(err, `name "Bad/name"`) {
		t.Errorf("SetServices of a bad name: %v", err)
	}
	if got := client.Identity().Services; strings.Join(got, ",") != "b,c" {
		t.Errorf("services after a refused SetServices: %v", got)
	}
}
