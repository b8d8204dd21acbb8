package plugin

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/abi/brokerpb"
	"github.com/microhost/micro/abi/transportpb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// testAuth sets every BackendAuth setting.
var testAuth = BackendAuth{
	CredentialsFile: "/etc/micro/nats.creds", NkeySeedFile: "/etc/micro/seed.nk", TokenFile: "/etc/micro/token",
	User: "micro", PasswordFile: "/etc/micro/password",
	TLSCAFile: "/etc/micro/ca.pem", TLSCertFile: "/etc/micro/cert.pem", TLSKeyFile: "/etc/micro/key.pem", TLSRequired: true,
}

func TestInitRequestCarriesAuth(t *testing.T) {
	tc := TransportConfig{URL: "nats://h:4222", Auth: testAuth}
	wantT := &transportpb.InitRequest{
		Url: "nats://h:4222", CredentialsFile: "/etc/micro/nats.creds", NkeySeedFile: "/etc/micro/seed.nk",
		TokenFile: "/etc/micro/token", User: "micro", PasswordFile: "/etc/micro/password",
		TlsCaFile: "/etc/micro/ca.pem", TlsCertFile: "/etc/micro/cert.pem", TlsKeyFile: "/etc/micro/key.pem", TlsRequired: true,
	}
	if got := tc.initRequest(); !proto.Equal(got, wantT) {
		t.Errorf("transport Init request\n got %v\nwant %v", got, wantT)
	}

	bc := BrokerConfig{URL: "nats://h:4222", MaxAge: time.Hour, MaxBytes: 10, MaxMessage: 5, Auth: testAuth}
	wantB := &brokerpb.InitRequest{
		Url: "nats://h:4222", MaxAge: durationpb.New(time.Hour), MaxBytes: 10, MaxMessage: 5,
		CredentialsFile: "/etc/micro/nats.creds", NkeySeedFile: "/etc/micro/seed.nk",
		TokenFile: "/etc/micro/token", User: "micro", PasswordFile: "/etc/micro/password",
		TlsCaFile: "/etc/micro/ca.pem", TlsCertFile: "/etc/micro/cert.pem", TlsKeyFile: "/etc/micro/key.pem", TlsRequired: true,
	}
	if got := bc.initRequest(); !proto.Equal(got, wantB) {
		t.Errorf("broker Init request\n got %v\nwant %v", got, wantB)
	}
	if got := (TransportConfig{}).initRequest(); !proto.Equal(got, &transportpb.InitRequest{}) {
		t.Errorf("zero transport config makes %v, want an empty request", got)
	}
}

// TestAuthLogged checks that the auth settings (paths) show in a config's log line and
// its printed form, beside a redacted URL password.
func TestAuthLogged(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	tc := TransportConfig{Name: "nats", URL: "nats://u:hunter2@h:4222", Auth: testAuth}
	bc := BrokerConfig{Name: "nats", URL: "nats://u:hunter2@h:4222", Auth: testAuth}
	log.Info("open", "transport", tc, "broker", bc)
	for _, s := range []string{buf.String(), tc.String(), bc.String()} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
		for _, want := range []string{"/etc/micro/nats.creds", "/etc/micro/key.pem", "/etc/micro/password"} {
			if !strings.Contains(s, want) {
				t.Errorf("%s missing from %s", want, s)
			}
		}
	}
	for _, want := range []string{"transport.auth.credentials_file=/etc/micro/nats.creds", "broker.auth.tls_required=true"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("%s missing from the log line %s", want, buf.String())
		}
	}
}
