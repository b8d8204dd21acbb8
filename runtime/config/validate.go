package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/microhost/micro/runtime/broker"
)

// MaxBrokerInflight is the largest [Broker] MaxInflight allowed.
const MaxBrokerInflight = 1024

// MaxAttempts is the largest [Client] Attempts allowed.
const MaxAttempts = 10

// MaxWeight is the largest canary weight in [Route] Weights, so that sums cannot overflow.
const MaxWeight = 1_000_000

// Validate checks every rule of c and reports every broken one, joined; each is a
// *KeyError naming its key. It does not know which registry and transport plugins exist,
// and it does not open files (registry.path and token_file, a wrapper's path or source):
// the runtime checks those.
func Validate(c *Config) error {
	var v validator

	v.listen("server.ingress", c.Server.Ingress)
	v.listen("server.inbound", c.Server.Inbound)
	if c.Server.Inbound == c.Server.Ingress && !strings.HasSuffix(c.Server.Inbound, ":0") {
		v.errorf("server.inbound", "must differ from server.ingress (%s)", c.Server.Ingress)
	}
	if c.Server.Advertise != "" {
		v.advertise("server.advertise", c.Server.Advertise)
	}
	if c.Server.MaxBody <= 0 {
		v.errorf("server.max_body", "must be more than 0, got %d", c.Server.MaxBody)
	}
	v.nonNegative("server.drain_timeout", c.Server.DrainTimeout)
	v.wrapperList("server.wrappers", c.Server.Wrappers, c.Wrappers)
	if c.Server.MaxInflight < 1 {
		v.errorf("server.max_inflight", "must be at least 1, got %d", c.Server.MaxInflight)
	}
	v.positive("server.header_timeout", c.Server.HeaderTimeout)
	v.positive("server.body_timeout", c.Server.BodyTimeout)
	v.positive("server.write_timeout", c.Server.WriteTimeout)
	v.positive("server.idle_timeout", c.Server.IdleTimeout)
	v.positive("server.stream_idle_timeout", c.Server.StreamIdleTimeout)
	for i, h := range c.Server.AllowedHosts {
		if h == "" || strings.ContainsAny(h, ":/ ") || h != strings.ToLower(h) {
			v.errorf("server.allowed_hosts", "invalid host %q (element %d): want a lower-case host name without port, such as \"micro.internal\"", h, i)
		}
	}
	for i, o := range c.Server.AllowedOrigins {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			v.errorf("server.allowed_origins", "invalid origin %q (element %d): want scheme://host[:port], such as \"https://app.example.com\"", o, i)
		}
	}

	v.plugin("registry.plugin", c.Registry.Plugin)
	if h := c.Registry.SHA256; h != "" && !isSHA256(h) {
		v.errorf("registry.sha256", "invalid digest %q: want 64 hexadecimal digits", h)
	}
	v.positive("registry.ttl", c.Registry.TTL)
	v.positive("registry.heartbeat", c.Registry.Heartbeat)
	if c.Registry.Heartbeat > 0 && c.Registry.TTL > 0 && c.Registry.Heartbeat >= c.Registry.TTL {
		v.errorf("registry.heartbeat", "must be less than registry.ttl (%s), got %s", c.Registry.TTL, c.Registry.Heartbeat)
	}
	v.positive("registry.cache_ttl", c.Registry.CacheTTL)

	v.nonEmpty("transport.plugin", c.Transport.Plugin)
	v.auth("transport.auth", c.Transport.Auth)
	if h := c.Transport.SHA256; h != "" && !isSHA256(h) {
		v.errorf("transport.sha256", "invalid digest %q: want 64 hexadecimal digits", h)
	}

	v.broker(c.Broker)
	v.quota(c.Quota)
	if r := c.Telemetry.SampleRatio; !(r >= 0 && r <= 1) {
		v.errorf("telemetry.sample_ratio", "must be from 0 to 1, got %v", r)
	}
	if n := c.Telemetry.KeepTraces; n < 1 || n > 100000 {
		v.errorf("telemetry.keep_traces", "must be from 1 to 100000, got %d", n)
	}
	if e := c.Telemetry.OTLPEndpoint; e != "" {
		if _, _, err := net.SplitHostPort(e); err != nil || strings.Contains(e, "/") {
			v.errorf("telemetry.otlp_endpoint", "want host:port of an OTLP/HTTP collector, e.g. \"127.0.0.1:4318\", got %q", e)
		}
	}
	if _, ok := c.Services[c.Quota.Service]; ok && c.Quota.Serve {
		v.errorf("quota.service", "%q is also in [services]: this micro serves the quota service under that name itself", c.Quota.Service)
	}
	v.security(c.Security)

	cl := c.Client
	v.strategy("client.strategy", cl.Strategy, false)
	v.positive("client.timeout", cl.Timeout)
	v.positive("client.max_timeout", cl.MaxTimeout)
	if cl.Timeout > 0 && cl.MaxTimeout > 0 && cl.MaxTimeout < cl.Timeout {
		v.errorf("client.max_timeout", "must be at least client.timeout (%s), got %s", cl.Timeout, cl.MaxTimeout)
	}
	v.nonNegative("client.attempt_timeout", cl.AttemptTimeout)
	if cl.RetryBuffer < 0 || cl.RetryBuffer > MaxRetryBuffer {
		v.errorf("client.retry_buffer", "must be from 0 to %s, got %d bytes", MaxRetryBuffer, int64(cl.RetryBuffer))
	}
	if cl.Attempts < 1 || cl.Attempts > MaxAttempts {
		v.errorf("client.attempts", "must be from 1 to %d, got %d", MaxAttempts, cl.Attempts)
	}
	v.positive("client.backoff", cl.Backoff)
	v.positive("client.backoff_max", cl.BackoffMax)
	if cl.Backoff > 0 && cl.BackoffMax > 0 && cl.BackoffMax < cl.Backoff {
		v.errorf("client.backoff_max", "must be at least client.backoff (%s), got %s", cl.Backoff, cl.BackoffMax)
	}
	if r := cl.RetryBudget.Ratio; !(r >= 0 && r <= 1) {
		v.errorf("client.retry_budget.ratio", "must be from 0 to 1, got %v", r)
	}
	if r := cl.RetryBudget.MinPerSecond; !(r >= 0) || math.IsInf(r, 1) {
		v.errorf("client.retry_budget.min_per_second", "must be a finite number of at least 0, got %v", r)
	}
	if cl.Pool.MaxIdle < 0 {
		v.errorf("client.pool.max_idle", "must be at least 0, got %d", cl.Pool.MaxIdle)
	}
	v.positive("client.pool.idle_ttl", cl.Pool.IdleTTL)
	if cl.Pool.IdleTTL > 0 && c.Server.IdleTimeout > 0 && cl.Pool.IdleTTL >= c.Server.IdleTimeout {
		// Otherwise a server may close a connection as a client reuses it, and a call that
		// is not safe to repeat would fail rather than go elsewhere.
		v.errorf("client.pool.idle_ttl", "must be less than server.idle_timeout (%s), got %s", c.Server.IdleTimeout, cl.Pool.IdleTTL)
	}
	if cl.Ejection.ConsecutiveFailures < 1 {
		v.errorf("client.ejection.consecutive_failures", "must be at least 1, got %d", cl.Ejection.ConsecutiveFailures)
	}
	v.positive("client.ejection.base", cl.Ejection.Base)
	v.positive("client.ejection.max", cl.Ejection.Max)
	if cl.Ejection.Base > 0 && cl.Ejection.Max > 0 && cl.Ejection.Max < cl.Ejection.Base {
		v.errorf("client.ejection.max", "must be at least client.ejection.base (%s), got %s", cl.Ejection.Base, cl.Ejection.Max)
	}
	if p := cl.Ejection.MaxPercent; p < 0 || p > 100 {
		v.errorf("client.ejection.max_percent", "must be from 0 to 100, got %d", p)
	}
	if a := cl.Adaptive; a.Enabled {
		v.quantile("client.adaptive.quantile", a.Quantile)
		if !(a.Factor >= 1) || math.IsInf(a.Factor, 1) {
			v.errorf("client.adaptive.factor", "must be a finite number of at least 1, got %v", a.Factor)
		}
		v.positive("client.adaptive.min", a.Min)
	}
	if a := cl.Adaptive; a.MinSamples < 1 {
		v.errorf("client.adaptive.min_samples", "must be at least 1, got %d", a.MinSamples)
	}
	if h := cl.Hedge; h.Enabled {
		v.quantile("client.hedge.quantile", h.Quantile)
		v.nonNegative("client.hedge.min_delay", h.MinDelay)
	}
	v.positive("client.ewma_decay", cl.EWMADecay)
	v.wrapperList("client.wrappers", cl.Wrappers, c.Wrappers)

	for _, name := range slices.Sorted(maps.Keys(c.Routes)) {
		v.route(name, c.Routes[name])
	}
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		v.service(name, c.Services[name])
	}
	for _, name := range slices.Sorted(maps.Keys(c.Wrappers)) {
		v.wrapper(name, c.Wrappers[name])
	}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		v.errorf("log.level", "unknown level %q (want debug, info, warn or error)", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		v.errorf("log.format", "unknown format %q (want text or json)", c.Log.Format)
	}
	return errors.Join(v.errs...)
}

// ValidName reports whether name may name a service: 1 to 63 lower-case letters, digits,
// '-', '.' and '_', starting with a letter or digit.
func ValidName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case i > 0 && (r == '-' || r == '.' || r == '_'):
		default:
			return false
		}
	}
	return true
}

type validator struct{ errs []error }

func (v *validator) errorf(key, format string, args ...any) {
	v.errs = append(v.errs, &KeyError{Key: key, Err: fmt.Errorf(format, args...)})
}

func (v *validator) nonEmpty(key, s string) {
	if strings.TrimSpace(s) == "" {
		v.errorf(key, "must not be empty")
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.errorf(key, "must be more than 0, got %s", d)
	}
}

func (v *validator) nonNegative(key string, d time.Duration) {
	if d < 0 {
		v.errorf(key, "must not be negative, got %s", d)
	}
}

// listen checks a listen address: host:port, the host possibly empty (every interface) and
// the port possibly 0 (any free port).
func (v *validator) listen(key, addr string) {
	if _, _, err := splitHostPort(addr); err != nil {
		v.errorf(key, "invalid listen address %q: %v", addr, err)
	}
}

// advertise checks an address other processes dial: host:port with a host and a port.
func (v *validator) advertise(key, addr string) {
	host, port, err := splitHostPort(addr)
	switch {
	case err != nil:
		v.errorf(key, "invalid address %q: %v", addr, err)
	case host == "":
		v.errorf(key, "invalid address %q: want a host", addr)
	case port == 0:
		v.errorf(key, "invalid address %q: want a port other than 0", addr)
	}
}

func splitHostPort(addr string) (string, uint64, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, errors.New("want host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("invalid port %q", port)
	}
	return host, n, nil
}

func (v *validator) strategy(key, s string, optional bool) {
	switch s {
	case StrategyP2CEWMA, StrategyRoundRobin, StrategyRandom:
	case "":
		if !optional {
			v.errorf(key, "must not be empty (want p2c_ewma, round_robin or random)")
		}
	default:
		v.errorf(key, "unknown strategy %q (want p2c_ewma, round_robin or random)", s)
	}
}

func (v *validator) name(key, name string) {
	v.namedAs(key, "service", name)
}

// namedAs checks a name of what (a service or a wrapper) with ValidName.
func (v *validator) namedAs(key, what, name string) {
	if !ValidName(name) {
		v.errorf(key, "invalid %s name %q: want 1 to 63 lower-case letters, digits, '-', '.' or '_', starting with a letter or digit", what, name)
	}
}

// plugin checks a plugin name: "embedded", or a name that the runtime turns into
// plugins/registry-{name}, so 1 to 63 lower-case letters, digits and '-', starting with a
// letter or digit.
func (v *validator) plugin(key, name string) {
	if strings.TrimSpace(name) == "" {
		v.errorf(key, "must not be empty")
		return
	}
	ok := len(name) <= 63
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case i > 0 && r == '-':
		default:
			ok = false
		}
	}
	if !ok {
		v.errorf(key, "invalid plugin name %q: want \"embedded\" or 1 to 63 lower-case letters, digits or '-', starting with a letter or digit", name)
	}
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

// wrapperList checks client.wrappers or server.wrappers: names declared in [wrappers], each
// once.
func (v *validator) wrapperList(key string, names []string, declared map[string]Wrapper) {
	first := make(map[string]int, len(names))
	for i, name := range names {
		if j, dup := first[name]; dup {
			v.errorf(key, "wrapper %q is listed twice (elements %d and %d)", name, j, i)
			continue
		}
		first[name] = i
		if _, ok := declared[name]; !ok {
			v.errorf(key, "unknown wrapper %q (element %d): declare it as [wrappers.%s]", name, i, joinKey([]string{name}))
		}
	}
}

func (v *validator) wrapper(name string, w Wrapper) {
	key := joinKey([]string{"wrappers", name})
	v.namedAs(key, "wrapper", name)
	switch {
	case w.Path == "" && w.Source == "":
		v.errorf(key, "set path (a .wasm file) or source (a Go package directory micro builds)")
	case w.Path != "" && w.Source != "":
		v.errorf(key, "set path or source, not both")
	case w.Path != "" && !strings.HasSuffix(w.Path, ".wasm"):
		v.errorf(key+".path", "invalid path %q: want a .wasm file", w.Path)
	}
	if w.ABI != ABIMicro && w.ABI != ABIHTTPWasm {
		v.errorf(key+".abi", "unknown ABI %q (want %q or %q)", w.ABI, ABIMicro, ABIHTTPWasm)
	}
	for i, s := range w.Services {
		if !ValidName(s) {
			v.errorf(key+".services", "invalid service name %q (element %d)", s, i)
		}
	}
	if w.Instances < 1 || w.Instances > MaxWrapperInstances {
		v.errorf(key+".instances", "must be from 1 to %d, got %d", MaxWrapperInstances, w.Instances)
	}
	switch w.Shard {
	case ShardService, ShardNode, ShardCaller:
	default:
		v.errorf(key+".shard", "unknown shard key %q (want service, node or caller)", w.Shard)
	}
	switch w.OnTrap {
	case OnTrapOpen, OnTrapClosed:
	default:
		v.errorf(key+".on_trap", "unknown choice %q (want open or closed)", w.OnTrap)
	}
	if m := w.MemoryLimit; m < MinWrapperMemoryLimit || m > MaxWrapperMemoryLimit {
		v.errorf(key+".memory_limit", "must be from %s to %s, got %s", MinWrapperMemoryLimit, MaxWrapperMemoryLimit, m)
	}
	if t := w.Timeout; t <= 0 || t > MaxWrapperTimeout {
		v.errorf(key+".timeout", "must be more than 0 and at most %s, got %s", MaxWrapperTimeout, t)
	}
	if w.Config != nil {
		if _, err := freeValue(w.Config, true); err != nil {
			v.errs = append(v.errs, keyError("", []string{"wrappers", name, "config"}, err))
		}
	}
}

func (v *validator) metadata(key string, md map[string]string) {
	for k := range md {
		if strings.TrimSpace(k) == "" {
			v.errorf(key, "empty label name")
		}
	}
}

// quota checks [quota].
func (v *validator) quota(q Quota) {
	v.name("quota.service", q.Service)
	v.positive("quota.lease", q.Lease)
	v.positive("quota.refresh", q.Refresh)
	if q.Lease > 0 && q.Refresh >= q.Lease {
		v.errorf("quota.refresh", "must be less than quota.lease (%s), so that leases are renewed before they end, got %s", q.Lease, q.Refresh)
	}
	for _, name := range slices.Sorted(maps.Keys(q.Resources)) {
		key := joinKey([]string{"quota", "resources", name})
		if !validResource(name) {
			v.errorf(key, "invalid resource name %q: want 1 to 128 letters, digits, '-' or '_'", name)
		}
		if c := q.Resources[name]; !(c > 0) || math.IsInf(c, 1) {
			v.errorf(key, "must be a capacity of more than 0 calls per second, got %v", c)
		}
	}
}

// validResource reports whether name can name a global rate limit's resource: 1 to 128
// letters, digits, '-' or '_'.
func validResource(name string) bool {
	if name == "" || len(name) > 128 {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// quantile checks that key's value q is a quantile, in (0, 1).
func (v *validator) quantile(key string, q float64) {
	if !(q > 0 && q < 1) {
		v.errorf(key, "must be a quantile between 0 and 1, e.g. 0.99, got %v", q)
	}
}

func (v *validator) route(name string, r Route) {
	key := joinKey([]string{"routes", name})
	v.name(key, name)
	v.nonNegative(key+".attempt_timeout", r.AttemptTimeout)
	v.strategy(key+".strategy", r.Strategy, true)
	v.metadata(key+".metadata", r.Metadata)
	if len(r.Weights) > 0 {
		if r.Version != "" {
			v.errorf(key, "set version or weights, not both: version keeps a single version")
		}
		positive := false
		for _, ver := range slices.Sorted(maps.Keys(r.Weights)) {
			w := r.Weights[ver]
			wkey := joinKey([]string{"routes", name, "weights", ver})
			if strings.TrimSpace(ver) == "" {
				v.errorf(key+".weights", "empty version")
			}
			switch {
			case w < 0 || w > MaxWeight:
				v.errorf(wkey, "must be from 0 to %d, got %d", MaxWeight, w)
			case w > 0:
				positive = true
			}
		}
		if !positive {
			v.errorf(key+".weights", "at least one weight must be more than 0")
		}
	}
}

func (v *validator) service(name string, s Service) {
	key := joinKey([]string{"services", name})
	v.name(key, name)
	if name == "ui" {
		v.errorf(key, "the name %q is reserved: the ingress serves its dashboard under /ui/, so calls by path could not reach the service", name)
	}
	v.metadata(key+".metadata", s.Metadata)
	for i, e := range s.Endpoints {
		if e == "" || strings.Contains(e, "/") {
			v.errorf(key+".endpoints", "invalid endpoint %q (element %d): want a non-empty name without '/'", e, i)
		}
	}
	for _, topic := range slices.Sorted(maps.Keys(s.Subscribe)) {
		switch e := s.Subscribe[topic]; {
		case broker.ValidTopic(topic) != nil:
			v.errorf(key+".subscribe", "%v", broker.ValidTopic(topic))
		case e == "" || strings.Contains(e, "/"):
			v.errorf(joinKey([]string{"services", name, "subscribe", topic}), "invalid endpoint %q: want a non-empty name without '/'", e)
		}
	}
	for i, a := range s.Allow {
		if !ValidName(a) {
			v.errorf(key+".allow", "invalid service name %q (element %d): want 1 to 63 lower-case letters, digits, '-', '.' and '_'", a, i)
		}
	}
	if len(s.Subscribe) > 0 && broker.ValidGroup(name) != nil {
		v.errorf(key+".subscribe", "the service's name cannot name its subscription group: %v", broker.ValidGroup(name))
	}
	for i, e := range s.Idempotent {
		switch {
		case e == "" || strings.Contains(e, "/"):
			v.errorf(key+".idempotent", "invalid endpoint %q (element %d): want a non-empty name without '/'", e, i)
		case len(s.Endpoints) > 0 && !slices.Contains(s.Endpoints, e):
			v.errorf(key+".idempotent", "endpoint %q (element %d) is not one of the service's endpoints", e, i)
		}
	}
	switch {
	case s.Address == "" && len(s.Command) == 0:
		v.errorf(key, "set address (an app that runs on its own) or command (an app micro starts)")
	case s.Address != "" && len(s.Command) > 0:
		v.errorf(key, "set address or command, not both")
	case s.Address != "":
		u, err := url.Parse(s.Address)
		switch {
		case err != nil || u.Scheme != "http" || u.Host == "" || u.Opaque != "":
			v.errorf(key+".address", "invalid address %q: want an http:// URL such as \"http://127.0.0.1:9000\"", s.Address)
		case u.User != nil || u.RawQuery != "" || u.Fragment != "":
			v.errorf(key+".address", "invalid address %q: want no user, query or fragment", s.Address)
		}
		if s.Instances != 1 {
			v.errorf(key+".instances", "must be 1 for a service with an address, got %d", s.Instances)
		}
		if s.Dir != "" {
			v.errorf(key+".dir", "applies only to a service with a command")
		}
		if len(s.Env) > 0 {
			v.errorf(key+".env", "applies only to a service with a command")
		}
	default:
		if strings.TrimSpace(s.Command[0]) == "" {
			v.errorf(key+".command", "the program (first element) must not be empty")
		}
		if s.Instances < 1 {
			v.errorf(key+".instances", "must be at least 1, got %d", s.Instances)
		}
		for k := range s.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				v.errorf(key+".env", "invalid variable name %q", k)
			}
		}
	}
	if s.Health != "" && !strings.HasPrefix(s.Health, "/") {
		v.errorf(key+".health", "invalid path %q: want a path starting with '/'", s.Health)
	}
}

// broker checks [broker].
func (v *validator) broker(b Broker) {
	v.plugin("broker.plugin", b.Plugin)
	v.auth("broker.auth", b.Auth)
	if h := b.SHA256; h != "" && !isSHA256(h) {
		v.errorf("broker.sha256", "invalid digest %q: want 64 hexadecimal digits", h)
	}
	if b.MaxBytes <= 0 {
		v.errorf("broker.max_bytes", "must be more than 0, got %d", int64(b.MaxBytes))
	}
	v.positive("broker.max_age", b.MaxAge)
	if b.MaxMessage <= 0 || (b.MaxBytes > 0 && b.MaxMessage > b.MaxBytes) {
		v.errorf("broker.max_message", "must be more than 0 and at most broker.max_bytes (%s), got %d", b.MaxBytes, int64(b.MaxMessage))
	}
	if b.MaxDeliveries < 1 {
		v.errorf("broker.max_deliveries", "must be at least 1, got %d", b.MaxDeliveries)
	}
	v.positive("broker.delivery_timeout", b.DeliveryTimeout)
	v.positive("broker.backoff", b.Backoff)
	v.positive("broker.backoff_max", b.BackoffMax)
	if b.Backoff > 0 && b.BackoffMax > 0 && b.BackoffMax < b.Backoff {
		v.errorf("broker.backoff_max", "must be at least broker.backoff (%s), got %s", b.Backoff, b.BackoffMax)
	}
	if b.MaxInflight < 1 || b.MaxInflight > MaxBrokerInflight {
		v.errorf("broker.max_inflight", "must be from 1 to %d, got %d", MaxBrokerInflight, b.MaxInflight)
	}
	if !strings.Contains(b.DeadLetter, "{topic}") {
		v.errorf("broker.dead_letter", "invalid %q: want a name with {topic} in it, such as \"{topic}.dead\"", b.DeadLetter)
	} else if err := broker.ValidTopic(strings.ReplaceAll(b.DeadLetter, "{topic}", "t")); err != nil {
		v.errorf("broker.dead_letter", "invalid %q: %v", b.DeadLetter, err)
	}
	v.positive("broker.drain_timeout", b.DrainTimeout)
}

// DeadLetterTopic is the dead-letter topic of topic under [Broker] DeadLetter pattern.
func DeadLetterTopic(pattern, topic string) string {
	return strings.ReplaceAll(pattern, "{topic}", topic)
}

// security checks [security].
func (v *validator) security(s Security) {
	if s.Mode != SecurityMTLS && s.Mode != SecurityOff {
		v.errorf("security.mode", "unknown mode %q (want %q or %q)", s.Mode, SecurityMTLS, SecurityOff)
	}
	if !validTrustDomain(s.TrustDomain) {
		v.errorf("security.trust_domain", "invalid trust domain %q: want a lower-case DNS name such as \"micro.local\"", s.TrustDomain)
	}
	set := 0
	for _, f := range []string{s.CAFile, s.CertFile, s.KeyFile} {
		if f != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		v.errorf("security", "set all of ca_file, cert_file and key_file, or none (the local CA)")
	}
	v.positive("security.cert_ttl", s.CertTTL)
	if s.CertTTL > 0 && s.CertTTL < 10*time.Second {
		v.errorf("security.cert_ttl", "must be at least 10s, got %s", s.CertTTL)
	}
}

// validTrustDomain reports whether td is a lower-case DNS name of 1 to 253 bytes.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 253 {
		return false
	}
	for _, label := range strings.Split(td, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// auth checks a plugin's [*.auth] table.
func (v *validator) auth(key string, a BackendAuth) {
	n := 0
	for _, set := range []bool{a.CredentialsFile != "", a.NkeySeedFile != "", a.TokenFile != "", a.User != "" || a.PasswordFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		v.errorf(key, "set at most one of credentials_file, nkey_seed_file, token_file and user with password_file")
	}
	if (a.User == "") != (a.PasswordFile == "") {
		v.errorf(key, "set user and password_file together")
	}
	if (a.TLSCertFile == "") != (a.TLSKeyFile == "") {
		v.errorf(key, "set tls_cert_file and tls_key_file together")
	}
}
