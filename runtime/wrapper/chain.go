package wrapper

import (
	"context"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Link is one wrapper in a Chain, and the services it applies to.
type Link struct {
	Wrapper Wrapper
	// Services limits the wrapper to calls to these services; empty means every service.
	Services []string
}

func (l Link) appliesTo(service string) bool {
	if len(l.Services) == 0 {
		return true
	}
	for _, s := range l.Services {
		if s == service {
			return true
		}
	}
	return false
}

// Chain runs wrappers in order. A call holds the chain (Acquire) from its OnRequest to its
// OnResponse, so a chain that is replaced while calls run is retired only after they end.
type Chain struct {
	links  []Link
	mu     sync.RWMutex // held for reading by each call in flight, for writing by Retire
	closed bool         // set by Retire, under mu
}

// NewChain returns a chain of links, in the order they run.
func NewChain(links []Link) *Chain { return &Chain{links: links} }

// Links returns the chain's links.
func (c *Chain) Links() []Link {
	if c == nil {
		return nil
	}
	return c.links
}

// Current holds the chain that new calls use; it is replaced as a whole on reload.
type Current struct{ p atomic.Pointer[Chain] }

// Store makes c the chain of later calls and returns the one it replaces.
func (cur *Current) Store(c *Chain) *Chain { return cur.p.Swap(c) }

// Acquire returns the current chain, held for one call; the caller must Release it. It
// returns nil when there is no chain.
func (cur *Current) Acquire() *Chain {
	for {
		c := cur.p.Load()
		if c == nil {
			return nil
		}
		c.mu.RLock()
		if !c.closed {
			return c
		}
		c.mu.RUnlock() // retired between Load and RLock: take the new one
	}
}

// Release ends a call's hold on c.
func (c *Chain) Release() {
	if c != nil {
		c.mu.RUnlock()
	}
}

// Retire waits for the calls holding c to end, then closes the wrappers of c that keep is
// not using. keep may be nil.
func (c *Chain) Retire(ctx context.Context, keep *Chain) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	var firstErr error
	for _, l := range c.links {
		if keep.has(l.Wrapper) {
			continue
		}
		if err := l.Wrapper.Close(ctx); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func (c *Chain) has(w Wrapper) bool {
	if c == nil {
		return false
	}
	for _, l := range c.links {
		if l.Wrapper == w {
			return true
		}
	}
	return false
}

// Ran records which wrappers of a chain let a call through, so that only they see its
// outcome. The zero value is ready for use.
type Ran struct {
	buf [8]int
	idx []int
}

// OnRequest runs the chain's wrappers that apply to call, in order, until one does not
// continue. Headers that continuing wrappers set are merged into the returned verdict,
// whose Action is Continue when every wrapper let the call through. A body a wrapper sets
// (on a call whose BodyHeld is set) is what the wrappers after it see as call.Body, and
// what the call goes on with.
func (c *Chain) OnRequest(ctx context.Context, call *Call, ran *Ran) Verdict {
	ran.idx = ran.buf[:0]
	var out Verdict
	if c == nil {
		return out
	}
	traced := trace.SpanFromContext(ctx).IsRecording()
	for i, l := range c.links {
		if !l.appliesTo(call.Service) {
			continue
		}
		var v Verdict
		if traced {
			v = onRequestTraced(ctx, l.Wrapper, call)
		} else {
			v = l.Wrapper.OnRequest(ctx, call)
		}
		if v.Action != Continue {
			return v
		}
		ran.idx = append(ran.idx, i)
		if v.SetBody && call.BodyHeld {
			// The wrappers after this one see the body the call now goes on with.
			out.SetBody, out.Body, call.Body = true, v.Body, v.Body
		}
		for k, val := range v.Header {
			if out.Header == nil {
				out.Header = make(map[string]string, len(v.Header))
			}
			out.Header[k] = val
		}
	}
	return out
}

// onRequestTraced runs w's OnRequest in a span of its own under the recorded span in ctx:
// the wrapper's name, its verdict and the time it took.
func onRequestTraced(ctx context.Context, w Wrapper, call *Call) Verdict {
	tracer := trace.SpanFromContext(ctx).TracerProvider().Tracer("github.com/microhost/micro")
	ctx, span := tracer.Start(ctx, "wrapper "+w.Name(), trace.WithAttributes(attribute.String("micro.wrapper", w.Name())))
	v := w.OnRequest(ctx, call)
	switch v.Action {
	case Continue:
		span.SetAttributes(attribute.String("micro.wrapper.verdict", "continue"))
	case RejectNode:
		span.SetAttributes(attribute.String("micro.wrapper.verdict", "reject node"))
	default:
		span.SetAttributes(attribute.String("micro.wrapper.verdict", "reject"), attribute.Int("http.response.status_code", v.RejectStatus()))
		if v.Message != "" {
			span.SetAttributes(attribute.String("micro.wrapper.message", v.Message))
		}
	}
	span.End()
	return v
}

// OnResponse gives r to the wrappers that let the call through, in reverse order.
func (c *Chain) OnResponse(ctx context.Context, call *Call, r *Result, ran *Ran) {
	if c == nil {
		return
	}
	for i := len(ran.idx) - 1; i >= 0; i-- {
		c.links[ran.idx[i]].Wrapper.OnResponse(ctx, call, r)
	}
}
