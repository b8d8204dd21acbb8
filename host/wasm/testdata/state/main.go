// Command state is a test guest that publishes states: in Init, "ready" for no scope, and
// in OnRequest, the value of the X-State header for the scope of the call's service and
// node, with the endpoint that the X-Endpoint header names. X-Reject makes it reject the
// call, X-Trap panic; in OnResponse, a status of 599 makes it panic.
package main

import "github.com/microhost/micro/sdk/wrapper"

func init() {
	wrapper.Handle(wrapper.Handler{
		Init: func([]byte) error {
			wrapper.SetState("", "", "", "ready")
			return nil
		},
		OnRequest: func(r wrapper.Request) wrapper.Result {
			if v, ok := r.Header("X-State"); ok {
				endpoint, _ := r.Header("X-Endpoint")
				wrapper.SetState(r.Service(), endpoint, r.Node(), v)
			}
			if _, ok := r.Header("X-Trap"); ok {
				panic("boom")
			}
			if _, ok := r.Header("X-Reject"); ok {
				return wrapper.Reject(429, "no")
			}
			return wrapper.Continue()
		},
		OnResponse: func(r wrapper.Response) {
			if r.Status() == 599 {
				panic("bad status")
			}
		},
	})
}

func main() {}
