// Command lease is a test guest that asks for shares of global rate limits: once in Init,
// for the resource "boot", and in each OnRequest for the resource that the X-Resource
// header names, with the demand of the X-Demand header. It tells the answer in X-Lease,
// as "RATE HELD".
package main

import (
	"strconv"

	"github.com/microhost/micro/sdk/wrapper"
)

func init() {
	wrapper.Handle(wrapper.Handler{
		Init: func([]byte) error {
			wrapper.Lease("boot", 0)
			return nil
		},
		OnRequest: func(r wrapper.Request) wrapper.Result {
			resource, _ := r.Header("X-Resource")
			d, _ := r.Header("X-Demand")
			demand, _ := strconv.ParseUint(d, 10, 64)
			rate, held := wrapper.Lease(resource, demand)
			r.SetHeader("X-Lease", strconv.FormatFloat(rate, 'g', -1, 64)+" "+strconv.FormatBool(held))
			return wrapper.Continue()
		},
	})
}

func main() {}
