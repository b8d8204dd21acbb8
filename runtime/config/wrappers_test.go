package config

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestWrapperConfigTable loads a [wrappers.NAME.config] table of every kind of TOML value
// and checks that it arrives with TOML's natural types.
func TestWrapperConfigTable(t *testing.T) {
	c := mustLoad(t, &Loader{Path: writeConfig(t, `
[wrappers.rl]
source = "plugins/wrapper-ratelimit"

[wrappers.rl.config]
rate = 5
ratio = 0.5
big = 9223372036854775807
key = "service"
cooldown = "5s"
on = true
"dotted.key" = 1
list = [1, "two", 3.5, [false], { k = "v" }]
empty_list = []
inline = { a = 1, b = { c = "d" } }
empty = {}

[wrappers.rl.config.nested.deeper]
x = -1

[[wrappers.rl.config.rules]]
service = "greeter"
rate = 10

[[wrappers.rl.config.rules]]
service = "billing"

[wrappers.empty]
path = "empty.wasm"

[wrappers.empty.config]
`)})
	want := map[string]any{
		"rate":       int64(5),
		"ratio":      0.5,
		"big":        int64(9223372036854775807),
		"key":        "service",
		"cooldown":   "5s",
		"on":         true,
		"dotted.key": int64(1),
		"list":       []any{int64(1), "two", 3.5, []any{false}, map[string]any{"k": "v"}},
		"empty_list": []any{},
		"inline":     map[string]any{"a": int64(1), "b": map[string]any{"c": "d"}},
		"empty":      map[string]any{},
		"nested":     map[string]any{"deeper": map[string]any{"x": int64(-1)}},
		"rules": []any{
			map[string]any{"service": "greeter", "rate": int64(10)},
			map[string]any{"service": "billing"},
		},
	}
	if got := c.Wrappers["rl"].Config; !reflect.DeepEqual(got, want) {
		t.Errorf("config =\n%#v\nwant\n%#v", got, want)
	}
	if got := c.Wrappers["empty"].Config; got == nil || len(got) != 0 {
		t.Errorf("an empty config table = %#v, want an empty map", got)
	}
}

func TestWrapperWithoutConfig(t *testing.T) {
	c := mustLoad(t, &Loader{Path: writeConfig(t, "[wrappers.rl]\npath = \"rl.wasm\"\n")})
	if got := c.Wrappers["rl"].Config; got != nil {
		t.Errorf("config = %#v, want nil", got)
	}
}

// TestWrapperUnknownKeys checks that unknown keys are caught in [wrappers.NAME], but not
// inside its free-form config table.
func TestWrapperUnknownKeys(t *testing.T) {
	tests := []struct{ name, toml, want string }{
		{"misspelt", "[wrappers.rl]\nsource = \"s\"\ninstance = 2\n", `unknown key "wrappers.rl.instance" (did you mean "wrappers.rl.instances"?)`},
		{"unrelated", "[wrappers.rl]\nsource = \"s\"\nrate = 5\n", `unknown key "wrappers.rl.rate"`},
		{"nested table", "[wrappers.rl]\nsource = \"s\"\n[wrappers.rl.settings]\nrate = 5\n", `unknown key "wrappers.rl.settings"`},
		{"dotted name", "[wrappers.\"a.b\"]\nsource = \"s\"\nnope = 1\n", `unknown key "wrappers.\"a.b\".nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.toml)
			got := loadErr(t, &Loader{Path: path})
			if want := path + ": " + tt.want; !strings.Contains(got, want) {
				t.Errorf("error %q does not contain %q", got, want)
			}
		})
	}

	// The same keys, and any others, inside config are the wrapper's business.
	c := mustLoad(t, &Loader{Path: writeConfig(t, `
[wrappers.rl]
source = "s"
[wrappers.rl.config]
instance = 2
zzzzzzzz = "x"
[wrappers.rl.config.settings]
instances = "not an integer"
`)})
	want := map[string]any{"instance": int64(2), "zzzzzzzz": "x", "settings": map[string]any{"instances": "not an integer"}}
	if got := c.Wrappers["rl"].Config; !reflect.DeepEqual(got, want) {
		t.Errorf("config = %#v, want %#v", got, want)
	}
}

func TestWrapperConfigBadValues(t *testing.T) {
	tests := []struct{ name, toml, key, want string }{
		{"not a table", "config = 1\n", "wrappers.rl.config", `want a table, got integer 1`},
		{"array of tables", "[[wrappers.rl.config]]\na = 1\n", "wrappers.rl.config", `want a table, got an array`},
		{"date", "[wrappers.rl.config]\nwhen = 1979-05-27\n", "wrappers.rl.config.when", `want a string, number, boolean, array or table, got the date or time 1979-05-27 (write it as a string)`},
		{"datetime", "[wrappers.rl.config]\nwhen = 1979-05-27T07:32:00Z\n", "wrappers.rl.config.when", `want a string, number, boolean, array or table, got the date or time 1979-05-27 07:32:00 +0000 UTC`},
		{"nan", "[wrappers.rl.config]\nratio = nan\n", "wrappers.rl.config.ratio", `want a finite number, got NaN`},
		{"nested inf", "[wrappers.rl.config.a]\nb = -inf\n", "wrappers.rl.config.a.b", `want a finite number, got -Inf`},
		{"in an array", "[wrappers.rl.config]\nl = [1, 07:32:00]\n", "wrappers.rl.config.l", `element 1: want a string, number, boolean, array or table, got the date or time 07:32:00`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, "[wrappers.rl]\nsource = \"s\"\n"+tt.toml)
			_, err := (&Loader{Path: path}).Load()
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if want := path + ": " + tt.key + ": " + tt.want; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
			var ke *KeyError
			if !errors.As(err, &ke) || ke.Key != tt.key || ke.Source != path {
				t.Errorf("KeyError = %+v, want key %q from %q", ke, tt.key, path)
			}
		})
	}
}

func TestWrapperDefaults(t *testing.T) {
	c := mustLoad(t, &Loader{Path: writeConfig(t, `
[wrappers.plain]
path = "/w/plain.wasm"

[wrappers.set]
path = "/w/set.wasm"
instances = 4
shard = "caller"
on_trap = "closed"
memory_limit = "16MiB"
timeout = "2s"
services = ["greeter", "billing"]
`)})
	plain := DefaultWrapper()
	plain.Path = "/w/plain.wasm"
	set := Wrapper{
		Path: "/w/set.wasm", ABI: ABIMicro, Instances: 4, Shard: ShardCaller, OnTrap: OnTrapClosed,
		MemoryLimit: 16 << 20, Timeout: 2 * time.Second, Services: []string{"greeter", "billing"},
	}
	if got := c.Wrappers["plain"]; !reflect.DeepEqual(got, plain) {
		t.Errorf("plain = %+v, want %+v", got, plain)
	}
	if got := c.Wrappers["set"]; !reflect.DeepEqual(got, set) {
		t.Errorf("set = %+v, want %+v", got, set)
	}
	if d := DefaultWrapper(); d.Instances != 1 || d.Shard != "service" || d.OnTrap != "open" ||
		d.MemoryLimit != 64<<20 || d.Timeout != 100*time.Millisecond {
		t.Errorf("DefaultWrapper() = %+v", d)
	}

	// A value written out is checked, not replaced by the default.
	for key, want := range map[string]string{
		"instances = 0":         "wrappers.x.instances: must be from 1 to 64, got 0",
		`shard = ""`:            `wrappers.x.shard: unknown shard key ""`,
		`on_trap = ""`:          `wrappers.x.on_trap: unknown choice ""`,
		"memory_limit = 0":      "wrappers.x.memory_limit: must be from 1MiB to 4GiB, got 0B",
		`timeout = "0s"`:        "wrappers.x.timeout: must be more than 0 and at most 10s, got 0s",
		`memory_limit = "8GiB"`: "wrappers.x.memory_limit: must be from 1MiB to 4GiB, got 8GiB",
	} {
		path := writeConfig(t, "[wrappers.x]\nsource = \"s\"\n"+key+"\n")
		if got := loadErr(t, &Loader{Path: path}); !strings.Contains(got, path+": "+want) {
			t.Errorf("%s: error %q does not contain %q", key, got, path+": "+want)
		}
	}
}

func TestWrapperEnvAndFlags(t *testing.T) {
	path := writeConfig(t, `
[client]
wrappers = ["rl"]
[wrappers.rl]
source = "src/rl"
instances = 2
[wrappers.rl.config]
rate = 5
[wrappers.other]
path = "other.wasm"
`)
	c := mustLoad(t, &Loader{Path: path, Env: []string{
		"MICRO_WRAPPERS_RL_INSTANCES=3",
		"MICRO_WRAPPERS_RL_SERVICES=greeter, billing",
		"MICRO_WRAPPERS_RL_TIMEOUT=250ms",
		"MICRO_WRAPPERS_RL_MEMORY_LIMIT=8MiB",
		"MICRO_WRAPPERS_RL_ON_TRAP=closed",
		"MICRO_CLIENT_WRAPPERS=other,rl",
		"MICRO_SERVER_WRAPPERS=rl",
		// A name with '_' is what lies between the section and a known key.
		"MICRO_WRAPPERS_MY_WRAPPER_PATH=my.wasm",
	}})
	rl := c.Wrappers["rl"]
	want := Wrapper{
		Source: filepath.Join(filepath.Dir(path), "src", "rl"), ABI: ABIMicro, Services: []string{"greeter", "billing"},
		Instances: 3, Shard: ShardService, OnTrap: OnTrapClosed, MemoryLimit: 8 << 20,
		Timeout: 250 * time.Millisecond, Config: map[string]any{"rate": int64(5)},
	}
	if !reflect.DeepEqual(rl, want) {
		t.Errorf("wrappers.rl = %+v, want %+v", rl, want)
	}
	if got := c.Client.Wrappers; !reflect.DeepEqual(got, []string{"other", "rl"}) {
		t.Errorf("client.wrappers = %q", got)
	}
	if got := c.Server.Wrappers; !reflect.DeepEqual(got, []string{"rl"}) {
		t.Errorf("server.wrappers = %q", got)
	}
	if got := c.Wrappers["my_wrapper"]; got.Path != filepath.Join(filepath.Dir(path), "my.wasm") || got.Instances != 1 {
		t.Errorf("wrappers.my_wrapper = %+v", got)
	}

	c = mustLoad(t, &Loader{Path: path, Flags: map[string]string{
		"wrappers.rl.shard":           "node",
		"wrappers.a.b.path":           "/ab.wasm", // a dotted name in a flag
		"server.wrappers":             "a.b",
		"wrappers.rl.memory_limit":    "2MiB",
		"client.wrappers":             "rl other",
		"wrappers.other.instances":    "5",
		"wrappers.other.services":     "x",
		"wrappers.rl.timeout":         "1s",
		"wrappers.rl.on_trap":         "open",
		"wrappers.other.memory_limit": "1048576",
	}})
	if got := c.Wrappers["rl"]; got.Shard != "node" || got.MemoryLimit != 2<<20 || got.Timeout != time.Second || got.Instances != 2 {
		t.Errorf("wrappers.rl = %+v", got)
	}
	if got := c.Wrappers["a.b"]; got.Path != "/ab.wasm" {
		t.Errorf(`wrappers."a.b" = %+v`, got)
	}
	if got := c.Wrappers["other"]; got.Instances != 5 || got.MemoryLimit != 1<<20 || !reflect.DeepEqual(got.Services, []string{"x"}) {
		t.Errorf("wrappers.other = %+v", got)
	}
	if !reflect.DeepEqual(c.Client.Wrappers, []string{"rl", "other"}) || !reflect.DeepEqual(c.Server.Wrappers, []string{"a.b"}) {
		t.Errorf("client.wrappers = %q, server.wrappers = %q", c.Client.Wrappers, c.Server.Wrappers)
	}
}

func TestWrapperEnvErrors(t *testing.T) {
	path := writeConfig(t, "[wrappers.rl]\nsource = \"s\"\n[wrappers.rl.config]\nrate = 5\n")
	tests := []struct {
		env   []string
		flags map[string]string
		want  string
	}{
		{env: []string{"MICRO_WRAPPERS_RL_CONFIG=rate=10"}, want: `env MICRO_WRAPPERS_RL_CONFIG: wrappers.rl.config: a wrapper's config table cannot be set from env or flags: set it in the file`},
		{env: []string{"MICRO_WRAPPERS_RL_CONFIG_RATE=10"}, want: `env MICRO_WRAPPERS_RL_CONFIG_RATE: wrappers.rl.config: a wrapper's config table cannot be set from env or flags`},
		{env: []string{"MICRO_WRAPPERS_RL_CONFIG_NESTED_KEY=1"}, want: `env MICRO_WRAPPERS_RL_CONFIG_NESTED_KEY: wrappers.rl.config: a wrapper's config table cannot be set`},
		{flags: map[string]string{"wrappers.rl.config": "rate=10"}, want: `flags: wrappers.rl.config: a wrapper's config table cannot be set from env or flags`},
		{flags: map[string]string{"wrappers.rl.config.rate": "10"}, want: `flags: wrappers.rl.config: a wrapper's config table cannot be set`},
		{env: []string{"MICRO_WRAPPERS_RL_INSTANCE=2"}, want: `env: unknown key "MICRO_WRAPPERS_RL_INSTANCE" (did you mean "MICRO_WRAPPERS_RL_INSTANCES"?)`},
		{env: []string{"MICRO_WRAPPERS_RL=x"}, want: `env: unknown key "MICRO_WRAPPERS_RL"`},
		{env: []string{"MICRO_WRAPPERS_RL_INSTANCES=many"}, want: `env MICRO_WRAPPERS_RL_INSTANCES: wrappers.rl.instances: invalid integer "many"`},
		{env: []string{"MICRO_WRAPPERS_RL_INSTANCES=100"}, want: `env MICRO_WRAPPERS_RL_INSTANCES: wrappers.rl.instances: must be from 1 to 64, got 100`},
		{env: []string{"MICRO_WRAPPERS_RL_TIMEOUT=1h"}, want: `env MICRO_WRAPPERS_RL_TIMEOUT: wrappers.rl.timeout: must be more than 0 and at most 10s, got 1h0m0s`},
		{env: []string{"MICRO_CLIENT_WRAPPERS=rl,nope"}, want: `env MICRO_CLIENT_WRAPPERS: client.wrappers: unknown wrapper "nope" (element 1)`},
		{env: []string{"MICRO_SERVER_WRAPPERS=rl rl"}, want: `env MICRO_SERVER_WRAPPERS: server.wrappers: wrapper "rl" is listed twice (elements 0 and 1)`},
		// A wrapper made by env alone lacks a path or source.
		{env: []string{"MICRO_WRAPPERS_NEW_INSTANCES=2"}, want: `env MICRO_WRAPPERS_NEW_INSTANCES: wrappers.new: set path (a .wasm file) or source`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := loadErr(t, &Loader{Path: path, Env: tt.env, Flags: tt.flags})
			if !strings.Contains(got, tt.want) {
				t.Errorf("error %q does not contain %q", got, tt.want)
			}
		})
	}
}

func TestWrapperListErrorsNameTheFile(t *testing.T) {
	path := writeConfig(t, `
[server]
wrappers = ["rl", "rl"]
[client]
wrappers = ["breaker"]
[wrappers.rl]
path = "rl.so"
instances = 65
shard = "endpoint"
`)
	got := loadErr(t, &Loader{Path: path})
	for _, want := range []string{
		path + `: server.wrappers: wrapper "rl" is listed twice (elements 0 and 1)`,
		path + `: client.wrappers: unknown wrapper "breaker" (element 0): declare it as [wrappers.breaker]`,
		path + `: wrappers.rl.path: invalid path`,
		path + `: wrappers.rl.instances: must be from 1 to 64, got 65`,
		path + `: wrappers.rl.shard: unknown shard key "endpoint"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("error %q does not contain %q", got, want)
		}
	}
}

func TestRegistryKeys(t *testing.T) {
	path := writeConfig(t, `
[registry]
plugin = "consul"
address = "127.0.0.1:8500"
datacenter = "dc1"
token_file = "secrets/consul.token"
path = "bin/registry-consul"
sha256 = "`+strings.Repeat("AB", 32)+`"
`)
	base := filepath.Dir(path)
	c := mustLoad(t, &Loader{Path: path})
	want := Default().Registry
	want.Plugin = "consul"
	want.Address = "127.0.0.1:8500"
	want.Datacenter = "dc1"
	want.TokenFile = filepath.Join(base, "secrets", "consul.token")
	want.Path = filepath.Join(base, "bin", "registry-consul")
	want.SHA256 = strings.Repeat("ab", 32) // lower-cased
	if !reflect.DeepEqual(c.Registry, want) {
		t.Errorf("registry = %+v, want %+v", c.Registry, want)
	}

	c = mustLoad(t, &Loader{Path: path, Env: []string{
		"MICRO_REGISTRY_PLUGIN=etcd-v3",
		"MICRO_REGISTRY_ADDRESS=10.0.0.2:8500",
		"MICRO_REGISTRY_DATACENTER=dc2",
		"MICRO_REGISTRY_TOKEN_FILE=/run/secrets/token",
		"MICRO_REGISTRY_PATH=plugin",
		"MICRO_REGISTRY_SHA256=",
	}})
	if r := c.Registry; r.Plugin != "etcd-v3" || r.Address != "10.0.0.2:8500" || r.Datacenter != "dc2" ||
		r.TokenFile != "/run/secrets/token" || r.Path != filepath.Join(base, "plugin") || r.SHA256 != "" {
		t.Errorf("registry from env = %+v", r)
	}

	for _, tt := range []struct{ env, want string }{
		{"MICRO_REGISTRY_PLUGIN=Consul", `env MICRO_REGISTRY_PLUGIN: registry.plugin: invalid plugin name "Consul"`},
		{"MICRO_REGISTRY_SHA256=abc", `env MICRO_REGISTRY_SHA256: registry.sha256: invalid digest "abc": want 64 hexadecimal digits`},
		{"MICRO_REGISTRY_TOKEN=x", `env: unknown key "MICRO_REGISTRY_TOKEN"`},
	} {
		if got := loadErr(t, &Loader{Path: path, Env: []string{tt.env}}); !strings.Contains(got, tt.want) {
			t.Errorf("error %q does not contain %q", got, tt.want)
		}
	}
}

func TestWrapperPaths(t *testing.T) {
	path := writeConfig(t, `
[wrappers.a]
path = "wasm/a.wasm"
[wrappers.b]
source = "plugins/wrapper-b"
[wrappers.c]
path = "/abs/c.wasm"
[wrappers.d]
source = "/abs/d"
[wrappers.e]
source = "."
`)
	base := filepath.Dir(path)
	c := mustLoad(t, &Loader{Path: path, Env: []string{"MICRO_WRAPPERS_F_SOURCE=../f"}})
	for _, tt := range []struct{ key, got, want string }{
		{"wrappers.a.path", c.Wrappers["a"].Path, filepath.Join(base, "wasm", "a.wasm")},
		{"wrappers.b.source", c.Wrappers["b"].Source, filepath.Join(base, "plugins", "wrapper-b")},
		{"wrappers.c.path", c.Wrappers["c"].Path, "/abs/c.wasm"},
		{"wrappers.d.source", c.Wrappers["d"].Source, "/abs/d"},
		{"wrappers.e.source", c.Wrappers["e"].Source, base},
		{"wrappers.f.source", c.Wrappers["f"].Source, filepath.Join(filepath.Dir(base), "f")},
		{"wrappers.a.source", c.Wrappers["a"].Source, ""},
		{"wrappers.b.path", c.Wrappers["b"].Path, ""},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.key, tt.got, tt.want)
		}
	}
	// Without a file, paths stay as written.
	c = mustLoad(t, &Loader{Env: []string{"MICRO_WRAPPERS_A_PATH=rel/a.wasm", "MICRO_REGISTRY_TOKEN_FILE=tok"}})
	if c.Wrappers["a"].Path != "rel/a.wasm" || c.Registry.TokenFile != "tok" {
		t.Errorf("paths without a file: wrappers.a.path = %q, registry.token_file = %q", c.Wrappers["a"].Path, c.Registry.TokenFile)
	}
}

func TestLoadReturnsIndependentWrappers(t *testing.T) {
	l := &Loader{Path: writeConfig(t, `
[client]
wrappers = ["a"]
[server]
wrappers = ["a"]
[wrappers.a]
source = "s"
services = ["x"]
[wrappers.a.config]
list = [1, { k = "v" }]
[wrappers.a.config.t]
k = "v"
`)}
	c := mustLoad(t, l)
	c.Client.Wrappers[0] = "changed"
	c.Server.Wrappers[0] = "changed"
	c.Wrappers["a"].Services[0] = "changed"
	cfg := c.Wrappers["a"].Config
	cfg["t"].(map[string]any)["k"] = "changed"
	cfg["list"].([]any)[1].(map[string]any)["k"] = "changed"
	cfg["new"] = 1

	got := l.lastLoaded()
	a := got.Wrappers["a"]
	want := map[string]any{"list": []any{int64(1), map[string]any{"k": "v"}}, "t": map[string]any{"k": "v"}}
	if got.Client.Wrappers[0] != "a" || got.Server.Wrappers[0] != "a" || a.Services[0] != "x" || !reflect.DeepEqual(a.Config, want) {
		t.Errorf("the Loader's copy changed with the returned config: %+v, %+v", got, a)
	}
}
