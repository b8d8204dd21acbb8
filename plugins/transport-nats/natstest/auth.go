package natstest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// Perms limits what a user may do: Publish and Subscribe list the subjects (wildcards
// allowed) the user may publish and subscribe to. A nil *Perms, or a nil list, allows
// every subject.
type Perms struct {
	Publish, Subscribe []string
}

// WithTLS requires TLS of every client, on a server certificate that ca issues for
// 127.0.0.1 and localhost. With verifyClients the server also requires a client
// certificate that ca issued (mutual TLS). URL stays "nats://…": a NATS client upgrades
// to TLS when the server requires it.
func WithTLS(ca *CA, verifyClients bool) Option {
	return func(s *Server) { s.tls, s.tlsVerify = ca, verifyClients }
}

// WithNkeyUser admits the user whose public nkey is pub (NkeyUser makes one), limited to
// p. Once any of WithNkeyUser, WithUser or WithToken is given, the server refuses clients
// that do not authenticate. The server cannot take a token beside users.
func WithNkeyUser(pub string, p *Perms) Option {
	return func(s *Server) {
		s.nkeyUsers = append(s.nkeyUsers, &server.NkeyUser{Nkey: pub, Permissions: p.server()})
	}
}

// WithUser admits user with password, limited to p; see WithNkeyUser.
func WithUser(user, password string, p *Perms) Option {
	return func(s *Server) {
		s.users = append(s.users, &server.User{Username: user, Password: password, Permissions: p.server()})
	}
}

// WithToken admits the clients that present token; see WithNkeyUser.
func WithToken(token string) Option {
	return func(s *Server) { s.token = token }
}

// WithOperator runs the server in operator (JWT) mode: it trusts an operator that Start
// creates, which has one account (with JetStream when WithJetStream is given too), and
// admits the users of that account that Creds issues. It cannot be combined with
// WithNkeyUser, WithUser or WithToken.
func WithOperator() Option {
	return func(s *Server) {
		kp, err := nkeys.CreateOperator()
		if err != nil {
			s.t.Fatalf("natstest: create operator key: %v", err)
		}
		s.operator = kp
	}
}

// server returns p as nats-server's permissions.
func (p *Perms) server() *server.Permissions {
	if p == nil {
		return nil
	}
	sp := &server.Permissions{}
	if p.Publish != nil {
		sp.Publish = &server.SubjectPermission{Allow: p.Publish}
	}
	if p.Subscribe != nil {
		sp.Subscribe = &server.SubjectPermission{Allow: p.Subscribe}
	}
	return sp
}

// makeAccount creates the operator's account, and the system account that the server
// needs to run JetStream in operator mode.
func (s *Server) makeAccount() error {
	var err error
	if s.account, s.accountJWT, err = s.newAccount("micro", s.storeDir != ""); err != nil {
		return err
	}
	s.system, s.systemJWT, err = s.newAccount("SYS", false)
	return err
}

// newAccount creates an account of the operator, named name, with JetStream or not, and
// returns its key and JWT.
func (s *Server) newAccount(name string, jetStream bool) (nkeys.KeyPair, string, error) {
	akp, err := nkeys.CreateAccount()
	if err != nil {
		return nil, "", fmt.Errorf("create account %s: %w", name, err)
	}
	pub, err := akp.PublicKey()
	if err != nil {
		return nil, "", fmt.Errorf("account %s public key: %w", name, err)
	}
	ac := jwt.NewAccountClaims(pub)
	ac.Name = name
	if jetStream {
		ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	}
	enc, err := ac.Encode(s.operator)
	if err != nil {
		return nil, "", fmt.Errorf("sign the JWT of account %s: %w", name, err)
	}
	return akp, enc, nil
}

// secure sets o's TLS and authentication from s's options.
func (s *Server) secure(o *server.Options) error {
	if s.tls != nil {
		cfg, err := s.tls.serverTLS(s.tlsVerify)
		if err != nil {
			return err
		}
		o.TLSConfig = cfg
		o.TLSVerify = s.tlsVerify
		o.TLSTimeout = readyTimeout.Seconds()
	}
	o.Nkeys, o.Users, o.Authorization = s.nkeyUsers, s.users, s.token
	if s.operator != nil {
		if len(s.nkeyUsers)+len(s.users) > 0 || s.token != "" {
			return fmt.Errorf("WithOperator cannot be combined with WithNkeyUser, WithUser or WithToken")
		}
		opub, err := s.operator.PublicKey()
		if err != nil {
			return fmt.Errorf("operator public key: %w", err)
		}
		r := &server.MemAccResolver{}
		for _, a := range []struct {
			kp  nkeys.KeyPair
			jwt string
		}{{s.account, s.accountJWT}, {s.system, s.systemJWT}} {
			pub, err := a.kp.PublicKey()
			if err != nil {
				return fmt.Errorf("account public key: %w", err)
			}
			if err := r.Store(pub, a.jwt); err != nil {
				return fmt.Errorf("store the account JWT: %w", err)
			}
		}
		sys, err := s.system.PublicKey()
		if err != nil {
			return fmt.Errorf("system account public key: %w", err)
		}
		o.TrustedKeys, o.AccountResolver, o.SystemAccount = []string{opub}, r, sys
	}
	return nil
}

// Creds issues a user of the server's account (see WithOperator), limited to p, writes
// its NATS credentials file (the user JWT and nkey seed) into a temporary directory of t,
// and returns the file's path. It fails t if the server is not in operator mode.
func (s *Server) Creds(t testing.TB, p *Perms) string {
	t.Helper()
	if s.operator == nil {
		t.Fatal("natstest: Creds needs a server started WithOperator")
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatalf("natstest: create user key: %v", err)
	}
	upub, err := ukp.PublicKey()
	if err != nil {
		t.Fatalf("natstest: user public key: %v", err)
	}
	uc := jwt.NewUserClaims(upub)
	if p != nil {
		uc.Pub.Allow, uc.Sub.Allow = p.Publish, p.Subscribe
	}
	enc, err := uc.Encode(s.account)
	if err != nil {
		t.Fatalf("natstest: sign the user JWT: %v", err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		t.Fatalf("natstest: user seed: %v", err)
	}
	creds, err := jwt.FormatUserConfig(enc, seed)
	if err != nil {
		t.Fatalf("natstest: format the credentials: %v", err)
	}
	return writeSecret(t, "user.creds", creds)
}

// NkeyUser creates a user nkey, writes its seed into a temporary directory of t, and
// returns its public key (for WithNkeyUser) and the seed file's path.
func NkeyUser(t testing.TB) (pub, seedFile string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatalf("natstest: create user key: %v", err)
	}
	pub, err = kp.PublicKey()
	if err != nil {
		t.Fatalf("natstest: user public key: %v", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatalf("natstest: user seed: %v", err)
	}
	return pub, writeSecret(t, "user.nk", seed)
}

// writeSecret writes data to a file named name, readable by its owner only, in a new
// temporary directory of t, and returns its path.
func writeSecret(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return path
}
