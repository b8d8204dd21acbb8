//go:build wasip1

// Command wrapper-breaker is micro's circuit-breaker wrapper: a breaker per node and
// endpoint, per node or per service, that opens on a failure ratio or a run of failures,
// and probes in half-open after a cooldown. An open breaker of a node and an endpoint
// makes the client skip that node for that endpoint (the node goes on serving its other
// endpoints); an open per-node breaker makes the client skip the node; an open
// per-service breaker fails calls fast with 503. Build it with
// `micro wrapper build plugins/wrapper-breaker`.
//
// Config (its table in micro.toml), with the defaults:
//
//	key = "node_endpoint"        # or "node", "service"
//	failure_ratio = 0.5          # trip at this share of failures over interval (0: off)
//	min_requests = 10            # ... once interval holds this many outcomes
//	interval = "10s"             # rolling window of the counts
//	consecutive_failures = 5     # or trip after this many failures in a row (0: off)
//	cooldown = "5s"              # open this long, then half-open
//	half_open_max = 1            # probes let through when half-open
//	failure_statuses = []        # 5xx statuses of the faults that fail; empty: every fault
//	max_keys = 10000             # breakers kept; the least recently used is dropped past it
//
// Only the node's faults fail, as micro tells them (wrapper.Response.Fault): the node could
// not be reached, it timed out, or its app answered with a 5xx on its own. A caller's 4xx,
// a call that micro refused or a wrapper rejected, and a timeout that the caller chose
// never count against the node. failure_statuses narrows the faults that fail to those
// with a listed status, and those that got no answer. See package breaker for the details.
package main

import (
	"fmt"
	"log/slog"

	"github.com/microhost/micro/plugins/wrapper-breaker/breaker"
	"github.com/microhost/micro/sdk/wrapper"
	"github.com/sony/gobreaker/v2"
)

// brk is the instance's breakers; calls into one instance never overlap.
var brk *breaker.Breakers

func init() {
	wrapper.Handle(wrapper.Handler{
		Init: func(config []byte) error {
			c := breaker.DefaultConfig()
			if err := wrapper.DecodeConfig(config, &c); err != nil {
				return err
			}
			b, err := breaker.New(c, logChange)
			if err != nil {
				return fmt.Errorf("breaker config: %w", err)
			}
			brk = b
			return nil
		},
		OnRequest: func(r wrapper.Request) wrapper.Result {
			d := brk.OnRequest(r, wrapper.Now())
			switch {
			case d.Allowed:
				return wrapper.Continue()
			case d.NodeOnly:
				return wrapper.RejectNode(d.Message)
			default:
				return wrapper.Reject(d.Status, d.Message)
			}
		},
		OnResponse: func(r wrapper.Response) {
			brk.OnResponse(r, wrapper.Now())
		},
	})
}

// logChange logs a breaker's state change into micro's log.
func logChange(name string, from, to gobreaker.State) {
	level := slog.LevelInfo
	if to == gobreaker.StateOpen {
		level = slog.LevelWarn
	}
	wrapper.Logf(level, "breaker for %s: %v -> %v", name, from, to)
}

func main() {}
