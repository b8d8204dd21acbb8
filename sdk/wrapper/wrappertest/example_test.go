package wrappertest_test

import (
	"fmt"
	"time"

	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

// oncePerSecond returns a wrapper that lets each caller make one call per second, by the
// time micro gives the call (wrapper.Now).
func oncePerSecond() wrapper.Handler {
	last := map[string]time.Time{}
	return wrapper.Handler{OnRequest: func(r wrapper.Request) wrapper.Result {
		now := wrapper.Now()
		if t, ok := last[r.Caller()]; ok && now.Sub(t) < time.Second {
			wrapper.SetReplyHeader("Retry-After", "1")
			return wrapper.Reject(429, "one call per second, "+r.Caller())
		}
		last[r.Caller()] = now
		return wrapper.Continue()
	}}
}

// A test starts an instance of the wrapper's handler, builds requests, reads what the
// handler decided, and moves the instance's clock rather than sleep.
func Example() {
	inst, err := wrappertest.New(oncePerSecond(), "")
	if err != nil {
		fmt.Println(err)
		return
	}
	req := wrappertest.NewRequest("greeter", "Greeter.Hello")
	req.Caller = "ada"
	fmt.Println(inst.Request(req))
	fmt.Println(inst.Request(req))

	inst.Clock.Advance(999 * time.Millisecond)
	fmt.Println(inst.Request(req).Verdict)
	inst.Clock.Advance(time.Millisecond)
	fmt.Println(inst.Request(req).Verdict)
	// Output:
	// continued
	// rejected 429 "one call per second, ada"; reply header Retry-After: 1
	// rejected
	// continued
}

// ejector returns a wrapper that refuses a node after three faults in a row, for the
// rest of a minute: OnResponse sees each call's outcome.
func ejector() wrapper.Handler {
	faults := map[string]int{}
	until := map[string]time.Time{}
	return wrapper.Handler{
		OnRequest: func(r wrapper.Request) wrapper.Result {
			if wrapper.Now().Before(until[r.Node()]) {
				return wrapper.RejectNode("node " + r.Node() + " is resting")
			}
			return wrapper.Continue()
		},
		OnResponse: func(o wrapper.Response) {
			if !o.Fault() {
				faults[o.Node()] = 0
				return
			}
			if faults[o.Node()]++; faults[o.Node()] == 3 {
				faults[o.Node()] = 0
				until[o.Node()] = wrapper.Now().Add(time.Minute)
				wrapper.Logf(0, "node %s out until %s", o.Node(), until[o.Node()].Format(time.TimeOnly))
			}
		},
	}
}

// Response hands a call's outcome to the wrapper's OnResponse, for wrappers that keep
// state about outcomes, such as a circuit breaker.
func ExampleInstance_Response() {
	inst, err := wrappertest.New(ejector(), "")
	if err != nil {
		fmt.Println(err)
		return
	}
	req := wrappertest.NewRequest("greeter", "Greeter.Hello")
	req.Node = "greeter-1"
	for range 3 {
		inst.Request(req)
		inst.Response(req, wrappertest.Outcome{Status: 502, Latency: 20 * time.Millisecond, Fault: true})
	}
	fmt.Println(inst.Request(req))
	fmt.Println(inst.Logs()[0].Message)

	inst.Clock.Advance(time.Minute)
	fmt.Println(inst.Request(req))
	// Output:
	// rejected node "node greeter-1 is resting"
	// node greeter-1 out until 00:01:00
	// continued
}
