package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConfig writes content to micro.toml in a new temporary directory and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "micro.toml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustLoad(t *testing.T, l *Loader) *Config {
	t.Helper()
	c, err := l.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// loadErr loads and returns the error text, failing the test if Load succeeds.
func loadErr(t *testing.T, l *Loader) string {
	t.Helper()
	c, err := l.Load()
	if err == nil {
		t.Fatalf("Load succeeded, want an error; config: %+v", c)
	}
	return err.Error()
}

func TestDefault(t *testing.T) {
	c := Default()
	want := Config{
		Server: Server{Ingress: "127.0.0.1:8080", Inbound: "127.0.0.1:0", MaxBody: 4 << 20, DrainTimeout: 10 * time.Second,
			MaxInflight: 1024, HeaderTimeout: 10 * time.Second, BodyTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
			IdleTimeout: 90 * time.Second, StreamIdleTimeout: 5 * time.Minute, CheckOrigin: true},
		Registry:  Registry{Plugin: "embedded", TTL: 10 * time.Second, Heartbeat: 3 * time.Second, CacheTTL: 30 * time.Second},
		Transport: Transport{Plugin: "http"},
		Security:  Security{Mode: "mtls", TrustDomain: "micro.local", CertTTL: time.Hour},
		Quota:     Quota{Service: "micro.quota", Lease: 10 * time.Second, Refresh: 2 * time.Second},
		Telemetry: Telemetry{SampleRatio: 0.01, KeepTraces: 200},
		Broker: Broker{Plugin: "embedded", MaxBytes: 1 << 30, MaxAge: 168 * time.Hour, MaxMessage: 1 << 20, MaxDeliveries: 5,
			DeliveryTimeout: 10 * time.Second, Backoff: time.Second, BackoffMax: time.Minute, MaxInflight: 16,
			DeadLetter: "{topic}.dead", DrainTimeout: 30 * time.Second},
		Client: Client{
			Strategy: "p2c_ewma", Timeout: 5 * time.Second, MaxTimeout: time.Minute, Attempts: 3,
			Backoff: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond,
			RetryBudget: RetryBudget{Ratio: 0.2, MinPerSecond: 10},
			RetryBuffer: 64 << 10,
			Pool:        Pool{MaxIdle: 128, IdleTTL: time.Minute},
			Ejection:    Ejection{ConsecutiveFailures: 5, Base: 30 * time.Second, Max: 300 * time.Second, MaxPercent: 50},
			EWMADecay:   10 * time.Second,
			Adaptive:    Adaptive{Enabled: true, Quantile: 0.99, Factor: 3, Min: 50 * time.Millisecond, MinSamples: 50},
			Hedge:       Hedge{Enabled: true, Quantile: 0.95, MinDelay: time.Millisecond},
		},
		Log: Log{Level: "info", Format: "text"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Default() =\n%+v\nwant\n%+v", c, want)
	}
	if err := Validate(&c); err != nil {
		t.Errorf("Validate(Default()): %v", err)
	}
}

func TestLoadWithoutSettingsGivesDefaults(t *testing.T) {
	for name, l := range map[string]*Loader{
		"empty file":    {Path: writeConfig(t, "")},
		"comments only": {Path: writeConfig(t, "# nothing\n\n")},
		"no file":       {},
		"unrelated env": {Env: []string{"HOME=/root", "MICRO_INGRESS=127.0.0.1:8080", "MICRO_APP_ADDR=127.0.0.1:9000"}},
	} {
		t.Run(name, func(t *testing.T) {
			c := mustLoad(t, l)
			if want := Default(); !reflect.DeepEqual(*c, want) {
				t.Errorf("got\n%+v\nwant\n%+v", *c, want)
			}
		})
	}
}

func TestLoadExampleFile(t *testing.T) {
	l := &Loader{Path: filepath.Join("testdata", "micro.toml")}
	c := mustLoad(t, l)
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Routes = map[string]Route{"greeter": {
		Strategy: "round_robin",
		Metadata: map[string]string{"zone": "eu-1"},
		Weights:  map[string]int{"1.0.0": 90, "1.1.0": 10},
		Hedge:    true,
	}}
	want.Services = map[string]Service{
		"greeter": {
			Command:   []string{"go", "run", "./examples/greeter"},
			Dir:       dir,
			Instances: 2,
			Version:   "1.0.0",
			Metadata:  map[string]string{"zone": "eu-1"},
			Endpoints: []string{"Greeter.Hello"}, Idempotent: []string{"Greeter.Hello"},
			Health: "/health",
		},
		"billing": {Address: "http://127.0.0.1:9000", Instances: 1, Subscribe: map[string]string{"orders.created": "Billing.OnOrder"}},
	}
	want.Server.Wrappers = []string{"ratelimit"}
	want.Client.Wrappers = []string{"breaker"}
	ratelimit := DefaultWrapper()
	ratelimit.Source = filepath.Join(dir, "plugins", "wrapper-ratelimit")
	ratelimit.Services = []string{"greeter"}
	ratelimit.Config = map[string]any{"rate": int64(100), "burst": int64(20), "key": "service"}
	breaker := DefaultWrapper()
	breaker.Source = filepath.Join(dir, "plugins", "wrapper-breaker")
	breaker.Config = map[string]any{
		"key": "node_endpoint", "failure_ratio": 0.5, "min_requests": int64(10),
		"consecutive_failures": int64(5), "cooldown": "5s",
	}
	want.Wrappers = map[string]Wrapper{"ratelimit": ratelimit, "breaker": breaker}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got\n%+v\nwant\n%+v", *c, want)
	}
}

// TestDocsExample keeps the annotated example in docs/configuration.md loadable.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- example: runtime/config/testdata/micro.toml -->\n```toml\n")
	if !ok {
		t.Fatal("docs/configuration.md has no marked example")
	}
	example, _, _ := strings.Cut(rest, "```")
	want, err := os.ReadFile(filepath.Join("testdata", "micro.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if example != string(want) {
		t.Errorf("the marked example in docs/configuration.md differs from testdata/micro.toml; keep them the same")
	}
}

func TestFileOverridesDefaults(t *testing.T) {
	c := mustLoad(t, &Loader{Path: writeConfig(t, `
[server]
max_body = "512KiB"
[registry]
ttl = "20s"
[client]
strategy = "random"
attempts = 5
[client.retry_budget]
ratio = 0
min_per_second = 2.5
[log]
format = "json"
`)})
	want := Default()
	want.Server.MaxBody = 512 << 10
	want.Registry.TTL = 20 * time.Second
	want.Client.Strategy = "random"
	want.Client.Attempts = 5
	want.Client.RetryBudget = RetryBudget{Ratio: 0, MinPerSecond: 2.5}
	want.Log.Format = "json"
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got\n%+v\nwant\n%+v", *c, want)
	}
}

func TestLayers(t *testing.T) {
	path := writeConfig(t, `
[client]
strategy = "random"
timeout = "1s"
attempts = 2
`)
	l := &Loader{Path: path}
	c := mustLoad(t, l)
	if c.Client.Strategy != "random" || c.Client.Timeout != time.Second || c.Client.Attempts != 2 {
		t.Fatalf("file: got %+v", c.Client)
	}

	l.Env = []string{"MICRO_CLIENT_STRATEGY=round_robin", "MICRO_CLIENT_TIMEOUT=2s"}
	c = mustLoad(t, l)
	if c.Client.Strategy != "round_robin" || c.Client.Timeout != 2*time.Second || c.Client.Attempts != 2 {
		t.Fatalf("env over file: got %+v", c.Client)
	}

	l.Flags = map[string]string{"client.strategy": "p2c_ewma"}
	c = mustLoad(t, l)
	if c.Client.Strategy != "p2c_ewma" || c.Client.Timeout != 2*time.Second || c.Client.Attempts != 2 {
		t.Fatalf("flags over env: got %+v", c.Client)
	}
}

func TestEnvMapping(t *testing.T) {
	tests := []struct {
		env   string
		check func(*Config) bool
	}{
		{"MICRO_REGISTRY_PLUGIN=consul", func(c *Config) bool { return c.Registry.Plugin == "consul" }},
		{"MICRO_CLIENT_RETRY_BUDGET_RATIO=0.5", func(c *Config) bool { return c.Client.RetryBudget.Ratio == 0.5 }},
		{"MICRO_CLIENT_RETRY_BUDGET_MIN_PER_SECOND=3", func(c *Config) bool { return c.Client.RetryBudget.MinPerSecond == 3 }},
		{"MICRO_SERVER_MAX_BODY=1MiB", func(c *Config) bool { return c.Server.MaxBody == 1<<20 }},
		{"MICRO_SERVER_MAX_BODY=1000", func(c *Config) bool { return c.Server.MaxBody == 1000 }},
		{"MICRO_SERVER_DRAIN_TIMEOUT=1m", func(c *Config) bool { return c.Server.DrainTimeout == time.Minute }},
		{"MICRO_CLIENT_EJECTION_MAX_PERCENT=20", func(c *Config) bool { return c.Client.Ejection.MaxPercent == 20 }},
		{"MICRO_CLIENT_POOL_IDLE_TTL=5s", func(c *Config) bool { return c.Client.Pool.IdleTTL == 5*time.Second }},
		{"MICRO_LOG_LEVEL=debug", func(c *Config) bool { return c.Log.Level == "debug" }},
		{"MICRO_SERVICES_GREETER_INSTANCES=4", func(c *Config) bool { return c.Services["greeter"].Instances == 4 }},
		{"MICRO_SERVICES_GREETER_COMMAND=./app --port 0", func(c *Config) bool {
			return reflect.DeepEqual(c.Services["greeter"].Command, []string{"./app", "--port", "0"})
		}},
		{"MICRO_SERVICES_GREETER_ENDPOINTS=Greeter.Hello, Greeter.Bye", func(c *Config) bool {
			return reflect.DeepEqual(c.Services["greeter"].Endpoints, []string{"Greeter.Hello", "Greeter.Bye"})
		}},
		{"MICRO_SERVICES_GREETER_METADATA=zone=eu-1,tier=web", func(c *Config) bool {
			return reflect.DeepEqual(c.Services["greeter"].Metadata, map[string]string{"zone": "eu-1", "tier": "web"})
		}},
		{"MICRO_ROUTES_GREETER_WEIGHTS=1.0.0=90 1.1.0=10", func(c *Config) bool {
			return reflect.DeepEqual(c.Routes["greeter"].Weights, map[string]int{"1.0.0": 90, "1.1.0": 10})
		}},
		{"MICRO_ROUTES_GREETER_STRATEGY=random", func(c *Config) bool { return c.Routes["greeter"].Strategy == "random" }},
		// The name is what lies between the section and a known field, lower-cased.
		{"MICRO_SERVICES_GREETER_V2_INSTANCES=3", func(c *Config) bool { return c.Services["greeter_v2"].Instances == 3 }},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			// The file declares the service so that it validates.
			c := mustLoad(t, &Loader{
				Path: writeConfig(t, "[services.greeter]\ncommand = [\"app\"]\n[services.greeter_v2]\ncommand = [\"app\"]\n"),
				Env:  []string{tt.env},
			})
			if !tt.check(c) {
				t.Errorf("%s not applied: %+v", tt.env, c)
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	tests := []struct{ env, want string }{
		{"MICRO_CLIENT_STRATEGYY=random", `env: unknown key "MICRO_CLIENT_STRATEGYY" (did you mean "MICRO_CLIENT_STRATEGY"?)`},
		{"MICRO_LOG=debug", `unknown key "MICRO_LOG"`},
		{"MICRO_SERVICES_GREETER=x", `unknown key "MICRO_SERVICES_GREETER"`},
		{"MICRO_SERVICES_GREETER_COMAND=x", `unknown key "MICRO_SERVICES_GREETER_COMAND" (did you mean "MICRO_SERVICES_GREETER_COMMAND"?)`},
		{"MICRO_CLIENT_TIMEOUT=5 seconds", `env MICRO_CLIENT_TIMEOUT: client.timeout: invalid duration "5 seconds"`},
		{"MICRO_CLIENT_ATTEMPTS=three", `env MICRO_CLIENT_ATTEMPTS: client.attempts: invalid integer "three"`},
		{"MICRO_SERVER_MAX_BODY=lots", `env MICRO_SERVER_MAX_BODY: server.max_body: invalid size "lots"`},
		{"MICRO_ROUTES_GREETER_WEIGHTS=1.0.0", `env MICRO_ROUTES_GREETER_WEIGHTS: routes.greeter.weights: invalid entry "1.0.0": want key=value`},
		{"MICRO_ROUTES_GREETER_WEIGHTS=1.0.0=x", `env MICRO_ROUTES_GREETER_WEIGHTS: routes.greeter.weights."1.0.0": invalid integer "x"`},
		// Parsed fine, rejected by Validate, and traced back to the variable.
		{"MICRO_CLIENT_STRATEGY=fastest", `env MICRO_CLIENT_STRATEGY: client.strategy: unknown strategy "fastest"`},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			got := loadErr(t, &Loader{Env: []string{"HOME=/", tt.env}})
			if !strings.Contains(got, tt.want) {
				t.Errorf("error %q does not contain %q", got, tt.want)
			}
		})
	}
}

func TestFlags(t *testing.T) {
	c := mustLoad(t, &Loader{Flags: map[string]string{
		"server.ingress":              "127.0.0.1:9090",
		"client.retry_budget.ratio":   "0.1",
		"services.greeter.v1.command": "app serve",
	}})
	if c.Server.Ingress != "127.0.0.1:9090" || c.Client.RetryBudget.Ratio != 0.1 {
		t.Errorf("flags not applied: %+v", c)
	}
	// A dotted name is whatever lies between the section and the field.
	if got := c.Services["greeter.v1"].Command; !reflect.DeepEqual(got, []string{"app", "serve"}) {
		t.Errorf("services.greeter.v1.command = %q", got)
	}

	got := loadErr(t, &Loader{Flags: map[string]string{"clientt.strategy": "random", "client.timeout": "soon"}})
	for _, want := range []string{
		`flags: unknown key "clientt.strategy" (did you mean "client.strategy"?)`,
		`flags: client.timeout: invalid duration "soon"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("error %q does not contain %q", got, want)
		}
	}
}

func TestLaterLayersReplaceListsAndMaps(t *testing.T) {
	path := writeConfig(t, `
[routes.greeter]
weights = { "1.0.0" = 90, "1.1.0" = 10 }
[services.greeter]
command = ["app", "--verbose"]
metadata = { zone = "a", tier = "web" }
`)
	c := mustLoad(t, &Loader{Path: path, Env: []string{
		"MICRO_ROUTES_GREETER_WEIGHTS=2.0.0=1",
		"MICRO_SERVICES_GREETER_COMMAND=other",
		"MICRO_SERVICES_GREETER_METADATA=zone=b",
	}})
	if got, want := c.Routes["greeter"].Weights, map[string]int{"2.0.0": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("weights = %v, want %v", got, want)
	}
	if got, want := c.Services["greeter"].Command, []string{"other"}; !reflect.DeepEqual(got, want) {
		t.Errorf("command = %q, want %q", got, want)
	}
	if got, want := c.Services["greeter"].Metadata, map[string]string{"zone": "b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("metadata = %v, want %v", got, want)
	}
}

func TestUnknownKeys(t *testing.T) {
	tests := []struct{ name, toml, want string }{
		{"top level", "clients = 1\n", `unknown key "clients" (did you mean "client"?)`},
		{"top level table", "[logging]\nlevel = \"info\"\n", `unknown key "logging"`},
		{"misplaced", "ingress = \"127.0.0.1:1\"\n", `unknown key "ingress" (did you mean "server.ingress"?)`},
		{"nested", "[client]\nstratgy = \"random\"\n", `unknown key "client.stratgy" (did you mean "client.strategy"?)`},
		{"deeper", "[client.retry_budget]\nratoi = 0.1\n", `unknown key "client.retry_budget.ratoi" (did you mean "client.retry_budget.ratio"?)`},
		{"in a service", "[services.greeter]\ncommand = [\"app\"]\ncomand = [\"app\"]\n", `unknown key "services.greeter.comand" (did you mean "services.greeter.command"?)`},
		{"in a route", "[routes.greeter]\nweight = {}\n", `unknown key "routes.greeter.weight" (did you mean "routes.greeter.weights"?)`},
		{"no suggestion", "[client]\nzzzzzzzz = 1\n", `unknown key "client.zzzzzzzz"`},
		{"dotted name", "[services.\"a.b\"]\ncommand = [\"app\"]\nnope = 1\n", `unknown key "services.\"a.b\".nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.toml)
			_, err := (&Loader{Path: path}).Load()
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if want := path + ": " + tt.want; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
			var uk *UnknownKeyError
			if !errors.As(err, &uk) || uk.Source != path {
				t.Errorf("no *UnknownKeyError from %s in %q", path, err)
			}
		})
	}
}

func TestBadValues(t *testing.T) {
	tests := []struct{ name, toml, key, want string }{
		{"duration", "[client]\ntimeout = \"5 seconds\"\n", "client.timeout", `client.timeout: invalid duration "5 seconds"`},
		{"duration as number", "[client]\ntimeout = 5\n", "client.timeout", `client.timeout: want a duration such as "5s" or "250ms", got integer 5`},
		{"size", "[server]\nmax_body = \"4 megs\"\n", "server.max_body", `server.max_body: invalid size "4 megs"`},
		{"negative size", "[server]\nmax_body = -1\n", "server.max_body", `server.max_body: want a size such as "4MiB" or a number of bytes, got integer -1`},
		{"strategy", "[client]\nstrategy = \"fastest\"\n", "client.strategy", `client.strategy: unknown strategy "fastest" (want p2c_ewma, round_robin or random)`},
		{"route strategy", "[routes.greeter]\nstrategy = \"fastest\"\n", "routes.greeter.strategy", `routes.greeter.strategy: unknown strategy "fastest"`},
		{"string for int", "[client]\nattempts = \"3\"\n", "client.attempts", `client.attempts: want an integer, got string "3"`},
		{"float for int", "[client]\nattempts = 2.5\n", "client.attempts", `client.attempts: want an integer, got number 2.5`},
		{"int for string", "[log]\nlevel = 1\n", "log.level", `log.level: want a string, got integer 1`},
		{"scalar for table", "client = 1\n", "client", `client: want a table, got integer 1`},
		{"scalar for service", "[services]\ngreeter = \"app\"\n", "services.greeter", `services.greeter: want a table, got string "app"`},
		{"array of tables", "[[services]]\nname = \"x\"\n", "services", `services: want a table, got an array`},
		{"string for list", "[services.greeter]\ncommand = \"app\"\n", "services.greeter.command", `services.greeter.command: want an array of strings, got string "app"`},
		{"list element", "[services.greeter]\ncommand = [\"app\", 1]\n", "services.greeter.command", `services.greeter.command: element 1: want a string, got integer 1`},
		{"map entry", "[routes.greeter]\nweights = { \"1.0.0\" = \"ninety\" }\n", `routes.greeter.weights."1.0.0"`, `routes.greeter.weights."1.0.0": want an integer, got string "ninety"`},
		{"date", "[client]\ntimeout = 1979-05-27\n", "client.timeout", `client.timeout: want a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.toml)
			_, err := (&Loader{Path: path}).Load()
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if want := path + ": " + tt.want; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
			var ke *KeyError
			if !errors.As(err, &ke) || ke.Key != tt.key || ke.Source != path {
				t.Errorf("KeyError = %+v, want key %q from %q", ke, tt.key, path)
			}
		})
	}
}

func TestAllProblemsReported(t *testing.T) {
	got := loadErr(t, &Loader{Path: writeConfig(t, `
[client]
stratgy = "random"
timeout = "forever"
[log]
levle = "info"
`), Env: []string{"MICRO_CLIENT_ATTEMPTS=x"}})
	for _, want := range []string{`"client.stratgy"`, `client.timeout: invalid duration "forever"`, `"log.levle"`, `MICRO_CLIENT_ATTEMPTS`} {
		if !strings.Contains(got, want) {
			t.Errorf("error %q does not contain %q", got, want)
		}
	}
}

func TestSyntaxErrorNamesLine(t *testing.T) {
	path := writeConfig(t, "[client]\nstrategy = \"random\"\ntimeout = = \"5s\"\n")
	got := loadErr(t, &Loader{Path: path})
	if want := path + ":3:"; !strings.HasPrefix(got, want) {
		t.Errorf("error %q does not start with %q", got, want)
	}
	path = writeConfig(t, "[client]\nstrategy = \"random\"\n[client]\n")
	got = loadErr(t, &Loader{Path: path})
	if want := path + ":3:"; !strings.HasPrefix(got, want) {
		t.Errorf("duplicate table: error %q does not start with %q", got, want)
	}
}

func TestMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.toml")
	_, err := (&Loader{Path: path}).Load()
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load = %v, want a not-exist error naming %s", err, path)
	}
	// A directory is no file.
	dir := t.TempDir()
	if _, err := (&Loader{Path: dir}).Load(); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Load(directory) = %v, want an error naming %s", err, dir)
	}
}

func TestRelativeDirs(t *testing.T) {
	path := writeConfig(t, `
[registry]
dir = "state/registry"
[services.a]
command = ["app"]
dir = "apps/a"
[services.b]
command = ["app"]
dir = "/abs/b"
[services.c]
command = ["app"]
`)
	base := filepath.Dir(path)
	c := mustLoad(t, &Loader{Path: path, Env: []string{"MICRO_SERVICES_D_COMMAND=app", "MICRO_SERVICES_D_DIR=d"}})
	for _, tt := range []struct{ key, got, want string }{
		{"registry.dir", c.Registry.Dir, filepath.Join(base, "state", "registry")},
		{"services.a.dir", c.Services["a"].Dir, filepath.Join(base, "apps", "a")},
		{"services.b.dir", c.Services["b"].Dir, "/abs/b"},
		{"services.c.dir", c.Services["c"].Dir, ""},
		{"services.d.dir", c.Services["d"].Dir, filepath.Join(base, "d")},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.key, tt.got, tt.want)
		}
	}
	// Without a file, directories stay as written.
	c = mustLoad(t, &Loader{Env: []string{"MICRO_REGISTRY_DIR=rel"}})
	if c.Registry.Dir != "rel" {
		t.Errorf("registry.dir = %q, want rel", c.Registry.Dir)
	}
}

func TestInstances(t *testing.T) {
	c := mustLoad(t, &Loader{Path: writeConfig(t, `
[services.a]
command = ["app"]
[services.b]
command = ["app"]
instances = 3
[services.c]
address = "http://127.0.0.1:9000"
`)})
	for name, want := range map[string]int{"a": 1, "b": 3, "c": 1} {
		if got := c.Services[name].Instances; got != want {
			t.Errorf("services.%s.instances = %d, want %d", name, got, want)
		}
	}
	// Zero written out is an error, not the default.
	got := loadErr(t, &Loader{Path: writeConfig(t, "[services.a]\ncommand = [\"app\"]\ninstances = 0\n")})
	if !strings.Contains(got, "services.a.instances: must be at least 1, got 0") {
		t.Errorf("error %q does not name services.a.instances", got)
	}
}

func TestLoadReturnsIndependentConfigs(t *testing.T) {
	l := &Loader{Path: writeConfig(t, "[services.a]\ncommand = [\"app\"]\nmetadata = { k = \"v\" }\n")}
	c := mustLoad(t, l)
	c.Services["a"].Metadata["k"] = "changed"
	c.Services["a"].Command[0] = "changed"
	if got := l.lastLoaded(); got.Services["a"].Metadata["k"] != "v" || got.Services["a"].Command[0] != "app" {
		t.Errorf("the Loader's copy changed with the returned config: %+v", got.Services["a"])
	}
}

// TestKeys checks that every key micro.toml knows can be set by env and by flag, and maps
// back to itself.
func TestKeys(t *testing.T) {
	keys := Keys()
	if len(keys) == 0 || keys[0] != "server.ingress" {
		t.Fatalf("Keys() = %q", keys)
	}
	s := newSchema()
	seen := make(map[string]bool)
	for _, key := range keys {
		key = strings.ReplaceAll(key, NamePlaceholder, "my_app")
		env := EnvName(key)
		if seen[env] {
			t.Errorf("two keys map to %s", env)
		}
		seen[env] = true
		segs, _, err := s.match(strings.ToLower(strings.TrimPrefix(env, "MICRO_")), "_")
		if err != nil || strings.Join(segs, ".") != key {
			t.Errorf("%s maps to %q, %v; want %s", env, segs, err, key)
		}
		segs, _, err = s.match(key, ".")
		if err != nil || strings.Join(segs, ".") != key {
			t.Errorf("flag %s maps to %q, %v", key, segs, err)
		}
	}
	if got := EnvName("client.retry_budget.ratio"); got != "MICRO_CLIENT_RETRY_BUDGET_RATIO" {
		t.Errorf("EnvName = %s", got)
	}
}
