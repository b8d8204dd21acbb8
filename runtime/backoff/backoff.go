// Package backoff computes the waits between tries: an exponential ceiling with a cap, and
// the jitter drawn under it, so that many clients that failed together do not try again
// together; and it waits them out.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Sleep waits d, or until ctx ends; it reports whether it waited d.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Exp is base doubled n times (n from 0), capped at limit.
func Exp(base, limit time.Duration, n int) time.Duration {
	d := base
	for i := 0; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// Jitter draws a wait from [d/2, d]: most of the ceiling, spread out.
func Jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return max(d, 0)
	}
	return d/2 + rand.N(d-d/2+1)
}

// Full draws a wait from [1ns, d]: "full jitter", which spreads retries the most.
func Full(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d) + 1
}
