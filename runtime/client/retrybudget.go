package client

import (
	"sync"
	"time"
)

// budgetWindow is how long unused retry allowance is kept, as in Finagle's retry budget.
const budgetWindow = 10 * time.Second

// epsilon absorbs rounding in sums of fractional deposits (5 × 0.2 is not quite 1).
const epsilon = 1e-9

// retryBudget bounds retries to ratio × requests plus minPerSec retries per second, so that
// retries cannot multiply load when every node fails. Allowance older than budgetWindow
// is not kept: the balance is capped at what the window would earn.
type retryBudget struct {
	mu        sync.Mutex
	now       func() time.Time
	ratio     float64
	minPerSec float64
	deposits  float64 // earned by requests
	reserve   float64 // earned by time
	last      time.Time
	primed    bool
}

func newRetryBudget(now func() time.Time) *retryBudget {
	return &retryBudget{now: now, last: now()}
}

func (b *retryBudget) configure(ratio, minPerSec float64) {
	b.mu.Lock()
	b.ratio, b.minPerSec = ratio, minPerSec
	if !b.primed {
		// Start with a second's worth of reserve, so a fresh process can retry at once.
		b.reserve, b.primed = minPerSec, true
	}
	b.mu.Unlock()
}

// refill adds the time-based reserve since the last look. b.mu is held.
func (b *retryBudget) refill() {
	now := b.now()
	dt := now.Sub(b.last).Seconds()
	if dt <= 0 {
		return
	}
	b.last = now
	b.reserve = min(b.reserve+dt*b.minPerSec, b.minPerSec*budgetWindow.Seconds())
	// Forget deposits at the rate they would leave a budgetWindow-long window.
	b.deposits -= b.deposits * min(1, dt/budgetWindow.Seconds())
}

// deposit records a request.
func (b *retryBudget) deposit() {
	b.mu.Lock()
	b.refill()
	b.deposits += b.ratio
	b.mu.Unlock()
}

// withdraw takes the allowance for one retry, and reports false when none is left.
func (b *retryBudget) withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	switch {
	case b.deposits >= 1-epsilon:
		b.deposits--
	case b.reserve >= 1-epsilon:
		b.reserve--
	default:
		return false
	}
	return true
}
