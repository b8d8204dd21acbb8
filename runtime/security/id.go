// Package security gives micros their identities and checks them: a local certificate
// authority, short-lived certificates that name a micro and the services it fronts in
// SPIFFE-style URIs, mutual TLS configurations that follow renewals and reloads, and
// signatures of messages for transports that cannot carry TLS.
//
// Every identity belongs to a trust domain, a DNS-like name such as "micro.local". A
// certificate names the micro itself as spiffe://{trust domain}/micro/{instance} and each
// service it fronts as spiffe://{trust domain}/service/{name}.
package security

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// DefaultTrustDomain is the trust domain of micros that configure none.
const DefaultTrustDomain = "micro.local"

// maxNameLen bounds a trust domain and a name in an ID.
const maxNameLen = 255

// Kind says what an ID names.
type Kind string

// The kinds of IDs.
const (
	// KindService names a service that a micro fronts.
	KindService Kind = "service"
	// KindMicro names a micro process.
	KindMicro Kind = "micro"
)

// ID is one SPIFFE-style identity: spiffe://{TrustDomain}/{Kind}/{Name}.
type ID struct {
	TrustDomain string
	Kind        Kind
	Name        string
}

// ServiceID returns the ID of the service name in trust domain td. It does not check the
// names; ParseID of its String does.
func ServiceID(td, name string) ID { return ID{TrustDomain: td, Kind: KindService, Name: name} }

// MicroID returns the ID of the micro instance in trust domain td. It does not check the
// names; ParseID of its String does.
func MicroID(td, instance string) ID { return ID{TrustDomain: td, Kind: KindMicro, Name: instance} }

// String returns the ID as a URI.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + "/" + string(id.Kind) + "/" + id.Name
}

// URL returns the ID as a *url.URL, as a certificate's URI SAN holds it.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/" + string(id.Kind) + "/" + id.Name}
}

// ParseID parses and checks an ID in its URI form. Nothing but the scheme "spiffe", a valid
// trust domain, a kind and a valid name is allowed: no user, port, query, fragment, escapes
// or further path segments.
func ParseID(s string) (ID, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return ID{}, fmt.Errorf("ID %q: not a spiffe:// URI", s)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, fmt.Errorf("ID %q: no path after the trust domain", s)
	}
	if err := ValidTrustDomain(td); err != nil {
		return ID{}, fmt.Errorf("ID %q: %w", s, err)
	}
	kind, name, ok := strings.Cut(path, "/")
	if !ok {
		return ID{}, fmt.Errorf("ID %q: path %q is not /service/NAME or /micro/INSTANCE", s, "/"+path)
	}
	switch Kind(kind) {
	case KindService, KindMicro:
	default:
		return ID{}, fmt.Errorf("ID %q: unknown kind %q (want service or micro)", s, kind)
	}
	if err := ValidName(name); err != nil {
		return ID{}, fmt.Errorf("ID %q: %w", s, err)
	}
	return ID{TrustDomain: td, Kind: Kind(kind), Name: name}, nil
}

// ValidTrustDomain checks a trust domain: 1 to 255 lower-case letters, digits, '-' and '.',
// in labels that are not empty and neither start nor end with '-'.
func ValidTrustDomain(td string) error {
	if td == "" {
		return errors.New("empty trust domain")
	}
	if len(td) > maxNameLen {
		return fmt.Errorf("trust domain %.20q... is longer than %d bytes", td, maxNameLen)
	}
	for label := range strings.SplitSeq(td, ".") {
		if label == "" {
			return fmt.Errorf("trust domain %q has an empty label", td)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("trust domain %q has a label that starts or ends with '-'", td)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("trust domain %q: character %q is not a lower-case letter, digit, '-' or '.'", td, c)
			}
		}
	}
	return nil
}

// ValidName checks a service name or micro instance in an ID: 1 to 255 letters, digits,
// '-', '_' and '.', and neither "." nor "..".
func ValidName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("name %.20q... is longer than %d bytes", name, maxNameLen)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("name %q is not allowed", name)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("name %q: character %q is not a letter, digit, '-', '_' or '.'", name, c)
		}
	}
	return nil
}

// Identity is who a certificate says its holder is: the services that a micro fronts and
// the micro itself, in one trust domain.
type Identity struct {
	TrustDomain string
	// Services are the services named in the certificate, in its order.
	Services []string
	// Micro is the micro's instance, or "" when the certificate names none.
	Micro string
}

// HasService reports whether the identity names the service.
func (i Identity) HasService(name string) bool { return slices.Contains(i.Services, name) }

// String lists the identity's IDs.
func (i Identity) String() string {
	ids := make([]string, 0, len(i.Services)+1)
	if i.Micro != "" {
		ids = append(ids, MicroID(i.TrustDomain, i.Micro).String())
	}
	for _, s := range i.Services {
		ids = append(ids, ServiceID(i.TrustDomain, s).String())
	}
	return strings.Join(ids, ", ")
}

// IdentitySpec is what a certificate is to name: the services a micro fronts and the micro's
// instance. Either may be empty, but not both.
type IdentitySpec struct {
	Services []string
	Micro    string
}

// ids checks the spec and returns its IDs in trust domain td.
func (s IdentitySpec) ids(td string) ([]ID, error) {
	var ids []ID
	if s.Micro != "" {
		if err := ValidName(s.Micro); err != nil {
			return nil, fmt.Errorf("micro instance: %w", err)
		}
		ids = append(ids, MicroID(td, s.Micro))
	}
	for i, name := range s.Services {
		if err := ValidName(name); err != nil {
			return nil, fmt.Errorf("service: %w", err)
		}
		if slices.Contains(s.Services[:i], name) {
			return nil, fmt.Errorf("service %q is named twice", name)
		}
		ids = append(ids, ServiceID(td, name))
	}
	if len(ids) == 0 {
		return nil, errors.New("an identity needs a micro instance or a service")
	}
	return ids, nil
}

// certTrustDomainError says that a certificate belongs to another trust domain.
type certTrustDomainError struct{ got, want string }

func (e *certTrustDomainError) Error() string {
	return fmt.Sprintf("trust domain is %s, not %s", e.got, e.want)
}

// identityOf reads the identity of a certificate in trust domain td from its URI SANs.
// URIs of other schemes are ignored. Every spiffe:// URI must be an ID of td, at most one
// may name a micro, no service may be named twice, and there must be at least one.
func identityOf(cert *x509.Certificate, td string) (Identity, error) {
	id := Identity{TrustDomain: td}
	found := false
	for _, u := range cert.URIs {
		if !strings.EqualFold(u.Scheme, "spiffe") {
			continue
		}
		s := u.String()
		if u.Host != td && u.Host != "" && ValidTrustDomain(u.Host) == nil {
			return Identity{}, &certTrustDomainError{got: u.Host, want: td}
		}
		p, err := ParseID(s)
		if err != nil {
			return Identity{}, err
		}
		if p.TrustDomain != td {
			return Identity{}, &certTrustDomainError{got: p.TrustDomain, want: td}
		}
		found = true
		switch p.Kind {
		case KindMicro:
			if id.Micro != "" {
				return Identity{}, fmt.Errorf("names two micros, %q and %q", id.Micro, p.Name)
			}
			id.Micro = p.Name
		case KindService:
			if id.HasService(p.Name) {
				return Identity{}, fmt.Errorf("names service %q twice", p.Name)
			}
			id.Services = append(id.Services, p.Name)
		}
	}
	if !found {
		return Identity{}, fmt.Errorf("names no spiffe://%s/ ID in its URI SANs", td)
	}
	return id, nil
}
