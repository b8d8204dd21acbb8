package main

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/microhost/micro/sdk/registry"
)

// How a node's version, endpoints and idempotent endpoints are kept in Consul's service
// Meta, next to the node's own metadata, whose keys are stored as they are.
//
// Consul limits Meta (agent/structs.ValidateServiceMetadata): at most 64 pairs, keys of at
// most 128 characters matching [a-zA-Z0-9_-]+ and not starting with "consul-", values of at
// most 512 characters. The endpoints list is comma-joined and split over as many
// micro_endpoints, micro_endpoints_2, micro_endpoints_3, ... values as it needs, so a node
// with many endpoints still fits; the idempotent endpoints go the same way into
// micro_idempotent, micro_idempotent_2, ... Metadata that breaks a rule is refused with an error naming
// the key, before Consul is asked.
const (
	metaVersion    = "micro_version"
	metaEndpoints  = "micro_endpoints"
	metaIdempotent = "micro_idempotent"

	metaMaxPairs       = 64
	metaKeyMaxLength   = 128
	metaValueMaxLength = 512
	metaReservedPrefix = "consul-"
)

// encodeMeta returns the Consul service Meta for n.
func encodeMeta(n *registry.Node) (map[string]string, error) {
	meta := make(map[string]string, len(n.Metadata)+2)
	for k, v := range n.Metadata {
		if err := checkMetaPair(k, v); err != nil {
			return nil, err
		}
		if isReservedKey(k) {
			return nil, fmt.Errorf("metadata key %q: reserved for micro's own use (%s, %s*, %s*)", k, metaVersion, metaEndpoints, metaIdempotent)
		}
		meta[k] = v
	}
	if n.Version != "" {
		if len(n.Version) > metaValueMaxLength {
			return nil, fmt.Errorf("version %.20q...: longer than Consul's %d-character limit on a meta value", n.Version, metaValueMaxLength)
		}
		meta[metaVersion] = n.Version
	}
	for _, list := range []struct {
		key       string
		endpoints []string
	}{{metaEndpoints, n.Endpoints}, {metaIdempotent, n.Idempotent}} {
		chunks, err := chunkEndpoints(list.endpoints)
		if err != nil {
			return nil, err
		}
		for i, c := range chunks {
			meta[chunkKey(list.key, i)] = c
		}
	}
	if len(meta) > metaMaxPairs {
		return nil, fmt.Errorf("metadata: %d Consul meta pairs with version and endpoints, more than Consul's limit of %d", len(meta), metaMaxPairs)
	}
	return meta, nil
}

// decodeMeta splits Consul service Meta into a node's metadata, version and endpoints.
func decodeMeta(meta map[string]string, n *registry.Node) {
	n.Version = meta[metaVersion]
	n.Endpoints = joinChunks(meta, metaEndpoints)
	n.Idempotent = joinChunks(meta, metaIdempotent)
	n.Metadata = nil
	for k, v := range meta {
		if isReservedKey(k) {
			continue
		}
		if n.Metadata == nil {
			n.Metadata = make(map[string]string, len(meta))
		}
		n.Metadata[k] = v
	}
}

// checkMetaPair applies Consul's rules for one user metadata pair.
func checkMetaPair(k, v string) error {
	if k == "" {
		return fmt.Errorf("metadata key %q: empty keys are not allowed in Consul meta", k)
	}
	if len(k) > metaKeyMaxLength {
		return fmt.Errorf("metadata key %.20q...: longer than Consul's %d-character limit", k, metaKeyMaxLength)
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("metadata key %q: Consul meta keys may hold only letters, digits, '_' and '-'", k)
		}
	}
	if strings.HasPrefix(k, metaReservedPrefix) {
		return fmt.Errorf("metadata key %q: the %q prefix is reserved by Consul", k, metaReservedPrefix)
	}
	if len(v) > metaValueMaxLength {
		return fmt.Errorf("metadata key %q: value longer than Consul's %d-character limit", k, metaValueMaxLength)
	}
	return nil
}

// chunkEndpoints comma-joins endpoints into values of at most metaValueMaxLength characters.
func chunkEndpoints(endpoints []string) ([]string, error) {
	var chunks []string
	var b strings.Builder
	for _, e := range endpoints {
		if e == "" || strings.Contains(e, ",") {
			return nil, fmt.Errorf("endpoint %q: must be non-empty and without commas", e)
		}
		if len(e) > metaValueMaxLength {
			return nil, fmt.Errorf("endpoint %.20q...: longer than Consul's %d-character limit on a meta value", e, metaValueMaxLength)
		}
		if b.Len() > 0 && b.Len()+1+len(e) > metaValueMaxLength {
			chunks = append(chunks, b.String())
			b.Reset()
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(e)
	}
	if b.Len() > 0 {
		chunks = append(chunks, b.String())
	}
	return chunks, nil
}

// chunkKey is the meta key of the i-th (from 0) chunk of the list kept under key.
func chunkKey(key string, i int) string {
	if i == 0 {
		return key
	}
	return key + "_" + strconv.Itoa(i+1)
}

// joinChunks returns the list kept in meta under key and its numbered chunks.
func joinChunks(meta map[string]string, key string) []string {
	var out []string
	for i := 0; ; i++ {
		v, ok := meta[chunkKey(key, i)]
		if !ok {
			return out
		}
		if v != "" {
			out = append(out, strings.Split(v, ",")...)
		}
	}
}

// isReservedKey reports whether k is one of the keys micro keeps its own fields in.
func isReservedKey(k string) bool {
	return k == metaVersion || strings.HasPrefix(k, metaEndpoints) || strings.HasPrefix(k, metaIdempotent)
}

// equalNodes reports whether two nodes hold the same record.
func equalNodes(a, b *registry.Node) bool {
	return a.ID == b.ID && a.Address == b.Address && a.Version == b.Version &&
		maps.Equal(a.Metadata, b.Metadata) && slices.Equal(a.Endpoints, b.Endpoints) &&
		slices.Equal(a.Idempotent, b.Idempotent)
}
