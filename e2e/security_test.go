package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/microhost/micro/plugins/transport-nats/natstest"
	"github.com/microhost/micro/runtime/security"
)

// Identity between micros, end to end: mutual TLS by default, callers known by their
// certificates, access rules.

// echoedCaller calls count's /echo/ endpoint at m and returns the Micro-Caller header the
// app got, and the answer's status.
func echoedCaller(t *testing.T, m *micro, header map[string]string) (string, reply) {
	t.Helper()
	r, err := m.post("/count/echo/who", "", header)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != 200 {
		return "", r
	}
	var v struct{ Header http.Header }
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("echo answer %s: %v", r.body, err)
	}
	return v.Header.Get("Micro-Caller"), r
}

// TestMTLSBetweenMicros: two micros call each other over mutual TLS with no setup; the
// inbound refuses a plaintext caller, a caller without a certificate and one whose
// certificate another CA issued, and none of them reaches an app.
func TestMTLSBetweenMicros(t *testing.T) {
	t.Parallel()
	reg, dir := t.TempDir(), t.TempDir()
	countFile := filepath.Join(dir, "count")
	a := startMicro(t, baseConfig(reg, counterService("count", countFile, dir)))
	b := startMicro(t, baseConfig(reg, greeterService("frontend", 1, "")))
	nodesOf(t, b, "count", 1)

	caller, r := echoedCaller(t, b, map[string]string{"Micro-Caller": "forged"})
	if r.status != 200 || caller != "frontend" {
		t.Fatalf("call over mTLS: %d %s; the app saw Micro-Caller %q, want frontend (the certificate's, not the forged header)", r.status, r.body, caller)
	}

	raw := "POST /count/Count.Once HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nX-Call-Id: intruder\r\nContent-Length: 0\r\n\r\n"
	foreign, err := security.OpenLocalCA(t.TempDir(), security.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, err := foreign.Issue(security.IdentitySpec{Services: []string{"frontend"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*tls.Config{
		"plaintext":                nil,
		"no certificate":           {InsecureSkipVerify: true},
		"another CA's certificate": {InsecureSkipVerify: true, Certificates: []tls.Certificate{foreignCert}},
	} {
		if status, err := rawRequest(a.inbound, cfg, raw); err == nil {
			t.Errorf("%s: the inbound answered %d, want the connection refused", name, status)
		}
	}
	if n := executions(t, countFile)["intruder"]; n != 0 {
		t.Errorf("a refused caller's call ran %d times on the app", n)
	}
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(a.logs.String(), "inbound refused a connection") {
			return fmt.Errorf("no refusal logged")
		}
		return nil
	})
	// A caller of the trust domain gets through.
	if status, err := rawRequest(a.inbound, testTLS(t, reg, "tester"), raw); err != nil || status != 200 {
		t.Errorf("a caller of the trust domain: %d %v", status, err)
	}
}

// TestAllowRules: services.NAME.allow admits only the callers it names, with a 403 naming
// caller and service for the others, and an edit applies at once.
func TestAllowRules(t *testing.T) {
	t.Parallel()
	reg, dir := t.TempDir(), t.TempDir()
	countFile := filepath.Join(dir, "count")
	withAllow := func(names string) string {
		return baseConfig(reg, counterService("count", countFile, dir)+"allow = ["+names+"]\n")
	}
	a := startMicro(t, withAllow(`"frontend"`))
	frontend := startMicro(t, baseConfig(reg, greeterService("frontend", 1, "")))
	other := startMicro(t, baseConfig(reg, greeterService("other", 1, "")))
	nodesOf(t, frontend, "count", 1)
	nodesOf(t, other, "count", 1)

	if caller, r := echoedCaller(t, frontend, nil); r.status != 200 || caller != "frontend" {
		t.Fatalf("frontend, allowed: %d %s (caller %q)", r.status, r.body, caller)
	}
	_, r := echoedCaller(t, other, nil)
	if r.status != 403 || !strings.Contains(string(r.body), `other may not call service \"count\"`) {
		t.Fatalf("other, not allowed: %d %s", r.status, r.body)
	}

	a.writeConfig(withAllow(`"other"`))
	eventually(t, 20*time.Second, func() error {
		if _, r := echoedCaller(t, other, nil); r.status != 200 {
			return fmt.Errorf("other after the edit: %d %s", r.status, r.body)
		}
		if _, r := echoedCaller(t, frontend, nil); r.status != 403 {
			return fmt.Errorf("frontend after the edit: %d %s", r.status, r.body)
		}
		return nil
	})
}

// TestCertRotationUnderLoad: with certificates of 10s, each micro renews its own several
// times while calls stream between them, and no call fails.
func TestCertRotationUnderLoad(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	withTTL := func(cfg string) string {
		return strings.Replace(cfg, "[security]\n", "[security]\ncert_ttl = \"10s\"\n", 1)
	}
	startMicro(t, withTTL(baseConfig(reg, greeterService("greeter", 2, ""))))
	caller := startMicro(t, withTTL(baseConfig(reg, greeterService("frontend", 1, ""))))
	nodesOf(t, caller, "greeter", 2)
	loadAcross(t, caller, "certificate renewals", func() {
		// Two renewals of the caller's certificate, each at two thirds of 10s.
		eventually(t, 60*time.Second, func() error {
			if n := strings.Count(caller.logs.String(), "certificate renewed"); n < 2 {
				return fmt.Errorf("%d renewals so far", n)
			}
			return nil
		})
	})
	// A micro that starts now handshakes with the renewed certificates of the nodes.
	late := startMicro(t, withTTL(baseConfig(reg, "")))
	nodesOf(t, late, "greeter", 2)
	mustHello(t, late)
}

// loadAcross streams calls to greeter at m from 4 workers while during runs, and after it
// until 100 more have succeeded; it fails the test if any call failed.
func loadAcross(t *testing.T, m *micro, what string, during func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := runLoad(ctx, m, 4, nil)
	l.waitCalls(t, 50)
	during()
	l.waitCalls(t, 100)
	cancel()
	ok, failures, _ := l.wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed across %s; first: %s", len(failures), ok+len(failures), what, failures[0])
	}
	t.Logf("%d calls across %s, none failed", ok, what)
}

// TestSecurityOff: security.mode = "off" is plain HTTP between micros, said at start and in
// /health.
func TestSecurityOff(t *testing.T) {
	t.Parallel()
	reg := t.TempDir()
	off := func(cfg string) string {
		return strings.Replace(cfg, "[security]\n", "[security]\nmode = \"off\"\n", 1)
	}
	a := startMicro(t, off(baseConfig(reg, greeterService("greeter", 1, ""))))
	b := startMicro(t, off(baseConfig(reg, "")))
	nodesOf(t, b, "greeter", 1)
	mustHello(t, b)
	if !strings.Contains(a.logs.String(), "security.mode is off") {
		t.Error("no warning at start")
	}
	resp, err := http.Get(a.ingress + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var h struct{ Status, Security string }
	if err := json.Unmarshal(body, &h); err != nil || h.Status != "ok" || !strings.HasPrefix(h.Security, "off") {
		t.Errorf("/health with security off: %s", body)
	}
	status, err := rawRequest(a.inbound, nil, "POST /greeter/Greeter.Hello HTTP/1.1\r\nHost: x\r\nMicro-Timeout: 1s\r\nContent-Length: 14\r\n\r\n{\"name\":\"Ada\"}")
	if err != nil || status != 200 {
		t.Errorf("a plaintext call with security off: %d %v", status, err)
	}
}

// microCmd runs the micro binary with args and fails the test when it fails.
func microCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(bins.micro, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("micro %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// withFiles points a baseConfig's [security] at the certificate files micro ca issue wrote
// in dir, in trust domain td.
func withFiles(cfg, dir, td string) string {
	return strings.Replace(cfg, "[security]\n", fmt.Sprintf("[security]\ntrust_domain = %q\nca_file = %q\ncert_file = %q\nkey_file = %q\n",
		td, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")), 1)
}

// TestFleetCertificates: micros on certificates from files that micro ca made call each
// other; a certificate reissued under load is reloaded with no failed call; a micro of
// another trust domain is refused, with an error that says so on both sides.
func TestFleetCertificates(t *testing.T) {
	t.Parallel()
	reg, dir := t.TempDir(), t.TempDir()
	ca, hostA, hostB := filepath.Join(dir, "ca"), filepath.Join(dir, "a"), filepath.Join(dir, "b")
	microCmd(t, "ca", "init", "-dir", ca)
	microCmd(t, "ca", "issue", "-ca", ca, "-service", "greeter", "-out", hostA)
	microCmd(t, "ca", "issue", "-ca", ca, "-service", "frontend", "-out", hostB)
	a := startMicro(t, withFiles(baseConfig(reg, greeterService("greeter", 2, "")), hostA, "micro.local"))
	b := startMicro(t, withFiles(baseConfig(reg, greeterService("frontend", 1, "")), hostB, "micro.local"))
	nodesOf(t, b, "greeter", 2)
	loadAcross(t, b, "a certificate reload", func() {
		microCmd(t, "ca", "issue", "-ca", ca, "-service", "greeter", "-out", hostA)
		eventually(t, 30*time.Second, func() error {
			if !strings.Contains(a.logs.String(), "certificate files reloaded") {
				return fmt.Errorf("the reissued certificate is not reloaded yet")
			}
			return nil
		})
	})

	// Another fleet: its own CA and trust domain, the same registry.
	other, hostC := filepath.Join(dir, "other"), filepath.Join(dir, "c")
	microCmd(t, "ca", "init", "-dir", other, "-trust-domain", "other.local")
	microCmd(t, "ca", "issue", "-ca", other, "-service", "intruder", "-out", hostC)
	c := startMicro(t, withFiles(baseConfig(reg, ""), hostC, "other.local"))
	nodesOf(t, c, "greeter", 2)
	r, err := c.call("greeter", "Greeter.Hello", `{"name":"Ada"}`, nil)
	if err != nil || r.status < 500 || !strings.Contains(string(r.body), "trust domain") {
		t.Errorf("a call from another trust domain: %v %d %s, want a failure that names the trust domain", err, r.status, r.body)
	}
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(a.logs.String(), "it trusts another CA or trust domain") {
			return fmt.Errorf("the refusal is not logged with why")
		}
		return nil
	})
}

// TestNATSSignedCalls: two micros call each other over the NATS transport, connecting to a
// NATS server over TLS with user credentials. A rogue NATS client that may read and answer
// micro.inbound.> (NATS permissions left open) answers every request first with a forged
// reply: micro ignores it and takes the node's real answer. A request the rogue sends to a
// node itself is refused: no app sees it.
func TestNATSSignedCalls(t *testing.T) {
	t.Parallel()
	natsCA := natstest.NewCA(t)
	nats := natstest.Start(t, natstest.WithTLS(natsCA, false), natstest.WithUser("micro", "s3cret", nil), natstest.WithUser("rogue", "r0gue", nil))
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	section := natsTransport(nats.URL) + fmt.Sprintf("[transport.auth]\nuser = \"micro\"\npassword_file = %q\ntls_ca_file = %q\n", pw, natsCA.CertFile)
	reg, dir := t.TempDir(), t.TempDir()
	countFile := filepath.Join(dir, "count")
	a := startMicro(t, withTransport(baseConfig(reg, counterService("count", countFile, dir)), section))
	b := startMicro(t, withTransport(baseConfig(reg, greeterService("frontend", 1, "")), section))
	nodesOf(t, b, "count", 1)

	rogue, err := natsgo.Connect(nats.URL, natsgo.UserInfo("rogue", "r0gue"), natsgo.RootCAs(natsCA.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	sub, err := rogue.Subscribe("micro.inbound.>", func(m *natsgo.Msg) {
		reply := natsgo.NewMsg(m.Reply)
		reply.Header.Set("Micro-Status", "200")
		reply.Data = []byte(`{"forged":true}`)
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rogue.Flush(); err != nil {
		t.Fatal(err)
	}

	for i := range 5 {
		caller, r := echoedCaller(t, b, nil)
		if r.status != 200 || caller != "frontend" || strings.Contains(string(r.body), "forged") {
			t.Fatalf("call %d over NATS with a rogue answering first: %d %s (caller %q)", i, r.status, r.body, caller)
		}
	}
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(b.logs.String(), "ignored a message not signed by a micro of the trust domain") {
			return fmt.Errorf("the forged replies are not logged")
		}
		return nil
	})

	// The rogue calls the node itself: refused, and the app never runs it.
	out, err := a.servicesRaw()
	if err != nil {
		t.Fatal(err)
	}
	subject := regexpNATS.FindString(out)
	if subject == "" {
		t.Fatalf("no nats address for count in %s", out)
	}
	_ = sub.Unsubscribe()
	req := natsgo.NewMsg(strings.TrimPrefix(subject, "nats:"))
	req.Header.Set("Micro-Service", "count")
	req.Header.Set("Micro-Endpoint", "Count.Once")
	req.Header.Set("Micro-Timeout", "2s")
	req.Header.Set("X-Call-Id", "rogue-call")
	resp, err := rogue.RequestMsg(req, 5*time.Second)
	if err != nil {
		t.Fatalf("the rogue's request got no answer: %v", err)
	}
	if got := resp.Header.Get("Micro-Status"); got != "403" {
		t.Errorf("the rogue's request was answered %s %s, want 403", got, resp.Data)
	}
	if n := executions(t, countFile)["rogue-call"]; n != 0 {
		t.Errorf("the rogue's call ran %d times on the app", n)
	}
}

var regexpNATS = regexp.MustCompile(`nats:micro\.inbound\.[A-Za-z0-9]+`)
