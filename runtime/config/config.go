// Package config is micro's configuration model: what micro.toml holds, its defaults, and
// how it is loaded, validated and watched.
//
// A [Loader] layers four sources, each over the one before: [Default], the TOML file,
// MICRO_… environment variables, and flags. Unknown keys and bad values are errors that name
// the key and the file, variable or flag it came from; [Validate] then checks the rules
// between values. [Loader.Watch] reloads the file when it changes and applies only a config
// that loads and validates.
//
// MICRO_SECTION_KEY sets [section] key: the key's dotted path in upper case with dots as
// underscores, e.g. MICRO_CLIENT_RETRY_BUDGET_RATIO for [client.retry_budget] ratio. Names
// are matched against the known keys ([Keys]), not split at every underscore. Under
// MICRO_SERVICES_, MICRO_ROUTES_ and MICRO_WRAPPERS_ the name is what lies between the
// section and a known key, lower-cased: MICRO_SERVICES_GREETER_V2_INSTANCES sets
// [services.greeter_v2] instances. Lists split at commas and white space; tables (metadata,
// env, weights) are key=value entries split the same way. A wrapper's config is a free-form
// table that env and flags cannot set, whole or key by key. A MICRO_ variable outside the
// known sections is ignored (micro sets MICRO_INGRESS and MICRO_APP_ADDR for its apps); one
// under a known section that names no key is an error. Flags name keys by their dotted path
// and take values written as in env variables.
package config

import "time"

// Config is the whole of micro.toml. Field tags name the TOML keys; the env variable for a
// key is MICRO_ followed by its dotted path in upper case with dots as underscores, e.g.
// MICRO_REGISTRY_PLUGIN for [registry] plugin.
type Config struct {
	Server    Server             `koanf:"server"`
	Registry  Registry           `koanf:"registry"`
	Transport Transport          `koanf:"transport"`
	Broker    Broker             `koanf:"broker"`
	Security  Security           `koanf:"security"`
	Client    Client             `koanf:"client"`
	Quota     Quota              `koanf:"quota"`
	Telemetry Telemetry          `koanf:"telemetry"`
	Routes    map[string]Route   `koanf:"routes"`
	Services  map[string]Service `koanf:"services"`
	Wrappers  map[string]Wrapper `koanf:"wrappers"`
	Log       Log                `koanf:"log"`
}

// Server holds micro's listeners. Changing them needs a restart.
type Server struct {
	// Ingress is where local apps call services: POST /{service}/{endpoint}.
	Ingress string `koanf:"ingress"`
	// Inbound is where other micro processes reach the services fronted here.
	// Port 0 picks a free port.
	Inbound string `koanf:"inbound"`
	// Advertise is the address other micro processes use to reach Inbound, when it differs
	// from the bound address.
	Advertise string `koanf:"advertise"`
	// MaxBody is the largest request or response body accepted, e.g. "4MiB".
	MaxBody ByteSize `koanf:"max_body"`
	// DrainTimeout bounds how long a graceful stop waits for calls in flight.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
	// Wrappers names the [wrappers] that run on inbound calls, in order, before a call is
	// forwarded to its app. It applies live.
	Wrappers []string `koanf:"wrappers"`
	// MaxInflight bounds the calls (and open streams) that the ingress, and apart from it
	// the inbound server, serve at once; past it a call is answered 503 with Retry-After at
	// once. It applies live.
	MaxInflight int `koanf:"max_inflight"`
	// HeaderTimeout bounds how long a listener waits for a request's headers.
	HeaderTimeout time.Duration `koanf:"header_timeout"`
	// BodyTimeout bounds how long a listener waits for a request's body once its headers
	// have arrived.
	BodyTimeout time.Duration `koanf:"body_timeout"`
	// WriteTimeout bounds the writing of a response once the call has its answer.
	WriteTimeout time.Duration `koanf:"write_timeout"`
	// IdleTimeout is how long a listener keeps an idle keep-alive connection open.
	IdleTimeout time.Duration `koanf:"idle_timeout"`
	// StreamIdleTimeout closes a stream that carried no message either way for this long.
	// It applies live, to streams opened afterwards.
	StreamIdleTimeout time.Duration `koanf:"stream_idle_timeout"`
	// CheckOrigin makes the ingress refuse, with 403, a request whose Host is not one of
	// its own names or whose Origin is another site's: what a web page would send. Turn it
	// off only for an ingress that is meant to be called from browsers of other sites.
	// It applies live.
	CheckOrigin bool `koanf:"check_origin"`
	// AllowedHosts adds host names (without port) that the ingress answers to, besides
	// localhost and IP addresses. It applies live.
	AllowedHosts []string `koanf:"allowed_hosts"`
	// AllowedOrigins adds origins, such as "https://app.example.com", whose pages may call
	// the ingress. It applies live.
	AllowedOrigins []string `koanf:"allowed_origins"`
}

// Registry selects and configures the registry.
type Registry struct {
	// Plugin names the registry: "embedded" is the in-process default.
	Plugin string `koanf:"plugin"`
	// Dir is where the embedded registry keeps its entries; several micro processes on one
	// machine share it. Empty means a directory under the user's cache or temp directory.
	Dir string `koanf:"dir"`
	// TTL is how long a node stays registered without a heartbeat.
	TTL time.Duration `koanf:"ttl"`
	// Heartbeat is how often micro refreshes its nodes; it must be less than TTL.
	Heartbeat time.Duration `koanf:"heartbeat"`
	// CacheTTL is how long a cached service is served without a refresh from the registry
	// before it is refetched. Stale entries are still served while the registry errs.
	CacheTTL time.Duration `koanf:"cache_ttl"`
	// Address is the backend of a registry plugin, e.g. "127.0.0.1:8500" for consul. Empty
	// means the plugin's own default (consul reads CONSUL_HTTP_ADDR).
	Address string `koanf:"address"`
	// Datacenter is the backend's datacenter, for plugins that have one.
	Datacenter string `koanf:"datacenter"`
	// TokenFile is a file holding the backend's token. The token itself never appears in
	// micro.toml; without a file, consul reads CONSUL_HTTP_TOKEN. Tokens are never logged.
	TokenFile string `koanf:"token_file"`
	// Path is the plugin's executable. Empty means micro builds plugins/registry-{plugin}
	// from source on first use and caches the binary.
	Path string `koanf:"path"`
	// SHA256 pins the plugin executable: micro refuses to start a binary with another digest.
	SHA256 string `koanf:"sha256"`
}

// Transport selects the transport between micro processes. A change applies live: micro
// listens on the new transport and re-registers its nodes there, and keeps the old
// listener for server.drain_timeout.
type Transport struct {
	// Plugin names the transport: "http" is the in-process default; another name runs the
	// plugin plugins/transport-{plugin}, e.g. "nats".
	Plugin string `koanf:"plugin"`
	// URL is the plugin's backend, e.g. "nats://127.0.0.1:4222"; empty means its default.
	URL string `koanf:"url"`
	// Path is the plugin's executable. Empty means micro builds
	// plugins/transport-{plugin} from source on first use and caches the binary.
	Path string `koanf:"path"`
	// SHA256 pins the plugin executable: micro refuses to start a binary with another digest.
	SHA256 string `koanf:"sha256"`
	// Auth is how the plugin proves itself to its backend: [transport.auth].
	Auth BackendAuth `koanf:"auth"`
}

// BackendAuth is how a plugin authenticates to its backend (NATS) and secures its
// connection: [transport.auth] and [broker.auth]. Secrets come only from the files named
// here, which the plugin reads; micro never logs their contents. At most one of
// CredentialsFile, NkeySeedFile, TokenFile and User may be set.
type BackendAuth struct {
	// CredentialsFile is a NATS credentials file (.creds: a user JWT and its nkey seed).
	CredentialsFile string `koanf:"credentials_file"`
	// NkeySeedFile holds a NATS user's nkey seed.
	NkeySeedFile string `koanf:"nkey_seed_file"`
	// TokenFile holds the backend's token.
	TokenFile string `koanf:"token_file"`
	// User names the user whose password PasswordFile holds.
	User         string `koanf:"user"`
	PasswordFile string `koanf:"password_file"`
	// TLSCAFile is a PEM bundle that verifies the backend's certificate; empty means the
	// system's roots.
	TLSCAFile string `koanf:"tls_ca_file"`
	// TLSCertFile and TLSKeyFile are the certificate and key the plugin shows the backend
	// (mutual TLS); both or neither.
	TLSCertFile string `koanf:"tls_cert_file"`
	TLSKeyFile  string `koanf:"tls_key_file"`
	// TLSRequired requires TLS even when the URL does not ask for it.
	TLSRequired bool `koanf:"tls_required"`
}

// Broker holds where published messages are kept until delivered, and how micro delivers
// them to the services that subscribe. Changing the broker (plugin, dir, url, path,
// sha256 and the limits) switches brokers live; the delivery settings apply at once.
type Broker struct {
	// Plugin names the broker: "embedded" is the in-process default, kept on disk and
	// shared by the micro processes of one machine; another name runs the plugin
	// plugins/broker-{plugin}, e.g. "nats" (NATS JetStream).
	Plugin string `koanf:"plugin"`
	// Dir is where the embedded broker keeps its messages. Empty means a directory under
	// the user's cache or temp directory, beside the embedded registry's.
	Dir string `koanf:"dir"`
	// URL is the plugin's backend, e.g. "nats://127.0.0.1:4222"; empty means its default.
	URL string `koanf:"url"`
	// Path is the plugin's executable. Empty means micro builds plugins/broker-{plugin}
	// from source on first use and caches the binary.
	Path string `koanf:"path"`
	// SHA256 pins the plugin executable: micro refuses to start a binary with another digest.
	SHA256 string `koanf:"sha256"`
	// Auth is how the plugin proves itself to its backend: [broker.auth].
	Auth BackendAuth `koanf:"auth"`
	// MaxBytes bounds the store, e.g. "1GiB": a publish to a full store is refused with 503.
	MaxBytes ByteSize `koanf:"max_bytes"`
	// MaxAge is how long an undelivered message is kept at most.
	MaxAge time.Duration `koanf:"max_age"`
	// MaxMessage bounds one message, its body and headers, e.g. "1MiB"; a larger publish
	// is refused with 413.
	MaxMessage ByteSize `koanf:"max_message"`
	// MaxDeliveries is how many times a message is delivered to a subscribing service that
	// fails it before it goes to the dead-letter topic.
	MaxDeliveries int `koanf:"max_deliveries"`
	// DeliveryTimeout is the budget of one delivery, the call that carries a message to a
	// subscriber.
	DeliveryTimeout time.Duration `koanf:"delivery_timeout"`
	// Backoff is the wait before the first redelivery of a failed message; it doubles, with
	// jitter, up to BackoffMax.
	Backoff    time.Duration `koanf:"backoff"`
	BackoffMax time.Duration `koanf:"backoff_max"`
	// MaxInflight bounds the deliveries in flight at once for each subscription of a
	// service fronted here.
	MaxInflight int `koanf:"max_inflight"`
	// DeadLetter names the dead-letter topic of a topic: "{topic}" stands for the topic.
	DeadLetter string `koanf:"dead_letter"`
	// DrainTimeout bounds how long the old broker's subscriptions go on delivering what it
	// holds after a switch, before it is closed; what is left stays in its store.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
}

// Security is how micro processes prove who they are to each other. Changing it needs a
// restart; the certificate files it names are reloaded when they change.
type Security struct {
	// Mode is "mtls" (the default: every inbound connection needs a client certificate of
	// the trust domain, and calls between micros are encrypted) or "off" (plain HTTP, no
	// caller identity; for local experiments).
	Mode string `koanf:"mode"`
	// TrustDomain names the fleet whose micros trust each other, e.g. "micro.local"; it is
	// the host of every SPIFFE ID: spiffe://{trust_domain}/service/{name}.
	TrustDomain string `koanf:"trust_domain"`
	// Dir is where the machine's local certificate authority lives when no files are set:
	// micro creates it on first start. Empty means a directory under the user's cache or
	// temp directory.
	Dir string `koanf:"dir"`
	// CAFile, CertFile and KeyFile, all three or none, name PEM files: the trust bundle,
	// this micro's certificate chain and its key, e.g. from cert-manager, Vault, step-ca or
	// `micro ca issue`. They replace the local CA.
	CAFile   string `koanf:"ca_file"`
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// CertTTL is the life of the certificates the local CA issues, at least 10s; micro
	// renews them at two thirds of it.
	CertTTL time.Duration `koanf:"cert_ttl"`
}

// The choices of [Security] Mode.
const (
	SecurityMTLS = "mtls"
	SecurityOff  = "off"
)

// Quota configures global rate limits: the quota service that shares resources' capacities
// out among the micros that use them (runtime/quota), in leases that the rate-limit
// wrapper's global scope enforces. Applies live.
type Quota struct {
	// Service is the name the quota service is registered and found under.
	Service string `koanf:"service"`
	// Serve makes this micro an instance of the quota service. Its instances elect one
	// master through the registry; the others redirect to it.
	Serve bool `koanf:"serve"`
	// Lease is how long a lease lasts; Refresh is how often clients renew theirs. An
	// instance tells its clients both.
	Lease   time.Duration `koanf:"lease"`
	Refresh time.Duration `koanf:"refresh"`
	// Resources are the capacities the service shares out, in calls per second, by
	// resource name.
	Resources map[string]float64 `koanf:"resources"`
}

// Telemetry configures traces: micro takes part in W3C Trace Context, records the spans
// of the calls it samples, keeps the recent ones in memory, and exports them over OTLP
// when an endpoint is set.
type Telemetry struct {
	// OTLPEndpoint is the host:port of an OTLP/HTTP collector (Jaeger's is port 4318);
	// "" exports nothing. Needs a restart.
	OTLPEndpoint string `koanf:"otlp_endpoint"`
	// SampleRatio is the share of new traces recorded, from 0 to 1; a caller's decision,
	// in its traceparent header, is followed. Needs a restart.
	SampleRatio float64 `koanf:"sample_ratio"`
	// KeepTraces is how many recent traces are kept in memory. Needs a restart.
	KeepTraces int `koanf:"keep_traces"`
}

// Client configures outgoing calls.
type Client struct {
	// Strategy is p2c_ewma, round_robin or random.
	Strategy string `koanf:"strategy"`
	// Timeout is the budget of a call that carries no Micro-Timeout header.
	Timeout time.Duration `koanf:"timeout"`
	// MaxTimeout is the longest budget a caller may ask for with Micro-Timeout. The
	// ingress refuses a longer one with 400; the inbound server cuts a longer one to it.
	MaxTimeout time.Duration `koanf:"max_timeout"`
	// AttemptTimeout bounds one attempt of a call that is safe to repeat (its endpoint is
	// declared idempotent, or the caller says so), so that a node that hangs leaves budget
	// for another; 0 leaves it to Adaptive, and with that off gives every attempt the
	// whole remaining budget.
	AttemptTimeout time.Duration `koanf:"attempt_timeout"`
	// Adaptive derives attempt timeouts from the latencies seen per service and endpoint.
	Adaptive Adaptive `koanf:"adaptive"`
	// Hedge sends a second attempt of a slow call that is safe to repeat to another node.
	Hedge Hedge `koanf:"hedge"`
	// Attempts is the most attempts one call makes, the first included.
	Attempts int `koanf:"attempts"`
	// RetryBuffer is how much of a streamed request body a call keeps so that it can be
	// sent again to another node: a call whose body went out past it is not retried.
	RetryBuffer ByteSize `koanf:"retry_buffer"`
	// Backoff is the base of the jittered exponential backoff between attempts.
	Backoff time.Duration `koanf:"backoff"`
	// BackoffMax caps one backoff.
	BackoffMax time.Duration `koanf:"backoff_max"`
	// RetryBudget limits retries to a share of requests plus a floor per second.
	RetryBudget RetryBudget `koanf:"retry_budget"`
	// Pool bounds the idle connections kept per node.
	Pool Pool `koanf:"pool"`
	// Ejection takes failing nodes out of selection for a while.
	Ejection Ejection `koanf:"ejection"`
	// EWMADecay is the decay time of the peak-EWMA latency estimate.
	EWMADecay time.Duration `koanf:"ewma_decay"`
	// Wrappers names the [wrappers] that run on every attempt of an outgoing call, in order,
	// after a node is selected.
	Wrappers []string `koanf:"wrappers"`
}

// Adaptive is how attempt timeouts follow latencies: an attempt of a call that is safe to
// repeat, with another attempt left, gets Factor times the Quantile of its endpoint's
// recent latencies (the answers its nodes' apps gave), at least Min, at most the budget
// left.
type Adaptive struct {
	Enabled  bool          `koanf:"enabled"`
	Quantile float64       `koanf:"quantile"`
	Factor   float64       `koanf:"factor"`
	Min      time.Duration `koanf:"min"`
	// MinSamples is how many answers an endpoint must have had before its latencies set
	// attempt timeouts and hedge delays.
	MinSamples int `koanf:"min_samples"`
}

// Hedge is when a call that is safe to repeat sends a second attempt to another node: when
// the first has not answered by the Quantile of its endpoint's recent latencies (at least
// MinDelay). The first answer wins and the other attempt is cancelled. A hedge is charged
// to the retry budget, so hedges never add more load than retries may.
type Hedge struct {
	Enabled  bool          `koanf:"enabled"`
	Quantile float64       `koanf:"quantile"`
	MinDelay time.Duration `koanf:"min_delay"`
}

// RetryBudget is Finagle's retry budget: retries may add Ratio of the requests, plus
// MinPerSecond retries per second.
type RetryBudget struct {
	// Ratio is the share of requests that may be retried, in [0, 1].
	Ratio float64 `koanf:"ratio"`
	// MinPerSecond is the number of retries per second allowed whatever the ratio.
	MinPerSecond float64 `koanf:"min_per_second"`
}

// Pool bounds pooled connections per node.
type Pool struct {
	// MaxIdle is the most idle connections kept per node; 0 keeps none.
	MaxIdle int `koanf:"max_idle"`
	// IdleTTL closes a connection that stayed idle this long.
	IdleTTL time.Duration `koanf:"idle_ttl"`
}

// Ejection is outlier ejection: after ConsecutiveFailures failures in a row a node is out for
// Base × n (n counts its ejections), capped at Max, and never more than MaxPercent of a
// service's nodes are out at once.
type Ejection struct {
	// ConsecutiveFailures is how many failures in a row eject a node.
	ConsecutiveFailures int `koanf:"consecutive_failures"`
	// Base is the out-time of a node's first ejection.
	Base time.Duration `koanf:"base"`
	// Max caps the out-time.
	Max time.Duration `koanf:"max"`
	// MaxPercent is the largest share of a service's nodes, in percent, that may be out.
	MaxPercent int `koanf:"max_percent"`
}

// Route narrows and weighs the nodes of one called service; its key in [routes] is the
// service name.
type Route struct {
	// Version keeps only nodes of this version.
	Version string `koanf:"version"`
	// Metadata keeps only nodes whose metadata has all these labels.
	Metadata map[string]string `koanf:"metadata"`
	// Weights splits calls between versions, e.g. {"1.0.0" = 90, "1.1.0" = 10}.
	Weights map[string]int `koanf:"weights"`
	// Strategy overrides [client] strategy for this service.
	Strategy string `koanf:"strategy"`
	// AttemptTimeout, when set, is the attempt timeout of this service's calls that are
	// safe to repeat, in place of client.attempt_timeout and client.adaptive.
	AttemptTimeout time.Duration `koanf:"attempt_timeout"`
	// Hedge lets client.hedge hedge this service's calls; true unless set.
	Hedge bool `koanf:"hedge"`
}

// Service is a service that this micro fronts: its app and how it is registered.
type Service struct {
	// Version is registered with every node of the service.
	Version string `koanf:"version"`
	// Metadata is registered with every node of the service.
	Metadata map[string]string `koanf:"metadata"`
	// Endpoints the service serves; empty means any.
	Endpoints []string `koanf:"endpoints"`
	// Idempotent lists the endpoints that are safe to repeat: a failed call to one of them
	// may be retried on another node even when it may have reached the app. It travels with
	// the registration, so callers learn it. Calls to other endpoints run at most once
	// unless they provably never reached an app.
	Idempotent []string `koanf:"idempotent"`
	// Allow names the services whose callers may call this one; their identity comes from
	// their certificates. Empty admits every caller of the trust domain.
	Allow []string `koanf:"allow"`
	// Subscribe maps the topics the service consumes to the endpoint each is delivered to,
	// e.g. {"orders.created" = "Orders.OnCreated"}. Each message goes to one instance of
	// the service, as a POST to that endpoint, at least once.
	Subscribe map[string]string `koanf:"subscribe"`
	// Address is the base URL of an app that runs on its own, e.g. "http://127.0.0.1:9000".
	// Exactly one of Address and Command is set.
	Address string `koanf:"address"`
	// Command starts the app; micro supervises it and restarts it when it exits. The app
	// reads its listen address from the PORT and MICRO_APP_ADDR env variables.
	Command []string `koanf:"command"`
	// Dir is the working directory of Command; relative paths are from micro.toml's directory.
	Dir string `koanf:"dir"`
	// Env adds variables to Command's environment.
	Env map[string]string `koanf:"env"`
	// Instances is how many copies of Command run; each is a node.
	Instances int `koanf:"instances"`
	// Health is the path micro polls to see that an instance is ready, e.g. "/health".
	// Empty means the instance is ready once its port accepts connections.
	Health string `koanf:"health"`
}

// Wrapper is a WebAssembly middleware module, named in client.wrappers or server.wrappers.
type Wrapper struct {
	// Path is a .wasm file. Exactly one of Path and Source is set; relative paths are from
	// micro.toml's directory.
	Path string `koanf:"path"`
	// Source is a Go package directory that micro builds to .wasm on first use, and again
	// when its sources change.
	Source string `koanf:"source"`
	// ABI is the contract the guest is built for: "micro" (abi/wrapper, sdk/wrapper) or
	// "http-wasm" (the http-wasm handler ABI, https://http-wasm.io).
	ABI string `koanf:"abi"`
	// Services limits the wrapper to calls to these services; empty means every service.
	Services []string `koanf:"services"`
	// Instances is how many guest instances run; calls with the same shard key always go
	// to the same instance, so a stateful guest stays exact.
	Instances int `koanf:"instances"`
	// Shard is the key that picks an instance: service, node or caller.
	Shard string `koanf:"shard"`
	// OnTrap is what a call gets when the guest traps, runs out of time or memory: "open"
	// lets it through, "closed" rejects it with a 503.
	OnTrap string `koanf:"on_trap"`
	// MemoryLimit caps the guest's linear memory, e.g. "64MiB".
	MemoryLimit ByteSize `koanf:"memory_limit"`
	// Timeout bounds one guest call; a guest that runs longer is stopped and replaced.
	Timeout time.Duration `koanf:"timeout"`
	// Config is the wrapper's own settings, handed to the guest at init as JSON. It is
	// free-form: Load gives it TOML's types (string, bool, int64, float64, []any and
	// map[string]any, durations left as strings) and checks none of its keys.
	Config map[string]any `koanf:"config"`
}

// Log configures micro's log.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
	// Format is text or json.
	Format string `koanf:"format"`
}
