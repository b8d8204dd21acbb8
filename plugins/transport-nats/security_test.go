package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/abi/transportpb"
	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/transport"
	"github.com/nats-io/nats.go"
)

// microPerms is what the README's "NATS permissions" section gives a micro's NATS user.
var microPerms = &natstest.Perms{
	Publish:   []string{"micro.inbound.>", "_INBOX.>"},
	Subscribe: []string{"micro.inbound.>", "_INBOX.>"},
}

// initWith initialises a new transport with c, closed when the test ends.
func initWith(t *testing.T, c transport.Config) (*natsTransport, error) {
	t.Helper()
	tr := newNATS(nil)
	t.Cleanup(func() { _ = tr.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return tr, tr.Init(ctx, c)
}

// mustInit is initWith that fails the test on error.
func mustInit(t *testing.T, c transport.Config) *natsTransport {
	t.Helper()
	tr, err := initWith(t, c)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return tr
}

// callAndStream makes a call and a stream from client to a listener on server.
func callAndStream(t *testing.T, client, server *natsTransport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := serve(t, server, echo)
	resp, err := call(ctx, client, l.Addr(), &transport.Message{Body: []byte("hi")})
	if err != nil || string(resp.Body) != "hi" {
		t.Fatalf("call = %v, %v", resp, err)
	}
	sl := serveStreams(t, server, func(ctx context.Context, c transport.Conn) {
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
	c := dialStream(t, ctx, client, sl.Addr(), "open")
	if m := mustRecv(t, ctx, c); string(m.Body) != "open" {
		t.Fatalf("stream echo %q", m.Body)
	}
	mustSend(t, ctx, c, &transport.Message{Body: []byte("more")})
	if m := mustRecv(t, ctx, c); string(m.Body) != "more" {
		t.Fatalf("stream echo %q", m.Body)
	}
}

// isTLS reports whether tr's NATS connection runs over TLS.
func isTLS(t *testing.T, tr *natsTransport) bool {
	t.Helper()
	nc, err := tr.conn()
	if err != nil {
		t.Fatal(err)
	}
	_, err = nc.TLSConnectionState()
	return err == nil
}

// wantErr fails the test unless err says every one of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one saying %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

// TestCredentialsFile connects two micros with .creds users of an operator-mode server
// that have only the README's permissions, and makes a call and a stream between them.
func TestCredentialsFile(t *testing.T) {
	s := natstest.Start(t, natstest.WithOperator())
	a := mustInit(t, transport.Config{URL: s.URL, CredentialsFile: s.Creds(t, microPerms)})
	b := mustInit(t, transport.Config{URL: s.URL, CredentialsFile: s.Creds(t, microPerms)})
	callAndStream(t, a, b)
	callAndStream(t, b, a)
}

// TestOtherClientsKeptOut checks the README's point: a NATS user without micro's
// permissions cannot subscribe to micro.inbound.> to read calls.
func TestOtherClientsKeptOut(t *testing.T) {
	s := natstest.Start(t, natstest.WithOperator())
	errs := make(chan error, 1)
	nc, err := nats.Connect(s.URL, nats.UserCredentials(s.Creds(t, &natstest.Perms{Publish: []string{"app.>"}, Subscribe: []string{"app.>", "_INBOX.>"}})),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.SubscribeSync("micro.inbound.>"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("subscribe error %v, want a permissions violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server accepted a subscription to micro.inbound.> from a user without micro's permissions")
	}
}

func TestNkeySeedFile(t *testing.T) {
	pubA, seedA := natstest.NkeyUser(t)
	pubB, seedB := natstest.NkeyUser(t)
	s := natstest.Start(t, natstest.WithNkeyUser(pubA, microPerms), natstest.WithNkeyUser(pubB, microPerms))
	a := mustInit(t, transport.Config{URL: s.URL, NkeySeedFile: seedA})
	b := mustInit(t, transport.Config{URL: s.URL, NkeySeedFile: seedB})
	callAndStream(t, a, b)
}

func TestTokenAndPasswordFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s := natstest.Start(t, natstest.WithUser("micro", "s3cret-pw", microPerms))
	a := mustInit(t, transport.Config{URL: s.URL, User: "micro", PasswordFile: write("pw", "s3cret-pw\n")})
	callAndStream(t, a, a)
	_, err := initWith(t, transport.Config{URL: s.URL, User: "micro", PasswordFile: write("bad", "wrong")})
	wantErr(t, err, "refused the credentials", "password_file "+filepath.Join(dir, "bad"), "Authorization Violation")

	ts := natstest.Start(t, natstest.WithToken("t0ken"))
	mustInit(t, transport.Config{URL: ts.URL, TokenFile: write("token", " t0ken\n")})
	_, err = initWith(t, transport.Config{URL: ts.URL})
	wantErr(t, err, "refused the credentials (none set)")
}

func TestWrongCredentials(t *testing.T) {
	pub, _ := natstest.NkeyUser(t)
	_, otherSeed := natstest.NkeyUser(t)
	s := natstest.Start(t, natstest.WithNkeyUser(pub, nil))
	_, err := initWith(t, transport.Config{URL: s.URL, NkeySeedFile: otherSeed})
	wantErr(t, err, "transport-nats: connect to NATS at "+s.URL, "refused the credentials (nkey_seed_file "+otherSeed+")", "Authorization Violation")

	// A .creds file of another operator's user.
	op := natstest.Start(t, natstest.WithOperator())
	other := natstest.Start(t, natstest.WithOperator())
	creds := other.Creds(t, nil)
	_, err = initWith(t, transport.Config{URL: op.URL, CredentialsFile: creds})
	wantErr(t, err, "refused the credentials (credentials_file "+creds+")")
}

// TestBadSettings checks that a missing or malformed file, or settings that do not go
// together, fail Init with an error naming the setting and the file, and never showing
// what a secret file holds.
func TestBadSettings(t *testing.T) {
	s := natstest.Start(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("SECRET-JUNK"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := natstest.NewCA(t)
	cert, key := ca.Issue(t, "client")
	for _, tc := range []struct {
		name string
		c    transport.Config
		want []string
	}{
		{"missing creds", transport.Config{CredentialsFile: missing}, []string{"credentials_file", missing, "no such file"}},
		{"junk creds", transport.Config{CredentialsFile: junk}, []string{"credentials_file " + junk, "no user JWT"}},
		{"missing seed", transport.Config{NkeySeedFile: missing}, []string{"nkey_seed_file", missing, "no such file"}},
		{"junk seed", transport.Config{NkeySeedFile: junk}, []string{"nkey_seed_file " + junk, "no nkey seed"}},
		{"missing token", transport.Config{TokenFile: missing}, []string{"token_file", missing}},
		{"empty token", transport.Config{TokenFile: empty}, []string{"token_file " + empty + " is empty"}},
		{"missing password", transport.Config{User: "u", PasswordFile: missing}, []string{"password_file", missing}},
		{"user alone", transport.Config{User: "u"}, []string{"user and password_file go together"}},
		{"two credentials", transport.Config{TokenFile: junk, NkeySeedFile: junk}, []string{"nkey_seed_file and token_file are set"}},
		{"url and file", transport.Config{URL: "nats://me:pw@" + strings.TrimPrefix(s.URL, "nats://"), TokenFile: junk}, []string{"url carries credentials and token_file"}},
		{"missing CA", transport.Config{TLSCAFile: missing}, []string{"tls_ca_file", missing}},
		{"junk CA", transport.Config{TLSCAFile: junk}, []string{"tls_ca_file " + junk, "no PEM certificate"}},
		{"cert alone", transport.Config{TLSCertFile: cert}, []string{"tls_cert_file and tls_key_file go together"}},
		{"junk key", transport.Config{TLSCertFile: cert, TLSKeyFile: junk}, []string{"tls_cert_file " + cert, "tls_key_file " + junk}},
		{"missing cert", transport.Config{TLSCertFile: missing, TLSKeyFile: key}, []string{"tls_cert_file " + missing, "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.c.URL == "" {
				tc.c.URL = s.URL
			}
			_, err := initWith(t, tc.c)
			wantErr(t, err, tc.want...)
			if err != nil && strings.Contains(err.Error(), "SECRET-JUNK") {
				t.Errorf("error %q shows a secret file's contents", err)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	ca := natstest.NewCA(t)
	s := natstest.Start(t, natstest.WithTLS(ca, false))
	for _, url := range []string{s.URL, strings.Replace(s.URL, "nats://", "tls://", 1)} {
		a := mustInit(t, transport.Config{URL: url, TLSCAFile: ca.CertFile})
		if !isTLS(t, a) {
			t.Fatalf("%s: the connection is not TLS", url)
		}
		callAndStream(t, a, a)
	}

	// A client with no TLS settings does not trust the server's certificate.
	_, err := initWith(t, transport.Config{URL: s.URL})
	wantErr(t, err, "TLS with the NATS server failed (TLS settings: none set; the server asked for TLS)", "certificate")

	// Nor does one that trusts another CA.
	other := natstest.NewCA(t)
	_, err = initWith(t, transport.Config{URL: s.URL, TLSCAFile: other.CertFile})
	wantErr(t, err, "TLS with the NATS server failed (TLS settings: tls_ca_file "+other.CertFile+")", "unknown authority")

	// A client that requires TLS refuses a server that offers none.
	plain := natstest.Start(t)
	_, err = initWith(t, transport.Config{URL: plain.URL, TLSRequired: true})
	wantErr(t, err, "offers no TLS", "tls_required")
	_, err = initWith(t, transport.Config{URL: plain.URL, TLSCAFile: ca.CertFile})
	wantErr(t, err, "offers no TLS", "tls_ca_file "+ca.CertFile)
}

func TestMutualTLS(t *testing.T) {
	ca := natstest.NewCA(t)
	pub, seed := natstest.NkeyUser(t)
	s := natstest.Start(t, natstest.WithTLS(ca, true), natstest.WithNkeyUser(pub, microPerms))
	cert, key := ca.Issue(t, "micro")
	a := mustInit(t, transport.Config{URL: s.URL, NkeySeedFile: seed, TLSCAFile: ca.CertFile, TLSCertFile: cert, TLSKeyFile: key})
	if !isTLS(t, a) {
		t.Fatal("the connection is not TLS")
	}
	callAndStream(t, a, a)

	// Without a client certificate, or with one from another CA, the server refuses.
	_, err := initWith(t, transport.Config{URL: s.URL, NkeySeedFile: seed, TLSCAFile: ca.CertFile})
	wantErr(t, err, "TLS with the NATS server failed (TLS settings: tls_ca_file "+ca.CertFile+")")
	other := natstest.NewCA(t)
	ocert, okey := other.Issue(t, "rogue")
	_, err = initWith(t, transport.Config{URL: s.URL, NkeySeedFile: seed, TLSCAFile: ca.CertFile, TLSCertFile: ocert, TLSKeyFile: okey})
	wantErr(t, err, "TLS with the NATS server failed", "tls_cert_file "+ocert)
}

// TestSettingsOverGRPC sends the settings as micro does, in the Init request through the
// sdk's plugin server: mutual TLS and a .creds user connect; a missing file is an error
// that names it.
func TestSettingsOverGRPC(t *testing.T) {
	ca := natstest.NewCA(t)
	s := natstest.Start(t, natstest.WithOperator(), natstest.WithTLS(ca, true))
	cert, key := ca.Issue(t, "micro")
	req := &transportpb.InitRequest{
		Url: s.URL, CredentialsFile: s.Creds(t, microPerms),
		TlsCaFile: ca.CertFile, TlsCertFile: cert, TlsKeyFile: key, TlsRequired: true,
	}
	c := grpcClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Init(ctx, req); err != nil {
		t.Fatalf("Init: %v", err)
	}
	ls, err := c.Listen(ctx, &transportpb.ListenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if a, err := ls.Recv(); err != nil || !strings.HasPrefix(a.GetAddr(), "nats:micro.inbound.") {
		t.Fatalf("first Accepted = %v, %v", a, err)
	}
	missing := filepath.Join(t.TempDir(), "gone.creds")
	req.CredentialsFile = missing
	_, err = grpcClient(t).Init(ctx, req)
	wantErr(t, err, "credentials_file", missing, "no such file")
}
