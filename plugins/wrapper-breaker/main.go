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
// with a listed status, and those that got no answer. State changes are logged, and each
// breaker that opened publishes its state ("open", "half-open", "closed") for its node
// and endpoint, node or service (wrapper.SetState), which micro's dashboard and metrics
// show. The code is package breaker's: Breakers.Handler; see the package for the details.
package main

import (
	"github.com/microhost/micro/plugins/wrapper-breaker/breaker"
	"github.com/microhost/micro/sdk/wrapper"
)

func init() {
	wrapper.Handle((&breaker.Breakers{OnChange: breaker.LogChange, OnState: wrapper.SetState}).Handler())
}

func main() {}
