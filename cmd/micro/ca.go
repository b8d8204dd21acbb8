package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/microhost/micro/runtime/security"
)

// defaultCADir is where `micro ca init` makes a CA, and `micro ca issue` finds it, when
// no directory is given.
const defaultCADir = "micro-ca"

const caUsage = `Usage:
  micro ca init [-dir DIR] [-trust-domain TD]
      make a certificate authority for a fleet of micros (default DIR: ./micro-ca)
  micro ca issue [-ca DIR] [-service NAME]... [-micro ID] [-ttl 720h] -out DIR
      issue the certificate of one machine's micro: DIR/cert.pem, key.pem and ca.pem

One machine needs none of this: micro makes a local CA on first start. Across machines,
run 'micro ca init' once, 'micro ca issue' for each machine, copy each -out directory to
its machine, and point micro.toml at it:

  [security]
  trust_domain = "micro.local"
  ca_file   = "/etc/micro/ca.pem"
  cert_file = "/etc/micro/cert.pem"
  key_file  = "/etc/micro/key.pem"

micro reloads the files when they change, so reissuing a certificate before it expires
(into the same directory) renews it without a restart. Keep the CA directory, whose
ca.key can make any identity of the trust domain, off the machines that run micro.
`

// caCmd runs `micro ca SUBCOMMAND`.
func caCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return errUsage
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "init":
		return caInitCmd(rest, stdout, stderr)
	case "issue":
		return caIssueCmd(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, caUsage)
		return nil
	default:
		fmt.Fprintf(stderr, "micro ca: unknown command %q\n\n%s", sub, caUsage)
		return errUsage
	}
}

func caInitCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca init", "ca init [-dir DIR] [-trust-domain TD]\n\n"+
		"Makes a certificate authority for the trust domain TD in DIR: ca.crt, the certificate\n"+
		"that every micro of the fleet trusts, and ca.key, its key (mode 0600), which signs\n"+
		"their certificates with 'micro ca issue'. It never replaces a CA that DIR holds.", stderr)
	dir := fs.String("dir", defaultCADir, "directory of the CA, made with mode 0700 if missing")
	td := fs.String("trust-domain", security.DefaultTrustDomain, "trust domain of the fleet, a lower-case DNS name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	ca, err := security.CreateCA(*dir, *td)
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "made the CA of trust domain %s in %s (valid until %s)\n",
		ca.TrustDomain(), abs, ca.Certificate().NotAfter.Format(time.DateOnly))
	fmt.Fprintf(stdout, "next, for each machine: micro ca issue -ca %s -micro HOST -service NAME... -out DIR\n", *dir)
	return nil
}

// repeated collects the values of a flag given several times.
type repeated []string

func (r *repeated) String() string { return strings.Join(*r, ",") }

func (r *repeated) Set(v string) error {
	*r = append(*r, v)
	return nil
}

func caIssueCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca issue", "ca issue [-ca DIR] [-service NAME]... [-micro ID] [-ttl 720h] -out DIR\n\n"+
		"Issues a certificate of the CA in -ca for one machine's micro, naming the services it\n"+
		"fronts (spiffe://TD/service/NAME) and the micro itself (spiffe://TD/micro/ID), at least\n"+
		"one of them. It writes into -out: cert.pem (the certificate and the CA's), key.pem\n"+
		"(mode 0600) and ca.pem (the trust bundle), for [security] ca_file, cert_file and\n"+
		"key_file. Each file is replaced whole, so a micro that uses them reloads cleanly.", stderr)
	caDir := fs.String("ca", defaultCADir, "directory of the CA, as 'micro ca init' made it")
	var services repeated
	fs.Var(&services, "service", "a service the micro fronts (repeat the flag for more)")
	micro := fs.String("micro", "", "name of the micro, e.g. its host name")
	ttl := fs.Duration("ttl", 720*time.Hour, "lifetime of the certificate")
	out := fs.String("out", "", "directory to write the files into, made with mode 0700 if missing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *out == "" {
		if *out == "" {
			fmt.Fprintln(stderr, "micro ca issue: -out is required")
		}
		fs.Usage()
		return errUsage
	}
	ca, err := security.LoadCA(*caDir)
	if err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	cert, err := ca.Issue(security.IdentitySpec{Services: services, Micro: *micro}, *ttl)
	if err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	certPEM, keyPEM, err := security.MarshalPEM(cert)
	if err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	// The certificate goes last: a micro that reloads in between finds a key that does not
	// match its certificate, keeps what it has, and reloads again when the certificate
	// comes.
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"ca.pem", ca.CertificatePEM(), 0o644},
		{"key.pem", keyPEM, 0o600},
		{"cert.pem", append(certPEM, ca.CertificatePEM()...), 0o644},
	} {
		if err := replaceFile(filepath.Join(*out, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("ca issue: %w", err)
		}
	}
	var ids []string
	for _, u := range cert.Leaf.URIs {
		ids = append(ids, u.String())
	}
	fmt.Fprintf(stdout, "issued %s, valid until %s, into %s: cert.pem, key.pem, ca.pem\n",
		strings.Join(ids, ", "), cert.Leaf.NotAfter.Format(time.RFC3339), *out)
	return nil
}

// replaceFile writes data to path through a temporary file in its directory, with mode
// perm, and renames it over path.
func replaceFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Chmod(perm), tmp.Sync(), tmp.Close())
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}
