// Package limiter is the logic of micro's rate-limit wrapper. In local scope (the
// default) it keeps a token bucket per key, with the key taken from the call (its service,
// endpoint, caller or a header), and a rate of its config. In global scope it enforces
// this micro's share of a limit that several micros share on a named resource: one
// bucket, whose rate is the lease that micro holds from the quota service
// (wrapper.Lease), or the config's fallback_rate while it holds none.
//
// A bucket holds up to burst tokens, refills at rate tokens per second, and a call takes
// one token or, when there is none, takes nothing and is rejected: the semantics of
// golang.org/x/time/rate's Limiter.AllowN, which a test checks this against. The bucket is
// a float and a time in nanoseconds rather than an x/time/rate Limiter, because the
// wrapper runs as a Go guest in WebAssembly, where that Limiter's AllowN (a mutex, a defer
// and time.Time arithmetic) costs about 260 ns: more than the rest of the call.
//
// In global scope the bucket counts every call it sees, allowed or rejected, as demand. On
// its first call, and then on the first call once [AskInterval] of call time (wrapper.Now)
// has passed since it last asked, it asks micro for the lease with the demand counted
// since, and sets its rate: so most calls make no host call. Unless the config sets a
// burst, the bucket holds [BurstTime] of its rate, at least 1 call; when the rate changes,
// so does the burst, and the tokens are cut to it. A rate of 0 (a lease of 0, or a
// fallback_rate of 0 while there is no lease) rejects every call.
//
// The wrapper's code is [Limiter.Handler]: the wrapper's main package registers it with
// wrapper.Handle, and the tests run it natively with sdk/wrapper/wrappertest. A Limiter
// takes sdk/wrapper's Request as it is rather than an interface of its own, because
// converting a Request to another interface type costs a runtime itab lookup per call in
// a guest (Go caches type assertions only on native architectures), over 50 ns. A Limiter
// is not safe for concurrent use: the wrapper host serializes calls into one guest
// instance.
package limiter

import (
	"container/list"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/microhost/micro/sdk/wrapper"
)

// DefaultMaxKeys is how many keys a Limiter tracks when Config.MaxKeys is 0.
const DefaultMaxKeys = 10000

// Config is the wrapper's table in micro.toml, as the guest receives it (JSON).
type Config struct {
	// Rate is how many calls per second a key may make in the long run. Required in
	// local scope, > 0; not allowed in global scope, where the rate is the lease's.
	Rate float64 `json:"rate"`
	// Burst is how many calls a key (in global scope, the resource) may make at once. 0
	// means the default: in local scope the rate rounded up, in global scope BurstTime
	// of the rate rounded up; at least 1 either way.
	Burst int `json:"burst"`
	// Key is what a bucket belongs to: "service", "endpoint" (service and endpoint),
	// "caller", or "header:<Name>". Empty means "service". Calls without the caller or
	// the header share the bucket of the empty value. Local scope only.
	Key string `json:"key"`
	// MaxKeys bounds how many buckets are kept; past it the least recently used bucket is
	// dropped (a dropped key starts again with a full bucket). 0 means DefaultMaxKeys.
	// Local scope only.
	MaxKeys int `json:"max_keys"`
	// Scope is ScopeLocal (the default, also for "") or ScopeGlobal.
	Scope string `json:"scope"`
	// Resource names the limit that this micro shares with others: 1 to 128 bytes of A-Z,
	// a-z, 0-9, '.', '_' and '-', e.g. "api". Required in global scope, and only there.
	Resource string `json:"resource"`
	// FallbackRate is the rate, in calls per second, that this micro applies while it
	// holds no lease for Resource: none yet, or the last one expired while the quota
	// service was out of reach. 0 rejects every call then (fails closed). Required in
	// global scope, >= 0, and only there.
	FallbackRate *float64 `json:"fallback_rate"`

	// named holds the keys that a config table of global scope names, when it was
	// decoded from one: rate, key and max_keys are errors there even with their zero
	// values.
	named map[string]bool
}

// keyKind says which part of a call names its bucket.
type keyKind int

const (
	byService keyKind = iota
	byEndpoint
	byCaller
	byHeader
)

// Limiter holds one token bucket per key. The zero Limiter has no config: [New] makes a
// configured one, and [Limiter.Configure] configures one.
type Limiter struct {
	rate    float64 // tokens per second
	burst   float64
	kind    keyKind
	header  string // for byHeader
	maxKeys int

	buckets map[string]*list.Element // of *bucket
	lru     list.List                // front is most recently used
	// last is the bucket of the last call, found without a map lookup when the next call
	// has the same key, as most do. It is at the front of lru.
	last *bucket
	// The last key made for key "endpoint", from these service and endpoint: a call with
	// the same ones reuses it rather than allocate it again.
	keyService, keyEndpoint, endpointKey string

	// Global scope, when global is set: the one bucket, whose rate and burst follow the
	// lease of resource.
	global   bool
	resource string
	fallback float64 // the rate without a lease
	burstSet float64 // the config's burst, or 0 for BurstTime of the rate
	one      bucket
	held     bool   // the rate is a lease's, not the fallback
	demand   uint64 // the calls seen since the last ask
	asked    bool   // since Configure
	lastAsk  int64  // when, in nanoseconds since the Unix epoch
}

// bucket is one key's token bucket.
type bucket struct {
	key    string
	tokens float64 // at time last
	last   int64   // when a token was last taken, in nanoseconds since the Unix epoch
}

// New returns a Limiter for a config, or an error naming the field that is wrong.
func New(c Config) (*Limiter, error) {
	l := new(Limiter)
	if err := l.Configure(c); err != nil {
		return nil, err
	}
	return l, nil
}

// Configure makes l follow c, with no buckets, or returns an error naming each field of c
// that is wrong and leaves l as it was.
func (l *Limiter) Configure(c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	if c.Scope == ScopeGlobal {
		l.configureGlobal(c)
		return nil
	}
	*l = Limiter{
		rate:    c.Rate,
		burst:   float64(c.Burst),
		maxKeys: c.MaxKeys,
		buckets: make(map[string]*list.Element),
	}
	if l.burst == 0 {
		l.burst = max(1, math.Ceil(c.Rate))
	}
	if l.maxKeys == 0 {
		l.maxKeys = DefaultMaxKeys
	}
	switch key := c.Key; {
	case key == "" || key == "service":
		l.kind = byService
	case key == "endpoint":
		l.kind = byEndpoint
	case key == "caller":
		l.kind = byCaller
	default: // validated: header:<Name>
		l.kind = byHeader
		l.header = strings.TrimPrefix(key, "header:")
	}
	return nil
}

// Handler returns the rate-limit wrapper's code, over l: Init decodes the wrapper's config
// (JSON, with unknown fields refused) and configures l with it, and OnRequest checks each
// call at the time micro gives it (wrapper.Now).
func (l *Limiter) Handler() wrapper.Handler {
	return wrapper.Handler{
		Init: func(config []byte) error {
			var c Config
			if err := wrapper.DecodeConfig(config, &c); err != nil {
				return err
			}
			if c.Scope == ScopeGlobal {
				c.named = namedKeys(config)
			}
			if err := l.Configure(c); err != nil {
				return fmt.Errorf("ratelimit config: %w", err)
			}
			if l.global {
				wrapper.Logf(slog.LevelDebug, "ratelimit: global scope, resource %q, fallback_rate %s/s, burst %s",
					l.resource, formatRate(l.fallback), l.describeBurst())
			} else {
				// As before global scope came.
				wrapper.Logf(slog.LevelDebug, "ratelimit: %+v", localConfig{c.Rate, c.Burst, c.Key, c.MaxKeys})
			}
			return nil
		},
		// What Check does, with the branch on the scope taken here: taken in Check, it
		// made local scope's calls about 15 ns slower in a guest.
		OnRequest: func(r wrapper.Request) wrapper.Result {
			if l.global {
				return l.checkGlobal(wrapper.Now().UnixNano())
			}
			return l.checkLocal(r, wrapper.Now())
		},
	}
}

// localConfig is a Config's fields of local scope, as the wrapper logs them.
type localConfig struct {
	Rate    float64
	Burst   int
	Key     string
	MaxKeys int
}

func (c Config) validate() error {
	switch c.Scope {
	case "", ScopeLocal:
	case ScopeGlobal:
		return c.validateGlobal()
	default:
		return fmt.Errorf("scope: unknown scope %q (want %q, the default, or %q)", c.Scope, ScopeLocal, ScopeGlobal)
	}
	var errs []error
	if c.Resource != "" {
		errs = append(errs, fmt.Errorf("resource: only for scope %q, a limit shared with other micros", ScopeGlobal))
	}
	if c.FallbackRate != nil {
		errs = append(errs, fmt.Errorf("fallback_rate: only for scope %q, a limit shared with other micros", ScopeGlobal))
	}
	if math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate <= 0 {
		errs = append(errs, fmt.Errorf("rate: %v is not a rate (want calls per second > 0, e.g. 10 or 0.5)", c.Rate))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("burst: %d is negative (want >= 1, or 0 for the rate rounded up)", c.Burst))
	}
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("max_keys: %d is negative (want >= 1, or 0 for %d)", c.MaxKeys, DefaultMaxKeys))
	}
	switch key := c.Key; key {
	case "", "service", "endpoint", "caller":
	default:
		name, ok := strings.CutPrefix(key, "header:")
		if !ok {
			errs = append(errs, fmt.Errorf(`key: unknown key %q (want "service", "endpoint", "caller" or "header:<Name>")`, key))
		} else if !validHeaderName(name) {
			errs = append(errs, fmt.Errorf(`key: %q has no valid header name after "header:" (e.g. "header:X-User")`, key))
		}
	}
	return errors.Join(errs...)
}

// validHeaderName reports whether s is an HTTP header name (an RFC 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// Key returns the bucket key of a call.
func (l *Limiter) Key(c wrapper.Request) string {
	switch l.kind {
	case byEndpoint:
		s, e := c.Service(), c.Endpoint()
		if s != l.keyService || e != l.keyEndpoint || l.endpointKey == "" {
			l.keyService, l.keyEndpoint, l.endpointKey = s, e, s+"/"+e
		}
		return l.endpointKey
	case byCaller:
		return c.Caller()
	case byHeader:
		v, _ := c.Header(l.header)
		return v
	default:
		return c.Service()
	}
}

// describe names a key for messages, such as `service "greeter"` or `header X-User "ada"`.
func (l *Limiter) describe(key string) string {
	switch l.kind {
	case byEndpoint:
		return fmt.Sprintf("endpoint %q", key)
	case byCaller:
		return fmt.Sprintf("caller %q", key)
	case byHeader:
		return fmt.Sprintf("header %s %q", l.header, key)
	default:
		return fmt.Sprintf("service %q", key)
	}
}

// Check takes a token for the call's key (in global scope, from the resource's bucket) at
// time now and lets the call continue, or rejects it with 429 and sets the reply's
// Retry-After header (wrapper.SetReplyHeader): the whole number of seconds, at least 1,
// after which a call with the same key would be allowed at the present rate. It is what
// the wrapper's OnRequest does; in global scope it asks for the lease (wrapper.Lease) now
// and then.
func (l *Limiter) Check(c wrapper.Request, now time.Time) wrapper.Result {
	if l.global {
		return l.checkGlobal(now.UnixNano())
	}
	return l.checkLocal(c, now)
}

// checkLocal is Check in local scope.
func (l *Limiter) checkLocal(c wrapper.Request, now time.Time) wrapper.Result {
	key := l.Key(c)
	ok, wait := l.Allow(key, now)
	if ok {
		return wrapper.Continue()
	}
	wrapper.SetReplyHeader("Retry-After", strconv.Itoa(retryAfterSeconds(wait)))
	return wrapper.Reject(429, fmt.Sprintf("rate limit of %s/s exceeded for %s",
		strconv.FormatFloat(l.rate, 'g', -1, 64), l.describe(key)))
}

// Allow takes a token from key's bucket at time now. When the bucket is empty it takes
// nothing and returns how long until a token is there.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, wait time.Duration) {
	b := l.last
	if b == nil || !sameKey(b.key, key) {
		b = l.bucket(key, now.UnixNano())
	}
	return l.take(b, now.UnixNano())
}

// sameKey reports whether a and b are equal. A call's key is most often the very string
// of the last call's (sdk/wrapper keeps a field's string while the field does not
// change), which it tells without calling the runtime to compare bytes.
func sameKey(a, b string) bool {
	return len(a) == len(b) && (unsafe.StringData(a) == unsafe.StringData(b) || a == b)
}

// take takes a token from b at now, in nanoseconds since the Unix epoch, as
// x/time/rate's AllowN(now, 1) does: the bucket refills at rate for the time since its
// last token (or not at all when the clock went back), up to burst; a wait that rounds to
// 0 ns counts as none.
func (l *Limiter) take(b *bucket, now int64) (ok bool, wait time.Duration) {
	last := min(b.last, now)
	tokens := b.tokens + time.Duration(now-last).Seconds()*l.rate
	if tokens > l.burst { // not min, which is a runtime call for floats in wasm
		tokens = l.burst
	}
	tokens--
	if tokens < 0 {
		switch ns := -tokens / l.rate * float64(time.Second); {
		case ns >= math.MaxInt64:
			return false, time.Duration(math.MaxInt64)
		case ns >= 1:
			return false, time.Duration(math.Ceil(ns))
		}
	}
	b.tokens, b.last = tokens, now
	return true, 0
}

// Len returns how many keys have a bucket.
func (l *Limiter) Len() int { return len(l.buckets) }

// bucket returns key's bucket, making a full one at now (and dropping the least recently
// used one past maxKeys) when there is none, and makes it the last used.
func (l *Limiter) bucket(key string, now int64) *bucket {
	if e, ok := l.buckets[key]; ok {
		l.lru.MoveToFront(e)
		l.last = e.Value.(*bucket)
		return l.last
	}
	for len(l.buckets) >= l.maxKeys {
		oldest := l.lru.Back()
		delete(l.buckets, oldest.Value.(*bucket).key)
		l.lru.Remove(oldest)
	}
	l.last = &bucket{key: key, tokens: l.burst, last: now}
	l.buckets[key] = l.lru.PushFront(l.last)
	return l.last
}

// retryAfterSeconds rounds a wait up to whole seconds, at least 1.
func retryAfterSeconds(wait time.Duration) int {
	s := math.Ceil(wait.Seconds())
	return int(max(1, min(s, math.MaxInt32)))
}
