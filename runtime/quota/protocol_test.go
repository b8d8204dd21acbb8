package quota

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	req, err := DecodeRequest([]byte(`{"client":"node-1","resources":[{"name":"api","wants":120.5,"has":100},{"name":"db.read_2","wants":0}],"future":true}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Request{Client: "node-1", Resources: []ResourceRequest{{Name: "api", Wants: 120.5, Has: 100}, {Name: "db.read_2"}}}
	if fmt.Sprint(*req) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", *req, want)
	}
}

func TestDecodeRequestRefusesBadInput(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen+1)
	many := make([]ResourceRequest, MaxResources+1)
	for i := range many {
		many[i] = ResourceRequest{Name: fmt.Sprintf("r%d", i), Wants: 1}
	}
	manyBody, _ := json.Marshal(Request{Client: "c", Resources: many})
	for _, tc := range []struct {
		name, body, field string
	}{
		{"empty body", ``, "body: empty"},
		{"not json", `{"client":`, "body:"},
		{"trailing data", `{"client":"c","resources":[{"name":"a","wants":1}]} {}`, "body: data after"},
		{"too large", `{"client":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, "body:"},
		{"no client", `{"resources":[{"name":"a","wants":1}]}`, "client: empty"},
		{"bad client", `{"client":"a b","resources":[{"name":"a","wants":1}]}`, "client: byte 1"},
		{"long client", `{"client":"` + long + `","resources":[{"name":"a","wants":1}]}`, "client: 129 bytes"},
		{"no resources", `{"client":"c"}`, "resources: empty"},
		{"too many resources", string(manyBody), "resources: 257 entries"},
		{"bad name", `{"client":"c","resources":[{"name":"a","wants":1},{"name":"a/b","wants":1}]}`, "resources[1].name: byte 1"},
		{"long name", `{"client":"c","resources":[{"name":"` + long + `","wants":1}]}`, "resources[0].name: 129 bytes"},
		{"repeated name", `{"client":"c","resources":[{"name":"a","wants":1},{"name":"b"},{"name":"a"}]}`, `resources[2].name: "a" repeats resources[0]`},
		{"negative wants", `{"client":"c","resources":[{"name":"a","wants":-1}]}`, "resources[0].wants: -1 is negative"},
		{"negative has", `{"client":"c","resources":[{"name":"a","wants":1,"has":-0.5}]}`, "resources[0].has: -0.5 is negative"},
		{"huge wants", `{"client":"c","resources":[{"name":"a","wants":1e13}]}`, "resources[0].wants: 1e+13 exceeds"},
		{"overflowing wants", `{"client":"c","resources":[{"name":"a","wants":1e400}]}`, "resources.wants"},
		{"string wants", `{"client":"c","resources":[{"name":"a","wants":"1"}]}`, "resources.wants: a JSON string"},
		{"resources not a list", `{"client":"c","resources":{}}`, "field resources"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRequest([]byte(tc.body))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrBadRequest) {
				t.Errorf("%v does not wrap ErrBadRequest", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not say %q", err, tc.field)
			}
		})
	}
}

func TestValidateRejectsNonFinite(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		r := Request{Client: "c", Resources: []ResourceRequest{{Name: "a", Wants: v}}}
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "not finite") {
			t.Errorf("wants %v: %v", v, err)
		}
	}
}

func TestDecodeResponse(t *testing.T) {
	if _, err := decodeResponse([]byte(`{"resources":[{"name":"a","rate":-1,"lease_ms":1}]}`)); err == nil {
		t.Error("a negative rate passes")
	}
	if _, err := decodeResponse([]byte(`{"resources":[{"name":"a","rate":1,"lease_ms":-1}]}`)); err == nil {
		t.Error("a negative lease passes")
	}
	resp, err := decodeResponse([]byte(`{"resources":[{"name":"a","rate":1.5,"lease_ms":10000,"refresh_ms":2000}]}`))
	if err != nil || resp.Resources[0].Rate != 1.5 {
		t.Fatalf("%+v, %v", resp, err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"client":"node-1","resources":[{"name":"api","wants":120.5,"has":100}]}`,
		`{"client":"c","resources":[{"name":"a","wants":0},{"name":"b","wants":1e12,"has":1e-300}]}`,
		`{"client":"c","resources":[{"name":"a","wants":-1}]}`,
		`{"client":"c","resources":[{"name":"a"},{"name":"a"}]}`,
		`{"client":"c\u0000","resources":null}`,
		`[]`, `null`, `{}`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeRequest(body)
		if err != nil {
			if req != nil {
				t.Fatal("a request with an error")
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("a decoded request fails validation: %v", err)
		}
		if !validName(req.Client) || len(req.Resources) == 0 || len(req.Resources) > MaxResources {
			t.Fatalf("out of bounds: %+v", req)
		}
		seen := map[string]bool{}
		for _, rr := range req.Resources {
			if !validName(rr.Name) || seen[rr.Name] {
				t.Fatalf("bad or repeated name %q", rr.Name)
			}
			seen[rr.Name] = true
			for _, v := range []float64{rr.Wants, rr.Has} {
				if math.IsNaN(v) || v < 0 || v > MaxRate {
					t.Fatalf("rate %v out of bounds", v)
				}
			}
		}
		// What decodes re-encodes and decodes to the same request.
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > MaxRequestBytes { // zeros left out of body are spelled out now
			return
		}
		again, err := DecodeRequest(b)
		if err != nil || fmt.Sprint(*again) != fmt.Sprint(*req) {
			t.Fatalf("round trip: %+v, %v", again, err)
		}
	})
}
