package security

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"maps"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// signed signs a message with src and returns its header with the signature headers.
func signed(t testing.TB, src *Source, nonce string, header map[string]string, body []byte) map[string]string {
	t.Helper()
	sig, err := src.Sign(nonce, header, body)
	if err != nil {
		t.Fatal(err)
	}
	h := maps.Clone(header)
	if h == nil {
		h = map[string]string{}
	}
	maps.Copy(h, sig)
	return h
}

func TestSignVerify(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a := localSource(t, dir, "", "m1", "greeter")
	b := localSource(t, dir, "", "m2")
	header := map[string]string{"Micro-Endpoint": "hello", "Content-Type": "application/json"}
	body := []byte(`{"name":"ada"}`)
	h := signed(t, a, "req:1", header, body)
	id, err := b.Verify("req:1", h, body)
	if err != nil {
		t.Fatal(err)
	}
	if id.Micro != "m1" || !id.HasService("greeter") {
		t.Errorf("signer = %+v", id)
	}
	if _, err := b.Verify("", signed(t, a, "", nil, nil), nil); err != nil {
		t.Errorf("empty message: %v", err)
	}

	with := func(k, v string) map[string]string {
		c := maps.Clone(h)
		c[k] = v
		return c
	}
	without := func(k string) map[string]string {
		c := maps.Clone(h)
		delete(c, k)
		return c
	}
	const mismatch = "signature does not match the message"
	for _, tc := range []struct {
		name   string
		nonce  string
		header map[string]string
		body   []byte
		want   string
	}{
		{"body changed", "req:1", h, []byte(`{"name":"eve"}`), mismatch},
		{"body truncated", "req:1", h, body[:3], mismatch},
		{"header changed", "req:1", with("Micro-Endpoint", "admin"), body, mismatch},
		{"header added", "req:1", with("X-Extra", ""), body, mismatch},
		{"header removed", "req:1", without("Content-Type"), body, mismatch},
		{"header name case", "req:1", with("content-type", "application/json"), body, mismatch},
		{"another nonce", "req:2", h, body, mismatch},
		{"a reply's nonce", "rep:1", h, body, mismatch},
		{"no signature", "req:1", without(SignatureHeader), body, "no Micro-Signature header"},
		{"no signer", "req:1", without(SignerHeader), body, "no Micro-Signer header"},
		{"signature not base64", "req:1", with(SignatureHeader, "%%%"), body, "Micro-Signature header: illegal base64"},
		{"signer not base64", "req:1", with(SignerHeader, "a b"), body, "Micro-Signer header: illegal base64"},
		{"signer not a certificate", "req:1", with(SignerHeader, base64.StdEncoding.EncodeToString([]byte("junk"))), body, "signer certificate: in Micro-Signer header"},
		{"signer too long", "req:1", with(SignerHeader, strings.Repeat("A", maxSignerLen+4)), body, "more than 16384"},
		{"signature too long", "req:1", with(SignatureHeader, strings.Repeat("A", maxSignatureLen+4)), body, "more than 1024"},
	} {
		if _, err := b.Verify(tc.nonce, tc.header, tc.body); !errContains(err, tc.want) {
			t.Errorf("%s: Verify = %v, want an error that says %q", tc.name, err, tc.want)
		}
	}
	// Moving a field between the name and the value, or between fields, changes the
	// encoding.
	h1 := signed(t, a, "n", map[string]string{"ab": "c"}, nil)
	h2 := maps.Clone(h1)
	delete(h2, "ab")
	h2["a"] = "bc"
	if _, err := b.Verify("n", h2, nil); !errContains(err, mismatch) {
		t.Errorf("a field split elsewhere verified: %v", err)
	}
	if _, err := b.Verify("na", map[string]string{SignatureHeader: h1[SignatureHeader], SignerHeader: h1[SignerHeader], "b": "c"}, nil); !errContains(err, mismatch) {
		t.Errorf("a nonce that took a header's bytes verified: %v", err)
	}

	// The signature of another signer, with this signer's chain.
	other := signed(t, b, "req:1", header, body)
	if _, err := b.Verify("req:1", with(SignatureHeader, other[SignatureHeader]), body); !errContains(err, mismatch) {
		t.Errorf("another signer's signature: %v", err)
	}

	foreign := localSource(t, filepath.Join(t.TempDir(), "ca"), "", "m3", "greeter")
	if _, err := b.Verify("req:1", signed(t, foreign, "req:1", header, body), body); !errContains(err, "signer certificate is not signed by the trust domain's CA") {
		t.Errorf("a signer of another CA: %v", err)
	}
	otherTD := localSource(t, filepath.Join(t.TempDir(), "ca"), "other.example", "m4")
	if _, err := b.Verify("req:1", signed(t, otherTD, "req:1", header, body), body); !errContains(err, "signer certificate's trust domain is other.example, not micro.local") {
		t.Errorf("a signer of another trust domain: %v", err)
	}
}

// TestVerifyAcrossRenewal checks that a message signed before the signer renewed its
// certificate still verifies, and one signed after.
func TestVerifyAcrossRenewal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a := localSource(t, dir, "", "m1", "greeter")
	b := localSource(t, dir, "", "m2")
	before := signed(t, a, "n", nil, []byte("x"))
	if err := a.SetServices([]string{"greeter", "more"}); err != nil {
		t.Fatal(err)
	}
	after := signed(t, a, "n", nil, []byte("x"))
	if before[SignerHeader] == after[SignerHeader] {
		t.Fatal("the signer did not change")
	}
	if id, err := b.Verify("n", before, []byte("x")); err != nil || id.HasService("more") {
		t.Errorf("before: %+v, %v", id, err)
	}
	if id, err := b.Verify("n", after, []byte("x")); err != nil || !id.HasService("more") {
		t.Errorf("after: %+v, %v", id, err)
	}
}

// TestVerifyCacheBounded verifies the messages of more signers than the cache holds.
func TestVerifyCacheBounded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	v := localSource(t, dir, "", "verifier")
	v.cache = newVerifyCache(4)
	ca, err := OpenLocalCA(dir, DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []map[string]string
	for i := range 10 {
		cert, err := ca.Issue(IdentitySpec{Micro: "m" + string(rune('a'+i))}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		s := &Source{td: DefaultTrustDomain}
		st, err := newState(&cert, v.cur.Load().roots, DefaultTrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		s.cur.Store(st)
		msgs = append(msgs, signed(t, s, "n", nil, nil))
	}
	for round := range 2 {
		for i, m := range msgs {
			id, err := v.Verify("n", m, nil)
			if err != nil || id.Micro != "m"+string(rune('a'+i)) {
				t.Fatalf("round %d, signer %d: %+v, %v", round, i, id, err)
			}
			if n := len(v.cache.m); n > 4 || len(v.cache.order) > 4 {
				t.Fatalf("cache holds %d entries, more than 4", n)
			}
		}
	}
}

// TestSignOtherKeys signs with the RSA and Ed25519 keys that certificates from files may
// have.
func TestSignOtherKeys(t *testing.T) {
	ca := newTestCA(t, DefaultTrustDomain)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	verifier := localSource(t, filepath.Join(t.TempDir(), "ca"), "", "v")
	for name, key := range map[string]crypto.Signer{"rsa": rsaKey, "ed25519": edKey} {
		tmpl := &x509.Certificate{
			SerialNumber: serialForTest(t), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, URIs: []*url.URL{MicroID(DefaultTrustDomain, name).URL()},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		st, err := newState(&tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, DefaultTrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		s := &Source{td: DefaultTrustDomain, cache: newVerifyCache(4)}
		s.cur.Store(st)
		h := signed(t, s, "n", map[string]string{"k": "v"}, []byte("body"))
		if id, err := s.Verify("n", h, []byte("body")); err != nil || id.Micro != name {
			t.Errorf("%s: %+v, %v", name, id, err)
		}
		if _, err := s.Verify("n", h, []byte("bodY")); err == nil {
			t.Errorf("%s: a changed body verified", name)
		}
		if _, err := verifier.Verify("n", h, []byte("body")); !errContains(err, "not signed by the trust domain's CA") {
			t.Errorf("%s: a verifier of another CA: %v", name, err)
		}
	}
}

// FuzzVerify verifies messages with hostile headers, built from a genuine signed message:
// nothing panics, and nothing verifies but the genuine message's content.
func FuzzVerify(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "ca")
	a := localSource(f, dir, "", "m1", "greeter")
	b := localSource(f, dir, "", "m2")
	body := []byte("body")
	h := signed(f, a, "n", map[string]string{"k": "v"}, body)
	sig, signer := h[SignatureHeader], h[SignerHeader]
	f.Add("n", sig, signer, "k", "v", body)
	f.Add("n", sig, signer, "k", "w", body)
	f.Add("n", sig[:len(sig)-4]+"AAA=", signer, "k", "v", body)
	f.Add("n", sig, signer[:len(signer)/2], "k", "v", body)
	f.Add("n", sig, signer+signer, "k", "v", body)
	f.Add("", "", "", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, nonce, sigH, signerH, name, value string, body []byte) {
		header := map[string]string{SignatureHeader: sigH, SignerHeader: signerH, name: value}
		id, err := b.Verify(nonce, header, body)
		if err != nil {
			return
		}
		// The signature headers are not signed: another encoding of the same signature, or
		// a chain with more certificates, may verify, but only for the signed content.
		genuine := nonce == "n" && name == "k" && value == "v" && string(body) == "body"
		if !genuine || id.Micro != "m1" {
			t.Fatalf("Verify accepted %q %v %q as %+v", nonce, header, body, id)
		}
	})
}

// TestVerifyExpiredSigner checks that a remembered signer is refused once its chain has
// expired, while a resumed TLS session, which proved its certificate when it began, still
// reads as its identity.
func TestVerifyExpiredSigner(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a := localSource(t, dir, "", "m1")
	b := localSource(t, dir, "", "m2")
	h := signed(t, a, "n", nil, nil)
	if _, err := b.Verify("n", h, nil); err != nil {
		t.Fatal(err)
	}
	// Age the remembered chain, as time would.
	for k, v := range b.cache.m {
		old := *v
		old.notAfter = time.Now().Add(-time.Second)
		b.cache.m[k] = &old
	}
	if _, err := b.Verify("n", h, nil); !errContains(err, "signer certificate has expired: its chain was valid until") {
		t.Errorf("Verify of an expired signer: %v", err)
	}
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{a.Certificate().Leaf}}
	if _, err := b.PeerIdentity(cs); !errContains(err, "peer certificate has expired") {
		t.Errorf("PeerIdentity of an expired full handshake: %v", err)
	}
	cs.DidResume = true
	if id, err := b.PeerIdentity(cs); err != nil || id.Micro != "m1" {
		t.Errorf("PeerIdentity of a resumed session: %+v, %v", id, err)
	}
}
