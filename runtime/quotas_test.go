package runtime_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/quota"
)

// lease asks the quota service for rate on resource through micro's ingress, as a caller
// would, and returns the status and the answer.
func lease(t *testing.T, ingress, resource string, wants float64) (int, quota.Response) {
	t.Helper()
	body, err := json.Marshal(quota.Request{Client: "test-client", Resources: []quota.ResourceRequest{{Name: resource, Wants: wants}}})
	if err != nil {
		t.Fatal(err)
	}
	resp, answer := post(t, http.DefaultClient, "http://"+ingress+"/micro.quota/lease", string(body))
	var r quota.Response
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal([]byte(answer), &r); err != nil {
			t.Fatalf("answer %q: %v", answer, err)
		}
	}
	return resp.StatusCode, r
}

// TestQuotaServeLive: turning [quota] serve on registers an instance of the quota service
// behind the inbound, which elects itself master through the embedded registry and grants
// leases once it has learned; a new capacity applies live; turning serve off deregisters it.
func TestQuotaServeLive(t *testing.T) {
	rt, cfg := start(t)
	ingress := rt.IngressAddr()
	next := *cfg
	next.Quota = config.Quota{Service: "micro.quota", Serve: true, Lease: 300 * time.Millisecond, Refresh: 100 * time.Millisecond,
		Resources: map[string]float64{"api": 50}}
	rt.Apply(context.Background(), &next)

	// A new master grants nothing to a client that holds nothing until it has learned, for
	// one lease; then the fair share.
	var got quota.Response
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, r := lease(t, ingress, "api", 80)
		if status == http.StatusOK && len(r.Resources) == 1 && r.Resources[0].Code == 0 {
			got = r
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no lease from the quota service: %d %+v", status, r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g := got.Resources[0]; g.Rate != 50 || g.LeaseMS != 300 || g.RefreshMS != 100 {
		t.Fatalf("grant %+v, want the whole capacity of 50 for a lease of 300ms", g)
	}
	if status, r := lease(t, ingress, "nope", 1); status != http.StatusOK || r.Resources[0].Code != http.StatusNotFound {
		t.Fatalf("unknown resource: %d %+v, want a grant refused with 404", status, r)
	}

	// Hostile requests get a clear 400 and leave the instance serving: junk, junk names,
	// a body past the bound, a wrong endpoint.
	for _, bad := range []struct{ path, body string }{
		{"/micro.quota/lease", "\xff\x00{"},
		{"/micro.quota/lease", `{"client":"../../x","resources":[{"name":"api","wants":1}]}`},
		{"/micro.quota/lease", `{"client":"c","resources":[{"name":"a b\u0000","wants":1}]}`},
		{"/micro.quota/lease", `{"client":"c","resources":[{"name":"api","wants":-5}]}`},
		{"/micro.quota/lease", `{"client":"c","pad":"` + strings.Repeat("x", quota.MaxRequestBytes) + `"}`},
	} {
		if resp, body := post(t, http.DefaultClient, "http://"+ingress+bad.path, bad.body); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST %s %.40q: %d %s, want 400", bad.path, bad.body, resp.StatusCode, body)
		}
	}
	// The instance is registered with its one endpoint: no node serves another.
	if resp, body := post(t, http.DefaultClient, "http://"+ingress+"/micro.quota/nope", `{}`); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("an unknown endpoint of the quota service: %d %s, want 503 (no node serves it)", resp.StatusCode, body)
	}
	if status, r := lease(t, ingress, "api", 80); status != http.StatusOK || r.Resources[0].Rate != 50 {
		t.Fatalf("after hostile requests: %d %+v", status, r)
	}

	next.Quota.Resources = map[string]float64{"api": 20}
	rt.Apply(context.Background(), &next)
	if status, r := lease(t, ingress, "api", 80); status != http.StatusOK || r.Resources[0].Rate != 20 {
		t.Fatalf("after the capacity fell to 20: %d %+v", status, r)
	}

	next.Quota.Serve = false
	rt.Apply(context.Background(), &next)
	for {
		status, _ := lease(t, ingress, "api", 80)
		if status == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after serve = false, the quota service still answers: %d", status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
