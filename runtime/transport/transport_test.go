package transport

import (
	"net/url"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		path, query               string
		service, endpoint, target string
		err                       string
	}{
		{"/greeter/Greeter.Hello", "", "greeter", "Greeter.Hello", "/Greeter.Hello", ""},
		{"/users/42/orders", "expand=items", "users", "42", "/42/orders?expand=items", ""},
		{"/svc", "", "svc", "", "/", ""},
		{"/svc/", "a=1", "svc", "", "/?a=1", ""},
		{"/a%2Fb/c%20d/e", "", "a/b", "c d", "/c%20d/e", ""},
		{"/", "", "", "", "", "want /{service}/{path}"},
		{"//x", "", "", "", "", "want /{service}/{path}"},
		{"x/y", "", "", "", "", "want /{service}/{path}"},
		{"/%zz/y", "", "", "", "", "service"},
		{"/s/%0a", "", "", "", "", "endpoint"},
		{"/s/x", "a=\n", "", "", "", "control character"},
	} {
		s, e, tg, err := ParseTarget(tc.path, tc.query)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseTarget(%q, %q) error %v, want one saying %q", tc.path, tc.query, err, tc.err)
		case tc.err == "" && (err != nil || s != tc.service || e != tc.endpoint || tg != tc.target):
			t.Errorf("ParseTarget(%q, %q) = %q, %q, %q, %v; want %q, %q, %q", tc.path, tc.query, s, e, tg, err, tc.service, tc.endpoint, tc.target)
		}
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"/greeter/Greeter.Hello", "/", "", "//", "/a/b/c", "/a%2Fb/c", "/%zz/x", "/a/%00",
		"/a/b%0a", "greeter/x", "/ü/端", "/a/b/", "/%/%", "/svc", "/svc/users/42",
	} {
		f.Add(s, "")
		f.Add(s, "expand=orders&x=%20")
	}
	f.Fuzz(func(t *testing.T, p, q string) {
		service, endpoint, target, err := ParseTarget(p, q)
		if err != nil {
			return
		}
		if service == "" || target == "" || target[0] != '/' {
			t.Fatalf("ParseTarget(%q, %q) = %q, %q, %q: no service or target without an error", p, q, service, endpoint, target)
		}
		for _, s := range []string{service, endpoint, target} {
			if strings.IndexFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
				t.Fatalf("ParseTarget(%q, %q) part %q holds a control character", p, q, s)
			}
		}
		// What a client writes for these parts parses back to them.
		path, query, _ := strings.Cut("/"+url.PathEscape(service)+target, "?")
		s2, e2, t2, err := ParseTarget(path, query)
		if err != nil || s2 != service || e2 != endpoint || t2 != target {
			t.Fatalf("round trip of %q %q via %q %q: %q, %q, %q, %v", p, q, path, query, s2, e2, t2, err)
		}
	})
}
