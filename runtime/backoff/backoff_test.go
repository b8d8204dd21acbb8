package backoff

import (
	"testing"
	"time"
)

func TestExp(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{0, 25 * time.Millisecond}, {1, 50 * time.Millisecond}, {3, 200 * time.Millisecond}, {4, 250 * time.Millisecond}, {60, 250 * time.Millisecond}} {
		if got := Exp(25*time.Millisecond, 250*time.Millisecond, tc.n); got != tc.want {
			t.Errorf("Exp(25ms, 250ms, %d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestJitterBounds(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 2, 3, time.Second} {
		for range 1000 {
			if j := Jitter(d); j < d/2 || j > d {
				t.Fatalf("Jitter(%v) = %v, want within [%v, %v]", d, j, d/2, d)
			}
			if f := Full(d); f > d || (d > 0 && f < 1) {
				t.Fatalf("Full(%v) = %v", d, f)
			}
		}
	}
}
