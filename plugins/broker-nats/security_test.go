package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/sdk/broker"
)

// brokerPerms is what the README's "NATS permissions" section gives a micro's NATS user.
var brokerPerms = &natstest.Perms{
	Publish: []string{
		"micro.msg.>",
		"$JS.API.STREAM.INFO.MICRO", "$JS.API.STREAM.CREATE.MICRO", "$JS.API.STREAM.UPDATE.MICRO",
		"$JS.API.STREAM.MSG.GET.MICRO", "$JS.API.STREAM.MSG.DELETE.MICRO",
		"$JS.API.CONSUMER.CREATE.MICRO.>", "$JS.API.CONSUMER.INFO.MICRO.*", "$JS.API.CONSUMER.LIST.MICRO",
		"$JS.API.CONSUMER.MSG.NEXT.MICRO.*", "$JS.ACK.MICRO.>",
	},
	Subscribe: []string{"_INBOX.>"},
}

// initBroker initialises a new broker with c, closed when the test ends.
func initBroker(t *testing.T, c broker.Config) (*natsBroker, error) {
	t.Helper()
	b := newBroker(nil)
	t.Cleanup(func() { _ = b.Close() })
	return b, b.Init(testCtx(t), c)
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

// useEverything publishes, consumes, acks, naks, reads the backlog, lists and deletes:
// every operation of the plugin, each on its own NATS subjects.
func useEverything(t *testing.T, b *natsBroker) {
	t.Helper()
	publish(t, b, "orders", "1", "one", nil)
	publish(t, b, "orders", "2", "two", nil)
	c := subscribe(t, b, broker.Subscription{Topic: "orders", Group: "billing", MaxInflight: 1})
	d := next(t, c)
	if err := c.Nak(testCtx(t), d, 0); err != nil {
		t.Fatalf("Nak: %v", err)
	}
	d = next(t, c)
	if d.ID == "2" {
		// JetStream may hand out the new message before the redelivery: put it off.
		if err := c.Nak(testCtx(t), d, time.Hour); err != nil {
			t.Fatalf("Nak: %v", err)
		}
		d = next(t, c)
	}
	if d.ID != "1" || d.Attempt != 2 {
		t.Fatalf("redelivery %s attempt %d, want 1 attempt 2", d.ID, d.Attempt)
	}
	if err := c.Extend(testCtx(t), d); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	ack(t, c, d)
	if bl, err := c.Backlog(testCtx(t)); err != nil || bl.Messages != 1 {
		t.Fatalf("Backlog = %+v, %v; want 1 message", bl, err)
	}
	ms, err := b.Messages(testCtx(t), "orders", 10)
	if err != nil || !slices.Equal(ids(ms), []string{"2"}) {
		t.Fatalf("Messages = %q, %v; want 2", ids(ms), err)
	}
	if err := b.Delete(testCtx(t), "orders", "2"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

// TestCredentialsAndMutualTLS runs every operation as a .creds user that has only the
// README's permissions, over mutual TLS, and a second Init (the stream exists then).
func TestCredentialsAndMutualTLS(t *testing.T) {
	ca := natstest.NewCA(t)
	s := startNATS(t, natstest.WithOperator(), natstest.WithTLS(ca, true))
	cert, key := ca.Issue(t, "micro")
	c := broker.Config{
		URL: s.URL, CredentialsFile: s.Creds(t, brokerPerms),
		TLSCAFile: ca.CertFile, TLSCertFile: cert, TLSKeyFile: key,
	}
	b, err := initBroker(t, c)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	st, _ := b.state()
	if _, err := st.nc.TLSConnectionState(); err != nil {
		t.Fatalf("the connection is not TLS: %v", err)
	}
	useEverything(t, b)
	c.MaxAge = time.Hour // an update of the stream's limits
	if _, err := initBroker(t, c); err != nil {
		t.Fatalf("second Init: %v", err)
	}

	// Without a client certificate the server refuses.
	c.TLSCertFile, c.TLSKeyFile = "", ""
	_, err = initBroker(t, c)
	wantErr(t, err, "broker-nats: connect to NATS at "+s.URL, "TLS with the NATS server failed (TLS settings: tls_ca_file "+ca.CertFile+")")
}

func TestNkeyAndTLSRequired(t *testing.T) {
	ca := natstest.NewCA(t)
	pub, seed := natstest.NkeyUser(t)
	s := startNATS(t, natstest.WithNkeyUser(pub, brokerPerms), natstest.WithTLS(ca, false))
	b, err := initBroker(t, broker.Config{URL: s.URL, NkeySeedFile: seed, TLSCAFile: ca.CertFile, TLSRequired: true})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	useEverything(t, b)

	// Another user's seed is refused; a plain client does not trust the server.
	_, other := natstest.NkeyUser(t)
	_, err = initBroker(t, broker.Config{URL: s.URL, NkeySeedFile: other, TLSCAFile: ca.CertFile})
	wantErr(t, err, "refused the credentials (nkey_seed_file "+other+")", "Authorization Violation")
	_, err = initBroker(t, broker.Config{URL: s.URL, NkeySeedFile: seed})
	wantErr(t, err, "TLS with the NATS server failed (TLS settings: none set; the server asked for TLS)")

	// A client that requires TLS refuses a server that offers none.
	plain := startNATS(t)
	_, err = initBroker(t, broker.Config{URL: plain.URL, TLSRequired: true})
	wantErr(t, err, "offers no TLS", "tls_required")
}

func TestBadFiles(t *testing.T) {
	s := startNATS(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("SECRET-JUNK"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		c    broker.Config
		want []string
	}{
		{"missing creds", broker.Config{CredentialsFile: missing}, []string{"broker-nats: credentials_file", missing, "no such file"}},
		{"junk creds", broker.Config{CredentialsFile: junk}, []string{"credentials_file " + junk, "no user JWT"}},
		{"junk seed", broker.Config{NkeySeedFile: junk}, []string{"nkey_seed_file " + junk, "no nkey seed"}},
		{"missing token", broker.Config{TokenFile: missing}, []string{"token_file", missing}},
		{"missing CA", broker.Config{TLSCAFile: missing}, []string{"tls_ca_file", missing}},
		{"key alone", broker.Config{TLSKeyFile: junk}, []string{"tls_cert_file and tls_key_file go together"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.URL = s.URL
			_, err := initBroker(t, tc.c)
			wantErr(t, err, tc.want...)
			if err != nil && strings.Contains(err.Error(), "SECRET-JUNK") {
				t.Errorf("error %q shows a secret file's contents", err)
			}
		})
	}
}

// TestPasswordFileOverGRPC sends the settings as micro does, in the Init request through
// the sdk's plugin server, and publishes.
func TestPasswordFileOverGRPC(t *testing.T) {
	s := startNATS(t, natstest.WithUser("micro", "pw", brokerPerms))
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := pluginClient(t, &brokerpb.InitRequest{Url: s.URL, User: "micro", PasswordFile: pw})
	if _, err := c.Publish(testCtx(t), &brokerpb.PublishRequest{Message: &brokerpb.Message{Id: "1", Topic: "t", Body: []byte("x")}}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}
