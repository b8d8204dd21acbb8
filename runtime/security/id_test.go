package security

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	for _, s := range []string{
		"spiffe://micro.local/service/greeter",
		"spiffe://micro.local/micro/host-1_a.B",
		"spiffe://a-b.c9/service/x",
	} {
		id, err := ParseID(s)
		if err != nil || id.String() != s || id.URL().String() != s {
			t.Errorf("ParseID(%q) = %+v, %v", s, id, err)
		}
	}
	for _, s := range []string{
		"", "spiffe://", "spiffe://micro.local", "spiffe://micro.local/", "spiffe://micro.local/service",
		"spiffe://micro.local/service/", "spiffe://micro.local/service/a/b", "spiffe://micro.local/other/a",
		"spiffe://Micro.local/service/a", "spiffe://micro..local/service/a", "spiffe://-micro.local/service/a",
		"spiffe://micro.local:80/service/a", "spiffe://u@micro.local/service/a", "spiffe://micro.local/service/a?q",
		"spiffe://micro.local/service/a#f", "spiffe://micro.local/service/%61", "spiffe://micro.local/service/..",
		"SPIFFE://micro.local/service/a", "https://micro.local/service/a", "spiffe://micro.local//service/a",
		"spiffe://micro.local/service/a b", "spiffe://" + strings.Repeat("a", 256) + "/service/a",
		"spiffe://micro.local/service/" + strings.Repeat("a", 256),
	} {
		if id, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) = %+v, want an error", s, id)
		}
	}
}

func TestIdentityOf(t *testing.T) {
	cert := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, u := range uris {
			p, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, p)
		}
		return c
	}
	id, err := identityOf(cert("https://example.com/x", "spiffe://micro.local/service/a",
		"spiffe://micro.local/micro/m", "spiffe://micro.local/service/b"), "micro.local")
	if err != nil || id.Micro != "m" || strings.Join(id.Services, ",") != "a,b" || id.TrustDomain != "micro.local" {
		t.Errorf("identityOf = %+v, %v", id, err)
	}
	if s := id.String(); s != "spiffe://micro.local/micro/m, spiffe://micro.local/service/a, spiffe://micro.local/service/b" {
		t.Errorf("String() = %q", s)
	}
	for _, tc := range []struct {
		uris []string
		want string
	}{
		{nil, "names no spiffe://micro.local/ ID"},
		{[]string{"https://micro.local/service/a"}, "names no spiffe://micro.local/ ID"},
		{[]string{"spiffe://other.example/service/a"}, "trust domain is other.example, not micro.local"},
		{[]string{"spiffe://micro.local/service/a", "spiffe://other.example/service/a"}, "trust domain is other.example"},
		{[]string{"spiffe://micro.local/service/a/b"}, `name "a/b"`},
		{[]string{"spiffe://micro.local/micro/a", "spiffe://micro.local/micro/b"}, `two micros, "a" and "b"`},
		{[]string{"spiffe://micro.local/service/a", "spiffe://micro.local/service/a"}, `service "a" twice`},
		{[]string{"spiffe://micro.local"}, "no path"},
	} {
		if _, err := identityOf(cert(tc.uris...), "micro.local"); !errContains(err, tc.want) {
			t.Errorf("identityOf(%v) = %v, want an error that says %q", tc.uris, err, tc.want)
		}
	}
}

// FuzzParseID checks that what ParseID accepts is exactly what String gives back, and
// that a certificate's URI SANs, however odd, either read as IDs or are refused.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{"spiffe://micro.local/service/a", "spiffe://micro.local/micro/m-1",
		"spiffe://x/service/%2e%2e", "spiffe://a.b/service/a/../b", "spiffe://a:1@b/micro/c?d#e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err == nil {
			if id.String() != s {
				t.Fatalf("ParseID(%q) = %+v, whose String is %q", s, id, id.String())
			}
			if again, err := ParseID(id.URL().String()); err != nil || again != id {
				t.Fatalf("ParseID(URL of %q) = %+v, %v", s, again, err)
			}
		}
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		got, err := identityOf(&x509.Certificate{URIs: []*url.URL{u}}, "micro.local")
		if err != nil {
			return
		}
		for _, name := range append(got.Services, got.Micro) {
			if name != "" && ValidName(name) != nil {
				t.Fatalf("identityOf(%q) accepted the name %q", s, name)
			}
		}
	})
}
