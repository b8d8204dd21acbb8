package security

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults of Options.
const (
	// DefaultTTL is the lifetime of the certificates a Source issues from a local CA.
	DefaultTTL = time.Hour
	// defaultRenewFraction is how far into its lifetime a certificate is renewed.
	defaultRenewFraction = 2.0 / 3
)

const (
	// debounce is how long a Source in files mode waits after the last change in the files'
	// directories before it reloads: editors and cert-manager change files in several steps.
	debounce = 100 * time.Millisecond
	// pollInterval is how often a Source in files mode reads its files even without events,
	// in case a change was missed (an event queue overflow, a file system without events).
	pollInterval = time.Minute
	// retryInterval is how soon a failed renewal is tried again.
	retryInterval = 5 * time.Second
)

// Options configure a Source. Either CAFile, CertFile and KeyFile are all set (files mode),
// or none of them is (local CA mode).
type Options struct {
	// TrustDomain is the trust domain of this micro and of every peer it accepts;
	// "" means DefaultTrustDomain.
	TrustDomain string
	// Dir is the directory of the local CA in local CA mode; "" means the default state
	// directory "ca".
	Dir string
	// CAFile holds the trust bundle, one or more PEM certificates; CertFile, this micro's
	// certificate (and the intermediate certificates up to the bundle); KeyFile, its key.
	// A Source reloads them when they change.
	CAFile, CertFile, KeyFile string
	// Services are the services this micro fronts, named in its certificate in local CA
	// mode.
	Services []string
	// Instance names this micro in its certificate in local CA mode.
	Instance string
	// TTL is the lifetime of the certificates issued in local CA mode; 0 means DefaultTTL.
	TTL time.Duration
	// Logger receives renewals, reloads and their failures; nil means slog.Default().
	Logger *slog.Logger

	// renewFraction overrides defaultRenewFraction, in tests.
	renewFraction float64
}

// Source holds this micro's current certificate and trust bundle and keeps them fresh:
// it renews the certificate from a local CA, or reloads certificate, key and bundle from
// files when they change. The TLS configurations and signatures it makes always use the
// current ones, so callers keep one *tls.Config across renewals and reloads.
type Source struct {
	td     string
	logger *slog.Logger
	cache  *verifyCache

	// Local CA mode.
	ca            *CA
	ttl           time.Duration
	renewFraction float64
	kick          chan struct{}

	// Files mode.
	caFile, certFile, keyFile string

	cur atomic.Pointer[state]

	mu      sync.Mutex // serializes issuing and reloading, and guards the fields below
	spec    IdentitySpec
	lastErr error // the last renewal or reload failure, nil after a success

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// state is one certificate with its trust bundle. A state is never changed once published.
type state struct {
	cert   *tls.Certificate
	id     Identity
	digest [sha256.Size]byte // of the certificate chain
	signer string            // the chain in base64, as Micro-Signer carries it
	roots  *x509.CertPool
	// renewAt is when a certificate from the local CA is renewed.
	renewAt time.Time
	// files holds the bytes of CAFile, CertFile and KeyFile this state was loaded from.
	files [3][]byte
}

// NewSource loads or issues this micro's certificate and starts keeping it fresh until ctx
// ends or Close is called.
func NewSource(ctx context.Context, opts Options) (*Source, error) {
	s := &Source{
		td:            opts.TrustDomain,
		logger:        opts.Logger,
		cache:         newVerifyCache(defaultCacheSize),
		ttl:           opts.TTL,
		renewFraction: opts.renewFraction,
		kick:          make(chan struct{}, 1),
		caFile:        opts.CAFile,
		certFile:      opts.CertFile,
		keyFile:       opts.KeyFile,
		spec:          IdentitySpec{Services: slices.Clone(opts.Services), Micro: opts.Instance},
		done:          make(chan struct{}),
	}
	if s.td == "" {
		s.td = DefaultTrustDomain
	}
	if err := ValidTrustDomain(s.td); err != nil {
		return nil, err
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.ttl == 0 {
		s.ttl = DefaultTTL
	}
	if s.ttl < 0 {
		return nil, fmt.Errorf("certificate lifetime %v is negative", s.ttl)
	}
	if s.renewFraction <= 0 || s.renewFraction >= 1 {
		s.renewFraction = defaultRenewFraction
	}
	var run func(context.Context) // keeps the certificate fresh until its context ends
	switch files := opts.CAFile != "" || opts.CertFile != "" || opts.KeyFile != ""; {
	case files && (opts.CAFile == "" || opts.CertFile == "" || opts.KeyFile == ""):
		return nil, fmt.Errorf("certificates from files need a CA file, a certificate file and a key file "+
			"(got ca_file %q, cert_file %q, key_file %q)", opts.CAFile, opts.CertFile, opts.KeyFile)
	case files:
		if err := validNames(s.spec.Services); err != nil {
			return nil, err
		}
		st, err := s.loadFiles()
		if err != nil {
			return nil, err
		}
		s.cur.Store(st)
		s.warnUnnamed(st, s.spec.Services)
		w, err := s.watch()
		if err != nil {
			return nil, err
		}
		run = func(ctx context.Context) { s.reloadLoop(ctx, w) }
	default:
		if _, err := s.spec.ids(s.td); err != nil {
			return nil, fmt.Errorf("identity of this micro: %w", err)
		}
		ca, err := OpenLocalCA(opts.Dir, s.td)
		if err != nil {
			return nil, err
		}
		s.ca = ca
		st, err := s.issue(s.spec)
		if err != nil {
			return nil, err
		}
		s.cur.Store(st)
		run = s.renewLoop
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	go run(bg)
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-bg.Done():
		}
	}()
	return s, nil
}

// TrustDomain returns the trust domain of this micro.
func (s *Source) TrustDomain() string { return s.td }

// Identity returns the identity that this micro's current certificate names.
func (s *Source) Identity() Identity { return s.cur.Load().id }

// Certificate returns this micro's current certificate.
func (s *Source) Certificate() *tls.Certificate { return s.cur.Load().cert }

// SetServices changes the services this micro fronts. In local CA mode it issues a
// certificate that names them before it returns; in files mode the certificate stays what
// the files say, and services it does not name are logged.
func (s *Source) SetServices(names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	spec := IdentitySpec{Services: slices.Clone(names), Micro: s.spec.Micro}
	if s.ca == nil {
		if err := validNames(names); err != nil {
			return err
		}
		s.spec = spec
		s.warnUnnamed(s.cur.Load(), names)
		return nil
	}
	if _, err := spec.ids(s.td); err != nil {
		return err
	}
	s.spec = spec
	if slices.Equal(s.cur.Load().id.Services, names) {
		return nil
	}
	st, err := s.issue(spec)
	if err != nil {
		return err
	}
	s.publish(st, nil)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return nil
}

// Health reports why this micro's identity is unfit, or nil: an expired certificate, or
// the last renewal or reload failed.
func (s *Source) Health() error {
	leaf := s.cur.Load().cert.Leaf
	if now := time.Now(); now.After(leaf.NotAfter) {
		return fmt.Errorf("certificate of %s expired at %s", s.cur.Load().id, leaf.NotAfter.Format(time.RFC3339))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Close stops renewing and reloading. The configurations keep the last certificate.
func (s *Source) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
}

// publish makes st the current state and records the outcome err of the renewal or
// reload that made it. The caller holds s.mu.
func (s *Source) publish(st *state, err error) {
	if st != nil {
		s.cur.Store(st)
	}
	s.lastErr = err
}

// issue issues a certificate for spec from the local CA.
func (s *Source) issue(spec IdentitySpec) (*state, error) {
	now := time.Now()
	cert, err := s.ca.Issue(spec, s.ttl)
	if err != nil {
		return nil, err
	}
	roots := s.roots()
	st, err := newState(&cert, roots, s.td)
	if err != nil {
		return nil, err
	}
	st.renewAt = now.Add(time.Duration(float64(cert.Leaf.NotAfter.Sub(now)) * s.renewFraction))
	return st, nil
}

// roots returns the pool of the local CA, the same pool for every state so that verified
// peers stay cached across renewals.
func (s *Source) roots() *x509.CertPool {
	if st := s.cur.Load(); st != nil {
		return st.roots
	}
	p := x509.NewCertPool()
	p.AddCert(s.ca.Certificate())
	return p
}

func newState(cert *tls.Certificate, roots *x509.CertPool, td string) (*state, error) {
	id, err := identityOf(cert.Leaf, td)
	if err != nil {
		var tde *certTrustDomainError
		if errors.As(err, &tde) {
			return nil, fmt.Errorf("certificate's %w", err)
		}
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return &state{
		cert:   cert,
		id:     id,
		digest: chainDigest(cert.Certificate),
		signer: base64.StdEncoding.EncodeToString(bytes.Join(cert.Certificate, nil)),
		roots:  roots,
	}, nil
}

// renewLoop renews the certificate from the local CA at its renewal time, until ctx ends.
func (s *Source) renewLoop(ctx context.Context) {
	defer close(s.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	retryAt := time.Time{}
	for {
		at := s.cur.Load().renewAt
		if !retryAt.IsZero() {
			at = retryAt
		}
		timer.Reset(time.Until(at))
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			timer.Stop()
			continue
		case <-timer.C:
		}
		s.mu.Lock()
		if time.Now().Before(s.cur.Load().renewAt) { // renewed by SetServices meanwhile
			s.mu.Unlock()
			continue
		}
		st, err := s.issue(s.spec)
		if err != nil {
			err = fmt.Errorf("renew the certificate: %w", err)
			s.logger.Error("security: certificate renewal failed; retrying", "err", err, "retry_in", retryInterval)
			retryAt = time.Now().Add(retryInterval)
		} else {
			retryAt = time.Time{}
			s.logger.Debug("security: certificate renewed", "id", st.id.String(), "not_after", st.cert.Leaf.NotAfter)
		}
		s.publish(st, err)
		s.mu.Unlock()
	}
}

// loadFiles reads and checks the CA bundle, certificate and key files.
func (s *Source) loadFiles() (*state, error) {
	var files [3][]byte
	for i, name := range []string{s.caFile, s.certFile, s.keyFile} {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		files[i] = b
	}
	if cur := s.cur.Load(); cur != nil && bytes.Equal(cur.files[0], files[0]) &&
		bytes.Equal(cur.files[1], files[1]) && bytes.Equal(cur.files[2], files[2]) {
		return cur, nil
	}
	return s.parseFiles(files)
}

// parseFiles checks a set of files: a bundle of certificates, a certificate that it signs,
// valid now, usable by TLS servers and clients, of this trust domain, and its key.
func (s *Source) parseFiles(files [3][]byte) (*state, error) {
	roots, err := parseBundle(files[0])
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", s.caFile, err)
	}
	cert, err := tls.X509KeyPair(files[1], files[2])
	if err != nil {
		return nil, fmt.Errorf("certificate %s and key %s: %w", s.certFile, s.keyFile, err)
	}
	if cur := s.cur.Load(); cur != nil && bytes.Equal(cur.files[0], files[0]) {
		roots = cur.roots // keep the pool, and so the peers verified against it
	}
	certs, err := x509.ParseCertificates(bytes.Join(cert.Certificate, nil))
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", s.certFile, err)
	}
	v, err := verifyIdentity(certs, roots, s.td, false)
	if err == nil && time.Now().After(v.notAfter) {
		err = &validityError{expired: true, at: v.notAfter}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.certFile, roleError("the", err))
	}
	st, err := newState(&cert, roots, s.td)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.certFile, err)
	}
	st.files = files
	return st, nil
}

// parseBundle parses one or more PEM certificates into a pool.
func parseBundle(b []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return pool, nil
}

// validNames checks the names of services.
func validNames(names []string) error {
	for _, name := range names {
		if err := ValidName(name); err != nil {
			return fmt.Errorf("service: %w", err)
		}
	}
	return nil
}

// warnUnnamed logs each service in names that st's certificate does not name.
func (s *Source) warnUnnamed(st *state, names []string) {
	for _, name := range names {
		if !st.id.HasService(name) {
			s.logger.Warn("security: the certificate does not name a service this micro fronts, "+
				"so its calls do not carry that service's identity", "service", name, "cert_file", s.certFile,
				"certificate_ids", st.id.String())
		}
	}
}

// watch watches the directories of the three files.
func (s *Source) watch() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch the certificate files: %w", err)
	}
	var dirs []string
	for _, f := range []string{s.caFile, s.certFile, s.keyFile} {
		abs, err := filepath.Abs(f)
		if err != nil {
			w.Close()
			return nil, err
		}
		if d := filepath.Dir(abs); !slices.Contains(dirs, d) {
			if err := w.Add(d); err != nil {
				w.Close()
				return nil, fmt.Errorf("watch %s: %w", d, err)
			}
			dirs = append(dirs, d)
		}
	}
	return w, nil
}

// reloadLoop reloads the files after each burst of changes in their directories, and every
// pollInterval, until ctx ends.
func (s *Source) reloadLoop(ctx context.Context, w *fsnotify.Watcher) {
	defer close(s.done)
	defer w.Close()
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-w.Events:
			// Any change in the directories may be ours: files replaced by rename, or a
			// Kubernetes volume's ..data symlink swapped. A reload of unchanged files
			// costs three reads.
			if ev.Op != fsnotify.Chmod {
				timer.Reset(debounce)
			}
			continue
		case err := <-w.Errors:
			s.logger.Warn("security: watching the certificate files", "err", err)
		case <-timer.C:
		case <-poll.C:
		}
		s.reload()
	}
}

// reload loads the files and makes them current when they changed and are fit; when they
// are not, it logs why and keeps the current ones.
func (s *Source) reload() {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur.Load()
	st, err := s.loadFiles()
	switch {
	case err != nil:
		err = fmt.Errorf("reload the certificate files: %w", err)
		s.logger.Error("security: keeping the current certificate", "err", err)
		s.publish(nil, err)
	case st != cur:
		s.logger.Info("security: certificate files reloaded", "id", st.id.String(),
			"not_after", st.cert.Leaf.NotAfter, "bundle_changed", st.roots != cur.roots)
		s.publish(st, nil)
		s.warnUnnamed(st, s.spec.Services)
	default:
		s.publish(nil, nil)
	}
}
