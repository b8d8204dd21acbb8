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
package main

import (
	"fmt"
	"log/slog"
	"strconv"

	"github.com/microhost/micro/plugins/wrapper-ratelimit/limiter"
	"github.com/microhost/micro/sdk/wrapper"
)

// lim is the instance's limiter; calls into one instance never overlap.
var lim *limiter.Limiter

func init() {
	wrapper.Handle(wrapper.Handler{
		Init: func(config []byte) error {
			var c limiter.Config
			if err := wrapper.DecodeConfig(config, &c); err != nil {
				return err
			}
			l, err := limiter.New(c)
			if err != nil {
				return fmt.Errorf("ratelimit config: %w", err)
			}
			lim = l
			wrapper.Logf(slog.LevelDebug, "ratelimit: %+v", c)
			return nil
		},
		OnRequest: func(r wrapper.Request) wrapper.Result {
			d := lim.Check(r, wrapper.Now())
			if d.Allowed {
				return wrapper.Continue()
			}
			wrapper.SetReplyHeader("Retry-After", strconv.Itoa(d.RetryAfter))
			return wrapper.Reject(429, d.Message)
		},
	})
}

func main() {}
