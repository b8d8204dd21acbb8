package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/status"
)

// TestStatus: GET /status shows the called services and their nodes, the plugins in use
// with their last switch, and the config's file and last reload.
func TestStatus(t *testing.T) {
	rt, cfg := start(t)
	rt.ConfigFile("/etc/micro/micro.toml")
	base := "http://" + rt.IngressAddr()
	for range 5 {
		if resp, body := post(t, http.DefaultClient, base+"/echo/Echo.Say", `{}`); resp.StatusCode != 200 {
			t.Fatalf("call: %d %s", resp.StatusCode, body)
		}
	}
	get := func() status.Snapshot {
		t.Helper()
		resp, err := http.Get(base + "/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s status.Snapshot
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /status: %d %v", resp.StatusCode, err)
		}
		return s
	}
	s := get()
	if len(s.Services) != 1 || s.Services[0].Name != "echo" || len(s.Services[0].Nodes) != 1 || s.Services[0].Requests != 5 {
		t.Fatalf("services = %+v, want echo's node and its 5 calls", s.Services)
	}
	if n := s.Services[0].Nodes[0]; n.Requests != 5 || n.Address == "" || n.Ejected {
		t.Errorf("echo's node = %+v", n)
	}
	if len(s.Routes) != 1 || s.Routes[0].Endpoint != "Echo.Say" || s.Routes[0].Requests != 5 {
		t.Errorf("routes = %+v", s.Routes)
	}
	if len(s.Plugins) != 3 || s.Plugins[0].Name != "embedded" || s.Plugins[1].Name != "http" || s.Plugins[0].Health != "ok" || s.Plugins[1].LastSwap != nil {
		t.Errorf("plugins = %+v", s.Plugins)
	}
	if s.Config.Source != "/etc/micro/micro.toml" || s.Config.Loaded.IsZero() || s.Config.LastReload != nil || s.Health != "ok" {
		t.Errorf("config = %+v, health %q", s.Config, s.Health)
	}

	// A transport switch, and a reload that failed.
	next := *cfg
	next.Transport.Plugin = "t2"
	rt.Apply(context.Background(), &next)
	rt.Reloaded(config.ReloadFailed, errors.New(`client.strategy: unknown strategy "fastest"`))
	s = get()
	tr := s.Plugins[1]
	if tr.Role != "transport" || tr.Name != "t2" || tr.LastSwap == nil || tr.LastSwap.From != "http" || tr.LastSwap.To != "t2" || tr.LastSwap.Error != "" {
		t.Errorf("transport after the switch = %+v", tr)
	}
	if rl := s.Config.LastReload; rl == nil || rl.Result != "failed" || rl.Error == "" {
		t.Errorf("last reload = %+v", rl)
	}
}

// TestOTLPDown: with the OTLP collector out of reach, every call is served, and the spans
// that could not be exported are counted in micro_trace_spans_dropped_total.
func TestOTLPDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close() // nothing listens there now
	rt, _ := startWith(t, func(c *config.Config) {
		c.Telemetry.OTLPEndpoint, c.Telemetry.SampleRatio = down, 1
	}, nil)
	base := "http://" + rt.IngressAddr()
	for i := range 20 {
		if resp, body := post(t, http.DefaultClient, base+"/echo/Echo.Say", `{}`); resp.StatusCode != 200 {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
	}
	dropped := regexp.MustCompile(`(?m)^micro_trace_spans_dropped_total (\d+)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, body := get(t, base+"/metrics")
		m := dropped.FindStringSubmatch(body)
		if resp.StatusCode != 200 || m == nil {
			t.Fatalf("GET /metrics: %d, no micro_trace_spans_dropped_total", resp.StatusCode)
		}
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no span counted as dropped with the collector down")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(tb testing.TB, url string) (*http.Response, string) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}
