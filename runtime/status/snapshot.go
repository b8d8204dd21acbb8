// Package status tells what a micro is doing, for the dashboard at /ui and `micro top`: the
// services it calls and their nodes (rates, success, latency, in-flight calls, the p2c
// score, ejections, breaker state), its wrappers, its plugins, its config, and its recent
// failed calls.
//
// It reads only state that micro keeps anyway (the Prometheus metrics, the selector, the
// wrappers' counters, the trace store), and only while someone looks: it adds no work to
// the path of a call.
package status

import "time"

// Snapshot is what GET /status answers and what /ui/events sends, once a second.
type Snapshot struct {
	// Time is when the snapshot was taken.
	Time time.Time `json:"time"`
	// Instance names this micro process.
	Instance string `json:"instance"`
	// Window is how many seconds the rates and quantiles cover: up to 10, fewer just after
	// the first look.
	Window float64 `json:"window_seconds"`
	// Health is "ok" or "degraded"; Errors says why.
	Health string   `json:"health"`
	Errors []string `json:"errors,omitempty"`
	// Services are the services this micro called, by name.
	Services []Service `json:"services"`
	// Routes are the called endpoints per node, the rows of `micro top`, busiest first.
	Routes []Route `json:"routes"`
	// Wrappers are the loaded wrappers, in chain order.
	Wrappers []Wrapper `json:"wrappers"`
	// Plugins are the registry, transport and broker in use.
	Plugins []Plugin `json:"plugins"`
	// Config is where the config came from and how its last reload went.
	Config Config `json:"config"`
	// Failed are the most recent failed calls this micro kept traces of, newest first.
	Failed []FailedCall `json:"failed"`
}

// Stats are the golden signals of a set of calls or attempts over the window.
type Stats struct {
	// Requests counts them since micro started.
	Requests uint64 `json:"requests"`
	// RPS is how many came per second.
	RPS float64 `json:"rps"`
	// Success is the share that succeeded, 0 to 1; nil when none came in the window.
	Success *float64 `json:"success,omitempty"`
	// P50 and P99 are latency quantiles in milliseconds, from the histogram's buckets;
	// nil when none came in the window.
	P50 *float64 `json:"p50_ms,omitempty"`
	P99 *float64 `json:"p99_ms,omitempty"`
	// Retries and Hedges are the rates of attempts beyond the first, per second.
	Retries float64 `json:"retries_per_second"`
	Hedges  float64 `json:"hedges_per_second"`
}

// Service is one called service.
type Service struct {
	Name string `json:"name"`
	// Stats are of whole calls, retries included, as the caller saw them.
	Stats
	// InFlight counts the attempts out to its nodes now.
	InFlight int64 `json:"in_flight"`
	// Ejections counts the ejections of its nodes since micro started.
	Ejections uint64 `json:"ejections"`
	// Nodes are its nodes in the registry, and any gone from it that served in the window.
	Nodes []Node `json:"nodes"`
}

// Node is one node of a service.
type Node struct {
	ID      string `json:"id"`
	Address string `json:"address,omitempty"`
	Version string `json:"version,omitempty"`
	// Stats are of the attempts sent to it.
	Stats
	// InFlight counts the attempts out to it now.
	InFlight int64 `json:"in_flight"`
	// Score is its p2c cost: its peak-EWMA latency in milliseconds times its in-flight
	// attempts plus one. Lower is picked first.
	Score float64 `json:"score"`
	// Ejected is set while it is out of selection as a whole; EjectedEndpoints lists the
	// endpoints it is out for alone. EjectedFor is how many seconds the longest is left.
	Ejected          bool     `json:"ejected"`
	EjectedEndpoints []string `json:"ejected_endpoints,omitempty"`
	EjectedFor       float64  `json:"ejected_for_seconds,omitempty"`
	// Breaker is the worst state a wrapper reported for it ("open", "half-open" or
	// "closed"), or "" when none did.
	Breaker string `json:"breaker,omitempty"`
	// Gone is set when it has left the registry.
	Gone bool `json:"gone,omitempty"`
}

// Route is one endpoint of a service on one node.
type Route struct {
	Service  string `json:"service"`
	Endpoint string `json:"endpoint"`
	Node     string `json:"node"`
	Stats
}

// Wrapper is one loaded wrapper.
type Wrapper struct {
	Name string `json:"name"`
	// Side is "client" or "server".
	Side string `json:"side"`
	// Instances is how many guest instances run it.
	Instances int `json:"instances"`
	// Calls, Rejects and Faults count its verdicts since it was loaded: calls it decided,
	// calls it rejected, and guest calls that trapped or ran out of time.
	Calls   uint64 `json:"calls"`
	Rejects uint64 `json:"rejects"`
	Faults  uint64 `json:"faults"`
	// RPS is its calls per second over the window.
	RPS float64 `json:"rps"`
	// MicrosPerCall is the mean time a call spent in it over the window, in microseconds.
	MicrosPerCall float64 `json:"us_per_call"`
	// States are what it reported of itself, such as a breaker's state per node.
	States []WrapperState `json:"states,omitempty"`
}

// WrapperState is one state a wrapper reported, for a service, an endpoint, a node, or a
// mix of them (empty fields are not part of its key).
type WrapperState struct {
	Service  string `json:"service,omitempty"`
	Endpoint string `json:"endpoint,omitempty"`
	Node     string `json:"node,omitempty"`
	Value    string `json:"value"`
}

// Plugin is the registry, the transport or the broker in use.
type Plugin struct {
	// Role is "registry", "transport" or "broker".
	Role string `json:"role"`
	// Name is what micro.toml calls it: "embedded", "http", "consul", a plugin's name.
	Name string `json:"name"`
	// Health is "ok", or what is wrong.
	Health string `json:"health"`
	// LastSwap is its last live switch, nil when there was none.
	LastSwap *Swap `json:"last_swap,omitempty"`
}

// Swap is a live switch of a plugin.
type Swap struct {
	Time  time.Time `json:"time"`
	From  string    `json:"from"`
	To    string    `json:"to"`
	Error string    `json:"error,omitempty"`
}

// Config is where the config came from and how its last reload went.
type Config struct {
	// Source is the file micro.toml was read from.
	Source string `json:"source"`
	// Loaded is when the running config was loaded.
	Loaded time.Time `json:"loaded"`
	// LastReload is the last reload attempt, nil when there was none.
	LastReload *Reload `json:"last_reload,omitempty"`
}

// Reload is one reload of the config file.
type Reload struct {
	Time time.Time `json:"time"`
	// Result is "applied", "unchanged" or "failed".
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

// FailedCall is a recent failed call, by its trace.
type FailedCall struct {
	Trace    string    `json:"trace"`
	Time     time.Time `json:"time"`
	Service  string    `json:"service"`
	Endpoint string    `json:"endpoint"`
	// Status is the failure's description, as its span recorded it.
	Status string `json:"status"`
	// Millis is how long the call took.
	Millis float64 `json:"ms"`
}
