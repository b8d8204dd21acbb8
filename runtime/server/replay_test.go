package server

import (
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

// TestReplayBody: every attempt reads the body from its start; a body read past the limit
// cannot be sent again; an abandoned attempt's reader ends, and what it read meanwhile goes
// to the next attempt.
func TestReplayBody(t *testing.T) {
	b := newReplayBody(strings.NewReader("hello, world"), 64)
	first := b.attempt()
	p := make([]byte, 5)
	if n, err := first.Read(p); n != 5 || err != nil || string(p) != "hello" {
		t.Fatalf("first read: %q, %v", p[:n], err)
	}
	second := b.attempt() // the first attempt failed after 5 bytes
	if _, err := first.Read(p); !errors.Is(err, errReplaced) {
		t.Fatalf("the abandoned attempt read on: %v", err)
	}
	if got, err := io.ReadAll(second); err != nil || string(got) != "hello, world" {
		t.Fatalf("the second attempt read %q, %v", got, err)
	}
	if got, err := io.ReadAll(b.attempt()); err != nil || string(got) != "hello, world" {
		t.Fatalf("a third attempt, after the end, read %q, %v", got, err)
	}
	if !b.replayable() {
		t.Fatal("a body within the limit is not replayable")
	}

	big := newReplayBody(strings.NewReader(strings.Repeat("x", 100)), 10)
	if got, err := io.ReadAll(big.attempt()); err != nil || len(got) != 100 {
		t.Fatalf("a body past the limit read %d bytes, %v", len(got), err)
	}
	if big.replayable() {
		t.Fatal("a body read past its limit is replayable")
	}
}

// TestReplayBodyRace: an abandoned attempt's reader that the HTTP client still reads races
// with the next attempt's; the next one gets the whole body, in order.
func TestReplayBodyRace(t *testing.T) {
	want := strings.Repeat("0123456789", 1000)
	for range 50 {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < len(want); i += 100 {
				_, _ = io.WriteString(pw, want[i:i+100])
			}
			pw.Close()
		}()
		b := newReplayBody(pr, int64(len(want)))
		old := b.attempt()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(io.Discard, old)
		}()
		got, err := io.ReadAll(b.attempt())
		wg.Wait()
		if err != nil || string(got) != want {
			t.Fatalf("the later attempt read %d bytes, %v; want the whole body", len(got), err)
		}
	}
}
