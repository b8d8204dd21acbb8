package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// volume is a directory laid out as Kubernetes lays out a secret volume: the files are
// symlinks into ..data, itself a symlink to a directory of one version, and an update
// swaps ..data by rename.
type volume struct {
	dir string
	n   int
}

func newVolume(t testing.TB) *volume { return &volume{dir: t.TempDir()} }

func (v *volume) path(name string) string { return filepath.Join(v.dir, name) }

// swap makes files the volume's content, in one rename.
func (v *volume) swap(t testing.TB, files map[string][]byte) {
	t.Helper()
	v.n++
	version := fmt.Sprintf("..v%d", v.n)
	if err := os.Mkdir(v.path(version), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		writeFile(t, filepath.Join(v.path(version), name), data, 0o600)
	}
	if err := os.Symlink(version, v.path("..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(v.path("..data_tmp"), v.path("..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), v.path(name)); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
}

// set returns the files of a certificate of ca for services, with bundle as the CA file.
func set(t testing.TB, ca *CA, bundle []byte, services ...string) map[string][]byte {
	t.Helper()
	cert, err := ca.Issue(IdentitySpec{Services: services, Micro: "files"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, k := marshal(t, cert)
	return map[string][]byte{"ca.pem": bundle, "cert.pem": c, "key.pem": k}
}

func filesSource(t testing.TB, v *volume) *Source {
	t.Helper()
	s, err := NewSource(context.Background(), Options{
		CAFile: v.path("ca.pem"), CertFile: v.path("cert.pem"), KeyFile: v.path("key.pem"),
		Services: []string{"greeter"}, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// waitFor polls cond, which a background reload makes true, for up to ten seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestFilesReloadUnderLoad swaps the server's files, good and bad, while a client
// connects in a loop: no connection may fail, a good set is taken up, and a bad one is
// reported and changes nothing.
func TestFilesReloadUnderLoad(t *testing.T) {
	ca := newTestCA(t, DefaultTrustDomain)
	sv, cv := newVolume(t), newVolume(t)
	sv.swap(t, set(t, ca, ca.CertificatePEM(), "greeter"))
	cv.swap(t, set(t, ca, ca.CertificatePEM(), "frontend"))
	server, client := filesSource(t, sv), filesSource(t, cv)
	ts := serve(t, server.ServerConfig(), server)

	var stop atomic.Bool
	var calls, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			ccfg := client.ClientConfig()
			for !stop.Load() {
				if _, _, err := dial(ts.addr, ccfg); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				calls.Add(1)
			}
		})
	}
	// callsPass waits until the clients have made n more calls.
	callsPass := func(n int64) {
		target := calls.Load() + n
		waitFor(t, "calls", func() bool { return calls.Load() >= target })
	}
	callsPass(20)
	for i := range 3 {
		svc := fmt.Sprintf("svc%d", i)
		sv.swap(t, set(t, ca, ca.CertificatePEM(), "greeter", svc))
		waitFor(t, "the new certificate", func() bool { return server.Identity().HasService(svc) })
		callsPass(20)
	}

	// A bad set: a key that is not the certificate's.
	good := server.Certificate()
	bad := set(t, ca, ca.CertificatePEM(), "greeter", "bad")
	bad["key.pem"] = set(t, ca, ca.CertificatePEM(), "greeter")["key.pem"]
	sv.swap(t, bad)
	waitFor(t, "the reload failure", func() bool { return server.Health() != nil })
	if err := server.Health(); !errContains(err, "private key does not match public key") {
		t.Errorf("health after a bad set: %v", err)
	}
	callsPass(20)
	if server.Certificate() != good {
		t.Error("a bad set replaced the certificate")
	}
	sv.swap(t, set(t, ca, ca.CertificatePEM(), "greeter", "after"))
	waitFor(t, "recovery", func() bool { return server.Identity().HasService("after") })
	if err := server.Health(); err != nil {
		t.Errorf("health after a good set: %v", err)
	}
	callsPass(20)

	stop.Store(true)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d calls failed, the first: %v", f, calls.Load(), firstErr.Load())
	}
	if f := ts.failed.Load(); f != 0 {
		t.Fatalf("%d handshakes failed on the server", f)
	}
	t.Logf("%d calls, none failed", calls.Load())
}

// TestFilesRenamed replaces the files one by one by rename, as an editor or a script
// does: the set in between does not load, the final one does.
func TestFilesRenamed(t *testing.T) {
	ca := newTestCA(t, DefaultTrustDomain)
	dir := t.TempDir()
	put := func(files map[string][]byte) {
		for _, name := range []string{"ca.pem", "cert.pem", "key.pem"} {
			writeFile(t, filepath.Join(dir, name+".tmp"), files[name], 0o600)
			if err := os.Rename(filepath.Join(dir, name+".tmp"), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(set(t, ca, ca.CertificatePEM(), "greeter"))
	s, err := NewSource(t.Context(), Options{CAFile: filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put(set(t, ca, ca.CertificatePEM(), "greeter", "renamed"))
	waitFor(t, "the new certificate", func() bool { return s.Identity().HasService("renamed") })
	waitFor(t, "health", func() bool { return s.Health() == nil })
}

// TestFilesBundleReload adds a CA to the server's bundle: a client of that CA, refused
// before, is admitted by the next handshake.
func TestFilesBundleReload(t *testing.T) {
	ca1, ca2 := newTestCA(t, DefaultTrustDomain), newTestCA(t, DefaultTrustDomain)
	both := append(ca1.CertificatePEM(), ca2.CertificatePEM()...)
	sv, cv := newVolume(t), newVolume(t)
	files := set(t, ca1, ca1.CertificatePEM(), "greeter")
	sv.swap(t, files)
	cv.swap(t, set(t, ca2, both, "frontend"))
	server, client := filesSource(t, sv), filesSource(t, cv)
	ts := serve(t, server.ServerConfig(), server)
	if _, _, err := dial(ts.addr, client.ClientConfig()); err == nil {
		t.Fatal("a client of another CA was admitted")
	}
	if err := ts.nextErr(t); !errContains(err, "client certificate is not signed by the trust domain's CA") {
		t.Fatalf("server error: %v", err)
	}
	roots := server.cur.Load().roots
	files["ca.pem"] = both
	sv.swap(t, files)
	waitFor(t, "the new bundle", func() bool { return server.cur.Load().roots != roots })
	id, _, err := dial(ts.addr, client.ClientConfig())
	if err != nil || id != "spiffe://micro.local/micro/files, spiffe://micro.local/service/frontend" {
		t.Fatalf("after the bundle reload: %q, %v", id, err)
	}
}

// issueAt signs a certificate with ca's key as the caller describes it, for certificates
// that Issue refuses to make.
func issueAt(t testing.TB, ca *CA, notBefore, notAfter time.Time, uris ...string) map[string][]byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialForTest(t),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, k := marshal(t, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})
	return map[string][]byte{"ca.pem": ca.CertificatePEM(), "cert.pem": c, "key.pem": k}
}

func serialForTest(t testing.TB) *big.Int {
	t.Helper()
	n, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFilesRefused(t *testing.T) {
	ca, other := newTestCA(t, DefaultTrustDomain), newTestCA(t, DefaultTrustDomain)
	// A CA without the name constraint that a trust domain's own CAs carry, as another
	// tool may make it: only the trust domain check stops its other-domain certificates.
	open := newOpenCA(t)
	now := time.Now()
	good := func() map[string][]byte { return set(t, ca, ca.CertificatePEM(), "greeter") }
	with := func(f map[string][]byte, name string, data []byte) map[string][]byte {
		f[name] = data
		return f
	}
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"unparsable bundle", with(good(), "ca.pem", []byte("junk")), "ca.pem: no PEM certificate"},
		{"unparsable certificate", with(good(), "cert.pem", []byte("junk")), "failed to find any PEM data in certificate input"},
		{"key of another certificate", with(good(), "key.pem", good()["key.pem"]), "private key does not match public key"},
		{"another CA", with(good(), "ca.pem", other.CertificatePEM()), "the certificate is not signed by the trust domain's CA"},
		{"another trust domain", issueAt(t, open, now.Add(-time.Hour), now.Add(time.Hour), "spiffe://other.example/service/x"),
			"the certificate's trust domain is other.example, not micro.local"},
		{"outside the CA's name constraint", issueAt(t, ca, now.Add(-time.Hour), now.Add(time.Hour), "spiffe://micro.local/service/x", "https://x.other.example/"),
			`URI "https://x.other.example/" is not permitted by any constraint`},
		{"no ID", issueAt(t, ca, now.Add(-time.Hour), now.Add(time.Hour), "https://example.com/"),
			"names no spiffe://micro.local/ ID"},
		{"bad ID", issueAt(t, ca, now.Add(-time.Hour), now.Add(time.Hour), "spiffe://micro.local/service/x/y"),
			`name "x/y"`},
		{"expired", issueAt(t, ca, now.Add(-2*time.Hour), now.Add(-time.Hour), "spiffe://micro.local/service/x"),
			"certificate has expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVolume(t)
			v.swap(t, tc.files)
			_, err := NewSource(t.Context(), Options{CAFile: v.path("ca.pem"), CertFile: v.path("cert.pem"),
				KeyFile: v.path("key.pem"), Logger: quietLogger()})
			if !errContains(err, tc.want) {
				t.Errorf("NewSource: %v, want an error that says %q", err, tc.want)
			}
		})
	}
	if _, err := NewSource(t.Context(), Options{CAFile: "ca.pem", Instance: "m"}); !errContains(err, "need a CA file, a certificate file and a key file") {
		t.Errorf("NewSource with a CA file alone: %v", err)
	}
}

// newOpenCA makes a CA of no trust domain and no name constraint.
func newOpenCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialForTest(t), Subject: pkix.Name{CommonName: "open CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{td: "", cert: cert, key: key}
}
