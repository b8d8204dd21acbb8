// Command echo is a test guest that uses every part of the sdk: it reads each field of a
// call, sets a header that echoes them, rejects when a header asks it to, and counts the
// calls it sees.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/microhost/micro/sdk/wrapper"
)

type config struct {
	Tag      string `json:"tag"`
	Response bool   `json:"response"` // observe responses
	Clock    bool   `json:"clock"`    // tell the time and the budget in X-Clock
}

var (
	cfg       config
	requests  int
	responses int
	last      string // what the last OnResponse saw
)

func init() {
	wrapper.Handle(wrapper.Handler{
		Init: func(b []byte) error {
			cfg = config{Tag: "echo"}
			if err := wrapper.DecodeConfig(b, &cfg); err != nil {
				return err
			}
			if cfg.Tag == "" {
				return errors.New("tag must not be empty")
			}
			wrapper.Logf(slog.LevelInfo, "echo ready with tag %q", cfg.Tag)
			return nil
		},
		OnRequest:  onRequest,
		OnResponse: onResponse,
	})
}

func onRequest(r wrapper.Request) wrapper.Result {
	requests++
	if v, ok := r.Header("X-Reject"); ok {
		wrapper.SetReplyHeader("Retry-After", "7")
		return wrapper.Reject(429, "rejected: "+v)
	}
	if v, ok := r.Header("x-reject-node"); ok {
		return wrapper.RejectNode("node refused: " + v)
	}
	if _, ok := r.Header("X-Set-Reserved"); ok {
		r.SetHeader("Micro-Timeout", "1h") // the host traps this
	}
	x, _ := r.Header("X-Test")
	budget := "none"
	if b := r.Budget(); b < 1<<62 {
		budget = "set"
		if b <= 0 {
			budget = "spent"
		}
	}
	r.SetHeader("X-Echo", fmt.Sprintf("%s|%s|%s|%s|%s|%s|%s", cfg.Tag, r.Service(), r.Endpoint(), r.Node(), r.Caller(), x, budget))
	r.SetHeader("X-Count", strconv.Itoa(requests))
	if cfg.Clock {
		r.SetHeader("X-Clock", fmt.Sprintf("%d|%d", wrapper.Now().UnixNano(), r.Budget()))
	}
	r.SetHeader("X-Last", last)
	return wrapper.Continue()
}

func onResponse(r wrapper.Response) {
	responses++
	last = fmt.Sprintf("%d|%s|%t|%s|%s|%d", r.Status(), r.Err(), r.Fault(), r.Service(), r.Node(), responses)
	if r.Latency() < 0 {
		panic("negative latency")
	}
}

func main() {}
