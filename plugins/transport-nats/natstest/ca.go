package natstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// certLife is how long the certificates of a CA are valid, from an hour before they are
// made (so that a clock a little behind does not refuse them).
const certLife = 24 * time.Hour

// CA is a certificate authority for tests: a self-signed ECDSA P-256 root that issues
// certificates good for both server and client authentication.
type CA struct {
	// CertFile is the CA's certificate, PEM: the bundle a client names to verify the
	// server, and a server to verify clients.
	CertFile string

	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey

	mu     sync.Mutex
	server *tls.Certificate // the server's, issued on first use
}

// NewCA makes a CA whose files live in a temporary directory of t. It fails t on error.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("natstest: CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "natstest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLife),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("natstest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("natstest: CA certificate: %v", err)
	}
	ca := &CA{dir: t.TempDir(), cert: cert, key: key}
	ca.CertFile = filepath.Join(ca.dir, "ca.pem")
	if err := os.WriteFile(ca.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return ca
}

// Issue makes a certificate and key named name (its common name) for 127.0.0.1 and
// localhost, good for client and server authentication, writes them as PEM files into
// the CA's directory (the key readable by its owner only), and returns their paths. It
// fails t on error.
func (ca *CA) Issue(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.issue(name, serial(t))
	if err != nil {
		t.Fatalf("natstest: issue %s: %v", name, err)
	}
	certFile = filepath.Join(ca.dir, name+".pem")
	keyFile = filepath.Join(ca.dir, name+"-key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatalf("natstest: %v", err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return certFile, keyFile
}

// issue returns a new certificate and its key, PEM, for name.
func (ca *CA) issue(name string, sn *big.Int) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certLife),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// serverTLS returns the server's TLS settings: a certificate from ca, and, with
// verifyClients, client certificates from ca required.
func (ca *CA) serverTLS(verifyClients bool) (*tls.Config, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.server == nil {
		sn, err := newSerial()
		if err != nil {
			return nil, err
		}
		certPEM, keyPEM, err := ca.issue("natstest server", sn)
		if err != nil {
			return nil, fmt.Errorf("issue the server's certificate: %w", err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("the server's certificate: %w", err)
		}
		ca.server = &c
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*ca.server}}
	if verifyClients {
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// serial returns a random certificate serial number; it fails t on error.
func serial(t testing.TB) *big.Int {
	t.Helper()
	sn, err := newSerial()
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return sn
}

// newSerial returns a random certificate serial number of 127 bits.
func newSerial() (*big.Int, error) {
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return sn, nil
}
