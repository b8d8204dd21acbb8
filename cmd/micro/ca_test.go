package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/microhost/micro/runtime/security"
)

// ca runs `micro ca ARGS...` and returns its stdout and stderr.
func ca(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = caCmd(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

// TestCAFleet makes a CA, issues the certificates of two machines' micros, and connects
// them over mutual TLS from those files.
func TestCAFleet(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	out, _, err := ca(t, "init", "-dir", caDir, "-trust-domain", "fleet.example")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "made the CA of trust domain fleet.example in "+caDir) {
		t.Errorf("init printed %q", out)
	}
	if _, _, err := ca(t, "init", "-dir", caDir); err == nil || !strings.Contains(err.Error(), "already holds a CA") {
		t.Errorf("a second init: %v", err)
	}

	issue := func(name string, args ...string) security.Options {
		t.Helper()
		m := filepath.Join(dir, name)
		out, _, err := ca(t, append([]string{"issue", "-ca", caDir, "-micro", name, "-out", m}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "spiffe://fleet.example/micro/"+name) {
			t.Errorf("issue printed %q", out)
		}
		if fi, err := os.Stat(filepath.Join(m, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("key.pem: %v, %v; want mode 0600", fi.Mode(), err)
		}
		certPEM, err := os.ReadFile(filepath.Join(m, "cert.pem"))
		if err != nil || bytes.Count(certPEM, []byte("BEGIN CERTIFICATE")) != 2 {
			t.Errorf("cert.pem holds %d certificates, want the leaf and the CA (%v)", bytes.Count(certPEM, []byte("BEGIN CERTIFICATE")), err)
		}
		return security.Options{TrustDomain: "fleet.example", CAFile: filepath.Join(m, "ca.pem"),
			CertFile: filepath.Join(m, "cert.pem"), KeyFile: filepath.Join(m, "key.pem"),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	server, err := security.NewSource(t.Context(), issue("host-a", "-service", "greeter", "-service", "billing", "-ttl", "1h"))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := security.NewSource(t.Context(), issue("host-b", "-service", "frontend"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if id := server.Identity(); id.Micro != "host-a" || strings.Join(id.Services, ",") != "greeter,billing" {
		t.Errorf("server identity %+v", id)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, server.ServerConfig())
		if err := tc.Handshake(); err != nil {
			return
		}
		id, err := server.PeerIdentity(tc.ConnectionState())
		if err != nil {
			io.WriteString(tc, err.Error()+"\n")
			return
		}
		io.WriteString(tc, id.String()+"\n")
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), client.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if want := "spiffe://fleet.example/micro/host-b, spiffe://fleet.example/service/frontend\n"; err != nil || line != want {
		t.Errorf("server saw %q, %v; want %q", line, err, want)
	}
	if id, err := client.PeerIdentity(c.ConnectionState()); err != nil || id.Micro != "host-a" {
		t.Errorf("client saw %+v, %v", id, err)
	}
}

func TestCACommandErrors(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if _, _, err := ca(t, "init", "-dir", caDir); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	for _, tc := range []struct {
		args []string
		want string // in the error, or in stderr when the error is errUsage
	}{
		{nil, "micro ca init"},
		{[]string{"sign"}, `unknown command "sign"`},
		{[]string{"init", "extra"}, "Usage: micro ca init"},
		{[]string{"init", "-dir", filepath.Join(dir, "x"), "-trust-domain", "Not_A_Domain"}, `trust domain "Not_A_Domain"`},
		{[]string{"issue", "-ca", caDir, "-micro", "m"}, "-out is required"},
		{[]string{"issue", "-ca", caDir, "-out", out}, "needs a micro instance or a service"},
		{[]string{"issue", "-ca", caDir, "-micro", "a b", "-out", out}, `name "a b"`},
		{[]string{"issue", "-ca", caDir, "-micro", "m", "-ttl", "-1h", "-out", out}, "is not positive"},
		{[]string{"issue", "-ca", filepath.Join(dir, "none"), "-micro", "m", "-out", out}, "no such file or directory"},
	} {
		_, stderr, err := ca(t, tc.args...)
		if errors.Is(err, errUsage) {
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("micro ca %q: stderr %q, want %q in it", tc.args, stderr, tc.want)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("micro ca %q: %v, want an error that says %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed issue wrote its -out directory")
	}
}

func TestCAHelp(t *testing.T) {
	out, _, err := ca(t, "--help")
	if err != nil || !strings.Contains(out, "micro ca issue") || !strings.Contains(out, "cert_file") {
		t.Errorf("micro ca --help: %v\n%s", err, out)
	}
	for sub, flag1 := range map[string]string{"init": "-trust-domain", "issue": "-service"} {
		_, stderr, err := ca(t, sub, "-h")
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr, "Usage: micro ca "+sub) || !strings.Contains(stderr, flag1) {
			t.Errorf("micro ca %s -h: %v\n%s", sub, err, stderr)
		}
	}
}
