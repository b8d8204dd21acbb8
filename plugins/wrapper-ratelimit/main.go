//go:build wasip1

// Command wrapper-ratelimit is micro's rate-limit wrapper: a token bucket per service,
// endpoint, caller or header value. A call over the limit is rejected with 429 and a
// Retry-After header. Build it with `micro wrapper build plugins/wrapper-ratelimit`.
//
// Config (its table in micro.toml):
//
//	rate = 10          # calls per second per key (required)
//	burst = 20         # calls at once; default: the rate rounded up
//	key = "service"    # or "endpoint", "caller", "header:<Name>"
//	max_keys = 10000   # buckets kept; the least recently used is dropped past it
//
// The code is package limiter's: Limiter.Handler.
package main

import (
	"github.com/microhost/micro/plugins/wrapper-ratelimit/limiter"
	"github.com/microhost/micro/sdk/wrapper"
)

func init() { wrapper.Handle(new(limiter.Limiter).Handler()) }

func main() {}
