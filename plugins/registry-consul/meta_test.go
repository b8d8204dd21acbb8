package main

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/microhost/micro/sdk/registry"
)

func TestMetaRoundTrip(t *testing.T) {
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("Service.Endpoint%03d", i) // 200 × 21 characters: several chunks
	}
	for _, n := range []*registry.Node{
		{ID: "a"},
		{ID: "b", Version: "1.2.3"},
		{ID: "c", Metadata: map[string]string{"zone": "a", "Weird-Key_9": ""}, Endpoints: []string{"Greeter.Hello"}},
		{ID: "d", Version: "2", Endpoints: many},
		{ID: "e", Endpoints: []string{"Greeter.Hello", "Greeter.Bye"}, Idempotent: []string{"Greeter.Hello"}},
		{ID: "f", Idempotent: many},
	} {
		meta, err := encodeMeta(n)
		if err != nil {
			t.Fatalf("encodeMeta(%s): %v", n.ID, err)
		}
		for k, v := range meta {
			if err := checkMetaPair(k, v); err != nil {
				t.Errorf("node %s: encoded pair breaks Consul's rules: %v", n.ID, err)
			}
		}
		got := &registry.Node{ID: n.ID}
		decodeMeta(meta, got)
		if !equalNodes(got, n) {
			t.Errorf("round trip of node %s:\n got %+v\nwant %+v", n.ID, got, n)
		}
	}
}

func TestMetaChunksEndpoints(t *testing.T) {
	eps := make([]string, 100)
	for i := range eps {
		eps[i] = strings.Repeat("x", 20) + fmt.Sprint(i)
	}
	meta, err := encodeMeta(&registry.Node{ID: "n", Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	if len(meta) < 4 {
		t.Fatalf("%d meta keys for ~2300 characters of endpoints, want at least 4 chunks: %v", len(meta), slices.Collect(maps.Keys(meta)))
	}
	for _, k := range []string{"micro_endpoints", "micro_endpoints_2", "micro_endpoints_3"} {
		if v, ok := meta[k]; !ok || len(v) > metaValueMaxLength {
			t.Errorf("meta[%s] = %d characters, present %v; want present and at most %d", k, len(v), ok, metaValueMaxLength)
		}
	}
}

func TestMetaRejects(t *testing.T) {
	tooMany := map[string]string{}
	for i := range 64 {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	long := strings.Repeat("v", 513)
	for _, tc := range []struct {
		node *registry.Node
		want string // in the error
	}{
		{&registry.Node{Metadata: map[string]string{"has space": "v"}}, `"has space"`},
		{&registry.Node{Metadata: map[string]string{"a.b": "v"}}, `"a.b"`},
		{&registry.Node{Metadata: map[string]string{"": "v"}}, `empty`},
		{&registry.Node{Metadata: map[string]string{"consul-x": "v"}}, `"consul-x"`},
		{&registry.Node{Metadata: map[string]string{"micro_version": "v"}}, `"micro_version"`},
		{&registry.Node{Metadata: map[string]string{"micro_endpoints_7": "v"}}, `"micro_endpoints_7"`},
		{&registry.Node{Metadata: map[string]string{"k": long}}, `"k"`},
		{&registry.Node{Metadata: map[string]string{strings.Repeat("k", 129): "v"}}, `128`},
		{&registry.Node{Version: long}, `version`},
		{&registry.Node{Endpoints: []string{"a,b"}}, `"a,b"`},
		{&registry.Node{Endpoints: []string{""}}, `endpoint ""`},
		{&registry.Node{Metadata: tooMany, Version: "1"}, `65`},
	} {
		_, err := encodeMeta(tc.node)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("encodeMeta(%+v) = %v, want an error containing %s", tc.node, err, tc.want)
		}
	}
}

func TestRegistrationRejects(t *testing.T) {
	for _, tc := range []struct {
		node *registry.Node
		want string
	}{
		{&registry.Node{ID: "", Address: "127.0.0.1:1"}, "node ID is empty"},
		{&registry.Node{ID: "n", Address: "127.0.0.1"}, `"127.0.0.1"`},
		{&registry.Node{ID: "n", Address: "127.0.0.1:http"}, `"127.0.0.1:http"`},
		{&registry.Node{ID: "n", Address: "127.0.0.1:70000"}, `"127.0.0.1:70000"`},
	} {
		_, err := registration("s", tc.node, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("registration(%+v) = %v, want an error containing %s", tc.node, err, tc.want)
		}
	}
}

func TestDiff(t *testing.T) {
	n := func(id, v string) *registry.Node { return &registry.Node{ID: id, Address: "h:1", Version: v} }
	prev := map[string]map[string]*registry.Node{
		"a": {"1": n("1", "v1"), "2": n("2", "v1")},
		"b": {"3": n("3", "v1")},
	}
	cur := map[string]map[string]*registry.Node{
		"a": {"1": n("1", "v1"), "2": n("2", "v2"), "4": n("4", "v1")},
		"c": {"5": n("5", "v1")},
	}
	type ev struct {
		Type          registry.EventType
		Service, Node string
	}
	var got []ev
	for _, e := range diff(prev, cur) {
		got = append(got, ev{e.Type, e.Service, e.Node.ID})
	}
	want := []ev{
		{registry.EventUpdate, "a", "2"},
		{registry.EventUpdate, "a", "4"},
		{registry.EventDelete, "b", "3"},
		{registry.EventUpdate, "c", "5"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("diff:\n got %v\nwant %v", got, want)
	}
	if evs := diff(cur, cur); len(evs) != 0 {
		t.Errorf("diff of equal snapshots = %v, want none", evs)
	}
}
