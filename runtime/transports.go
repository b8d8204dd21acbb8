package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/transport"
)

// transportMux dials each node address with the transport that serves it. A plugin
// transport's addresses carry its name as a scheme ("nats:…"); the built-in HTTP
// transport's are host:port, and it stays available so that nodes that have not switched
// transports yet can still be reached. The pool dials through it.
type transportMux struct {
	http transport.Transport

	mu      sync.RWMutex
	plugins map[string]transport.Transport
}

func newTransportMux(http transport.Transport) *transportMux {
	return &transportMux{http: http, plugins: make(map[string]transport.Transport)}
}

func (m *transportMux) add(name string, t transport.Transport) {
	m.mu.Lock()
	m.plugins[name] = t
	m.mu.Unlock()
}

func (m *transportMux) remove(name string) {
	m.mu.Lock()
	delete(m.plugins, name)
	m.mu.Unlock()
}

// Dial connects to addr with the transport its scheme names, or with HTTP.
func (m *transportMux) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	if name, _, ok := strings.Cut(addr, ":"); ok {
		m.mu.RLock()
		t := m.plugins[name]
		m.mu.RUnlock()
		if t != nil {
			return t.Dial(ctx, addr)
		}
	}
	return m.http.Dial(ctx, addr)
}

// httpNode reports whether a node at addr is reached over HTTP: no transport plugin's name
// is its scheme.
func (m *transportMux) httpNode(addr string) bool {
	if name, _, ok := strings.Cut(addr, ":"); ok {
		m.mu.RLock()
		defer m.mu.RUnlock()
		return m.plugins[name] == nil
	}
	return true
}

// Listen is not used through the mux: micro listens on one transport at a time.
func (m *transportMux) Listen(context.Context, string) (transport.Listener, error) {
	return nil, errors.New("transport mux: listen on a transport, not on the mux")
}

// Close closes every transport.
func (m *transportMux) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	errs := []error{m.http.Close()}
	for _, t := range m.plugins {
		errs = append(errs, t.Close())
	}
	return errors.Join(errs...)
}

// openTransport returns the transport that c names: the built-in HTTP one, or a plugin
// that the factory starts and the mux learns to dial.
func (r *Runtime) openTransport(ctx context.Context, c config.Transport, s config.Server) (transport.Transport, error) {
	if c.Plugin == "http" {
		return r.mux.http, nil
	}
	t, err := r.factories.Transport(ctx, c, s, r.logger)
	if err != nil {
		return nil, fmt.Errorf("transport %q: %w", c.Plugin, err)
	}
	if r.security != nil {
		// A plugin's backend carries no TLS of micro's: every message is signed instead.
		t = newSignedTransport(t, r.security, r.logger)
	}
	r.mux.add(c.Plugin, t)
	return t, nil
}

// swapTransport moves this micro's inbound server to the transport that to names, while
// calls go on: it listens on the new transport, re-registers the fronted services at the
// new address, and keeps the old listener serving for drain before it closes it, so
// callers whose caches still hold the old address finish there. Outgoing calls dial each
// node with the transport its address names, so they need no switch.
func (r *Runtime) swapTransport(ctx context.Context, from, to config.Transport, s config.Server) error {
	next, err := r.openTransport(ctx, to, s)
	if err != nil {
		return err
	}
	ln, err := r.listenInbound(ctx, next, to.Plugin, s)
	if err != nil {
		if to.Plugin != "http" {
			r.mux.remove(to.Plugin)
			_ = next.Close()
		}
		return fmt.Errorf("transport %q: listen on %s: %w", to.Plugin, s.Inbound, err)
	}
	bgctx := r.bgctx
	r.goBackground(func() {
		if err := r.inbound.Serve(bgctx, ln); err != nil {
			r.logger.Error("inbound server stopped", "transport", to.Plugin, "err", err)
		}
	})
	addr := ln.Addr()
	if to.Plugin == "http" {
		addr = advertiseAddr(s.Advertise, addr)
	}
	r.trMu.Lock()
	oldLn, oldTr := r.inboundLn, r.tr
	r.inboundLn, r.tr, r.advertise = ln, next, addr
	r.trMu.Unlock()
	r.services.readvertise(ctx)
	r.quotas.recampaign() // its master's address is the inbound's
	r.logger.Info("transport switched", "from", from.Plugin, "to", to.Plugin, "inbound", addr)

	drain := s.DrainTimeout
	r.goBackground(func() {
		t := time.NewTimer(drain)
		defer t.Stop()
		select {
		case <-t.C:
		case <-bgctx.Done():
		}
		if err := oldLn.Close(); err != nil {
			r.logger.Warn("closing the old inbound listener", "transport", from.Plugin, "err", err)
		}
		if from.Plugin != "http" {
			r.mux.remove(from.Plugin)
			if err := oldTr.Close(); err != nil {
				r.logger.Warn("closing the old transport", "transport", from.Plugin, "err", err)
			}
		}
	})
	return nil
}
