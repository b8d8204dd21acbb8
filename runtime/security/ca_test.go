package security

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOpenLocalCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ca")
	ca, err := OpenLocalCA(dir, "micro.local")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, CAKeyFile): 0o600} {
		if fi, err := os.Stat(name); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v, %v; want %v", name, fi.Mode(), err, want)
		}
	}
	c := ca.Certificate()
	if !c.IsCA || !c.MaxPathLenZero || c.PublicKeyAlgorithm != x509.ECDSA ||
		c.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() ||
		!slices.Equal(c.PermittedURIDomains, []string{"micro.local"}) {
		t.Errorf("CA certificate: IsCA %v, algorithm %v, URI constraints %v", c.IsCA, c.PublicKeyAlgorithm, c.PermittedURIDomains)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("CA valid for %v, want 10 years", life)
	}
	again, err := OpenLocalCA(dir, "micro.local")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(c) {
		t.Error("a second OpenLocalCA made another CA")
	}
	if _, err := OpenLocalCA(dir, "other.example"); !errContains(err, "is of trust domain micro.local, not other.example") || !errContains(err, dir) {
		t.Errorf("OpenLocalCA of another trust domain: %v", err)
	}
	if _, err := CreateCA(dir, "micro.local"); !errContains(err, "already holds a CA") {
		t.Errorf("CreateCA over a CA: %v", err)
	}
	if _, err := OpenLocalCA(t.TempDir(), "Bad_Domain"); !errContains(err, `trust domain "Bad_Domain"`) {
		t.Errorf("OpenLocalCA of a bad trust domain: %v", err)
	}

	if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocalCA(dir, "micro.local"); !errContains(err, "other users may read it") {
		t.Errorf("OpenLocalCA with a readable key: %v", err)
	}
}

// TestOpenLocalCAOthersDirectory checks that a directory of another user is refused: as
// root, one given to nobody; as anyone else, the root directory.
func TestOpenLocalCAOthersDirectory(t *testing.T) {
	dir := "/"
	if os.Geteuid() == 0 {
		dir = t.TempDir()
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	_, err := OpenLocalCA(dir, "micro.local")
	if !errContains(err, "directory "+dir+" is owned by uid ") {
		t.Fatalf("OpenLocalCA(%s) = %v, want an error naming the directory and its owner", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		t.Errorf("a CA was made in %s", dir)
	}
}

// TestOpenLocalCAConcurrent opens a missing CA from goroutines and processes at once:
// they all get the same one.
func TestOpenLocalCAConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	const n = 8
	var wg sync.WaitGroup
	certs := make([][]byte, 2*n)
	errs := make([]error, 2*n)
	for i := range n {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOpenCA$")
			cmd.Env = append(os.Environ(), "MICRO_TEST_CA_DIR="+dir)
			out, err := cmd.Output()
			if err != nil {
				err = fmt.Errorf("%w: %s", err, out)
			}
			certs[i], errs[i] = bytes.TrimSpace(out), err
		})
		wg.Go(func() {
			ca, err := OpenLocalCA(dir, "micro.local")
			if err == nil {
				certs[n+i] = bytes.TrimSpace(ca.CertificatePEM())
			}
			errs[n+i] = err
		})
	}
	wg.Wait()
	for i := range certs {
		if errs[i] != nil {
			t.Fatalf("opener %d: %v", i, errs[i])
		}
		if !bytes.Equal(certs[i], certs[0]) {
			t.Fatalf("opener %d got another CA:\n%s\nthan opener 0:\n%s", i, certs[i], certs[0])
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{CACertFile, CAKeyFile, caLockFile}; !slices.Equal(names, want) {
		t.Errorf("directory holds %v, want %v", names, want)
	}
}

// TestHelperOpenCA is the process that TestOpenLocalCAConcurrent runs: it opens the CA
// and prints its certificate.
func TestHelperOpenCA(t *testing.T) {
	dir := os.Getenv("MICRO_TEST_CA_DIR")
	if dir == "" {
		t.Skip("run by TestOpenLocalCAConcurrent")
	}
	ca, err := OpenLocalCA(dir, "micro.local")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	os.Stdout.Write(ca.CertificatePEM())
	os.Exit(0)
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, "micro.local")
	before := time.Now()
	cert, err := ca.Issue(IdentitySpec{Services: []string{"greeter", "billing"}, Micro: "host-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	var uris []string
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	want := []string{"spiffe://micro.local/micro/host-1", "spiffe://micro.local/service/greeter", "spiffe://micro.local/service/billing"}
	if !slices.Equal(uris, want) {
		t.Errorf("URIs = %v, want %v", uris, want)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature ||
		!slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) ||
		leaf.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() || leaf.IsCA {
		t.Errorf("key usage %v, extended %v, IsCA %v", leaf.KeyUsage, leaf.ExtKeyUsage, leaf.IsCA)
	}
	if skew := before.Sub(leaf.NotBefore); skew < 59*time.Second || skew > 2*time.Minute {
		t.Errorf("NotBefore is %v before issuing, want a minute", skew)
	}
	if life := leaf.NotAfter.Sub(before); life < 59*time.Minute || life > 61*time.Minute {
		t.Errorf("NotAfter is %v after issuing, want an hour", life)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if c, err := ca.Issue(IdentitySpec{Micro: "m"}, 20*365*24*time.Hour); err != nil || c.Leaf.NotAfter.After(ca.Certificate().NotAfter) {
		t.Errorf("a certificate outlives its CA: %v", err)
	}
	for _, tc := range []struct {
		spec IdentitySpec
		ttl  time.Duration
		want string
	}{
		{IdentitySpec{}, time.Hour, "needs a micro instance or a service"},
		{IdentitySpec{Micro: "a/b"}, time.Hour, `micro instance: name "a/b"`},
		{IdentitySpec{Services: []string{"x", "x"}}, time.Hour, `service "x" is named twice`},
		{IdentitySpec{Services: []string{".."}}, time.Hour, `name ".." is not allowed`},
		{IdentitySpec{Micro: "m"}, 0, "lifetime 0s is not positive"},
	} {
		if _, err := ca.Issue(tc.spec, tc.ttl); !errContains(err, tc.want) {
			t.Errorf("Issue(%+v, %v) = %v, want an error that says %q", tc.spec, tc.ttl, err, tc.want)
		}
	}
	if !strings.HasPrefix(string(ca.CertificatePEM()), "-----BEGIN CERTIFICATE-----") {
		t.Error("CertificatePEM is no PEM certificate")
	}
}
