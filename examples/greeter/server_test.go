package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func testServer(t *testing.T, ingress string, fail bool) *httptest.Server {
	t.Helper()
	s := newServer("greeter-1", ingress, fail, slog.New(slog.DiscardHandler))
	ts := httptest.NewServer(s.handler())
	t.Cleanup(func() {
		ts.Close()
		s.close()
	})
	return ts
}

// post sends body to url with the given Micro-Timeout (if any) and decodes the JSON reply.
func post(t *testing.T, url, body, budget string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if budget != "" {
		req.Header.Set(timeoutHeader, budget)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST %s: Content-Type %q, want application/json", url, ct)
	}
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: decoding the reply: %v", url, err)
	}
	return resp.StatusCode, out
}

func TestHello(t *testing.T) {
	ts := testServer(t, "", false)
	status, out := post(t, ts.URL+"/Greeter.Hello", `{"name":"Ada"}`, "250ms")
	if status != http.StatusOK {
		t.Fatalf("status %d, want 200: %v", status, out)
	}
	want := map[string]any{"greeting": "Hello, Ada!", "instance": "greeter-1", "budget": "250ms"}
	for k, v := range want {
		if out[k] != v {
			t.Errorf("%s = %v, want %v", k, out[k], v)
		}
	}
	_, out = post(t, ts.URL+"/Greeter.Hello", `{"name":"Ada"}`, "")
	if out["budget"] != "" {
		t.Errorf("budget without a Micro-Timeout header = %q, want empty", out["budget"])
	}
}

func TestBadInput(t *testing.T) {
	ts := testServer(t, "", false)
	for _, tc := range []struct {
		path, body string
		status     int
		errPart    string
	}{
		{"/Greeter.Hello", ``, 400, "missing JSON body"},
		{"/Greeter.Hello", `{"name":`, 400, "invalid JSON"},
		{"/Greeter.Hello", `[1,2]`, 400, "invalid JSON"},
		{"/Greeter.Hello", `{}`, 400, `"name" is required`},
		{"/Greeter.Hello", `{"name":"` + strings.Repeat("a", maxBody) + `"}`, 413, "larger than"},
		{"/Greeter.Sleep", `{"ms":-1}`, 400, `"ms" is -1`},
		{"/Greeter.SetFail", `{}`, 400, `"fail" is required`},
		{"/Greeter.Call", `{"endpoint":"X.Y"}`, 400, `"service"`},
		{"/Greeter.Call", `{"service":"x"}`, 400, `"endpoint"`},
		{"/Greeter.Nope", `{}`, 404, "unknown endpoint"},
	} {
		status, out := post(t, ts.URL+tc.path, tc.body, "")
		msg, _ := out["error"].(string)
		if status != tc.status || !strings.Contains(msg, tc.errPart) {
			t.Errorf("POST %s %.40q: %d %q, want %d with %q", tc.path, tc.body, status, msg, tc.status, tc.errPart)
		}
	}

	resp, err := http.Get(ts.URL + "/Greeter.Hello")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /Greeter.Hello: %d, want 405", resp.StatusCode)
	}
}

func TestHealth(t *testing.T) {
	ts := testServer(t, "", true) // health stays ok in failing mode
	resp, err := http.Get(ts.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("GET /health: %d %q, want 200 ok", resp.StatusCode, body)
	}
}

func TestFailModes(t *testing.T) {
	ts := testServer(t, "", false)
	if status, out := post(t, ts.URL+"/Greeter.Fail", `{}`, ""); status != 500 || out["error"] == nil {
		t.Errorf("Greeter.Fail: %d %v, want 500 with an error", status, out)
	}
	if status, out := post(t, ts.URL+"/Greeter.SetFail", `{"fail":true}`, ""); status != 200 || out["fail"] != true {
		t.Fatalf("SetFail true: %d %v", status, out)
	}
	for _, p := range []string{"/Greeter.Hello", "/Greeter.Sleep", "/Greeter.Call"} {
		if status, out := post(t, ts.URL+p, `{"name":"Ada"}`, ""); status != 500 || !strings.Contains(out["error"].(string), "failing mode") {
			t.Errorf("%s in failing mode: %d %v, want 500", p, status, out)
		}
	}
	if status, _ := post(t, ts.URL+"/Greeter.SetFail", `{"fail":false}`, ""); status != 200 {
		t.Fatalf("SetFail false: %d", status)
	}
	if status, _ := post(t, ts.URL+"/Greeter.Hello", `{"name":"Ada"}`, ""); status != 200 {
		t.Errorf("Hello after SetFail false: %d, want 200", status)
	}

	failing := testServer(t, "", true) // as with GREETER_FAIL=1
	if status, _ := post(t, failing.URL+"/Greeter.Hello", `{"name":"Ada"}`, ""); status != 500 {
		t.Errorf("Hello when started failing: %d, want 500", status)
	}
}

func TestFailModeEnv(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "1": true, "true": true} {
		got, err := failMode(func(string) string { return v })
		if err != nil || got != want {
			t.Errorf("GREETER_FAIL=%q: %v, %v; want %v", v, got, err, want)
		}
	}
	if _, err := failMode(func(string) string { return "yes please" }); err == nil || !strings.Contains(err.Error(), "GREETER_FAIL") {
		t.Errorf("GREETER_FAIL=bad: err %v, want one naming GREETER_FAIL", err)
	}
}

func TestListenAddr(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"MICRO_APP_ADDR": "127.0.0.1:9000", "PORT": "9001"}, "127.0.0.1:9000"},
		{map[string]string{"PORT": "9001"}, "127.0.0.1:9001"},
		{nil, "127.0.0.1:8081"},
	} {
		if got := listenAddr(env(tc.env)); got != tc.want {
			t.Errorf("listenAddr(%v) = %q, want %q", tc.env, got, tc.want)
		}
	}
	if got := instanceName(env(map[string]string{"MICRO_INSTANCE": "greeter-3"})); got != "greeter-3" {
		t.Errorf("instanceName with MICRO_INSTANCE = %q", got)
	}
	if got := instanceName(env(nil)); !strings.Contains(got, "-") {
		t.Errorf("default instanceName = %q, want hostname-pid", got)
	}
}

func TestSleep(t *testing.T) {
	ts := testServer(t, "", false)
	status, out := post(t, ts.URL+"/Greeter.Sleep", `{"ms":1}`, "1s")
	if status != 200 || out["instance"] != "greeter-1" || out["budget"] != "1s" {
		t.Fatalf("Sleep 1ms: %d %v", status, out)
	}

	// A caller that gives up ends the sleep: the handler returns without waiting it out.
	s := newServer("greeter-1", "", false, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/Greeter.Sleep", strings.NewReader(`{"ms":600000}`))
	done := make(chan struct{})
	go func() {
		s.handler().ServeHTTP(httptest.NewRecorder(), req)
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Sleep did not return after its request context ended")
	}
}

func TestCall(t *testing.T) {
	type seen struct {
		path, budget, body string
	}
	got := make(chan seen, 1)
	ingress := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- seen{r.URL.Path, r.Header.Get(timeoutHeader), string(body)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, `{"greeting":"hi from x"}`)
	}))
	defer ingress.Close()
	ts := testServer(t, strings.TrimPrefix(ingress.URL, "http://"), false)

	status, out := post(t, ts.URL+"/Greeter.Call", `{"service":"x","endpoint":"Y.Z","body":{"name":"Ada"}}`, "300ms")
	if status != http.StatusTeapot {
		t.Errorf("status %d, want the upstream's 418", status)
	}
	if out["instance"] != "greeter-1" {
		t.Errorf("instance = %v", out["instance"])
	}
	if r, _ := out["reply"].(map[string]any); r["greeting"] != "hi from x" {
		t.Errorf("reply = %v, want the upstream JSON", out["reply"])
	}
	s := <-got
	if s.path != "/x/Y.Z" || s.budget != "300ms" || s.body != `{"name":"Ada"}` {
		t.Errorf("ingress saw %+v, want path /x/Y.Z, budget 300ms, body {\"name\":\"Ada\"}", s)
	}

	// Without MICRO_INGRESS the call fails with a clear error.
	lonely := testServer(t, "", false)
	status, out = post(t, lonely.URL+"/Greeter.Call", `{"service":"x","endpoint":"Y.Z"}`, "")
	if status != 500 || !strings.Contains(out["error"].(string), "MICRO_INGRESS") {
		t.Errorf("Call without an ingress: %d %v", status, out)
	}
}
