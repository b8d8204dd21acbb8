package security

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microhost/micro/runtime/internal/statedir"
)

// The files of a CA in its directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
	caLockFile = "ca.lock"
)

// caValidity is how long a CA made here is valid.
const caValidity = 10 * 365 * 24 * time.Hour

// clockSkew is how far back a certificate's validity starts, so that a peer whose clock is
// a little behind accepts it.
const clockSkew = time.Minute

// CA is a certificate authority of one trust domain, which issues the certificates of micros.
type CA struct {
	td   string
	cert *x509.Certificate
	key  crypto.Signer
}

// OpenLocalCA opens the CA of trust domain trustDomain in dir, and creates it there on
// first use. dir "" means the default state directory "ca" (see statedir.Default). The
// directory must belong to this process's user; it is made with mode 0700 and the key
// file with 0600. Processes that open a missing CA at the same time make exactly one:
// the others load it. A CA of another trust domain is an error.
func OpenLocalCA(dir, trustDomain string) (*CA, error) {
	return openCA(dir, trustDomain, false)
}

// CreateCA makes a new CA of trust domain trustDomain in dir, as OpenLocalCA does, but
// fails when dir already holds one.
func CreateCA(dir, trustDomain string) (*CA, error) {
	return openCA(dir, trustDomain, true)
}

// LoadCA loads the CA kept in dir, whatever its trust domain.
func LoadCA(dir string) (*CA, error) {
	return loadCA(dir)
}

func openCA(dir, td string, mustCreate bool) (*CA, error) {
	if err := ValidTrustDomain(td); err != nil {
		return nil, err
	}
	loc, err := statedir.New(dir, "ca", "certificate authority")
	if err != nil {
		return nil, err
	}
	if _, err := loc.Prepare(); err != nil {
		return nil, fmt.Errorf("CA directory: %w", err)
	}
	dir = loc.Path
	// The lock serializes the processes that find the CA missing; it is released when the
	// process dies, so a crash while creating leaves nothing that blocks the next one.
	lockPath := filepath.Join(dir, caLockFile)
	lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := flock(lock); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	certPath := filepath.Join(dir, CACertFile)
	if _, err := os.Lstat(certPath); err == nil {
		if mustCreate {
			return nil, fmt.Errorf("%s already holds a CA (%s): remove it first to make a new one", dir, certPath)
		}
		ca, err := loadCA(dir)
		if err != nil {
			return nil, err
		}
		if ca.td != td {
			return nil, fmt.Errorf("the CA in %s is of trust domain %s, not %s, which is configured: "+
				"configure %s, or use another CA directory", dir, ca.td, td, ca.td)
		}
		return ca, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ca, certPEM, keyPEM, err := newCA(td)
	if err != nil {
		return nil, err
	}
	// The key goes in first and the certificate last: a CA exists once its certificate does.
	// Each is written to a temporary file and linked to its name, which fails rather than
	// replaces a file that is there.
	if err := publish(dir, CAKeyFile, keyPEM, 0o600, true); err != nil {
		return nil, err
	}
	if err := publish(dir, CACertFile, certPEM, 0o644, false); err != nil {
		return nil, err
	}
	return ca, nil
}

// flock takes an exclusive lock on f, waiting for it.
func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			return err
		}
	}
}

// publish writes data to dir/name through a temporary file, with mode perm. When replace,
// a file left at name by a creation that died halfway is replaced; otherwise an existing
// name is an error.
func publish(dir, name string, data []byte, perm fs.FileMode, replace bool) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	path := filepath.Join(dir, name)
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		err = os.Link(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// newCA makes a CA key and self-signed certificate for trust domain td. The certificate
// names the trust domain in a URI SAN and constrains the URI SANs it may sign to that
// trust domain.
func newCA(td string) (ca *CA, certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"micro"}, CommonName: "micro CA " + td},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{trustDomainURL(td)},
		// Go's verifier, and others, check URI SANs against these: a certificate this CA
		// signs can only name IDs of its trust domain.
		PermittedURIDomains:         []string{td},
		PermittedDNSDomainsCritical: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return &CA{td: td, cert: cert, key: key}, certPEM, keyPEM, nil
}

func trustDomainURL(td string) *url.URL { return &url.URL{Scheme: "spiffe", Host: td} }

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// loadCA loads the CA in dir. Its key file must not be readable by others.
func loadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	st, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if p := st.Mode().Perm(); p&0o077 != 0 {
		return nil, fmt.Errorf("CA key %s has mode %v, so other users may read it: chmod 600 it", keyPath, p)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA in %s: %w", dir, err)
	}
	cert := pair.Leaf
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA certificate %s may not sign certificates", certPath)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s cannot sign", keyPath)
	}
	td, err := caTrustDomain(cert)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	return &CA{td: td, cert: cert, key: signer}, nil
}

// caTrustDomain reads the trust domain that a CA made by newCA names.
func caTrustDomain(cert *x509.Certificate) (string, error) {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" && (u.Path == "" || u.Path == "/") && u.RawQuery == "" && u.Fragment == "" && u.User == nil {
			if err := ValidTrustDomain(u.Host); err != nil {
				return "", err
			}
			return u.Host, nil
		}
	}
	return "", errors.New("names no trust domain (a URI SAN spiffe://TRUST-DOMAIN)")
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() string { return c.td }

// Certificate returns the CA's certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertificatePEM returns the CA's certificate in PEM.
func (c *CA) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
}

// Issue issues a certificate that names spec in the CA's trust domain and is valid for ttl
// (and a minute before now, for peers whose clocks are behind), but not past the CA's own
// expiry. Its key is a new ECDSA P-256 key; it serves as a TLS server and client
// certificate. The chain holds the certificate alone, and Leaf is set.
func (c *CA) Issue(spec IdentitySpec, ttl time.Duration) (tls.Certificate, error) {
	if ttl <= 0 {
		return tls.Certificate{}, fmt.Errorf("certificate lifetime %v is not positive", ttl)
	}
	ids, err := spec.ids(c.td)
	if err != nil {
		return tls.Certificate{}, err
	}
	uris := make([]*url.URL, len(ids))
	for i, id := range ids {
		uris[i] = id.URL()
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"micro"}, CommonName: ids[0].Name},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue a certificate for %s: %w", ids[0], err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// MarshalPEM encodes a certificate's chain and its key in PEM, the key in PKCS #8, as
// files mode reads them.
func MarshalPEM(cert tls.Certificate) (certPEM, keyPEM []byte, err error) {
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("encode the key: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}
