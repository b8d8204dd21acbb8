//go:build wasip1

// Command wrapper-ratelimit is micro's rate-limit wrapper. In local scope (the default) it
// keeps a token bucket per service, endpoint, caller or header value. In global scope it
// enforces this micro's share of a limit that several micros share on a named resource:
// the share is a lease that micro holds from the quota service, asked for every 100 ms of
// call time, and the wrapper applies a safe share of its own while micro holds none. A
// call over the limit is rejected with 429 and a Retry-After header. Build it with
// `micro wrapper build plugins/wrapper-ratelimit`.
//
// Config (its table in micro.toml), in local scope:
//
//	scope = "local"    # the default
//	rate = 10          # calls per second per key (required)
//	burst = 20         # calls at once; default: the rate rounded up
//	key = "service"    # or "endpoint", "caller", "header:<Name>"
//	max_keys = 10000   # buckets kept; the least recently used is dropped past it
//
// In global scope (rate, key and max_keys are errors there: the rate is the lease's, and
// all calls share the resource's one bucket):
//
//	scope = "global"
//	resource = "api"     # the shared limit's name: 1-128 bytes of [A-Za-z0-9._-] (required)
//	fallback_rate = 10   # calls per second while this micro holds no lease; 0 rejects
//	                     # every call then (required)
//	burst = 20           # calls at once; default: 200 ms of the rate, rounded up
//
// A rejection in global scope says whose share ran out, e.g. `global rate limit on
// resource "api" exceeded (this micro's share: 120/s)`, or `(no lease; safe share: 10/s)`.
//
// The code is package limiter's: Limiter.Handler.
package main

import (
	"github.com/microhost/micro/plugins/wrapper-ratelimit/limiter"
	"github.com/microhost/micro/sdk/wrapper"
)

func init() { wrapper.Handle(new(limiter.Limiter).Handler()) }

func main() {}
