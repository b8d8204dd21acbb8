package config

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// validConfig is Default with a route, services of both kinds, and two wrappers in use.
func validConfig() Config {
	c := Default()
	c.Routes = map[string]Route{"greeter": {Weights: map[string]int{"1.0.0": 90, "1.1.0": 10}, Strategy: "random"}}
	c.Services = map[string]Service{
		"greeter": {Command: []string{"app"}, Instances: 2, Endpoints: []string{"Greeter.Hello"}, Health: "/health"},
		"billing": {Address: "http://127.0.0.1:9000", Instances: 1},
	}
	c.Wrappers = map[string]Wrapper{
		"ratelimit": wrapperWith(func(w *Wrapper) {
			w.Source = "/src/ratelimit"
			w.Services = []string{"greeter"}
			w.Config = map[string]any{"rate": int64(100), "key": "service"}
		}),
		"breaker": wrapperWith(func(w *Wrapper) { w.Path = "/wasm/breaker.wasm" }),
	}
	c.Client.Wrappers = []string{"breaker"}
	c.Server.Wrappers = []string{"ratelimit"}
	return c
}

// wrapperWith returns DefaultWrapper changed by f.
func wrapperWith(f func(*Wrapper)) Wrapper {
	w := DefaultWrapper()
	f(&w)
	return w
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
	c.Services["a_b.c-d"] = Service{Address: "http://[::1]:9000/prefix", Instances: 1, Idempotent: []string{"Any.Thing"}}
	c.Services["greeter"] = Service{Command: []string{"app"}, Instances: 2, Endpoints: []string{"Greeter.Hello"}, Idempotent: []string{"Greeter.Hello"}}
	c.Server.AllowedHosts = []string{"micro.internal", "localhost.example"}
	c.Server.AllowedOrigins = []string{"https://app.example.com", "http://127.0.0.1:3000"}
	c.Server.CheckOrigin = false
	c.Client.AttemptTimeout = 100 * time.Millisecond
	c.Registry.Plugin = "consul"
	c.Registry.SHA256 = strings.Repeat("aF09", 16)
	c.Registry.Address = "127.0.0.1:8500"
	c.Registry.TokenFile = "/does/not/exist" // the runtime opens it, not Validate
	c.Registry.Path = "relative/registry-consul"
	c.Wrappers["a_b.c-d"] = wrapperWith(func(w *Wrapper) {
		w.Path = "x.wasm"
		w.Instances = MaxWrapperInstances
		w.Shard = ShardCaller
		w.OnTrap = OnTrapClosed
		w.MemoryLimit = MaxWrapperMemoryLimit
		w.Timeout = MaxWrapperTimeout
		w.Config = map[string]any{
			"i": 1, "u": uint8(2), "f": float32(0.5), "s": "5s", "b": false,
			"list": []any{int64(1), "a", []any{}, map[string]any{"k": 1.5}},
			"t":    map[string]any{"nested": map[string]any{}},
		}
	})
	c.Wrappers["small"] = wrapperWith(func(w *Wrapper) {
		w.Source = "."
		w.Shard = ShardNode
		w.MemoryLimit = MinWrapperMemoryLimit
		w.Timeout = time.Nanosecond
	})
	// One wrapper on both sides, and several in a list.
	c.Client.Wrappers = []string{"ratelimit", "breaker", "a_b.c-d"}
	c.Server.Wrappers = []string{"ratelimit", "small"}
	if err := Validate(&c); err != nil {
		t.Fatal(err)
	}
	c.Registry.Plugin = "registry-2"
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
		{"max inflight", func(c *Config) { c.Server.MaxInflight = 0 }, "server.max_inflight", "at least 1, got 0"},
		{"header timeout", func(c *Config) { c.Server.HeaderTimeout = 0 }, "server.header_timeout", "more than 0"},
		{"body timeout", func(c *Config) { c.Server.BodyTimeout = 0 }, "server.body_timeout", "more than 0"},
		{"write timeout", func(c *Config) { c.Server.WriteTimeout = 0 }, "server.write_timeout", "more than 0"},
		{"idle timeout", func(c *Config) { c.Server.IdleTimeout = 0 }, "server.idle_timeout", "more than 0"},
		{"pool idle ttl >= idle timeout", func(c *Config) { c.Client.Pool.IdleTTL = c.Server.IdleTimeout }, "client.pool.idle_ttl", "less than server.idle_timeout (1m30s), got 1m30s"},
		{"stream idle timeout", func(c *Config) { c.Server.StreamIdleTimeout = 0 }, "server.stream_idle_timeout", "more than 0"},
		{"allowed host with port", func(c *Config) { c.Server.AllowedHosts = []string{"micro.internal:8080"} }, "server.allowed_hosts", `invalid host "micro.internal:8080" (element 0)`},
		{"allowed host upper case", func(c *Config) { c.Server.AllowedHosts = []string{"ok", "Micro"} }, "server.allowed_hosts", `invalid host "Micro" (element 1)`},
		{"allowed origin path", func(c *Config) { c.Server.AllowedOrigins = []string{"https://app.example.com/x"} }, "server.allowed_origins", `invalid origin "https://app.example.com/x"`},
		{"allowed origin scheme", func(c *Config) { c.Server.AllowedOrigins = []string{"app.example.com"} }, "server.allowed_origins", "want scheme://host[:port]"},
		{"max timeout < timeout", func(c *Config) { c.Client.MaxTimeout = time.Second }, "client.max_timeout", "at least client.timeout (5s), got 1s"},
		{"attempt timeout", func(c *Config) { c.Client.AttemptTimeout = -time.Second }, "client.attempt_timeout", "negative"},
		{"retry buffer", func(c *Config) { c.Client.RetryBuffer = 1 << 30 }, "client.retry_buffer", "from 0 to 64MiB"},
		{"idempotent not an endpoint", func(c *Config) {
			s := c.Services["greeter"]
			s.Idempotent = []string{"Greeter.Bye"}
			c.Services["greeter"] = s
		}, "services.greeter.idempotent", `endpoint "Greeter.Bye" (element 0) is not one of the service's endpoints`},
		{"idempotent slash", func(c *Config) {
			s := c.Services["billing"]
			s.Idempotent = []string{"a/b"}
			c.Services["billing"] = s
		}, "services.billing.idempotent", `invalid endpoint "a/b"`},
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
		{"service name reserved", func(c *Config) { c.Services["ui"] = Service{Command: []string{"a"}, Instances: 1} }, "services.ui", "reserved"},
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

		{"plugin upper case", func(c *Config) { c.Registry.Plugin = "Consul" }, "registry.plugin", `invalid plugin name "Consul"`},
		{"plugin underscore", func(c *Config) { c.Registry.Plugin = "my_consul" }, "registry.plugin", `invalid plugin name "my_consul"`},
		{"plugin dash first", func(c *Config) { c.Registry.Plugin = "-x" }, "registry.plugin", "starting with a letter or digit"},
		{"plugin path", func(c *Config) { c.Registry.Plugin = "../consul" }, "registry.plugin", "invalid plugin name"},
		{"plugin long", func(c *Config) { c.Registry.Plugin = strings.Repeat("a", 64) }, "registry.plugin", "invalid plugin name"},
		{"sha256 short", func(c *Config) { c.Registry.SHA256 = "abc" }, "registry.sha256", `invalid digest "abc": want 64 hexadecimal digits`},
		{"sha256 not hex", func(c *Config) { c.Registry.SHA256 = strings.Repeat("g", 64) }, "registry.sha256", "want 64 hexadecimal digits"},
		{"sha256 long", func(c *Config) { c.Registry.SHA256 = strings.Repeat("a", 65) }, "registry.sha256", "want 64 hexadecimal digits"},

		{"wrapper name", func(c *Config) { c.Wrappers["Rate"] = wrapperWith(func(w *Wrapper) { w.Source = "s" }) }, "wrappers.Rate", `invalid wrapper name "Rate"`},
		{"wrapper neither", func(c *Config) { c.Wrappers["x"] = DefaultWrapper() }, "wrappers.x", "set path (a .wasm file) or source"},
		{"wrapper both", func(c *Config) {
			c.Wrappers["x"] = wrapperWith(func(w *Wrapper) { w.Path, w.Source = "x.wasm", "src" })
		}, "wrappers.x", "set path or source, not both"},
		{"wrapper not wasm", func(c *Config) { c.Wrappers["x"] = wrapperWith(func(w *Wrapper) { w.Path = "x.so" }) }, "wrappers.x.path", `invalid path "x.so": want a .wasm file`},
		{"wrapper instances 0", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Instances = "b.wasm", 0 })
		}, "wrappers.breaker.instances", "from 1 to 64, got 0"},
		{"wrapper instances 65", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Instances = "b.wasm", 65 })
		}, "wrappers.breaker.instances", "from 1 to 64, got 65"},
		{"wrapper shard", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Shard = "b.wasm", "endpoint" })
		}, "wrappers.breaker.shard", `unknown shard key "endpoint" (want service, node or caller)`},
		{"wrapper shard empty", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Shard = "b.wasm", "" })
		}, "wrappers.breaker.shard", `unknown shard key ""`},
		{"wrapper on_trap", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.OnTrap = "b.wasm", "fail" })
		}, "wrappers.breaker.on_trap", `unknown choice "fail" (want open or closed)`},
		{"wrapper memory low", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.MemoryLimit = "b.wasm", MinWrapperMemoryLimit-1 })
		}, "wrappers.breaker.memory_limit", "from 1MiB to 4GiB, got 1048575B"},
		{"wrapper memory high", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.MemoryLimit = "b.wasm", MaxWrapperMemoryLimit+64<<10 })
		}, "wrappers.breaker.memory_limit", "from 1MiB to 4GiB, got 4194368KiB"},
		{"wrapper timeout 0", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Timeout = "b.wasm", 0 })
		}, "wrappers.breaker.timeout", "more than 0 and at most 10s, got 0s"},
		{"wrapper timeout negative", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Timeout = "b.wasm", -time.Second })
		}, "wrappers.breaker.timeout", "got -1s"},
		{"wrapper timeout long", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Timeout = "b.wasm", MaxWrapperTimeout+time.Millisecond })
		}, "wrappers.breaker.timeout", "at most 10s, got 10.001s"},
		{"wrapper services", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Services = "b.wasm", []string{"ok", "Not/OK"} })
		}, "wrappers.breaker.services", `invalid service name "Not/OK" (element 1)`},
		{"wrapper config NaN", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Config = "b.wasm", map[string]any{"ratio": math.NaN()} })
		}, "wrappers.breaker.config.ratio", "want a finite number, got NaN"},
		{"wrapper config nested", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) {
				w.Path, w.Config = "b.wasm", map[string]any{"a": map[string]any{"b.c": map[string]any{"when": time.Unix(0, 0).UTC()}}}
			})
		}, `wrappers.breaker.config.a."b.c".when`, "got the date or time 1970-01-01 00:00:00 +0000 UTC (write it as a string)"},
		{"wrapper config in array", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Config = "b.wasm", map[string]any{"l": []any{1, math.Inf(1)}} })
		}, "wrappers.breaker.config.l", "element 1: want a finite number, got +Inf"},
		{"wrapper config nil", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Config = "b.wasm", map[string]any{"n": nil} })
		}, "wrappers.breaker.config.n", "got nothing"},
		{"wrapper config other type", func(c *Config) {
			c.Wrappers["breaker"] = wrapperWith(func(w *Wrapper) { w.Path, w.Config = "b.wasm", map[string]any{"c": make(chan int)} })
		}, "wrappers.breaker.config.c", "want a string, number, boolean, array or table"},

		{"client wrapper unknown", func(c *Config) { c.Client.Wrappers = []string{"breaker", "retry"} }, "client.wrappers", `unknown wrapper "retry" (element 1): declare it as [wrappers.retry]`},
		{"client wrapper twice", func(c *Config) { c.Client.Wrappers = []string{"breaker", "ratelimit", "breaker"} }, "client.wrappers", `wrapper "breaker" is listed twice (elements 0 and 2)`},
		{"server wrapper unknown", func(c *Config) { c.Server.Wrappers = []string{"a.b"} }, "server.wrappers", `unknown wrapper "a.b" (element 0): declare it as [wrappers."a.b"]`},
		{"server wrapper twice", func(c *Config) { c.Server.Wrappers = []string{"ratelimit", "ratelimit"} }, "server.wrappers", "listed twice"},
		{"wrapper removed but listed", func(c *Config) { delete(c.Wrappers, "breaker") }, "client.wrappers", `unknown wrapper "breaker"`},
		{"broker plugin", func(c *Config) { c.Broker.Plugin = "NATS" }, "broker.plugin", "NATS"},
		{"security mode", func(c *Config) { c.Security.Mode = "tls" }, "security.mode", `unknown mode "tls"`},
		{"wrapper abi", func(c *Config) {
			w := c.Wrappers["breaker"]
			w.ABI = "proxy-wasm"
			c.Wrappers["breaker"] = w
		}, "wrappers.breaker.abi", `unknown ABI "proxy-wasm"`},
		{"transport auth two credentials", func(c *Config) {
			c.Transport.Auth = BackendAuth{CredentialsFile: "/a.creds", TokenFile: "/t"}
		}, "transport.auth", "at most one of"},
		{"broker auth user", func(c *Config) { c.Broker.Auth.User = "u" }, "broker.auth", "user and password_file together"},
		{"broker auth cert", func(c *Config) { c.Broker.Auth.TLSCertFile = "/c.pem" }, "broker.auth", "tls_cert_file and tls_key_file together"},
		{"security trust domain", func(c *Config) { c.Security.TrustDomain = "Micro_Local" }, "security.trust_domain", `invalid trust domain "Micro_Local"`},
		{"security files", func(c *Config) { c.Security.CertFile = "/c.pem" }, "security", "all of ca_file, cert_file and key_file"},
		{"security cert ttl", func(c *Config) { c.Security.CertTTL = time.Second }, "security.cert_ttl", "at least 10s"},
		{"allow", func(c *Config) {
			s := c.Services["greeter"]
			s.Allow = []string{"frontend", "Bad Name"}
			c.Services["greeter"] = s
		}, "services.greeter.allow", `invalid service name "Bad Name" (element 1)`},
		{"broker sha256", func(c *Config) { c.Broker.SHA256 = "abc" }, "broker.sha256", `invalid digest "abc"`},
		{"broker max bytes", func(c *Config) { c.Broker.MaxBytes = 0 }, "broker.max_bytes", "more than 0"},
		{"broker max message", func(c *Config) { c.Broker.MaxMessage = 2 << 30 }, "broker.max_message", "at most broker.max_bytes (1GiB)"},
		{"broker max age", func(c *Config) { c.Broker.MaxAge = 0 }, "broker.max_age", "more than 0"},
		{"broker max deliveries", func(c *Config) { c.Broker.MaxDeliveries = 0 }, "broker.max_deliveries", "at least 1, got 0"},
		{"broker delivery timeout", func(c *Config) { c.Broker.DeliveryTimeout = 0 }, "broker.delivery_timeout", "more than 0"},
		{"broker backoff max", func(c *Config) { c.Broker.BackoffMax = time.Millisecond }, "broker.backoff_max", "at least broker.backoff (1s)"},
		{"broker max inflight", func(c *Config) { c.Broker.MaxInflight = 5000 }, "broker.max_inflight", "from 1 to 1024, got 5000"},
		{"broker dead letter no topic", func(c *Config) { c.Broker.DeadLetter = "dead" }, "broker.dead_letter", "with {topic} in it"},
		{"broker dead letter bad", func(c *Config) { c.Broker.DeadLetter = "{topic}.*" }, "broker.dead_letter", `has '*'`},
		{"subscribe bad topic", func(c *Config) {
			s := c.Services["greeter"]
			s.Subscribe = map[string]string{"orders..created": "Orders.On"}
			c.Services["greeter"] = s
		}, "services.greeter.subscribe", "empty segment"},
		{"subscribe bad endpoint", func(c *Config) {
			s := c.Services["greeter"]
			s.Subscribe = map[string]string{"orders.created": "a/b"}
			c.Services["greeter"] = s
		}, `services.greeter.subscribe."orders.created"`, `invalid endpoint "a/b"`},
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
