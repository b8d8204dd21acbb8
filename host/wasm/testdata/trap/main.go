// Command trap is a test guest that fails on demand: the X-Trap header says how. It counts
// calls in X-Count, so a test can tell a fresh instance from an old one.
package main

import (
	"os"
	"strconv"

	"github.com/microhost/micro/sdk/wrapper"
)

var count int

type node struct{ next *node }

func init() {
	wrapper.Handle(wrapper.Handler{
		OnRequest: func(r wrapper.Request) wrapper.Result {
			count++
			switch v, _ := r.Header("X-Trap"); v {
			case "panic":
				panic("boom")
			case "nil":
				var n *node
				_ = n.next.next // a nil dereference: a runtime error
			case "exit":
				os.Exit(3)
			case "response":
				// fail later, in OnResponse
			}
			r.SetHeader("X-Count", strconv.Itoa(count))
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
