package config

import "time"

// Default returns the configuration micro runs with when micro.toml sets nothing: listeners
// on loopback, the embedded registry, the HTTP transport and the resilience defaults of
// DESIGN.md. It declares no routes and no services.
func Default() Config {
	return Config{
		Server: Server{
			Ingress:           "127.0.0.1:8080",
			Inbound:           "127.0.0.1:0",
			MaxBody:           4 << 20,
			DrainTimeout:      10 * time.Second,
			MaxInflight:       1024,
			HeaderTimeout:     10 * time.Second,
			BodyTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       90 * time.Second,
			StreamIdleTimeout: 5 * time.Minute,
			CheckOrigin:       true,
		},
		Registry: Registry{
			Plugin:    "embedded",
			TTL:       10 * time.Second,
			Heartbeat: 3 * time.Second,
			CacheTTL:  30 * time.Second,
		},
		Transport: Transport{Plugin: "http"},
		Security:  Security{Mode: SecurityMTLS, TrustDomain: "micro.local", CertTTL: time.Hour},
		Quota:     Quota{Service: "micro.quota", Lease: 10 * time.Second, Refresh: 2 * time.Second},
		Telemetry: Telemetry{SampleRatio: 0.01, KeepTraces: 200},
		Broker: Broker{
			Plugin:          "embedded",
			MaxBytes:        1 << 30,
			MaxAge:          7 * 24 * time.Hour,
			MaxMessage:      1 << 20,
			MaxDeliveries:   5,
			DeliveryTimeout: 10 * time.Second,
			Backoff:         time.Second,
			BackoffMax:      time.Minute,
			MaxInflight:     16,
			DeadLetter:      "{topic}.dead",
			DrainTimeout:    30 * time.Second,
		},
		Client: Client{
			Strategy:    StrategyP2CEWMA,
			Timeout:     5 * time.Second,
			MaxTimeout:  60 * time.Second,
			Attempts:    3,
			Backoff:     25 * time.Millisecond,
			BackoffMax:  250 * time.Millisecond,
			RetryBudget: RetryBudget{Ratio: 0.2, MinPerSecond: 10},
			RetryBuffer: 64 << 10,
			Pool:        Pool{MaxIdle: 128, IdleTTL: 60 * time.Second},
			Ejection: Ejection{
				ConsecutiveFailures: 5,
				Base:                30 * time.Second,
				Max:                 300 * time.Second,
				MaxPercent:          50,
			},
			EWMADecay: 10 * time.Second,
			Adaptive:  Adaptive{Enabled: true, Quantile: 0.99, Factor: 3, Min: 50 * time.Millisecond, MinSamples: 50},
			Hedge:     Hedge{Enabled: true, Quantile: 0.95, MinDelay: time.Millisecond},
		},
		Log: Log{Level: "info", Format: "text"},
	}
}

// The selection strategies of [Client] Strategy and [Route] Strategy.
const (
	StrategyP2CEWMA    = "p2c_ewma"
	StrategyRoundRobin = "round_robin"
	StrategyRandom     = "random"
)

// DefaultWrapper returns the values Load gives the keys of a [wrappers.NAME] table that the
// table leaves out: one instance sharded by service, failing open, with 64MiB of memory and
// 100ms per guest call. Path, Source, Services and Config have no default.
func DefaultWrapper() Wrapper {
	return Wrapper{
		ABI:         ABIMicro,
		Instances:   1,
		Shard:       ShardService,
		OnTrap:      OnTrapOpen,
		MemoryLimit: DefaultWrapperMemoryLimit,
		Timeout:     DefaultWrapperTimeout,
	}
}

// The guest contracts of [Wrapper] ABI.
const (
	ABIMicro    = "micro"     // abi/wrapper: what sdk/wrapper builds
	ABIHTTPWasm = "http-wasm" // the http-wasm handler ABI
)

// The shard keys of [Wrapper] Shard: what picks the instance that serves a call.
const (
	ShardService = "service" // the service called
	ShardNode    = "node"    // the node the call goes to
	ShardCaller  = "caller"  // the caller
)

// The choices of [Wrapper] OnTrap: what a call gets when its guest traps, runs out of time
// or runs out of memory.
const (
	OnTrapOpen   = "open"   // the call goes on as if the wrapper had let it through
	OnTrapClosed = "closed" // the call is rejected with a 503
)

// Bounds of the [Wrapper] keys that [Validate] checks.
const (
	DefaultWrapperMemoryLimit = ByteSize(64 << 20)
	DefaultWrapperTimeout     = 100 * time.Millisecond
	MaxWrapperInstances       = 64
	MinWrapperMemoryLimit     = ByteSize(1 << 20)
	MaxWrapperMemoryLimit     = ByteSize(4 << 30)
	MaxWrapperTimeout         = 10 * time.Second
)

// MaxRetryBuffer bounds client.retry_buffer: each call in flight may hold that much.
const MaxRetryBuffer = ByteSize(64 << 20)
