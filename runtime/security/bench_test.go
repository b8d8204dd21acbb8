package security

import (
	"path/filepath"
	"testing"
)

// BenchmarkHandshake makes mutual TLS connections over loopback TCP, each a handshake
// and one line from the server: full handshakes, and ones that resume a session.
func BenchmarkHandshake(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "ca")
	server := localSource(b, dir, "", "server", "greeter")
	client := localSource(b, dir, "", "client", "frontend")
	ts := serve(b, server.ServerConfig(), server)
	full := client.ClientConfig()
	full.ClientSessionCache = nil
	for _, bc := range []struct {
		name    string
		resumed bool
	}{{"full", false}, {"resumed", true}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := full
			if bc.resumed {
				cfg = client.ClientConfig()
				if _, _, err := dial(ts.addr, cfg); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				_, resumed, err := dial(ts.addr, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if resumed != bc.resumed {
					b.Fatalf("resumed %v, want %v", resumed, bc.resumed)
				}
			}
		})
	}
}

func BenchmarkSign(b *testing.B) {
	s := localSource(b, filepath.Join(b.TempDir(), "ca"), "", "m1", "greeter")
	header := map[string]string{"Micro-Endpoint": "hello", "Content-Type": "application/json", "Micro-Timeout": "1000"}
	body := make([]byte, 1024)
	for b.Loop() {
		if _, err := s.Sign("req:1", header, body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify verifies a message from a signer already seen: the steady state.
func BenchmarkVerify(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "ca")
	a := localSource(b, dir, "", "m1", "greeter")
	v := localSource(b, dir, "", "m2")
	header := map[string]string{"Micro-Endpoint": "hello", "Content-Type": "application/json", "Micro-Timeout": "1000"}
	body := make([]byte, 1024)
	h := signed(b, a, "req:1", header, body)
	for b.Loop() {
		if _, err := v.Verify("req:1", h, body); err != nil {
			b.Fatal(err)
		}
	}
}
