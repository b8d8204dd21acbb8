package config

import "time"

// Default returns the configuration micro runs with when micro.toml sets nothing: listeners
// on loopback, the embedded registry, the HTTP transport and the resilience defaults of
// DESIGN.md. It declares no routes and no services.
func Default() Config {
	return Config{
		Server: Server{
			Ingress:      "127.0.0.1:8080",
			Inbound:      "127.0.0.1:0",
			MaxBody:      4 << 20,
			DrainTimeout: 10 * time.Second,
		},
		Registry: Registry{
			Plugin:    "embedded",
			TTL:       10 * time.Second,
			Heartbeat: 3 * time.Second,
			CacheTTL:  30 * time.Second,
		},
		Transport: Transport{Plugin: "http"},
		Client: Client{
			Strategy:    StrategyP2CEWMA,
			Timeout:     5 * time.Second,
			Attempts:    3,
			Backoff:     25 * time.Millisecond,
			BackoffMax:  250 * time.Millisecond,
			RetryBudget: RetryBudget{Ratio: 0.2, MinPerSecond: 10},
			Pool:        Pool{MaxIdle: 16, IdleTTL: 60 * time.Second},
			Ejection: Ejection{
				ConsecutiveFailures: 5,
				Base:                30 * time.Second,
				Max:                 300 * time.Second,
				MaxPercent:          50,
			},
			EWMADecay: 10 * time.Second,
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
