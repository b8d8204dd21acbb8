package client

import (
	"testing"
	"time"
)

func TestRetryBudget(t *testing.T) {
	now := time.Unix(0, 0)
	b := newRetryBudget(func() time.Time { return now })
	b.configure(0.2, 2)

	// A fresh budget holds a second of the per-second floor.
	n := 0
	for b.withdraw() {
		n++
	}
	if n != 2 {
		t.Fatalf("%d retries from the initial reserve, want 2", n)
	}
	// 20% of 50 requests is 10 retries.
	for range 50 {
		b.deposit()
	}
	n = 0
	for b.withdraw() {
		n++
	}
	if n != 10 {
		t.Fatalf("%d retries after 50 requests, want 10", n)
	}
	// The floor refills with time, up to the window's worth.
	now = now.Add(time.Hour)
	n = 0
	for b.withdraw() {
		n++
	}
	if want := int(2 * budgetWindow.Seconds()); n != want {
		t.Fatalf("%d retries after an idle hour, want %d", n, want)
	}
}
