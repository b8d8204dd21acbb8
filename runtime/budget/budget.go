// Package budget reads and writes a call's deadline budget: the relative time left, carried
// between hops in the Micro-Timeout header as a Go duration (as gRPC carries grpc-timeout),
// so that no clock sync is needed.
package budget

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Max is the largest budget a header may set.
const Max = time.Hour

// Parse reads a Micro-Timeout value such as "250ms" or "1.5s". It rejects empty, negative,
// zero, unparsable and overlong values with an error that quotes the value.
func Parse(v string) (time.Duration, error) {
	s := strings.TrimSpace(v)
	if s == "" {
		return 0, fmt.Errorf("Micro-Timeout is empty: want a Go duration such as 250ms")
	}
	if len(s) > 32 {
		return 0, fmt.Errorf("Micro-Timeout %.32q... is too long: want a Go duration such as 250ms", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("Micro-Timeout %q is not a Go duration such as 250ms", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("Micro-Timeout %q must be positive", s)
	}
	if d > Max {
		return 0, fmt.Errorf("Micro-Timeout %q exceeds the maximum of %v", s, Max)
	}
	return d, nil
}

// Format writes d for the Micro-Timeout header, to microsecond precision. A budget of less
// than a microsecond is spent and should not be sent.
func Format(d time.Duration) string {
	return d.Truncate(time.Microsecond).String()
}

// Remaining returns the budget left in ctx, and false when ctx has no deadline.
func Remaining(ctx context.Context, now time.Time) (time.Duration, bool) {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0, false
	}
	return dl.Sub(now), true
}
