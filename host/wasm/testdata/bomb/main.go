// Command bomb is a test guest that allocates memory until it runs out when the X-Bomb
// header is set.
package main

import (
	"strconv"

	"github.com/microhost/micro/sdk/wrapper"
)

var (
	count int
	hoard [][]byte
)

func init() {
	wrapper.Handle(wrapper.Handler{
		OnRequest: func(r wrapper.Request) wrapper.Result {
			count++
			if _, ok := r.Header("X-Bomb"); ok {
				for {
					b := make([]byte, 1<<20)
					for i := range b {
						b[i] = byte(i)
					}
					hoard = append(hoard, b)
				}
			}
			r.SetHeader("X-Count", strconv.Itoa(count))
			return wrapper.Continue()
		},
	})
}

func main() {}
