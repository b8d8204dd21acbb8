package security

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// defaultCacheSize bounds the peers whose verified certificates a Source remembers.
const defaultCacheSize = 1024

// sessionCacheSize bounds the TLS sessions a client configuration keeps for resumption.
const sessionCacheSize = 1024

// sessionTagPrefix marks the entry that a Source adds to a TLS session's Extra: the digest
// of its own certificate when the session began.
const sessionTagPrefix = "micro-cert:"

// ServerConfig returns a TLS configuration for a micro's listeners: TLS 1.3, this micro's
// current certificate, and a client certificate required from every caller, verified
// against the current trust bundle and trust domain. A handshake that fails says why on the
// server side, e.g. "client certificate's trust domain is other.example, not micro.local".
// The configuration follows renewals and reloads; it may be changed (NextProtos, say)
// before use.
func (s *Source) ServerConfig() *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cur.Load().cert, nil
		},
		// The chain is verified by VerifyConnection, against the bundle current at the
		// handshake, on full handshakes and resumptions alike.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.verifyPeer(cs.PeerCertificates, "client", cs.DidResume)
			return err
		},
	}
	// A session ticket records this micro's certificate, and a ticket from before a
	// renewal or reload is not resumed: a client that resumes sees the certificate this
	// micro presents now, never one that has expired since.
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = append(ss.Extra, s.cur.Load().sessionTag())
		return cfg.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := cfg.DecryptTicket(identity, cs)
		if err != nil || ss == nil || !hasTag(ss.Extra, s.cur.Load().sessionTag()) {
			return nil, err
		}
		return ss, nil
	}
	return cfg
}

// ClientConfig returns a TLS configuration for a micro's outgoing connections: TLS 1.3,
// this micro's current certificate, and the server's certificate verified against the
// current trust bundle and trust domain. Sessions are resumed, so a pooled reconnect skips
// the certificate exchange. The configuration follows renewals and reloads.
func (s *Source) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cur.Load().cert, nil
		},
		// Servers are dialed at addresses from a registry, IPs or host:port, which their
		// certificates do not name: they name SPIFFE IDs. crypto/tls's own verification
		// checks a host name, so it is off, and VerifyConnection does all the rest: the
		// chain up to the current bundle, validity, and the trust domain. It runs on every
		// handshake, resumed ones included, and a failure aborts the handshake, so no
		// connection is ever used with an unverified server.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.verifyPeer(cs.PeerCertificates, "server", cs.DidResume)
			return err
		},
		ClientSessionCache: &sessionCache{s: s, lru: tls.NewLRUClientSessionCache(sessionCacheSize)},
	}
}

// PeerIdentity returns the identity of the peer of a connection made with ServerConfig or
// ClientConfig. It checks the peer's certificate again, which costs a digest and a cache
// lookup.
func (s *Source) PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	v, err := s.verifyPeer(cs.PeerCertificates, "peer", cs.DidResume)
	if err != nil {
		return Identity{}, err
	}
	return v.id, nil
}

// sessionCache is a client session cache that does not resume a session that began with
// another certificate of this micro than the current one, so that after a renewal, or
// SetServices, servers see the new certificate.
type sessionCache struct {
	s   *Source
	lru tls.ClientSessionCache
}

// Get returns the session for key, unless it began with an older certificate.
func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := c.lru.Get(key)
	if !ok {
		return nil, false
	}
	if _, ss, err := cs.ResumptionState(); err != nil || ss == nil || !hasTag(ss.Extra, c.s.cur.Load().sessionTag()) {
		c.lru.Put(key, nil)
		return nil, false
	}
	return cs, true
}

// Put keeps the session for key, tagged with this micro's current certificate.
func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		_, ss, err := cs.ResumptionState()
		if err != nil || ss == nil {
			return
		}
		ss.Extra = append(ss.Extra, c.s.cur.Load().sessionTag())
	}
	c.lru.Put(key, cs)
}

func (st *state) sessionTag() []byte {
	return append([]byte(sessionTagPrefix), st.digest[:]...)
}

func hasTag(extra [][]byte, tag []byte) bool {
	return slices.ContainsFunc(extra, func(e []byte) bool { return bytes.Equal(e, tag) })
}

// verifyPeer verifies a peer's certificate chain, as the peer presented it, against the
// current bundle and trust domain. role names the peer in errors ("client", "server").
// When resumed, the chain comes from a resumed TLS session, whose key proves that the peer
// presented it in a full handshake: then a certificate that has expired since is accepted,
// as crypto/tls itself does on resumption.
func (s *Source) verifyPeer(certs []*x509.Certificate, role string, resumed bool) (*verified, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("no %s certificate", role)
	}
	raws := make([][]byte, len(certs))
	for i, c := range certs {
		raws[i] = c.Raw
	}
	v, err := s.verified(chainDigest(raws), func() ([]*x509.Certificate, error) { return certs, nil }, resumed)
	if err != nil {
		return nil, roleError(role, err)
	}
	return v, nil
}

// verified is a certificate chain verified against a bundle, and the identity it names.
type verified struct {
	leaf  *x509.Certificate
	id    Identity
	roots *x509.CertPool
	// notBefore and notAfter bound the validity of the chain, up to its root.
	notBefore, notAfter time.Time
}

// verified returns the verified chain whose digest is key, from the cache when it was
// verified against the current bundle, or else by parsing it with parse and verifying it.
func (s *Source) verified(key [sha256.Size]byte, parse func() ([]*x509.Certificate, error), resumed bool) (*verified, error) {
	roots := s.cur.Load().roots
	v := s.cache.get(key)
	if v == nil || v.roots != roots {
		certs, err := parse()
		if err != nil {
			return nil, err
		}
		if v, err = verifyIdentity(certs, roots, s.td, resumed); err != nil {
			return nil, err
		}
		s.cache.put(key, v)
	}
	if now := time.Now(); !resumed && now.After(v.notAfter) {
		return nil, &validityError{expired: true, at: v.notAfter}
	} else if now.Before(v.notBefore) {
		return nil, &validityError{at: v.notBefore}
	}
	return v, nil
}

// verifyIdentity verifies a chain against roots and reads the identity its leaf names in
// trust domain td. It verifies the chain as of now, or, when resumed, as of when it was
// last valid if it has expired since.
func verifyIdentity(certs []*x509.Certificate, roots *x509.CertPool, td string, resumed bool) (*verified, error) {
	at := time.Now()
	for _, c := range certs {
		if resumed && at.After(c.NotAfter) {
			at = c.NotAfter
		}
	}
	// The trust domain is checked first, so that a peer of another trust domain, whose CA
	// is another one too, learns that rather than only that its CA is unknown.
	id, err := identityOf(certs[0], td)
	if err != nil {
		return nil, err
	}
	chain, err := verifyChain(certs, roots, at)
	if err != nil {
		return nil, describeVerifyError(err)
	}
	v := &verified{leaf: certs[0], id: id, roots: roots, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, c := range chain[1:] {
		if c.NotBefore.After(v.notBefore) {
			v.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(v.notAfter) {
			v.notAfter = c.NotAfter
		}
	}
	return v, nil
}

// verifyChain verifies the chain certs, leaf first, against roots at time at, and checks
// that the leaf may serve TLS servers and clients. It returns the verified chain, up to
// its root.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, at time.Time) ([]*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, err
	}
	eku := certs[0].ExtKeyUsage
	if len(eku) > 0 && !slices.Contains(eku, x509.ExtKeyUsageAny) &&
		!(slices.Contains(eku, x509.ExtKeyUsageServerAuth) && slices.Contains(eku, x509.ExtKeyUsageClientAuth)) {
		return nil, errors.New("may not serve both TLS servers and clients: its extended key usage needs server auth and client auth")
	}
	return chains[0], nil
}

// chainDigest is the digest of a certificate chain: of its certificates' DER, one after
// the other, which is unambiguous as DER encodes each certificate's length.
func chainDigest(raws [][]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, r := range raws {
		h.Write(r)
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// notSignedError says that a certificate does not chain up to the bundle.
type notSignedError struct{ issuer string }

func (e *notSignedError) Error() string {
	return fmt.Sprintf("is not signed by the trust domain's CA (its issuer is %q)", e.issuer)
}

// validityError says that a certificate chain is not valid now.
type validityError struct {
	expired bool
	at      time.Time // when the chain's validity ends, or begins
}

func (e *validityError) Error() string {
	if e.expired {
		return "has expired: its chain was valid until " + e.at.UTC().Format(time.RFC3339)
	}
	return "is not valid yet: its chain is valid from " + e.at.UTC().Format(time.RFC3339)
}

// describeVerifyError rephrases the errors of x509 verification that need it.
func describeVerifyError(err error) error {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) && ua.Cert != nil {
		return &notSignedError{issuer: ua.Cert.Issuer.String()}
	}
	return err
}

// roleError names the certificate of a peer in role in an error about it.
func roleError(role string, err error) error {
	var tde *certTrustDomainError
	var nse *notSignedError
	var ve *validityError
	switch {
	case errors.As(err, &tde):
		return fmt.Errorf("%s certificate's %w", role, err)
	case errors.As(err, &nse), errors.As(err, &ve):
		return fmt.Errorf("%s certificate %w", role, err)
	default:
		return fmt.Errorf("%s certificate: %w", role, err)
	}
}

// verifyCache remembers verified chains by their digest. It holds at most max of them, and
// forgets the oldest first.
type verifyCache struct {
	mu    sync.Mutex
	m     map[[sha256.Size]byte]*verified
	order [][sha256.Size]byte // ring of the keys in m, oldest at next
	next  int
	max   int
}

func newVerifyCache(max int) *verifyCache {
	return &verifyCache{m: make(map[[sha256.Size]byte]*verified, max), max: max}
}

func (c *verifyCache) get(key [sha256.Size]byte) *verified {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *verifyCache) put(key [sha256.Size]byte, v *verified) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; ok {
		c.m[key] = v
		return
	}
	if len(c.order) < c.max {
		c.order = append(c.order, key)
	} else {
		delete(c.m, c.order[c.next])
		c.order[c.next] = key
		c.next = (c.next + 1) % c.max
	}
	c.m[key] = v
}
