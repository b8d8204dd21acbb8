package plugin

import (
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// DefaultStartTimeout bounds a plugin's handshake, and then its Init, when
// Config.StartTimeout is 0.
const DefaultStartTimeout = 10 * time.Second

// The bounds of the jittered exponential backoff between restarts of a crashed plugin.
const (
	restartMin = 100 * time.Millisecond
	restartMax = 10 * time.Second
)

// redacted stands in for a secret when a Config is printed or logged.
const redacted = "[redacted]"

// Config says which registry plugin to run and how to initialise it.
//
// A Config never prints or logs its Token: fmt's verbs and slog show "[redacted]" instead.
type Config struct {
	// Name of the plugin, e.g. "consul". It names the plugin in logs and errors and the
	// binary that a build from source writes ("registry-" + Name).
	Name string
	// Path is the plugin's executable. Empty means: build SourceDir into CacheDir.
	Path string
	// SourceDir is the Go package of the plugin, e.g. <repo>/plugins/registry-consul.
	// It is built when Path is empty and the cached binary is missing or older than a
	// .go, go.mod or go.sum file under SourceDir, or than the go.mod or go.sum of the
	// module that holds SourceDir.
	SourceDir string
	// CacheDir is where a build from source writes the binary.
	CacheDir string
	// SHA256 pins the executable's digest (64 hex digits); empty means not pinned. micro
	// refuses to start a binary with another digest, at every start.
	SHA256 string

	// Address of the backend, passed to the plugin's Init; "" for the plugin's default.
	Address string
	// Datacenter of the backend, passed to the plugin's Init.
	Datacenter string
	// Token for the backend, passed to the plugin's Init. It is never logged.
	Token string

	// StartTimeout bounds the plugin's handshake, and then its Init; 0 means
	// DefaultStartTimeout.
	StartTimeout time.Duration

	// env is added to the plugin's environment (tests drive the test plugin with it).
	env []string
	// restartMin and restartMax override the restart backoff's bounds (tests).
	restartMin, restartMax time.Duration
}

// plainConfig is Config without its methods, for printing a redacted copy.
type plainConfig Config

// redact returns c with its secrets replaced.
func (c Config) redact() plainConfig {
	if c.Token != "" {
		c.Token = redacted
	}
	return plainConfig(c)
}

// Format prints c with every fmt verb, with its Token redacted.
func (c Config) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.redact())
}

// String returns c as fmt's %+v shows it, with its Token redacted.
func (c Config) String() string { return fmt.Sprintf("%+v", c.redact()) }

// LogValue logs c's settings, with its Token redacted.
func (c Config) LogValue() slog.Value {
	token := ""
	if c.Token != "" {
		token = redacted
	}
	return slog.GroupValue(c.proc().attrs(
		slog.String("address", c.Address),
		slog.String("datacenter", c.Datacenter),
		slog.String("token", token),
	)...)
}

// proc returns the settings for starting c's process.
func (c Config) proc() procConfig {
	return procConfig{
		Name: c.Name, Path: c.Path, SourceDir: c.SourceDir, CacheDir: c.CacheDir, SHA256: c.SHA256,
		StartTimeout: c.StartTimeout, env: c.env, restartMin: c.restartMin, restartMax: c.restartMax,
	}
}

// TransportConfig says which transport plugin to run and how to initialise it.
//
// A TransportConfig never prints or logs the password of its URL.
type TransportConfig struct {
	// Name of the plugin, e.g. "nats". It names the plugin in logs and errors and the
	// binary that a build from source writes ("transport-" + Name).
	Name string
	// Path is the plugin's executable. Empty means: build SourceDir into CacheDir.
	Path string
	// SourceDir is the Go package of the plugin, e.g. <repo>/plugins/transport-nats; it
	// is built as Config.SourceDir is.
	SourceDir string
	// CacheDir is where a build from source writes the binary.
	CacheDir string
	// SHA256 pins the executable's digest (64 hex digits); empty means not pinned.
	SHA256 string

	// URL of the backend, passed to the plugin's Init, e.g. "nats://127.0.0.1:4222"; ""
	// for the plugin's default.
	URL string
	// Auth says how the plugin authenticates to its backend and secures its connection,
	// passed to the plugin's Init.
	Auth BackendAuth

	// StartTimeout bounds the plugin's handshake, and then its Init; 0 means
	// DefaultStartTimeout. (The ctx of Dial and Listen bounds those.)
	StartTimeout time.Duration

	// env is added to the plugin's environment (tests drive the test plugin with it).
	env []string
	// restartMin and restartMax override the restart backoff's bounds (tests).
	restartMin, restartMax time.Duration
}

// plainTransportConfig is TransportConfig without its methods, for printing.
type plainTransportConfig TransportConfig

// redact returns c with the password of its URL replaced.
func (c TransportConfig) redact() plainTransportConfig {
	c.URL = redactURL(c.URL)
	return plainTransportConfig(c)
}

// redactURL returns u with its password, if it has one, replaced.
func redactURL(u string) string {
	if p, err := url.Parse(u); err == nil && p.User != nil {
		if _, ok := p.User.Password(); ok {
			return p.Redacted()
		}
	}
	return u
}

// Format prints c with every fmt verb, with its URL's password redacted.
func (c TransportConfig) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.redact())
}

// String returns c as fmt's %+v shows it, with its URL's password redacted.
func (c TransportConfig) String() string { return fmt.Sprintf("%+v", c.redact()) }

// LogValue logs c's settings, with its URL's password redacted.
func (c TransportConfig) LogValue() slog.Value {
	return slog.GroupValue(c.proc().attrs(
		slog.String("url", redactURL(c.URL)),
		slog.Any("auth", c.Auth),
	)...)
}

// proc returns the settings for starting c's process.
func (c TransportConfig) proc() procConfig {
	return procConfig{
		Name: c.Name, Path: c.Path, SourceDir: c.SourceDir, CacheDir: c.CacheDir, SHA256: c.SHA256,
		StartTimeout: c.StartTimeout, env: c.env, restartMin: c.restartMin, restartMax: c.restartMax,
	}
}

// BrokerConfig says which broker plugin to run and how to initialise it.
//
// A BrokerConfig never prints or logs the password of its URL.
type BrokerConfig struct {
	// Name of the plugin, e.g. "nats". It names the plugin in logs and errors and the
	// binary that a build from source writes ("broker-" + Name).
	Name string
	// Path is the plugin's executable. Empty means: build SourceDir into CacheDir.
	Path string
	// SourceDir is the Go package of the plugin, e.g. <repo>/plugins/broker-nats; it is
	// built as Config.SourceDir is.
	SourceDir string
	// CacheDir is where a build from source writes the binary.
	CacheDir string
	// SHA256 pins the executable's digest (64 hex digits); empty means not pinned.
	SHA256 string

	// URL of the backend, passed to the plugin's Init, e.g. "nats://127.0.0.1:4222"; ""
	// for the plugin's default.
	URL string
	// MaxAge is how long a message is kept at most; 0 means the plugin's default.
	MaxAge time.Duration
	// MaxBytes bounds the store; 0 means the plugin's default.
	MaxBytes int64
	// MaxMessage bounds one message (body, header keys and values); 0 means the plugin's
	// default. Whatever it says, micro refuses messages over brokerpb.MaxMessageSize.
	MaxMessage int64
	// Auth says how the plugin authenticates to its backend and secures its connection,
	// passed to the plugin's Init.
	Auth BackendAuth

	// StartTimeout bounds the plugin's handshake, and then its Init; 0 means
	// DefaultStartTimeout. It also bounds the wait for a Subscribe's answer.
	StartTimeout time.Duration

	// env is added to the plugin's environment (tests drive the test plugin with it).
	env []string
	// restartMin and restartMax override the restart backoff's bounds (tests).
	restartMin, restartMax time.Duration
}

// plainBrokerConfig is BrokerConfig without its methods, for printing.
type plainBrokerConfig BrokerConfig

// redact returns c with the password of its URL replaced.
func (c BrokerConfig) redact() plainBrokerConfig {
	c.URL = redactURL(c.URL)
	return plainBrokerConfig(c)
}

// Format prints c with every fmt verb, with its URL's password redacted.
func (c BrokerConfig) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.redact())
}

// String returns c as fmt's %+v shows it, with its URL's password redacted.
func (c BrokerConfig) String() string { return fmt.Sprintf("%+v", c.redact()) }

// LogValue logs c's settings, with its URL's password redacted.
func (c BrokerConfig) LogValue() slog.Value {
	return slog.GroupValue(c.proc().attrs(
		slog.String("url", redactURL(c.URL)),
		slog.Duration("max_age", c.MaxAge),
		slog.Int64("max_bytes", c.MaxBytes),
		slog.Int64("max_message", c.MaxMessage),
		slog.Any("auth", c.Auth),
	)...)
}

// proc returns the settings for starting c's process.
func (c BrokerConfig) proc() procConfig {
	return procConfig{
		Name: c.Name, Path: c.Path, SourceDir: c.SourceDir, CacheDir: c.CacheDir, SHA256: c.SHA256,
		StartTimeout: c.StartTimeout, env: c.env, restartMin: c.restartMin, restartMax: c.restartMax,
	}
}

// BackendAuth says how a transport or broker plugin authenticates to its backend (a NATS
// server, say) and secures its connection to it. Every secret is in a file that the
// plugin itself reads: BackendAuth holds paths and the user's name, which are logged, and
// never a file's contents. The zero BackendAuth means no credentials, and TLS only when
// the URL asks for it. What each setting means to a backend is the plugin's to say; see
// sdk/transport.Config and sdk/broker.Config.
type BackendAuth struct {
	// CredentialsFile is a NATS credentials file (.creds: a user JWT and its nkey seed).
	CredentialsFile string
	// NkeySeedFile holds a user nkey seed.
	NkeySeedFile string
	// TokenFile holds the backend's token.
	TokenFile string
	// User names the user that PasswordFile authenticates; set with PasswordFile.
	User string
	// PasswordFile holds User's password.
	PasswordFile string
	// TLSCAFile is a PEM bundle of the CAs that verify the backend's certificate; empty
	// means the system's roots.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the PEM certificate and key that the plugin shows
	// the backend (mutual TLS); both or neither.
	TLSCertFile, TLSKeyFile string
	// TLSRequired requires TLS even when the URL does not ask for it.
	TLSRequired bool
}

// LogValue logs a's settings: paths and the user's name, no secret.
func (a BackendAuth) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("credentials_file", a.CredentialsFile),
		slog.String("nkey_seed_file", a.NkeySeedFile),
		slog.String("token_file", a.TokenFile),
		slog.String("user", a.User),
		slog.String("password_file", a.PasswordFile),
		slog.String("tls_ca_file", a.TLSCAFile),
		slog.String("tls_cert_file", a.TLSCertFile),
		slog.String("tls_key_file", a.TLSKeyFile),
		slog.Bool("tls_required", a.TLSRequired),
	)
}

// procConfig is what every kind of plugin needs to start and supervise its process.
type procConfig struct {
	Name, Path, SourceDir, CacheDir, SHA256 string
	StartTimeout                            time.Duration
	env                                     []string
	restartMin, restartMax                  time.Duration
}

// attrs are the log attributes of a plugin config: its process settings around the
// plugin's own (backend).
func (c procConfig) attrs(backend ...slog.Attr) []slog.Attr {
	out := []slog.Attr{
		slog.String("name", c.Name),
		slog.String("path", c.Path),
		slog.String("source_dir", c.SourceDir),
		slog.String("cache_dir", c.CacheDir),
		slog.String("sha256", c.SHA256),
	}
	out = append(out, backend...)
	return append(out, slog.Duration("start_timeout", c.StartTimeout))
}

// withDefaults fills in the zero settings.
func (c procConfig) withDefaults() procConfig {
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.restartMin <= 0 {
		c.restartMin = restartMin
	}
	if c.restartMax <= 0 {
		c.restartMax = restartMax
	}
	c.restartMax = max(c.restartMax, c.restartMin)
	return c
}
