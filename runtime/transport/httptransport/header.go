package httptransport

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/microhost/micro/runtime/transport"
)

// framing reports whether the canonical header key k belongs to HTTP's framing or to one
// hop, so that it is neither copied from a Message onto the wire nor into a Message.
func framing(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade",
		"Te", "Trailer", "Content-Length", "Host", "Expect":
		return true
	}
	return false
}

// toMessageHeader copies each header of h, except framing headers, into a new map, with
// the values of a repeated header joined by transport.ValueSep, leaving room for extra
// entries.
func toMessageHeader(h http.Header, extra int) map[string]string {
	out := make(map[string]string, len(h)+extra)
	for k, vs := range h {
		if len(vs) == 0 || framing(k) {
			continue
		}
		out[k] = strings.Join(vs, transport.ValueSep)
	}
	return out
}

// headerValues splits the value of a Message header into the values of an HTTP header,
// checking each.
func headerValues(k, v string) ([]string, error) {
	vs := strings.Split(v, transport.ValueSep)
	for _, x := range vs {
		if err := checkHeader(k, x); err != nil {
			return nil, err
		}
	}
	return vs, nil
}

// checkHeader reports whether key k and value v may be written as an HTTP header field:
// the key must be an RFC 9110 token and the value must hold no control characters other
// than horizontal tab.
func checkHeader(k, v string) error {
	if k == "" {
		return fmt.Errorf("empty header name")
	}
	for i := 0; i < len(k); i++ {
		if !isTokenChar(k[i]) {
			return fmt.Errorf("header name %q: invalid character %q", k, k[i])
		}
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Errorf("header %q: value has control character %q", k, c)
		}
	}
	return nil
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
