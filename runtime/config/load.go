package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/go-viper/mapstructure/v2"
	kotoml "github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/v2"
	gotoml "github.com/pelletier/go-toml/v2"
)

// A Loader loads micro.toml: the defaults, then the file, then MICRO_… environment
// variables, then flags, each layer over the one before.
//
// A Loader remembers the config its last successful Load returned; Watch compares reloads
// against it. A Loader must not be copied after first use.
type Loader struct {
	// Path is the micro.toml to read. Empty means no file: defaults, env and flags only.
	Path string
	// Env is the environment in os.Environ form, "KEY=value". Only MICRO_SECTION_KEY
	// variables of a known section are read, as the package documentation describes.
	Env []string
	// Flags maps dotted keys, such as "client.strategy", to values, as given on the command
	// line. Lists and maps are written as in env variables.
	Flags map[string]string
	// OnReload, when set, is told how each reload by Watch went: ReloadApplied,
	// ReloadUnchanged or ReloadFailed, and for a failure why. It runs on Watch's goroutine,
	// after apply.
	OnReload func(result string, err error)

	mu   sync.Mutex
	last *Config // a private copy of what Load last returned
}

// A KeyError is a bad value, or a broken rule, at one key.
type KeyError struct {
	// Source is where the value came from: the file's path, "env MICRO_…" or "flags".
	// It is empty for a default or a rule over values from several places.
	Source string
	// Key is the full dotted key, e.g. "client.timeout" or "services.greeter.instances".
	Key string
	// Err says what is wrong.
	Err error
}

// Error returns "source: key: problem", without "source: " when Source is empty.
func (e *KeyError) Error() string {
	msg := e.Key + ": " + e.Err.Error()
	if e.Source != "" {
		msg = e.Source + ": " + msg
	}
	return msg
}

// Unwrap returns e.Err.
func (e *KeyError) Unwrap() error { return e.Err }

// An UnknownKeyError is a key that micro.toml does not have, or a MICRO_… variable or flag
// that names none.
type UnknownKeyError struct {
	// Source is the file's path, "env" or "flags".
	Source string
	// Key is the full dotted key as written, or the env variable's name.
	Key string
	// Suggestion is the closest known key, or "".
	Suggestion string
}

// Error names the key and the source, and the closest known key if there is one.
func (e *UnknownKeyError) Error() string {
	msg := fmt.Sprintf("unknown key %q", e.Key)
	if e.Source != "" {
		msg = e.Source + ": " + msg
	}
	if e.Suggestion != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", e.Suggestion)
	}
	return msg
}

// errFreeForm reports an env variable or flag that sets a free-form table, or a key in one.
var errFreeForm = errors.New("a wrapper's config table cannot be set from env or flags: set it in the file")

// errEmptyFile reports a file of zero bytes, which Watch takes as an edit in progress.
var errEmptyFile = errors.New("config file is empty")

// Load reads the configuration: Default(), then the file at l.Path, then l.Env, then
// l.Flags. It then fills the defaults of each service, resolves relative directories against
// the file's directory, and validates the result. Every problem found is reported, joined;
// each names its key and, when it can, the file, variable or flag it came from.
func (l *Loader) Load() (*Config, error) {
	return l.load(true)
}

func (l *Loader) load(allowEmpty bool) (*Config, error) {
	var data []byte
	if l.Path != "" {
		var err error
		if data, err = os.ReadFile(l.Path); err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if len(data) == 0 && !allowEmpty {
			return nil, fmt.Errorf("%s: %w", l.Path, errEmptyFile)
		}
	}
	c, err := l.parse(data)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.last = clone(c)
	l.mu.Unlock()
	return c, nil
}

// lastLoaded returns the copy of the config Load last returned, or nil.
func (l *Loader) lastLoaded() *Config {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// parse is Load on data as the file's content.
func (l *Loader) parse(data []byte) (*Config, error) {
	s := newSchema()
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	origins := make(map[string]string)

	k := koanf.New(".")
	merge := koanf.WithMergeFunc(func(src, dest map[string]any) error {
		mergeInto(s.root, src, dest)
		return nil
	})
	layer := func(m map[string]any) {
		if err := k.Load(confmap.Provider(m, ""), nil, merge); err != nil {
			add(err)
		}
	}
	layer(toMap(Default()))
	if l.Path != "" {
		m, err := kotoml.Parser().Unmarshal(data)
		if err != nil {
			return nil, l.syntaxError(err)
		}
		check(s, s.root, m, nil, l.Path, add, origins)
		layer(m)
	}
	layer(l.stringLayer(s, add, origins, true))
	layer(l.stringLayer(s, add, origins, false))
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	var c Config
	err := k.UnmarshalWithConf("", &c, koanf.UnmarshalConf{DecoderConfig: &mapstructure.DecoderConfig{
		DecodeHook:  mapstructure.DecodeHookFuncType(decodeHook),
		ErrorUnused: true,
		TagName:     "koanf",
	}})
	if err != nil {
		// check has seen every value, so this is a bug rather than bad input.
		return nil, fmt.Errorf("decode config: %w", err)
	}
	l.fill(&c, k.Raw())
	if err := Validate(&c); err != nil {
		return nil, withSources(err, origins)
	}
	return &c, nil
}

// syntaxError names the file, line and column of a TOML syntax error.
func (l *Loader) syntaxError(err error) error {
	var de *gotoml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("%s:%d:%d: %w", l.Path, row, col, err)
	}
	return fmt.Errorf("%s: %w", l.Path, err)
}

// check walks v, the file's map at path, against the schema node n: it reports unknown keys
// and values of the wrong shape or type, and records the source of every leaf.
func check(s *schema, n *node, v any, path []string, src string, add func(error), origins map[string]string) {
	if n.kind == leafNode {
		origins[joinKey(path)] = src
		if _, err := convertLeaf(n.typ, v); err != nil {
			add(keyError(src, path, err))
		}
		return
	}
	m, ok := v.(map[string]any)
	if !ok {
		add(&KeyError{Source: src, Key: joinKey(path), Err: fmt.Errorf("want a table, got %s", describe(v))})
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := append(path[:len(path):len(path)], k)
		child := n.elem
		if n.kind == tableNode {
			if child = n.field(k); child == nil {
				add(&UnknownKeyError{Source: src, Key: joinKey(p), Suggestion: s.suggest(n, p)})
				continue
			}
		}
		check(s, child, m[k], p, src, add, origins)
	}
}

// keyError makes a KeyError for the value at path, moving the entries that subKeyErrors
// name (nested ones, in a free-form table) into the key.
func keyError(src string, path []string, err error) error {
	path = path[:len(path):len(path)]
	for {
		se, ok := err.(*subKeyError)
		if !ok {
			break
		}
		path, err = append(path, se.key), se.err
	}
	return &KeyError{Source: src, Key: joinKey(path), Err: err}
}

// stringLayer turns l.Env (env true) or l.Flags into a layer. A MICRO_ variable that names
// no section is ignored, for micro sets MICRO_INGRESS and MICRO_APP_ADDR for its apps; one
// under a known section that names no key is an error, and so is any unknown flag.
func (l *Loader) stringLayer(s *schema, add func(error), origins map[string]string, env bool) map[string]any {
	type entry struct{ key, source, value string }
	var entries []entry
	sep := "."
	if env {
		sep = "_"
		for _, kv := range l.Env {
			name, value, ok := strings.Cut(kv, "=")
			if !ok || !strings.HasPrefix(name, "MICRO_") {
				continue
			}
			key := strings.ToLower(strings.TrimPrefix(name, "MICRO_"))
			if s.section(key, sep) {
				entries = append(entries, entry{key: key, source: name, value: value})
			}
		}
	} else {
		for _, key := range slices.Sorted(maps.Keys(l.Flags)) {
			entries = append(entries, entry{key: key, source: key, value: l.Flags[key]})
		}
	}

	out := make(map[string]any)
	for _, e := range entries {
		src := "flags"
		if env {
			src = "env " + e.source
		}
		segs, leaf, err := s.match(e.key, sep)
		if err != nil {
			if table, ok := s.underFreeForm(e.key, sep); ok {
				add(&KeyError{Source: src, Key: joinKey(table), Err: errFreeForm})
				continue
			}
			if env {
				add(&UnknownKeyError{Source: "env", Key: e.source, Suggestion: s.suggestFlat(e.key, sep, "MICRO_")})
			} else {
				add(&UnknownKeyError{Source: "flags", Key: e.key, Suggestion: s.suggestFlat(e.key, sep, "")})
			}
			continue
		}
		origins[joinKey(segs)] = src
		v, err := parseString(leaf.typ, e.value)
		if err == nil {
			_, err = convertLeaf(leaf.typ, v)
		}
		if err != nil {
			add(keyError(src, segs, err))
			continue
		}
		m := out
		for _, seg := range segs[:len(segs)-1] {
			next, ok := m[seg].(map[string]any)
			if !ok {
				next = make(map[string]any)
				m[seg] = next
			}
			m = next
		}
		m[segs[len(segs)-1]] = v
	}
	return out
}

// suggestFlat returns the known key closest to key, a path joined by sep, written as
// prefix plus the path in upper case (env) or as is (flags); or "".
func (s *schema) suggestFlat(key, sep, prefix string) string {
	best, bestDist := "", math.MaxInt
	for _, p := range s.leaves {
		segs := p.segs
		if p.wild >= 0 {
			// Take the name from key: what follows the section, up to its last sep.
			head := strings.Join(segs[:p.wild], sep) + sep
			rest, ok := strings.CutPrefix(key, head)
			i := strings.LastIndex(rest, sep)
			if !ok || i <= 0 {
				continue
			}
			segs = slices.Clone(segs)
			segs[p.wild] = rest[:i]
		}
		cand := strings.Join(segs, sep)
		if d := editDistance(key, cand); d < bestDist {
			best, bestDist = cand, d
		}
	}
	if best == "" || bestDist > max(2, len(key)/5) {
		return ""
	}
	if prefix != "" {
		return prefix + strings.ToUpper(best)
	}
	return best
}

// parseString parses an env or flag value for a leaf of type t. Durations and sizes stay
// strings for convertLeaf; lists split on commas and white space, and maps are lists of
// key=value entries.
func parseString(t reflect.Type, s string) (any, error) {
	if t == freeFormType {
		return nil, errFreeForm
	}
	if isDuration(t) || isByteSize(t) {
		return s, nil
	}
	switch t.Kind() {
	case reflect.String:
		return s, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("invalid boolean %q", s)
		}
		return b, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("invalid integer %q", s)
		}
		return n, nil
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return nil, fmt.Errorf("invalid number %q", s)
		}
		return f, nil
	case reflect.Slice:
		var out []any
		for _, f := range splitList(s) {
			v, err := parseString(t.Elem(), f)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case reflect.Map:
		out := make(map[string]any)
		for _, f := range splitList(s) {
			k, v, ok := strings.Cut(f, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("invalid entry %q: want key=value", f)
			}
			pv, err := parseString(t.Elem(), v)
			if err != nil {
				return nil, &subKeyError{key: k, err: err}
			}
			out[k] = pv
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot set %s from a string", t)
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
}

// fill sets what Load derives rather than reads: the keys of each service and wrapper that
// are not set, absolute paths, and a lower-case registry.sha256.
func (l *Loader) fill(c *Config, raw map[string]any) {
	base := ""
	if l.Path != "" {
		abs, err := filepath.Abs(l.Path)
		if err != nil {
			abs = l.Path
		}
		base = filepath.Dir(abs)
	}
	resolve := func(dir string) string {
		if base == "" || dir == "" || filepath.IsAbs(dir) {
			return dir
		}
		return filepath.Join(base, dir)
	}
	services, _ := raw["services"].(map[string]any)
	for name, svc := range c.Services {
		table, _ := services[name].(map[string]any)
		if _, set := table["instances"]; !set {
			svc.Instances = 1
		}
		svc.Dir = resolve(svc.Dir)
		c.Services[name] = svc
	}
	routes, _ := raw["routes"].(map[string]any)
	for name, r := range c.Routes {
		if table, _ := routes[name].(map[string]any); table["hedge"] == nil {
			r.Hedge = true
			c.Routes[name] = r
		}
	}
	wrappers, _ := raw["wrappers"].(map[string]any)
	defaults := DefaultWrapper()
	for name, w := range c.Wrappers {
		table, _ := wrappers[name].(map[string]any)
		setDefault := func(key string, set func()) {
			if _, ok := table[key]; !ok {
				set()
			}
		}
		setDefault("abi", func() { w.ABI = defaults.ABI })
		setDefault("instances", func() { w.Instances = defaults.Instances })
		setDefault("shard", func() { w.Shard = defaults.Shard })
		setDefault("on_trap", func() { w.OnTrap = defaults.OnTrap })
		setDefault("memory_limit", func() { w.MemoryLimit = defaults.MemoryLimit })
		setDefault("timeout", func() { w.Timeout = defaults.Timeout })
		w.Path = resolve(w.Path)
		w.Source = resolve(w.Source)
		c.Wrappers[name] = w
	}
	c.Registry.Dir = resolve(c.Registry.Dir)
	c.Registry.Path = resolve(c.Registry.Path)
	c.Registry.TokenFile = resolve(c.Registry.TokenFile)
	c.Registry.SHA256 = strings.ToLower(c.Registry.SHA256)
	c.Transport.Path = resolve(c.Transport.Path)
	c.Transport.Auth = c.Transport.Auth.resolved(resolve)
	c.Broker.Auth = c.Broker.Auth.resolved(resolve)
	c.Security.Dir = resolve(c.Security.Dir)
	c.Security.CAFile = resolve(c.Security.CAFile)
	c.Security.CertFile = resolve(c.Security.CertFile)
	c.Security.KeyFile = resolve(c.Security.KeyFile)
	c.Broker.Dir = resolve(c.Broker.Dir)
	c.Broker.Path = resolve(c.Broker.Path)
	c.Broker.SHA256 = strings.ToLower(c.Broker.SHA256)
	c.Transport.SHA256 = strings.ToLower(c.Transport.SHA256)
}

// withSources sets the Source of each KeyError in err, a join of Validate's errors, from
// where its key, or every key under it, came from.
func withSources(err error, origins map[string]string) error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	for _, e := range joined.Unwrap() {
		ke, ok := e.(*KeyError)
		if !ok || ke.Source != "" {
			continue
		}
		if src, ok := origins[ke.Key]; ok {
			ke.Source = src
			continue
		}
		src := ""
		for k, s := range origins {
			if !strings.HasPrefix(k, ke.Key+".") {
				continue
			}
			if src != "" && src != s {
				src = ""
				break
			}
			src = s
		}
		ke.Source = src
	}
	return err
}

// clone returns a deep copy of c.
func clone(c *Config) *Config {
	out := *c
	out.Routes = cloneMap(c.Routes, func(r Route) Route {
		r.Metadata = cloneMap(r.Metadata, nil)
		r.Weights = cloneMap(r.Weights, nil)
		return r
	})
	out.Services = cloneMap(c.Services, func(s Service) Service {
		s.Metadata = cloneMap(s.Metadata, nil)
		s.Env = cloneMap(s.Env, nil)
		s.Endpoints = slices.Clone(s.Endpoints)
		s.Command = slices.Clone(s.Command)
		return s
	})
	out.Wrappers = cloneMap(c.Wrappers, func(w Wrapper) Wrapper {
		w.Services = slices.Clone(w.Services)
		w.Config = cloneFree(w.Config)
		return w
	})
	out.Client.Wrappers = slices.Clone(c.Client.Wrappers)
	out.Server.Wrappers = slices.Clone(c.Server.Wrappers)
	return &out
}

// cloneFree returns a deep copy of a free-form table: its nested tables and arrays are
// copied, its other values are immutable.
func cloneFree(m map[string]any) map[string]any {
	return cloneMap(m, cloneFreeValue)
}

func cloneFreeValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		return cloneFree(v)
	case []any:
		if v == nil {
			return v
		}
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = cloneFreeValue(e)
		}
		return out
	}
	return v
}

func cloneMap[V any](m map[string]V, f func(V) V) map[string]V {
	if m == nil {
		return nil
	}
	out := make(map[string]V, len(m))
	for k, v := range m {
		if f != nil {
			v = f(v)
		}
		out[k] = v
	}
	return out
}

// resolved returns a with its file paths made absolute by resolve.
func (a BackendAuth) resolved(resolve func(string) string) BackendAuth {
	for _, p := range []*string{&a.CredentialsFile, &a.NkeySeedFile, &a.TokenFile, &a.PasswordFile, &a.TLSCAFile, &a.TLSCertFile, &a.TLSKeyFile} {
		*p = resolve(*p)
	}
	return a
}
