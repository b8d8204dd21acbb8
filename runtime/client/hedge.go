package client

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/wrapper"
	"go.opentelemetry.io/otel/attribute"
)

// Forker is an Exchange that can make a second attempt while its own is out: a hedge.
type Forker interface {
	Exchange
	// Fork returns an Exchange for one attempt that runs at the same time as the
	// Forker's, with an answer of its own, or nil when the call cannot be hedged (its body
	// streams). Do calls it only when it hedges, from another goroutine, while the
	// Forker's own attempt is out: Fork must not touch what that attempt uses.
	Fork() Exchange
	// Adopt makes the answer of fork, a Fork that answered first, the Forker's answer.
	// Do calls it once both attempts have ended.
	Adopt(fork Exchange)
}

// try is one attempt: the node picked, the client wrappers' view of it, and how it went.
type try struct {
	pick  selector.Pick
	node  *registry.Node
	call  wrapper.Call
	ran   wrapper.Ran
	extra map[string]string // headers the client wrappers set
	limit time.Duration     // the attempt's own timeout; 0: the call's budget
	ex    Exchange
	num   int    // the attempt's number in its call, from 1
	why   string // "first", "retry" or "hedge"

	actx   context.Context
	cancel context.CancelFunc // nil when actx is the call's context

	ans     Answer
	sent    bool
	err     error
	latency time.Duration
	r       attemptResult
	// abandoned is set when the call gave the attempt up because another answered first.
	abandoned bool
	// first is set on the first attempt of a race, the one a hedge may overtake.
	first bool
	// traceID is the attempt's trace when it is sampled, else "".
	traceID string
}

// plan returns the attempt timeout (0: none) and the hedge delay (0: no hedge) of attempt
// number attempt of req, with remaining budget left. Only a call that is safe to repeat,
// with an attempt left after this one, gets either: a call that may not run twice is
// better served by the whole budget. canHedge is set when the Exchange can fork.
func (c *Client) plan(o *Options, req *Request, repeatable bool, attempt int, remaining time.Duration, canHedge bool) (limit, delay time.Duration) {
	if !repeatable || attempt >= o.Attempts {
		return 0, 0
	}
	rt := o.Routes[req.Service]
	limit = o.AttemptTimeout
	if rt.AttemptTimeout > 0 {
		limit = rt.AttemptTimeout
	}
	adaptive := limit == 0 && o.Adaptive.Quantile > 0
	hedging := canHedge && !rt.NoHedge && o.Hedge.Quantile > 0
	if adaptive || hedging {
		now := c.now()
		if r := c.lat.of(req.Service, req.Endpoint, now); r != nil {
			qa, qh := r.quantiles(o.Adaptive.Quantile, o.Hedge.Quantile, o.MinSamples, now)
			if adaptive && qa > 0 {
				limit = max(time.Duration(float64(qa)*o.Adaptive.Factor), o.Adaptive.Min)
			}
			if hedging && qh > 0 {
				delay = max(qh, o.Hedge.Min)
			}
		}
	}
	if limit >= remaining {
		limit = 0
	}
	if delay >= remaining || (limit > 0 && delay >= limit) {
		delay = 0
	}
	return limit, delay
}

// exec makes t's attempt, in t.actx, and judges it. remaining is the call's budget left;
// the node is given t.limit instead when the attempt has one.
func (c *Client) exec(ctx context.Context, t *try, remaining time.Duration, countTimeouts bool) {
	left := remaining
	if t.limit > 0 {
		left = t.limit
	}
	actx, span := c.tracer.Client(t.actx, "attempt")
	if span.Recording() {
		t.traceID = tracing.SampledTraceID(actx)
		span.Set(attribute.String("micro.node", t.node.ID), attribute.Int("micro.attempt", t.num),
			attribute.String("micro.attempt.reason", t.why), attribute.Int64("micro.budget_ms", left.Milliseconds()))
	}
	start := c.now()
	t.ans, t.sent, t.err = t.ex.Attempt(actx, t.node, left, t.extra)
	t.latency = c.now().Sub(start)
	t.r = c.judge(ctx, t.actx, t.limit > 0, t.ans, t.sent, t.err, countTimeouts)
	// Only race cancels an attempt's own context while it is out, when another won.
	t.abandoned = t.err != nil && errors.Is(t.actx.Err(), context.Canceled) && ctx.Err() == nil
	if span.Recording() {
		switch {
		case t.abandoned:
			span.Set(attribute.Bool("micro.abandoned", true))
		case t.err != nil:
			span.Fail(t.err.Error())
		case t.ans.Error != "" || t.ans.Status >= 500:
			span.Set(attribute.Int("http.response.status_code", t.ans.Status))
			span.Fail("node answered " + strconv.Itoa(t.ans.Status) + " " + t.ans.Error)
		default:
			span.Set(attribute.Int("http.response.status_code", t.ans.Status))
		}
		span.End()
	}
	if t.cancel != nil {
		t.cancel()
	}
}

// settle reports how t went to the selector and the client wrappers, and, when record is
// set, adds its latency to its endpoint's when its node's app answered it. A first attempt
// that a hedge overtook adds the time it had taken: its latency was at least that, and
// leaving it out would make the endpoint look faster with every hedge, and the hedges
// more frequent.
func (c *Client) settle(ctx context.Context, chain *wrapper.Chain, req *Request, t *try, record bool) {
	health := t.r.health
	if t.abandoned {
		health = selector.Abandoned
	}
	t.pick.Done(t.latency, health)
	if c.obs != nil {
		outcome := "failed"
		switch health {
		case selector.Success:
			outcome = "ok"
		case selector.Abandoned:
			outcome = "abandoned"
		}
		c.obs.Attempt(req.Service, req.Endpoint, t.node.ID, t.why, outcome, t.latency, t.traceID)
	}
	if chain != nil {
		wr := wrapper.Result{Latency: t.latency, Fault: health != selector.Success && health != selector.Abandoned}
		switch {
		case t.abandoned:
			wr.Err = "abandoned: another attempt answered first"
		case t.err == nil:
			wr.Status = t.ans.Status
		default:
			wr.Err = t.err.Error()
		}
		chain.OnResponse(ctx, &t.call, &wr, &t.ran)
	}
	if record && ((t.abandoned && t.first) || (!t.abandoned && t.err == nil && t.ans.Error == "" && health == selector.Success)) {
		now := c.now()
		if r := c.lat.of(req.Service, req.Endpoint, now); r != nil {
			r.record(t.latency, now)
		}
	}
}

// race makes attempt p through fk and, when it has not ended after delay, a hedge through
// fork on another node. The first attempt to end with an answer that is not worth
// retrying wins and the other is cancelled; an attempt that fails in a way worth retrying
// leaves the other to go on. race settles both attempts and returns the one whose outcome
// stands (the winner, or the last to fail), and the hedge when one was sent. When the
// hedge wins, fk adopts its answer.
func (c *Client) race(ctx context.Context, o *Options, req *Request, fk Forker, chain *wrapper.Chain,
	tried []string, p *try, delay, remaining time.Duration, countTimeouts bool) (final, hedge *try) {
	p.first = true
	if p.limit > 0 {
		p.actx, p.cancel = context.WithTimeout(ctx, p.limit)
	} else {
		p.actx, p.cancel = context.WithCancel(ctx)
	}
	var (
		winner atomic.Int32 // 1: the first attempt, 2: the hedge
		mu     sync.Mutex   // guards h, which the hedge's goroutine sets
		h      *try
		done   = make(chan struct{})
	)
	timer := time.AfterFunc(delay, func() {
		defer close(done)
		if winner.Load() != 0 {
			return
		}
		fork := fk.Fork()
		if fork == nil {
			return
		}
		t := c.hedgeTry(ctx, o, req, fork, chain, tried, p.limit)
		if t == nil {
			return
		}
		mu.Lock()
		if winner.Load() != 0 { // the first attempt won meanwhile: send nothing
			mu.Unlock()
			t.cancel()
			t.pick.Skip()
			chain.OnResponse(ctx, &t.call, &wrapper.Result{Err: "abandoned: another attempt answered first"}, &t.ran)
			return
		}
		h = t
		mu.Unlock()
		left, _ := budget.Remaining(ctx, c.now())
		c.exec(ctx, t, left, countTimeouts)
		if t.r.retry == never && winner.CompareAndSwap(0, 2) {
			p.cancel()
		}
	})
	c.exec(ctx, p, remaining, countTimeouts)
	if p.r.retry == never && winner.CompareAndSwap(0, 1) {
		mu.Lock()
		if h != nil {
			h.cancel()
		}
		mu.Unlock()
	}
	if !timer.Stop() {
		<-done
	}
	record := o.Adaptive.Quantile > 0 || o.Hedge.Quantile > 0
	if h == nil {
		c.settle(ctx, chain, req, p, record)
		return p, nil
	}
	// Both attempts have ended; exec marked the loser abandoned when it was cancelled
	// while out, rather than failed by its node.
	switch winner.Load() {
	case 1:
		final = p
	case 2:
		fk.Adopt(h.ex)
		final = h
	default: // both failed, in ways worth retrying: the later failure stands
		final = h
		if delay+h.latency < p.latency {
			final = p
		}
	}
	c.settle(ctx, chain, req, p, record)
	c.settle(ctx, chain, req, h, record)
	return final, h
}

// hedgeTry selects a node for a hedge of req other than those tried, runs the client
// wrappers, and charges the retry budget. It returns nil, having sent nothing, when no
// other node is there, the node may not take a repeat, a wrapper refused, or the retry
// budget is spent.
func (c *Client) hedgeTry(ctx context.Context, o *Options, req *Request, ex Exchange, chain *wrapper.Chain, tried []string, limit time.Duration) *try {
	remaining, _ := budget.Remaining(ctx, c.now())
	if remaining < time.Millisecond || ctx.Err() != nil {
		return nil
	}
	pick, err := c.sel.Select(ctx, req.Service, req.Endpoint, tried)
	if err != nil {
		return nil
	}
	node := pick.Node()
	if slices.Contains(tried, node.ID) || !req.repeatable(node) || !c.retry.withdraw() {
		pick.Skip()
		return nil
	}
	t := &try{pick: pick, node: node, ex: ex, limit: limit, num: len(tried) + 1, why: "hedge"}
	t.call = wrapper.Call{Service: req.Service, Endpoint: req.Endpoint, Node: node.ID, Header: req.Header}
	t.call.Deadline, _ = ctx.Deadline()
	v := chain.OnRequest(ctx, &t.call, &t.ran)
	if v.Action != wrapper.Continue {
		pick.Skip()
		if v.Action == wrapper.Reject {
			chain.OnResponse(ctx, &t.call, &wrapper.Result{Status: v.Status, Err: v.Message}, &t.ran)
		}
		return nil
	}
	t.extra = v.Header
	if t.limit >= remaining {
		t.limit = 0
	}
	if t.limit > 0 {
		t.actx, t.cancel = context.WithTimeout(ctx, t.limit)
	} else {
		t.actx, t.cancel = context.WithCancel(ctx)
	}
	return t
}
