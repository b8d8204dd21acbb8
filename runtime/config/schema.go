package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	gotoml "github.com/pelletier/go-toml/v2"
)

// NamePlaceholder stands for a service or wrapper name in the keys that Keys lists, as in
// "services.<name>.instances".
const NamePlaceholder = "<name>"

// Keys lists every key micro.toml knows, as dotted paths in the order of the Config struct.
// Keys under [routes], [services] and [wrappers] hold [NamePlaceholder] where the name goes.
// "wrappers.<name>.config" is a free-form table: it is set in the file only.
func Keys() []string {
	var out []string
	for _, p := range newSchema().leaves {
		out = append(out, strings.Join(p.segs, "."))
	}
	return out
}

// EnvName returns the environment variable that sets key, one of [Keys] (with a real name in
// place of [NamePlaceholder]): "client.retry_budget.ratio" gives
// "MICRO_CLIENT_RETRY_BUDGET_RATIO". A service or wrapper name with '-' or '.' has no
// variable of its own: the variable EnvName returns for it sets the name with '_' instead.
func EnvName(key string) string {
	return "MICRO_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// nodeKind says what a schema node holds.
type nodeKind int

const (
	leafNode  nodeKind = iota // a value: string, number, duration, size, list or free-form map
	tableNode                 // a struct: a table with fixed keys
	namedNode                 // a map of structs: a table whose keys are service names
)

// node is one key of micro.toml's schema, derived by reflection from Config's koanf tags.
type node struct {
	kind   nodeKind
	typ    reflect.Type
	fields []field // tableNode: in struct order
	elem   *node   // namedNode: the table each name holds
}

type field struct {
	name  string
	index int // struct field index
	node  *node
}

func (n *node) field(name string) *node {
	for _, f := range n.fields {
		if f.name == name {
			return f.node
		}
	}
	return nil
}

// pattern is the path of one leaf; wild is the index of the name segment in a [routes],
// [services] or [wrappers] path, or -1.
type pattern struct {
	segs []string
	wild int
	node *node
}

// schema is the tree of micro.toml's keys and the flat list of its leaves.
type schema struct {
	root   *node
	leaves []pattern
}

// freeFormType is the type of a free-form table, a wrapper's config: any TOML values, nested
// tables included, that micro passes on without knowing their keys.
var freeFormType = reflect.TypeFor[map[string]any]()

func isDuration(t reflect.Type) bool { return t == reflect.TypeFor[time.Duration]() }
func isByteSize(t reflect.Type) bool { return t == reflect.TypeFor[ByteSize]() }

// isLeaf reports whether t is a value rather than a table: anything but a struct or a map
// of structs. Durations and sizes are values.
func isLeaf(t reflect.Type) bool {
	switch {
	case isDuration(t) || isByteSize(t):
		return true
	case t.Kind() == reflect.Struct:
		return false
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String && t.Elem().Kind() == reflect.Struct:
		return false
	}
	return true
}

func newSchema() *schema {
	s := &schema{root: nodeOf(reflect.TypeFor[Config]())}
	s.collect(s.root, nil, -1)
	return s
}

func nodeOf(t reflect.Type) *node {
	switch {
	case isLeaf(t):
		return &node{kind: leafNode, typ: t}
	case t.Kind() == reflect.Struct:
		n := &node{kind: tableNode, typ: t}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("koanf"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			n.fields = append(n.fields, field{name: name, index: i, node: nodeOf(f.Type)})
		}
		return n
	}
	return &node{kind: namedNode, typ: t, elem: nodeOf(t.Elem())}
}

func (s *schema) collect(n *node, segs []string, wild int) {
	switch n.kind {
	case leafNode:
		s.leaves = append(s.leaves, pattern{segs: segs, wild: wild, node: n})
	case tableNode:
		for _, f := range n.fields {
			s.collect(f.node, append(segs[:len(segs):len(segs)], f.name), wild)
		}
	case namedNode:
		s.collect(n.elem, append(segs[:len(segs):len(segs)], NamePlaceholder), len(segs))
	}
}

// section reports whether key, in the form sep-joined path, lies under one of the top-level
// tables.
func (s *schema) section(key, sep string) bool {
	for _, f := range s.root.fields {
		if key == f.name || strings.HasPrefix(key, f.name+sep) {
			return true
		}
	}
	return false
}

// match finds the leaf that key, a path joined by sep, names. For a path under [routes],
// [services] or [wrappers] the name is whatever lies between the section and a known field, so it may
// itself contain sep. It returns the path split into segments.
func (s *schema) match(key, sep string) ([]string, *node, error) {
	var (
		found []string
		leaf  *node
		n     int
	)
	for _, p := range s.leaves {
		if p.wild < 0 {
			if strings.Join(p.segs, sep) == key {
				found, leaf, n = p.segs, p.node, n+1
			}
			continue
		}
		prefix := strings.Join(p.segs[:p.wild], sep) + sep
		suffix := sep + strings.Join(p.segs[p.wild+1:], sep)
		if len(key) > len(prefix)+len(suffix) && strings.HasPrefix(key, prefix) && strings.HasSuffix(key, suffix) {
			segs := append([]string(nil), p.segs...)
			segs[p.wild] = key[len(prefix) : len(key)-len(suffix)]
			found, leaf, n = segs, p.node, n+1
		}
	}
	switch n {
	case 0:
		return nil, nil, fmt.Errorf("no key matches %q", key)
	case 1:
		return found, leaf, nil
	}
	return nil, nil, fmt.Errorf("%q matches more than one key", key)
}

// underFreeForm reports whether key, a path joined by sep, names a key inside a free-form
// table (a wrapper's config), which env and flags cannot set. It returns the table's path.
func (s *schema) underFreeForm(key, sep string) ([]string, bool) {
	for _, p := range s.leaves {
		if p.node.typ != freeFormType {
			continue
		}
		if p.wild < 0 {
			if strings.HasPrefix(key, strings.Join(p.segs, sep)+sep) {
				return p.segs, true
			}
			continue
		}
		head := strings.Join(p.segs[:p.wild], sep) + sep
		tail := sep + strings.Join(p.segs[p.wild+1:], sep) + sep
		rest, ok := strings.CutPrefix(key, head)
		if i := strings.Index(rest, tail); ok && i > 0 {
			segs := slices.Clone(p.segs)
			segs[p.wild] = rest[:i]
			return segs, true
		}
	}
	return nil, false
}

// suggest returns the known key closest to the unknown key at path (whose last segment is
// the unknown one) under parent, or "".
func (s *schema) suggest(parent *node, path []string) string {
	bad := path[len(path)-1]
	best, bestDist := "", math.MaxInt
	if parent != nil {
		for _, f := range parent.fields {
			if d := editDistance(bad, f.name); d < bestDist {
				best, bestDist = f.name, d
			}
		}
	}
	if best != "" && bestDist < len(bad) && bestDist <= max(2, len(bad)/3) {
		return joinKey(append(path[:len(path)-1:len(path)-1], best))
	}
	// The same name elsewhere: a key put in the wrong table.
	for _, p := range s.leaves {
		if p.segs[len(p.segs)-1] == bad {
			return strings.Join(p.segs, ".")
		}
	}
	for _, f := range s.root.fields {
		if f.node.kind == tableNode && f.node.field(bad) != nil {
			return f.name + "." + bad
		}
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey joins path segments into a dotted key, quoting a segment as TOML does when it is
// not a bare key (a version "1.0.0" or a name with a dot).
func joinKey(segs []string) string {
	var b strings.Builder
	for i, s := range segs {
		if i > 0 {
			b.WriteByte('.')
		}
		if isBareKey(s) {
			b.WriteString(s)
		} else {
			b.WriteString(strconv.Quote(s))
		}
	}
	return b.String()
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// toMap turns c into the nested map koanf holds, keyed by koanf tags. Nil maps are left out.
func toMap(c Config) map[string]any {
	return valueMap(newSchema().root, reflect.ValueOf(c))
}

func valueMap(n *node, v reflect.Value) map[string]any {
	out := make(map[string]any)
	switch n.kind {
	case tableNode:
		for _, f := range n.fields {
			fv := v.Field(f.index)
			switch {
			case f.node.kind != leafNode:
				if !(fv.Kind() == reflect.Map && fv.IsNil()) {
					out[f.name] = valueMap(f.node, fv)
				}
			case (fv.Kind() == reflect.Map || fv.Kind() == reflect.Slice) && fv.IsNil():
			default:
				out[f.name] = fv.Interface()
			}
		}
	case namedNode:
		for it := v.MapRange(); it.Next(); {
			out[it.Key().String()] = valueMap(n.elem, it.Value())
		}
	}
	return out
}

// mergeInto merges src, one layer, into dest, as koanf's merge function: tables merge key by
// key, and a leaf, lists and free-form maps (metadata, env, weights) included, replaces the
// value below it.
func mergeInto(n *node, src, dest map[string]any) {
	for k, sv := range src {
		var child *node
		switch n.kind {
		case tableNode:
			child = n.field(k)
		case namedNode:
			child = n.elem
		}
		sm, srcIsMap := sv.(map[string]any)
		dm, destIsMap := dest[k].(map[string]any)
		if child != nil && child.kind != leafNode && srcIsMap && destIsMap {
			mergeInto(child, sm, dm)
			continue
		}
		dest[k] = sv
	}
}

// decodeHook is the mapstructure decode hook for every leaf: it turns what TOML, env, flags
// or the defaults hold into the field's type, strictly (a string is no integer), and parses
// durations and sizes.
func decodeHook(_ reflect.Type, to reflect.Type, data any) (any, error) {
	if !isLeaf(to) {
		return data, nil
	}
	return convertLeaf(to, data)
}

// convertLeaf converts v, as decoded from TOML or parsed from env or flags, to a value of
// type t. Its errors say what was wanted and what v is; a problem with one entry of a map
// is a *subKeyError naming the entry.
func convertLeaf(t reflect.Type, v any) (any, error) {
	if t == freeFormType || t.Kind() == reflect.Interface {
		// Checked before the shortcut below: a table from TOML has the right type but may
		// hold values a free-form table does not take.
		return freeValue(v, t == freeFormType)
	}
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return nil, fmt.Errorf("want %s, got nothing", want(t))
	}
	if rv.Type() == t {
		return v, nil
	}
	switch {
	case isDuration(t):
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want a duration such as \"5s\" or \"250ms\", got %s", describe(v))
		}
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q (want a duration such as \"5s\" or \"250ms\")", s)
		}
		return d, nil
	case isByteSize(t):
		switch {
		case rv.Kind() == reflect.String:
			var b ByteSize
			if err := b.UnmarshalText([]byte(rv.String())); err != nil {
				return nil, err
			}
			return b, nil
		case rv.CanInt() && rv.Int() >= 0:
			return ByteSize(rv.Int()), nil
		case rv.CanUint() && rv.Uint() <= math.MaxInt64:
			return ByteSize(rv.Uint()), nil
		}
		return nil, fmt.Errorf("want a size such as \"4MiB\" or a number of bytes, got %s", describe(v))
	}
	out := reflect.New(t).Elem()
	switch t.Kind() {
	case reflect.String:
		if rv.Kind() != reflect.String {
			return nil, fmt.Errorf("want a string, got %s", describe(v))
		}
		out.SetString(rv.String())
	case reflect.Bool:
		if rv.Kind() != reflect.Bool {
			return nil, fmt.Errorf("want true or false, got %s", describe(v))
		}
		out.SetBool(rv.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var n int64
		switch {
		case rv.CanInt():
			n = rv.Int()
		case rv.CanUint() && rv.Uint() <= math.MaxInt64:
			n = int64(rv.Uint())
		case rv.CanUint():
			return nil, fmt.Errorf("integer %d out of range", rv.Uint())
		default:
			return nil, fmt.Errorf("want an integer, got %s", describe(v))
		}
		if out.OverflowInt(n) {
			return nil, fmt.Errorf("integer %d out of range", n)
		}
		out.SetInt(n)
	case reflect.Float32, reflect.Float64:
		switch {
		case rv.CanFloat():
			out.SetFloat(rv.Float())
		case rv.CanInt():
			out.SetFloat(float64(rv.Int()))
		case rv.CanUint():
			out.SetFloat(float64(rv.Uint()))
		default:
			return nil, fmt.Errorf("want a number, got %s", describe(v))
		}
	case reflect.Slice:
		if rv.Kind() != reflect.Slice {
			return nil, fmt.Errorf("want %s, got %s", want(t), describe(v))
		}
		out = reflect.MakeSlice(t, rv.Len(), rv.Len())
		for i := range rv.Len() {
			e, err := convertLeaf(t.Elem(), rv.Index(i).Interface())
			if err != nil {
				return nil, fmt.Errorf("element %d: %w", i, err)
			}
			out.Index(i).Set(reflect.ValueOf(e))
		}
	case reflect.Map:
		if rv.Kind() != reflect.Map || rv.Type().Key().Kind() != reflect.String {
			return nil, fmt.Errorf("want %s, got %s", want(t), describe(v))
		}
		out = reflect.MakeMapWithSize(t, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			e, err := convertLeaf(t.Elem(), it.Value().Interface())
			if err != nil {
				return nil, &subKeyError{key: it.Key().String(), err: err}
			}
			out.SetMapIndex(it.Key().Convert(t.Key()), reflect.ValueOf(e))
		}
	default:
		return nil, fmt.Errorf("unsupported type %s", t)
	}
	return out.Interface(), nil
}

// freeValue returns a deep copy of v, a value of a free-form table, in the types TOML decodes
// to: int64, float64, string, bool, []any and map[string]any. Other integer and float types
// become int64 and float64. It refuses what the guest's JSON cannot hold or micro.toml cannot
// write: NaN and infinities, nil, dates and times (write them as strings), and any other type.
// With table set, v must be a table.
func freeValue(v any, table bool) (any, error) {
	rv := reflect.ValueOf(v)
	if table && (!rv.IsValid() || rv.Kind() != reflect.Map) {
		return nil, fmt.Errorf("want a table, got %s", describe(v))
	}
	switch {
	case !rv.IsValid():
		return nil, errors.New("want a string, number, boolean, array or table, got nothing")
	case rv.Kind() == reflect.String:
		return rv.String(), nil
	case rv.Kind() == reflect.Bool:
		return rv.Bool(), nil
	case rv.CanInt():
		return rv.Int(), nil
	case rv.CanUint():
		if rv.Uint() > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d out of range", rv.Uint())
		}
		return int64(rv.Uint()), nil
	case rv.CanFloat():
		f := rv.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("want a finite number, got %v", f)
		}
		return f, nil
	case rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array:
		out := make([]any, rv.Len())
		for i := range rv.Len() {
			e, err := freeValue(rv.Index(i).Interface(), false)
			if err != nil {
				return nil, fmt.Errorf("element %d: %w", i, err)
			}
			out[i] = e
		}
		return out, nil
	case rv.Kind() == reflect.Map && rv.Type().Key().Kind() == reflect.String:
		out := make(map[string]any, rv.Len())
		// In key order, so that the error reported for a table with several bad
		// entries is always the same one.
		keys := make([]string, 0, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			keys = append(keys, it.Key().String())
		}
		slices.Sort(keys)
		for _, k := range keys {
			e, err := freeValue(rv.MapIndex(reflect.ValueOf(k).Convert(rv.Type().Key())).Interface(), false)
			if err != nil {
				return nil, &subKeyError{key: k, err: err}
			}
			out[k] = e
		}
		return out, nil
	}
	switch v.(type) {
	case time.Time, gotoml.LocalDate, gotoml.LocalTime, gotoml.LocalDateTime:
		return nil, fmt.Errorf("want a string, number, boolean, array or table, got the date or time %v (write it as a string)", v)
	}
	return nil, fmt.Errorf("want a string, number, boolean, array or table, got %s", describe(v))
}

// subKeyError is a problem with one entry of a free-form map such as weights.
type subKeyError struct {
	key string
	err error
}

func (e *subKeyError) Error() string { return strconv.Quote(e.key) + ": " + e.err.Error() }
func (e *subKeyError) Unwrap() error { return e.err }

// want describes what a value of type t looks like in micro.toml.
func want(t reflect.Type) string {
	switch {
	case isDuration(t):
		return "a duration"
	case isByteSize(t):
		return "a size"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(want(t.Elem()), "a "), "an ") + "s"
	case reflect.Interface:
		return "a value"
	case reflect.Map:
		if t == freeFormType {
			return "a table"
		}
		return "a table of " + strings.TrimPrefix(strings.TrimPrefix(want(t.Elem()), "a "), "an ") + "s"
	}
	return t.String()
}

// describe names a decoded value for an error message.
func describe(v any) string {
	rv := reflect.ValueOf(v)
	switch {
	case !rv.IsValid():
		return "nothing"
	case rv.Kind() == reflect.String:
		return "string " + strconv.Quote(rv.String())
	case rv.Kind() == reflect.Bool:
		return fmt.Sprintf("boolean %t", rv.Bool())
	case rv.CanInt():
		return fmt.Sprintf("integer %d", rv.Int())
	case rv.CanUint():
		return fmt.Sprintf("integer %d", rv.Uint())
	case rv.CanFloat():
		return fmt.Sprintf("number %v", rv.Float())
	case rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array:
		return "an array"
	case rv.Kind() == reflect.Map:
		return "a table"
	}
	return fmt.Sprintf("%v", v)
}
