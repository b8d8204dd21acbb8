package wrapper_test

import (
	"fmt"
	"strings"

	"github.com/microhost/micro/sdk/wrapper"
	"github.com/microhost/micro/sdk/wrapper/wrappertest"
)

// authHandler returns a wrapper that lets through only calls with the bearer token of its
// config, and tells the app who called. Its state (the token) is its own, so each
// instance, and each test, has its own.
func authHandler() wrapper.Handler {
	var cfg struct {
		Token string `json:"token"`
	}
	return wrapper.Handler{
		Init: func(config []byte) error {
			if err := wrapper.DecodeConfig(config, &cfg); err != nil {
				return err
			}
			if cfg.Token == "" {
				return fmt.Errorf("token: missing")
			}
			return nil
		},
		OnRequest: func(r wrapper.Request) wrapper.Result {
			auth, _ := r.Header("Authorization")
			if token, ok := strings.CutPrefix(auth, "Bearer "); !ok || token != cfg.Token {
				wrapper.SetReplyHeader("WWW-Authenticate", "Bearer")
				return wrapper.Reject(401, "no valid token")
			}
			r.SetHeader("X-Authenticated-Caller", r.Caller())
			return wrapper.Continue()
		},
	}
}

// A wrapper is a Handler that package main registers from an init func, and that micro
// runs as WebAssembly:
//
//	func init() { wrapper.Handle(authHandler()) }
//	func main() {}
//
// Built with `micro wrapper build .` (or GOOS=wasip1 GOARCH=wasm go build
// -buildmode=c-shared), it is named in micro.toml with its config:
//
//	[wrappers.auth]
//	source = "./auth"
//	[wrappers.auth.config]
//	token = "s3cret"
//
// Here the same handler runs natively under package wrappertest, as a test runs it.
func Example() {
	inst, err := wrappertest.New(authHandler(), `{"token": "s3cret"}`)
	if err != nil {
		fmt.Println(err)
		return
	}
	req := wrappertest.NewRequest("greeter", "Greeter.Hello")
	req.Caller = "spiffe://example.org/app"
	fmt.Println(inst.Request(req))
	req.Header["Authorization"] = "Bearer s3cret"
	fmt.Println(inst.Request(req))

	_, err = wrappertest.New(authHandler(), `{"tokn": "s3cret"}`)
	fmt.Println(err)
	// Output:
	// rejected 401 "no valid token"; reply header Www-Authenticate: Bearer
	// continued; header X-Authenticated-Caller: spiffe://example.org/app
	// init with config {"tokn": "s3cret"}: config: json: unknown field "tokn"
}

// DecodeConfig reads a wrapper's config over defaults, and names a field it does not
// know.
func ExampleDecodeConfig() {
	cfg := struct {
		Rate  float64 `json:"rate"`
		Burst int     `json:"burst"`
	}{Burst: 1}
	err := wrapper.DecodeConfig([]byte(`{"rate": 2.5}`), &cfg)
	fmt.Printf("%+v %v\n", cfg, err)
	err = wrapper.DecodeConfig([]byte(`{"rate": 2.5, "brust": 3}`), &cfg)
	fmt.Println(err)
	// Output:
	// {Rate:2.5 Burst:1} <nil>
	// config: json: unknown field "brust"
}
