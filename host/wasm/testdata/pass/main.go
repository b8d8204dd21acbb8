// Command pass is a test guest that lets every call through and does nothing else: it
// measures the cost of the wrapper machinery itself.
package main

import "github.com/microhost/micro/sdk/wrapper"

func init() {
	wrapper.Handle(wrapper.Handler{
		OnRequest:  func(wrapper.Request) wrapper.Result { return wrapper.Continue() },
		OnResponse: func(wrapper.Response) {},
	})
}

func main() {}
