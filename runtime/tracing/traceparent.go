// Package tracing is micro's part in W3C Trace Context (https://www.w3.org/TR/trace-context/):
// the traceparent header that names a call's trace and its parent span, read from callers
// and written to apps and to other micros, and the sampling decision it carries.
//
// The codec is written here rather than taken from the OpenTelemetry propagator because it
// runs on every call, sampled or not: it parses and formats without allocating, where the
// propagator goes through a carrier interface and a context.
package tracing

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
)

// Header names the header that carries a SpanContext; HeaderState names its companion,
// which vendors' tracers use and micro passes on as it came.
const (
	Header      = "traceparent"
	HeaderState = "tracestate"
)

// headerLen is the length of a version 00 traceparent.
const headerLen = 55

// TraceID names a trace; SpanID names a span in it. Neither is all zeros.
type (
	TraceID [16]byte
	SpanID  [8]byte
)

// SpanContext is what a traceparent carries: the trace, the span that is the parent of
// the next one, and whether the trace is sampled (recorded).
type SpanContext struct {
	Trace   TraceID
	Span    SpanID
	Sampled bool
}

// String returns id in hex.
func (id TraceID) String() string { return hex.EncodeToString(id[:]) }

// String returns id in hex.
func (id SpanID) String() string { return hex.EncodeToString(id[:]) }

// Valid reports whether c names a trace and a span.
func (c SpanContext) Valid() bool { return c.Trace != TraceID{} && c.Span != SpanID{} }

// Parse reads a traceparent header. It accepts version 00 exactly, and a later version
// (not ff) whose first four fields read as version 00's, as the specification asks. A
// header that is malformed, or names an all-zero trace or span, is not valid: the caller
// then starts a trace of its own, and never passes the bad header on.
func Parse(s string) (SpanContext, bool) {
	var c SpanContext
	if len(s) < headerLen || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return c, false
	}
	ver, ok := hexByte(s[0], s[1])
	switch {
	case !ok || ver == 0xff:
		return c, false
	case ver == 0 && len(s) != headerLen:
		return c, false
	case ver > 0 && len(s) > headerLen && s[headerLen] != '-':
		return c, false
	}
	if !decodeHex(c.Trace[:], s[3:35]) || !decodeHex(c.Span[:], s[36:52]) {
		return SpanContext{}, false
	}
	flags, ok := hexByte(s[53], s[54])
	if !ok || !c.Valid() {
		return SpanContext{}, false
	}
	c.Sampled = flags&1 == 1
	return c, true
}

// String returns c as a version 00 traceparent header.
func (c SpanContext) String() string {
	var b [headerLen]byte
	return string(c.Append(b[:0]))
}

// Append appends c as a version 00 traceparent header to b.
func (c SpanContext) Append(b []byte) []byte {
	b = append(b, "00-"...)
	b = hex.AppendEncode(b, c.Trace[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, c.Span[:])
	if c.Sampled {
		return append(b, "-01"...)
	}
	return append(b, "-00"...)
}

// Child returns the context of a new span under c: the same trace and sampling, a new
// span ID.
func (c SpanContext) Child() SpanContext {
	c.Span = newSpanID()
	return c
}

// Root returns the context of the first span of a new trace, sampled when its trace ID
// falls under ratio (see Sampler).
func Root(ratio float64) SpanContext {
	c := SpanContext{Span: newSpanID()}
	for c.Trace == (TraceID{}) {
		binary.BigEndian.PutUint64(c.Trace[:8], rand.Uint64())
		binary.BigEndian.PutUint64(c.Trace[8:], rand.Uint64())
	}
	c.Sampled = Sampled(c.Trace, ratio)
	return c
}

// Sampled reports whether a new trace with ID id is sampled at ratio (0 to 1): whether its
// last eight bytes, as a number, fall under ratio of their range. The decision depends on
// the ID alone, as OpenTelemetry's TraceIDRatioBased sampler's does, so every process that
// decides about one trace decides alike.
func Sampled(id TraceID, ratio float64) bool {
	switch {
	case ratio >= 1:
		return true
	case !(ratio > 0):
		return false
	}
	bound := uint64(ratio * (1 << 63))
	return binary.BigEndian.Uint64(id[8:])>>1 < bound
}

// newSpanID returns a random span ID that is not all zeros.
func newSpanID() SpanID {
	for {
		var id SpanID
		binary.BigEndian.PutUint64(id[:], rand.Uint64())
		if id != (SpanID{}) {
			return id
		}
	}
}

// decodeHex decodes lower-case hex s into dst, len(s) = 2 × len(dst).
func decodeHex(dst []byte, s string) bool {
	for i := range dst {
		b, ok := hexByte(s[2*i], s[2*i+1])
		if !ok {
			return false
		}
		dst[i] = b
	}
	return true
}

// hexByte decodes two lower-case hex digits.
func hexByte(hi, lo byte) (byte, bool) {
	h, ok1 := hexDigit(hi)
	l, ok2 := hexDigit(lo)
	return h<<4 | l, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
