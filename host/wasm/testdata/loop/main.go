// Command loop is a test guest that never returns when the X-Loop header is set.
package main

import (
	"strconv"

	"github.com/microhost/micro/sdk/wrapper"
)

var (
	count int
	sink  int
)

func init() {
	wrapper.Handle(wrapper.Handler{
		OnRequest: func(r wrapper.Request) wrapper.Result {
			count++
			if _, ok := r.Header("X-Loop"); ok {
				for i := 0; ; i++ {
					sink += i
				}
			}
			r.SetHeader("X-Count", strconv.Itoa(count))
			return wrapper.Continue()
		},
	})
}

func main() {}
