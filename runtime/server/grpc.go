package server

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/microhost/micro/runtime/callerr"
)

// This file is what micro knows of gRPC (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
// a gRPC call is POST /{package.Service}/{Method} over HTTP/2, its deadline is its
// grpc-timeout header, and its outcome is the grpc-status of its trailers, or of its
// headers when the answer is nothing else ("trailers-only").

// gRPC status codes that micro reads or answers with.
const (
	grpcCanceled          = 1
	grpcUnknown           = 2
	grpcInvalidArgument   = 3
	grpcDeadlineExceeded  = 4
	grpcPermissionDenied  = 7
	grpcResourceExhausted = 8
	grpcUnimplemented     = 12
	grpcInternal          = 13
	grpcUnavailable       = 14
)

// isGRPC reports whether a request or answer with header h is gRPC.
func isGRPC(h http.Header) bool {
	return strings.HasPrefix(h.Get("Content-Type"), "application/grpc")
}

// grpcEndpoint is the endpoint of a gRPC call to target (/{package.Service}/{Method}):
// "package.Service/Method", so that filters, canaries, health and idempotency apply per
// method. A target of another shape keeps the endpoint it has.
func grpcEndpoint(target, endpoint string) string {
	path, _, _ := strings.Cut(target, "?")
	svc, method, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok || svc == "" || method == "" || strings.Contains(method, "/") || len(path) > maxEndpoint {
		return endpoint
	}
	return svc + "/" + method
}

// parseGRPCTimeout reads a grpc-timeout header: up to 8 digits and a unit (H, M, S, m, u,
// n). It reports false for anything else.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > int64(1<<63-1)/int64(unit) {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as a grpc-timeout header, in milliseconds rounded up.
func formatGRPCTimeout(d time.Duration) string {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return strconv.FormatInt(int64(max(ms, 1)), 10) + "m"
}

// grpcCode is the gRPC status of micro's answer with HTTP status code.
func grpcCode(code int) int {
	switch code {
	case http.StatusBadRequest:
		return grpcInvalidArgument
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return grpcUnimplemented
	case http.StatusRequestTimeout, http.StatusGatewayTimeout:
		return grpcDeadlineExceeded
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return grpcResourceExhausted
	case callerr.StatusClientClosed:
		return grpcCanceled
	case http.StatusInternalServerError:
		return grpcInternal
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return grpcUnavailable
	}
	return grpcUnknown
}

// grpcJudged is the HTTP status by which micro judges a gRPC answer with header h (see
// client.Answer): a trailers-only answer that carries a failure counts as the HTTP status
// of the same meaning, so that UNAVAILABLE is retried like a 503 and INTERNAL counts
// against the node like a 500. Any other answer is judged by its HTTP status.
func grpcJudged(status int, h http.Header) int {
	v := h.Get("Grpc-Status")
	if v == "" {
		return status
	}
	switch code, _ := strconv.Atoi(v); code {
	case grpcUnavailable:
		return http.StatusServiceUnavailable
	case grpcDeadlineExceeded:
		return http.StatusGatewayTimeout
	case grpcInternal, grpcUnknown:
		return http.StatusInternalServerError
	}
	return status
}

// writeGRPCError answers e to a gRPC caller, as gRPC does: a trailers-only answer, HTTP
// 200 with the status in grpc-status and the detail in grpc-message.
func writeGRPCError(w http.ResponseWriter, e *callerr.Error) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(grpcCode(e.Code)))
	h.Set("Grpc-Message", grpcMessage(e.Error()))
	if e.RetryAfter != "" {
		h.Set("Retry-After", e.RetryAfter)
	}
	w.WriteHeader(http.StatusOK)
}

// grpcMessage percent-encodes s for a grpc-message header: every byte outside printable
// ASCII, and '%'.
func grpcMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
