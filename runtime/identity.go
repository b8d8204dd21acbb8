package runtime

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/security"
	"github.com/microhost/micro/runtime/server"
	"github.com/microhost/micro/runtime/transport/httptransport"
	"github.com/microhost/micro/runtime/upstream"
)

// This file wires identity between micros: the certificate source of [security], TLS on
// the inbound listener and on every connection to another micro, and what a connection
// proves about its caller.

// openSecurity opens the certificate source that [security] describes; nil when
// security.mode is off, which it logs as a warning.
func (r *Runtime) openSecurity(ctx context.Context, cfg *config.Config) (*security.Source, error) {
	s := cfg.Security
	if s.Mode == config.SecurityOff {
		r.logger.Warn("security.mode is off: calls between micros are neither encrypted nor authenticated, and services.NAME.allow admits no one")
		return nil, nil
	}
	host, _ := os.Hostname()
	src, err := security.NewSource(ctx, security.Options{
		TrustDomain: s.TrustDomain,
		Dir:         s.Dir,
		CAFile:      s.CAFile,
		CertFile:    s.CertFile,
		KeyFile:     s.KeyFile,
		Services:    slices.Sorted(maps.Keys(cfg.Services)),
		Instance:    instanceName(host, r.procID),
		TTL:         s.CertTTL,
		Logger:      r.logger,
	})
	if err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	return src, nil
}

// instanceName names this micro in its certificate: the host and the process's random ID,
// reduced to the characters an ID may hold.
func instanceName(host, procID string) string {
	b := make([]byte, 0, len(host)+len(procID)+1)
	for i := 0; i < len(host) && len(b) < 40; i++ {
		switch c := host[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
			b = append(b, c)
		case c >= 'A' && c <= 'Z':
			b = append(b, c+'a'-'A')
		}
	}
	if len(b) > 0 {
		b = append(b, '-')
	}
	return string(append(b, procID...))
}

// serverTLS is the inbound listener's TLS config: the source's, offering HTTP/2 and
// HTTP/1.1, and with no session tickets, which a client's pool would find on an idle
// connection's socket and take for a broken connection.
func serverTLS(src *security.Source) *tls.Config {
	c := src.ServerConfig().Clone()
	c.NextProtos = []string{"h2", "http/1.1"}
	c.SessionTicketsDisabled = true
	if get := c.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hi)
			if cc == nil || err != nil {
				return cc, err
			}
			cc = cc.Clone()
			cc.NextProtos, cc.SessionTicketsDisabled = c.NextProtos, true
			return cc, nil
		}
	}
	return c
}

// clientTLS is the source's client config for connections to other micros that speak
// proto ("h2" or "http/1.1").
func clientTLS(src *security.Source, proto string) *tls.Config {
	c := src.ClientConfig().Clone()
	c.NextProtos = []string{proto}
	return c
}

// identify turns what a TLS connection proved into the inbound's Peer.
func identify(src *security.Source) server.Identify {
	return func(cs tls.ConnectionState) (server.Peer, error) {
		id, err := src.PeerIdentity(cs)
		if err != nil {
			return server.Peer{}, err
		}
		return peerOf(id), nil
	}
}

// peerOf is the inbound's Peer of an identity.
func peerOf(id security.Identity) server.Peer {
	return server.Peer{ID: id.String(), Services: id.Services}
}

// self is this micro's own identity, the caller of the calls the ingress serves straight
// from one local app to another.
func (r *Runtime) self() server.Peer {
	if r.security == nil {
		return server.Peer{}
	}
	// It changes only with the certificate: made once per certificate, not per call.
	cert := r.security.Certificate()
	if s := r.selfPeer.Load(); s != nil && s.cert == cert {
		return s.peer
	}
	s := &selfPeer{cert: cert, peer: peerOf(r.security.Identity())}
	if r.security.Certificate() == cert { // not renewed meanwhile: the identity is cert's
		r.selfPeer.Store(s)
	}
	return s.peer
}

// selfPeer is this micro's identity as the inbound's Peer, for the certificate it is of.
type selfPeer struct {
	cert *tls.Certificate
	peer server.Peer
}

// newHTTPTransport returns the built-in HTTP transport, with TLS to other micros and the
// caller's identity in its server Conns' contexts when security is on.
func (r *Runtime) newHTTPTransport(s config.Server) *httptransport.Transport {
	o := httptransport.Options{
		MaxBody:           int64(s.MaxBody),
		ReadHeaderTimeout: s.HeaderTimeout,
		BodyTimeout:       s.BodyTimeout,
		WriteTimeout:      s.WriteTimeout,
		IdleTimeout:       s.IdleTimeout,
		Logger:            r.logger,
		ConnContext:       server.ConnContext,
	}
	if r.security != nil {
		o.ClientTLS = clientTLS(r.security, "http/1.1")
	}
	return httptransport.New(o)
}

// peerClients returns the clients that reach other micros from the fast path: over
// HTTP/1.1 with TLS, and over HTTP/2 with TLS, when security is on; nil and the inbound's
// h2c otherwise.
func (r *Runtime) peerClients(o upstream.Options, idleTTL time.Duration) (*upstream.Client, http.RoundTripper, string) {
	if r.security == nil {
		return nil, nil, ""
	}
	o.TLS = clientTLS(r.security, "http/1.1")
	var p http.Protocols
	p.SetHTTP2(true)
	h2 := &http.Transport{Proxy: nil, Protocols: &p, TLSClientConfig: clientTLS(r.security, "h2"), IdleConnTimeout: idleTTL, ForceAttemptHTTP2: true}
	return upstream.New(o), h2, "https"
}

// splitInbound divides the inbound listener's connections among its servers, after a
// TLS handshake that must prove a caller of the trust domain when security is on.
func (r *Runtime) splitInbound(ln net.Listener, s config.Server) server.Listeners {
	if r.security == nil {
		return server.Split(ln, s.HeaderTimeout, maxHeaderBytes)
	}
	refused := &sparseLog{every: 10 * time.Second}
	return server.SplitTLS(ln, s.HeaderTimeout, maxHeaderBytes, serverTLS(r.security), identify(r.security), func(remote net.Addr, err error) {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			// The caller gave up before the handshake ended (its budget ran out, or a
			// hedge answered first): nothing was refused.
			r.logger.Debug("inbound connection closed by its caller during the TLS handshake", "remote", remote.String())
			return
		}
		if n, ok := refused.due(time.Now()); ok {
			r.logger.Warn("inbound refused a connection: its TLS handshake failed", "remote", remote.String(), "err", err,
				"why", handshakeWhy(err), "refused_since_last_logged", n)
		}
	})
}

// handshakeWhy explains a failed inbound handshake in the words of micro's setup. In TLS
// 1.3 a caller checks this micro's certificate before it shows its own, so a caller of
// another trust domain or CA shows up here only as the alert it sent.
func handshakeWhy(err error) string {
	switch msg := err.Error(); {
	case strings.Contains(msg, "remote error: tls: bad certificate"), strings.Contains(msg, "remote error: tls: unknown certificate authority"):
		return "the caller refused this micro's certificate: it trusts another CA or trust domain (security.trust_domain, security.ca_file)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "the caller speaks plain HTTP: the inbound takes mutual TLS only (security.mode)"
	case strings.Contains(msg, "didn't provide a certificate"):
		return "the caller showed no client certificate"
	}
	return "the caller's certificate is not of this trust domain and CA"
}

// sparseLog lets a line be logged at most once per every, so that a flood of bad
// connections cannot flood the log; it counts what it held back.
type sparseLog struct {
	every time.Duration
	mu    sync.Mutex
	last  time.Time
	held  int
}

// due reports whether a line may be logged at now, and how many were held back before it.
func (l *sparseLog) due(now time.Time) (held int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.held++
		return 0, false
	}
	held, l.held, l.last = l.held, 0, now
	return held, true
}

// allowRules are the access rules of the services fronted here, for the servers' settings.
func allowRules(services map[string]config.Service) map[string][]string {
	out := make(map[string][]string)
	for name, s := range services {
		if len(s.Allow) > 0 {
			out[name] = s.Allow
		}
	}
	return out
}
