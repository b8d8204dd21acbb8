package server

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/callerr"
)

func TestGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"100m", 100 * time.Millisecond, true},
		{"1S", time.Second, true},
		{"2H", 2 * time.Hour, true},
		{"5M", 5 * time.Minute, true},
		{"7u", 7 * time.Microsecond, true},
		{"9n", 9, true},
		{"99999999H", 1<<63 - 1, true},
		{"", 0, false},
		{"m", 0, false},
		{"100", 0, false},
		{"-1S", 0, false},
		{"1.5S", 0, false},
		{"123456789S", 0, false},
		{"10x", 0, false},
	} {
		got, ok := parseGRPCTimeout(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if got := formatGRPCTimeout(1500 * time.Microsecond); got != "2m" {
		t.Errorf("formatGRPCTimeout(1.5ms) = %q, want 2m (rounded up)", got)
	}
}

// FuzzGRPCTimeout: no grpc-timeout header breaks the parser, and what it reads is never
// negative.
func FuzzGRPCTimeout(f *testing.F) {
	for _, s := range []string{"100m", "1S", "99999999H", "", "-1S", "1\x00m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, ok := parseGRPCTimeout(s); ok && d < 0 {
			t.Fatalf("parseGRPCTimeout(%q) = %v", s, d)
		}
	})
}

func TestGRPCEndpoint(t *testing.T) {
	for _, tc := range []struct{ target, endpoint, want string }{
		{"/pkg.Svc/Method", "pkg.Svc", "pkg.Svc/Method"},
		{"/pkg.Svc/Method?x=1", "pkg.Svc", "pkg.Svc/Method"},
		{"/pkg.Svc", "pkg.Svc", "pkg.Svc"},
		{"/pkg.Svc/a/b", "pkg.Svc", "pkg.Svc"},
		{"/pkg.Svc/", "pkg.Svc", "pkg.Svc"},
	} {
		if got := grpcEndpoint(tc.target, tc.endpoint); got != tc.want {
			t.Errorf("grpcEndpoint(%q) = %q, want %q", tc.target, got, tc.want)
		}
	}
}

// TestGRPCError: micro's failures reach a gRPC caller as a trailers-only answer, with the
// status of the same meaning and the detail percent-encoded.
func TestGRPCError(t *testing.T) {
	w := httptest.NewRecorder()
	writeGRPCError(w, callerr.New("micro.client", http.StatusServiceUnavailable, "no node of \"ünï\" 100%%"))
	h := w.Result().Header
	if w.Code != 200 || h.Get("Content-Type") != "application/grpc" || h.Get("Grpc-Status") != "14" {
		t.Fatalf("%d %v", w.Code, h)
	}
	if got, want := h.Get("Grpc-Message"), `micro.client: 503 Service Unavailable: no node of "%C3%BCn%C3%AF" 100%25`; got != want {
		t.Errorf("grpc-message %q, want %q", got, want)
	}
	for code, want := range map[int]int{400: grpcInvalidArgument, 404: grpcUnimplemented, 499: grpcCanceled, 504: grpcDeadlineExceeded, 429: grpcResourceExhausted, 418: grpcUnknown} {
		if got := grpcCode(code); got != want {
			t.Errorf("grpcCode(%d) = %d, want %d", code, got, want)
		}
	}
	for status, want := range map[string]int{"14": 503, "4": 504, "13": 500, "2": 500, "5": 200, "": 200} {
		if got := grpcJudged(200, http.Header{"Grpc-Status": {status}}); got != want {
			t.Errorf("grpcJudged(grpc-status %q) = %d, want %d", status, got, want)
		}
	}
}
