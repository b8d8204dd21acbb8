package security

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/microhost/micro/abi"
	"hash"
	"slices"
)

// The headers that carry a message's signature.
const (
	// SignatureHeader holds the signature, in base64.
	SignatureHeader = abi.HeaderSignature
	// SignerHeader holds the signer's certificate chain, leaf first, as DER certificates
	// one after the other, in base64.
	SignerHeader = abi.HeaderSigner
)

const (
	// signatureContext starts every signed message, so that a signature of micro's
	// messages means nothing anywhere else.
	signatureContext = "micro message signature v1\x00"
	// maxSignerLen bounds the Micro-Signer header: a chain of a few certificates.
	maxSignerLen = 16 << 10
	// maxSignatureLen bounds the Micro-Signature header: an RSA-4096 signature fits.
	maxSignatureLen = 1024
	// maxChainLen bounds the certificates in Micro-Signer.
	maxChainLen = 8
)

var b64 = base64.StdEncoding.Strict()

// Sign signs a message, for transports that cannot carry TLS: its nonce, its header, but
// for the signature headers themselves, and its body. It returns the headers to add to
// the message, SignatureHeader and SignerHeader. nonce binds the message to its context:
// a reply signed with its request's nonce answers that request and no other, and a
// message signed with one nonce does not verify with another, so a caller that signs
// requests and replies should keep their nonces apart (say "req:"+id and "rep:"+id).
func (s *Source) Sign(nonce string, header map[string]string, body []byte) (map[string]string, error) {
	st := s.cur.Load()
	signer, ok := st.cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("sign: the certificate's key cannot sign")
	}
	digest := messageDigest(nonce, header, body)
	var opts crypto.SignerOpts = crypto.SHA256
	switch signer.Public().(type) {
	case *rsa.PublicKey:
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	case ed25519.PublicKey:
		opts = crypto.Hash(0) // Ed25519 signs the digest itself
	}
	sig, err := signer.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return map[string]string{SignatureHeader: b64.EncodeToString(sig), SignerHeader: st.signer}, nil
}

// Verify checks a message signed by Sign with the same nonce: that the signer's chain is
// valid for the current bundle and trust domain, and that the signature covers the
// message. It returns the signer's identity. A signer's chain is verified once and then
// remembered, so that in the steady state a message costs one signature verification.
func (s *Source) Verify(nonce string, header map[string]string, body []byte) (Identity, error) {
	sigText, signerText := header[SignatureHeader], header[SignerHeader]
	switch {
	case sigText == "":
		return Identity{}, fmt.Errorf("message has no %s header", SignatureHeader)
	case signerText == "":
		return Identity{}, fmt.Errorf("message has no %s header", SignerHeader)
	case len(sigText) > maxSignatureLen:
		return Identity{}, fmt.Errorf("%s header is %d bytes, more than %d", SignatureHeader, len(sigText), maxSignatureLen)
	case len(signerText) > maxSignerLen:
		return Identity{}, fmt.Errorf("%s header is %d bytes, more than %d", SignerHeader, len(signerText), maxSignerLen)
	}
	sig, err := b64.DecodeString(sigText)
	if err != nil {
		return Identity{}, fmt.Errorf("%s header: %w", SignatureHeader, err)
	}
	der, err := b64.DecodeString(signerText)
	if err != nil {
		return Identity{}, fmt.Errorf("%s header: %w", SignerHeader, err)
	}
	v, err := s.verified(sha256.Sum256(der), func() ([]*x509.Certificate, error) {
		certs, err := x509.ParseCertificates(der)
		switch {
		case err != nil:
			return nil, fmt.Errorf("in %s header: %w", SignerHeader, err)
		case len(certs) == 0:
			return nil, fmt.Errorf("in %s header: no certificate", SignerHeader)
		case len(certs) > maxChainLen:
			return nil, fmt.Errorf("in %s header: %d certificates, more than %d", SignerHeader, len(certs), maxChainLen)
		}
		return certs, nil
	}, false)
	if err != nil {
		return Identity{}, roleError("signer", err)
	}
	if !verifySignature(v.leaf.PublicKey, messageDigest(nonce, header, body), sig) {
		return Identity{}, errors.New("signature does not match the message: its body, header or nonce " +
			"differ from what was signed, or it answers another request")
	}
	return v.id, nil
}

// verifySignature checks sig, made by Sign, of digest with pub.
func verifySignature(pub any, digest, sig []byte) bool {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pub, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPSS(pub, crypto.SHA256, digest, sig,
			&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}) == nil
	case ed25519.PublicKey:
		return ed25519.Verify(pub, digest, sig)
	}
	return false
}

// messageDigest is the SHA-256 of the canonical encoding of a message: a context string,
// then the nonce, the number of header fields, each field's name and value in the order
// of their names, and the body, each string prefixed with its length. The signature
// headers are left out. The encoding is unambiguous: no two messages share it.
func messageDigest(nonce string, header map[string]string, body []byte) []byte {
	names := make([]string, 0, len(header))
	for name := range header {
		if name != SignatureHeader && name != SignerHeader {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	h := sha256.New()
	h.Write([]byte(signatureContext))
	writeField(h, []byte(nonce))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(names)))
	h.Write(n[:])
	for _, name := range names {
		writeField(h, []byte(name))
		writeField(h, []byte(header[name]))
	}
	writeField(h, body)
	return h.Sum(nil)
}

func writeField(h hash.Hash, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}
