package limiter

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/sdk/wrapper"
)

// This file is global scope: the Limiter as this micro's share of a limit that several
// micros share on a named resource.

// The values of Config.Scope.
const (
	// ScopeLocal limits the calls that this wrapper instance sees, at the config's rate.
	ScopeLocal = "local"
	// ScopeGlobal enforces this micro's share of a limit shared with other micros.
	ScopeGlobal = "global"
)

// In global scope: how often the bucket asks for its lease, in call time, and how much
// of its rate it holds by default.
const (
	AskInterval = 100 * time.Millisecond
	BurstTime   = 200 * time.Millisecond
)

// configureGlobal makes l follow c, a valid config of global scope.
func (l *Limiter) configureGlobal(c Config) {
	*l = Limiter{
		global:   true,
		resource: c.Resource,
		fallback: *c.FallbackRate,
		burstSet: float64(c.Burst),
	}
}

// validateGlobal checks a config of scope global.
func (c Config) validateGlobal() error {
	var errs []error
	switch {
	case c.Resource == "":
		errs = append(errs, errors.New(`resource: missing: global scope needs the name of the resource whose limit the micros share, e.g. "api"`))
	case !validResource(c.Resource):
		errs = append(errs, fmt.Errorf("resource: %q is not a resource name (1 to %d bytes of A-Z, a-z, 0-9, '.', '_' and '-')",
			c.Resource, abi.MaxResourceNameLen))
	}
	switch f := c.FallbackRate; {
	case f == nil:
		errs = append(errs, errors.New("fallback_rate: missing: global scope needs the rate this micro applies while it holds no lease (0 rejects every call then)"))
	case math.IsNaN(*f) || math.IsInf(*f, 0) || *f < 0:
		errs = append(errs, fmt.Errorf("fallback_rate: %v is not a rate (want calls per second >= 0; 0 rejects every call while this micro holds no lease)", *f))
	}
	if c.Rate != 0 || c.named["rate"] {
		errs = append(errs, errors.New("rate: not used in global scope: the rate is this micro's share of the resource, from the quota service (fallback_rate is the rate without one)"))
	}
	if c.Key != "" || c.named["key"] {
		errs = append(errs, errors.New("key: not used in global scope: all calls share the one bucket of the resource"))
	}
	if c.MaxKeys != 0 || c.named["max_keys"] {
		errs = append(errs, errors.New("max_keys: not used in global scope: there is one bucket, the resource's"))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("burst: %d is negative (want >= 1, or 0 for %v of the rate)", c.Burst, BurstTime))
	}
	return errors.Join(errs...)
}

// validResource reports whether s is a resource name, as wrapper.Lease takes it.
func validResource(s string) bool {
	if s == "" || len(s) > abi.MaxResourceNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// namedKeys returns the keys of a JSON object, which DecodeConfig has read.
func namedKeys(config []byte) map[string]bool {
	var obj map[string]json.RawMessage
	if json.Unmarshal(config, &obj) != nil {
		return nil
	}
	named := make(map[string]bool, len(obj))
	for k := range obj {
		named[k] = true
	}
	return named
}

// describeBurst describes the burst of global scope, for the log.
func (l *Limiter) describeBurst() string {
	if l.burstSet > 0 {
		return strconv.FormatFloat(l.burstSet, 'f', -1, 64)
	}
	return "default (" + BurstTime.String() + " of the rate)"
}

// checkGlobal is Check in global scope, at now in nanoseconds since the Unix epoch.
func (l *Limiter) checkGlobal(now int64) wrapper.Result {
	l.demand++
	// A clock that went back (a step of the system's) asks again at once.
	if since := now - l.lastAsk; !l.asked || since >= int64(AskInterval) || since < 0 {
		rate, held := wrapper.Lease(l.resource, l.demand)
		if !held {
			rate = l.fallback
		}
		l.setRate(rate, held, now, !l.asked)
		l.demand, l.asked, l.lastAsk = 0, true, now
	}
	ok, wait := l.take(&l.one, now)
	if ok {
		return wrapper.Continue()
	}
	retry := 1 // a rate of 0 gives no time; the next lease may
	if l.rate > 0 {
		retry = retryAfterSeconds(wait)
	}
	wrapper.SetReplyHeader("Retry-After", strconv.Itoa(retry))
	share := "this micro's share: "
	if !l.held {
		share = "no lease; safe share: "
	}
	return wrapper.Reject(429, fmt.Sprintf("global rate limit on resource %q exceeded (%s%s/s)", l.resource, share, formatRate(l.rate)))
}

// setRate makes the global bucket refill at rate from now on, a lease's when held, with
// the burst that goes with it; the tokens are cut to the burst. The first rate, of the
// first call, fills the bucket.
func (l *Limiter) setRate(rate float64, held bool, now int64, first bool) {
	if held != l.held {
		if held {
			wrapper.Logf(slog.LevelInfo, "ratelimit: holds a lease for resource %q: %s/s", l.resource, formatRate(rate))
		} else {
			wrapper.Logf(slog.LevelWarn, "ratelimit: lost the lease for resource %q: applying the safe share of %s/s", l.resource, formatRate(rate))
		}
		l.held = held
	}
	b := &l.one
	if !first && rate == l.rate {
		return
	}
	if !first && now > b.last {
		// The tokens until now came at the old rate.
		b.tokens = min(l.burst, b.tokens+time.Duration(now-b.last).Seconds()*l.rate)
		b.last = now
	}
	l.rate = rate
	switch {
	case rate == 0:
		l.burst = 0 // a bucket that never refills lets nothing through
	case l.burstSet > 0:
		l.burst = l.burstSet
	default:
		l.burst = max(1, math.Ceil(rate*BurstTime.Seconds()))
	}
	if first {
		b.tokens, b.last = l.burst, now
	}
	b.tokens = min(b.tokens, l.burst)
}

// formatRate formats a rate for a message: leases are shares, so to two decimals.
func formatRate(r float64) string {
	if r > 0 && r < 0.01 {
		return strconv.FormatFloat(r, 'g', 2, 64)
	}
	return strconv.FormatFloat(math.Round(r*100)/100, 'f', -1, 64)
}
