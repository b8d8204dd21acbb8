package budget

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]time.Duration{"250ms": 250 * time.Millisecond, " 1.5s ": 1500 * time.Millisecond, "1h": time.Hour, "3us": 3 * time.Microsecond} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{"": "empty", "soon": `"soon"`, "0s": "positive", "-5ms": "positive", "2h": "maximum", "250": `"250"`, strings.Repeat("9", 40): "too long"} {
		if _, err := Parse(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Parse(%q) error = %v, want it to mention %s", in, err, msg)
		}
	}
}

func TestFormatRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{time.Microsecond, 199*time.Millisecond + 873421*time.Nanosecond, 59 * time.Minute} {
		got, err := Parse(Format(d))
		if err != nil || got > d || d-got >= time.Microsecond {
			t.Errorf("Parse(Format(%v)) = %v, %v", d, got, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"250ms", "1.5s", "-1s", "0", "1h0m0.000001s", "9223372036854775807ns", "1e3s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Parse(s)
		if err != nil {
			return
		}
		if d <= 0 || d > Max {
			t.Fatalf("Parse(%q) = %v: out of (0, %v]", s, d, Max)
		}
		if back, err := Parse(Format(d)); err != nil && d >= time.Microsecond || back > d {
			t.Fatalf("Format(%v) = %q does not parse back: %v %v", d, Format(d), back, err)
		}
	})
}
