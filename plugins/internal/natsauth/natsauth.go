// Package natsauth turns a NATS plugin's credential and TLS settings (the fields of
// sdk/transport.Config and sdk/broker.Config) into nats.go options, checking every file
// they name, for micro's NATS transport and broker plugins.
package natsauth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Settings are a plugin's credential and TLS settings for NATS, as micro.toml's
// [transport.auth] and [broker.auth] give them, and the URL they go with.
type Settings struct {
	URL                                      string
	CredentialsFile, NkeySeedFile, TokenFile string
	User, PasswordFile                       string
	TLSCAFile, TLSCertFile, TLSKeyFile       string
	TLSRequired                              bool
}

// Security is what Settings say about credentials and TLS, checked: the nats.go options
// that carry it, and how to name it in errors. It holds no secret: the options read the
// credentials and seed files at every connect (so a renewed file is used at the next
// reconnect), and the client certificate and key at every TLS handshake.
type Security struct {
	// Opts apply the settings to a connection.
	Opts []nats.Option
	// Auth names the credential setting, e.g. "credentials_file /etc/micro/nats.creds";
	// "" when there is none.
	Auth string
	// tls names the TLS settings, e.g. "tls_ca_file /etc/micro/ca.pem"; "" when the
	// Config asks for no TLS.
	tls string
}

// Of checks c's credential and TLS settings, reading every file they name so that
// a missing, unreadable or malformed one fails Init with an error that names it, and
// returns the options that apply them. At most one credential setting may be set (user
// goes with password_file), and none of them beside credentials in the URL. Setting a
// TLS file, or TLSRequired, requires TLS of the server whatever the URL's scheme.
func Of(c Settings) (Security, error) {
	var s Security
	var set []string
	for _, f := range []struct{ name, path string }{
		{"credentials_file", c.CredentialsFile}, {"nkey_seed_file", c.NkeySeedFile},
		{"token_file", c.TokenFile}, {"password_file", c.PasswordFile},
	} {
		if f.path != "" {
			set = append(set, f.name)
			s.Auth = f.name + " " + f.path
		}
	}
	switch {
	case len(set) > 1:
		return s, fmt.Errorf("%s are set: set one of credentials_file, nkey_seed_file, token_file and password_file", strings.Join(set, " and "))
	case (c.User == "") != (c.PasswordFile == ""):
		return s, errors.New("user and password_file go together: set both or neither")
	case len(set) == 1 && urlHasUser(c.URL):
		return s, fmt.Errorf("the url carries credentials and %s is set: set one", set[0])
	}
	switch {
	case c.CredentialsFile != "":
		if _, err := userJWT(c.CredentialsFile)(); err != nil {
			return s, err
		}
		if err := checkUserSeed("credentials_file", c.CredentialsFile); err != nil {
			return s, err
		}
		s.Opts = append(s.Opts, nats.UserJWT(userJWT(c.CredentialsFile), signer("credentials_file", c.CredentialsFile)))
	case c.NkeySeedFile != "":
		kp, err := keyPair("nkey_seed_file", c.NkeySeedFile)
		if err != nil {
			return s, err
		}
		pub, err := kp.PublicKey()
		kp.Wipe()
		if err != nil || !nkeys.IsValidPublicUserKey(pub) {
			return s, fmt.Errorf("nkey_seed_file %s: not a user nkey seed (SU…)", c.NkeySeedFile)
		}
		s.Opts = append(s.Opts, nats.Nkey(pub, signer("nkey_seed_file", c.NkeySeedFile)))
	case c.TokenFile != "":
		token, err := readSecret("token_file", c.TokenFile)
		if err != nil {
			return s, err
		}
		s.Opts = append(s.Opts, nats.Token(token))
	case c.PasswordFile != "":
		password, err := readSecret("password_file", c.PasswordFile)
		if err != nil {
			return s, err
		}
		s.Opts = append(s.Opts, nats.UserInfo(c.User, password))
	}

	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return s, errors.New("tls_cert_file and tls_key_file go together: set both or neither")
	}
	if !c.TLSRequired && c.TLSCAFile == "" && c.TLSCertFile == "" {
		return s, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	var named []string
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return s, fmt.Errorf("tls_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return s, fmt.Errorf("tls_ca_file %s: no PEM certificate in it", c.TLSCAFile)
		}
		cfg.RootCAs = pool
		named = append(named, "tls_ca_file "+c.TLSCAFile)
	}
	if c.TLSCertFile != "" {
		load := func() (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
			if err != nil {
				return nil, fmt.Errorf("tls_cert_file %s and tls_key_file %s: %w", c.TLSCertFile, c.TLSKeyFile, err)
			}
			return &cert, nil
		}
		if _, err := load(); err != nil {
			return s, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return load() }
		named = append(named, "tls_cert_file "+c.TLSCertFile)
	}
	if c.TLSRequired {
		named = append(named, "tls_required")
	}
	s.tls = strings.Join(named, ", ")
	s.Opts = append(s.Opts, nats.Secure(cfg))
	return s, nil
}

// Explain returns err, from a first connect, with what it means for s's settings when it
// is a refusal of the credentials or a failure of TLS.
func (s Security) Explain(err error) error {
	auth := s.Auth
	if auth == "" {
		auth = "none set"
	}
	tlsSet := s.tls
	if tlsSet == "" {
		tlsSet = "none set; the server asked for TLS"
	}
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired):
		return fmt.Errorf("the NATS server refused the credentials (%s): %w", auth, err)
	case errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("the NATS server offers no TLS, which the settings require (%s): %w", s.tls, err)
	case errors.Is(err, nats.ErrTLS), strings.Contains(err.Error(), "tls: "):
		return fmt.Errorf("TLS with the NATS server failed (TLS settings: %s): %w", tlsSet, err)
	}
	return err
}

// urlHasUser reports whether any URL of the comma-separated list u carries a user (a
// user and password, or a token).
func urlHasUser(u string) bool {
	for p := range strings.SplitSeq(u, ",") {
		if pu, err := url.Parse(strings.TrimSpace(p)); err == nil && pu.User != nil {
			return true
		}
	}
	return false
}

// userJWT returns a handler that reads the user JWT from the credentials file at path.
func userJWT(path string) nats.UserJWTHandler {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("credentials_file: %w", err)
		}
		defer wipe(b)
		jwt, err := nkeys.ParseDecoratedJWT(b)
		if err != nil || strings.Count(jwt, ".") != 2 {
			return "", fmt.Errorf("credentials_file %s: no user JWT in it (want a .creds file)", path)
		}
		return jwt, nil
	}
}

// checkUserSeed checks that the file at path, named by setting, holds a user nkey seed.
func checkUserSeed(setting, path string) error {
	kp, err := keyPair(setting, path)
	if err != nil {
		return err
	}
	defer kp.Wipe()
	if pub, err := kp.PublicKey(); err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return fmt.Errorf("%s %s: not a user nkey seed (SU…)", setting, path)
	}
	return nil
}

// signer returns a handler that signs the server's nonce with the nkey seed in the file
// at path, named by setting. It reads the file at every connect and wipes the seed after,
// so that no seed stays in memory.
func signer(setting, path string) nats.SignatureHandler {
	return func(nonce []byte) ([]byte, error) {
		kp, err := keyPair(setting, path)
		if err != nil {
			return nil, err
		}
		defer kp.Wipe()
		return kp.Sign(nonce)
	}
}

// keyPair reads the nkey seed in the file at path (a seed alone, or a credentials file),
// named by setting.
func keyPair(setting, path string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", setting, err)
	}
	defer wipe(b)
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s %s: no nkey seed in it", setting, path)
	}
	return kp, nil
}

// readSecret returns the contents of the file at path, named by setting, without leading
// and trailing white space; an empty one is an error.
func readSecret(setting, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", setting, err)
	}
	v := strings.TrimSpace(string(b))
	wipe(b)
	if v == "" {
		return "", fmt.Errorf("%s %s is empty", setting, path)
	}
	return v, nil
}

// wipe overwrites b, which held a secret.
func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}
