package config

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// validConfig is Default with a route and services of both kinds.
func validConfig() Config {
	c := Default()
	c.Routes = map[string]Route{"greeter": {Weights: map[string]int{"1.0.0": 90, "1.1.0": 10}, Strategy: "random"}}
	c.Services = map[string]Service{
		"greeter": {Command: []string{"app"}, Instances: 2, Endpoints: []string{"Greeter.Hello"}, Health: "/health"},
		"billing": {Address: "http://127.0.0.1:9000", Instances: 1},
	}
	return c
}

// keyErrors returns the KeyErrors that err joins, by key.
func keyErrors(t *testing.T, err error) map[string]*KeyError {
	t.Helper()
	out := make(map[string]*KeyError)
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v is not a join", err)
	}
	for _, e := range joined.Unwrap() {
		var ke *KeyError
		if !errors.As(e, &ke) {
			t.Fatalf("error %v is not a *KeyError", e)
		}
		out[ke.Key] = ke
	}
	return out
}

func TestValidateAcceptsValid(t *testing.T) {
	c := validConfig()
	if err := Validate(&c); err != nil {
		t.Fatal(err)
	}
	c.Server.Ingress = ":8080"           // every interface
	c.Server.Advertise = "10.0.0.5:7001" // set
	c.Server.DrainTimeout = 0            // do not wait
	c.Client.Pool.MaxIdle = 0            // no pooling
	c.Client.Attempts = 1
	c.Client.RetryBudget = RetryBudget{Ratio: 1, MinPerSecond: 0}
	c.Client.Ejection.MaxPercent = 0
	c.Routes["greeter"] = Route{Version: "1.0.0"}
	c.Services["a_b.c-d"] = Service{Address: "http://[::1]:9000/prefix", Instances: 1}
	if err := Validate(&c); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRules(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		key    string
		want   string
	}{
		{"ingress no port", func(c *Config) { c.Server.Ingress = "127.0.0.1" }, "server.ingress", `invalid listen address "127.0.0.1"`},
		{"ingress empty", func(c *Config) { c.Server.Ingress = "" }, "server.ingress", "want host:port"},
		{"inbound bad port", func(c *Config) { c.Server.Inbound = "127.0.0.1:99999" }, "server.inbound", `invalid port "99999"`},
		{"inbound = ingress", func(c *Config) { c.Server.Inbound = c.Server.Ingress }, "server.inbound", "must differ from server.ingress (127.0.0.1:8080)"},
		{"advertise no host", func(c *Config) { c.Server.Advertise = ":7001" }, "server.advertise", "want a host"},
		{"advertise port 0", func(c *Config) { c.Server.Advertise = "h:0" }, "server.advertise", "other than 0"},
		{"max body", func(c *Config) { c.Server.MaxBody = 0 }, "server.max_body", "more than 0"},
		{"drain negative", func(c *Config) { c.Server.DrainTimeout = -time.Second }, "server.drain_timeout", "negative"},
		{"registry plugin", func(c *Config) { c.Registry.Plugin = " " }, "registry.plugin", "must not be empty"},
		{"registry ttl", func(c *Config) { c.Registry.TTL = 0 }, "registry.ttl", "more than 0"},
		{"heartbeat >= ttl", func(c *Config) { c.Registry.Heartbeat = c.Registry.TTL }, "registry.heartbeat", "less than registry.ttl (10s), got 10s"},
		{"cache ttl", func(c *Config) { c.Registry.CacheTTL = -1 }, "registry.cache_ttl", "more than 0"},
		{"transport plugin", func(c *Config) { c.Transport.Plugin = "" }, "transport.plugin", "must not be empty"},
		{"strategy", func(c *Config) { c.Client.Strategy = "fastest" }, "client.strategy", `unknown strategy "fastest"`},
		{"strategy empty", func(c *Config) { c.Client.Strategy = "" }, "client.strategy", "must not be empty"},
		{"timeout", func(c *Config) { c.Client.Timeout = 0 }, "client.timeout", "more than 0"},
		{"attempts 0", func(c *Config) { c.Client.Attempts = 0 }, "client.attempts", "from 1 to 10, got 0"},
		{"attempts 11", func(c *Config) { c.Client.Attempts = 11 }, "client.attempts", "from 1 to 10, got 11"},
		{"backoff", func(c *Config) { c.Client.Backoff = 0 }, "client.backoff", "more than 0"},
		{"backoff max < backoff", func(c *Config) { c.Client.BackoffMax = time.Millisecond }, "client.backoff_max", "at least client.backoff"},
		{"ratio > 1", func(c *Config) { c.Client.RetryBudget.Ratio = 1.5 }, "client.retry_budget.ratio", "from 0 to 1, got 1.5"},
		{"ratio NaN", func(c *Config) { c.Client.RetryBudget.Ratio = math.NaN() }, "client.retry_budget.ratio", "from 0 to 1"},
		{"min per second", func(c *Config) { c.Client.RetryBudget.MinPerSecond = -1 }, "client.retry_budget.min_per_second", "at least 0"},
		{"min per second inf", func(c *Config) { c.Client.RetryBudget.MinPerSecond = math.Inf(1) }, "client.retry_budget.min_per_second", "finite"},
		{"max idle", func(c *Config) { c.Client.Pool.MaxIdle = -1 }, "client.pool.max_idle", "at least 0"},
		{"idle ttl", func(c *Config) { c.Client.Pool.IdleTTL = 0 }, "client.pool.idle_ttl", "more than 0"},
		{"failures", func(c *Config) { c.Client.Ejection.ConsecutiveFailures = 0 }, "client.ejection.consecutive_failures", "at least 1"},
		{"ejection base", func(c *Config) { c.Client.Ejection.Base = 0 }, "client.ejection.base", "more than 0"},
		{"ejection max < base", func(c *Config) { c.Client.Ejection.Max = time.Second }, "client.ejection.max", "at least client.ejection.base"},
		{"max percent", func(c *Config) { c.Client.Ejection.MaxPercent = 101 }, "client.ejection.max_percent", "from 0 to 100"},
		{"ewma decay", func(c *Config) { c.Client.EWMADecay = 0 }, "client.ewma_decay", "more than 0"},
		{"log level", func(c *Config) { c.Log.Level = "verbose" }, "log.level", `unknown level "verbose"`},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, "log.format", `unknown format "xml"`},
		{"route name", func(c *Config) { c.Routes["Greeter"] = Route{} }, "routes.Greeter", `invalid service name "Greeter"`},
		{"route strategy", func(c *Config) { c.Routes["greeter"] = Route{Strategy: "x"} }, "routes.greeter.strategy", `unknown strategy "x"`},
		{"negative weight", func(c *Config) { c.Routes["greeter"] = Route{Weights: map[string]int{"1.0.0": -1, "2.0.0": 5}} }, `routes.greeter.weights."1.0.0"`, "from 0 to 1000000, got -1"},
		{"huge weight", func(c *Config) {
			c.Routes["greeter"] = Route{Weights: map[string]int{"1.0.0": math.MaxInt, "2.0.0": 5}}
		}, `routes.greeter.weights."1.0.0"`, "from 0 to 1000000"},
		{"zero weights", func(c *Config) { c.Routes["greeter"] = Route{Weights: map[string]int{"1.0.0": 0}} }, "routes.greeter.weights", "at least one weight"},
		{"empty version weight", func(c *Config) { c.Routes["greeter"] = Route{Weights: map[string]int{"": 1}} }, "routes.greeter.weights", "empty version"},
		{"version and weights", func(c *Config) { c.Routes["greeter"] = Route{Version: "1", Weights: map[string]int{"1": 1}} }, "routes.greeter", "not both"},
		{"route metadata", func(c *Config) { c.Routes["greeter"] = Route{Metadata: map[string]string{"": "x"}} }, "routes.greeter.metadata", "empty label"},
		{"service name empty", func(c *Config) { c.Services[""] = Service{Command: []string{"a"}, Instances: 1} }, `services.""`, "invalid service name"},
		{"service name long", func(c *Config) { c.Services[strings.Repeat("a", 64)] = Service{Command: []string{"a"}, Instances: 1} }, "services." + strings.Repeat("a", 64), "invalid service name"},
		{"service name slash", func(c *Config) { c.Services["a/b"] = Service{Command: []string{"a"}, Instances: 1} }, `services."a/b"`, "invalid service name"},
		{"service name dot first", func(c *Config) { c.Services[".."] = Service{Command: []string{"a"}, Instances: 1} }, `services.".."`, "invalid service name"},
		{"neither", func(c *Config) { c.Services["x"] = Service{Instances: 1} }, "services.x", "set address"},
		{"both", func(c *Config) {
			c.Services["x"] = Service{Address: "http://h:1", Command: []string{"a"}, Instances: 1}
		}, "services.x", "not both"},
		{"https address", func(c *Config) { c.Services["x"] = Service{Address: "https://h:1", Instances: 1} }, "services.x.address", "want an http:// URL"},
		{"bare address", func(c *Config) { c.Services["x"] = Service{Address: "127.0.0.1:9000", Instances: 1} }, "services.x.address", "want an http:// URL"},
		{"address query", func(c *Config) { c.Services["x"] = Service{Address: "http://h:1/?a=b", Instances: 1} }, "services.x.address", "no user, query or fragment"},
		{"address instances", func(c *Config) { c.Services["x"] = Service{Address: "http://h:1", Instances: 2} }, "services.x.instances", "must be 1"},
		{"address dir", func(c *Config) { c.Services["x"] = Service{Address: "http://h:1", Instances: 1, Dir: "/d"} }, "services.x.dir", "only to a service with a command"},
		{"instances", func(c *Config) { c.Services["x"] = Service{Command: []string{"a"}} }, "services.x.instances", "at least 1, got 0"},
		{"empty program", func(c *Config) { c.Services["x"] = Service{Command: []string{""}, Instances: 1} }, "services.x.command", "must not be empty"},
		{"env name", func(c *Config) {
			c.Services["x"] = Service{Command: []string{"a"}, Instances: 1, Env: map[string]string{"A=B": "c"}}
		}, "services.x.env", `invalid variable name "A=B"`},
		{"endpoint slash", func(c *Config) {
			c.Services["x"] = Service{Command: []string{"a"}, Instances: 1, Endpoints: []string{"a/b"}}
		}, "services.x.endpoints", `invalid endpoint "a/b" (element 0)`},
		{"endpoint empty", func(c *Config) {
			c.Services["x"] = Service{Command: []string{"a"}, Instances: 1, Endpoints: []string{"ok", ""}}
		}, "services.x.endpoints", `(element 1)`},
		{"health", func(c *Config) { c.Services["x"] = Service{Command: []string{"a"}, Instances: 1, Health: "health"} }, "services.x.health", "starting with '/'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mutate(&c)
			err := Validate(&c)
			if err == nil {
				t.Fatal("Validate passed")
			}
			errs := keyErrors(t, err)
			ke, ok := errs[tt.key]
			if !ok {
				t.Fatalf("no error for %s in %v", tt.key, err)
			}
			if !strings.Contains(ke.Error(), tt.key+": ") || !strings.Contains(ke.Error(), tt.want) {
				t.Errorf("error %q, want it to name %s and say %q", ke, tt.key, tt.want)
			}
			if len(errs) != 1 {
				t.Errorf("more than the one expected problem: %v", err)
			}
		})
	}
}

func TestValidateJoinsEveryProblem(t *testing.T) {
	c := validConfig()
	c.Client.Strategy = "x"
	c.Client.Attempts = 0
	c.Log.Level = "x"
	c.Services["x"] = Service{}
	errs := keyErrors(t, Validate(&c))
	for _, key := range []string{"client.strategy", "client.attempts", "log.level", "services.x"} {
		if errs[key] == nil {
			t.Errorf("no error for %s", key)
		}
	}
}
