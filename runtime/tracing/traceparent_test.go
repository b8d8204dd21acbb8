package tracing

import (
	"strings"
	"testing"
)

// The example of the specification.
const example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestParse(t *testing.T) {
	c, ok := Parse(example)
	if !ok || !c.Sampled || c.String() != example {
		t.Fatalf("Parse(%q) = %+v, %v; String %q", example, c, ok, c.String())
	}
	if c, ok := Parse(strings.Replace(example, "-01", "-00", 1)); !ok || c.Sampled {
		t.Fatalf("flags 00: %+v %v", c, ok)
	}
	// A later version may add fields after a dash; its first four read as version 00's.
	if c, ok := Parse("01" + example[2:] + "-what-comes-next"); !ok || c.String() != example {
		t.Fatalf("version 01 with more fields: %+v %v", c, ok)
	}
	for _, bad := range []string{
		"",
		example[:54],
		example + "-",            // version 00 has exactly four fields
		"ff" + example[2:],       // version ff is invalid
		"01" + example[2:] + "x", // more of a later version must follow a dash
		strings.ToUpper(example), // hex is lower case
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero span
		"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
		"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	} {
		if c, ok := Parse(bad); ok || c != (SpanContext{}) {
			t.Errorf("Parse(%q) = %+v, %v; want invalid", bad, c, ok)
		}
	}
}

func TestChildAndRoot(t *testing.T) {
	p, _ := Parse(example)
	c := p.Child()
	if c.Trace != p.Trace || c.Span == p.Span || !c.Valid() || c.Sampled != p.Sampled {
		t.Fatalf("Child of %v: %v", p, c)
	}
	if r := Root(1); !r.Valid() || !r.Sampled {
		t.Fatalf("Root(1) = %v", r)
	}
	if r := Root(0); !r.Valid() || r.Sampled {
		t.Fatalf("Root(0) = %v", r)
	}
}

// TestSampledRatio: about ratio of new traces are sampled.
func TestSampledRatio(t *testing.T) {
	const n = 100000
	for _, ratio := range []float64{0.01, 0.1, 0.5} {
		got := 0
		for range n {
			if Root(ratio).Sampled {
				got++
			}
		}
		if want := ratio * n; float64(got) < want*0.85 || float64(got) > want*1.15 {
			t.Errorf("ratio %v: %d of %d sampled", ratio, got, n)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	var b [64]byte
	c, _ := Parse(example)
	if n := testing.AllocsPerRun(100, func() {
		c, _ = Parse(example)
		_ = c.Child().Append(b[:0])
	}); n != 0 {
		t.Errorf("Parse, Child and Append allocate %v times", n)
	}
}

// FuzzParse: Parse never panics, and what it accepts formats back to a header that parses
// to the same context.
func FuzzParse(f *testing.F) {
	f.Add(example)
	f.Add("01" + example[2:] + "-x")
	f.Add(strings.ToUpper(example))
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := Parse(s)
		if !ok {
			return
		}
		again, ok := Parse(c.String())
		if !ok || again != c || !c.Valid() {
			t.Fatalf("Parse(%q) = %v, but its String %q parses to %v, %v", s, c, c.String(), again, ok)
		}
	})
}

func BenchmarkParseAppend(b *testing.B) {
	var buf [64]byte
	for b.Loop() {
		c, _ := Parse(example)
		_ = c.Child().Append(buf[:0])
	}
}
