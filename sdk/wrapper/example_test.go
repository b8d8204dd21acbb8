package wrapper_test

import (
	"fmt"
	"strings"
	"time"

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

// shareHandler returns a wrapper that enforces this micro's share of the global rate
// limit on the resource "api": in each 100 ms of call time it lets through a tenth of the
// share, or of 10 calls per second while micro holds no lease. It asks for the share once
// per 100 ms, not per call, and reports the calls it saw in between.
func shareHandler() wrapper.Handler {
	var (
		demand uint64
		asked  time.Time
		tokens float64
	)
	return wrapper.Handler{OnRequest: func(wrapper.Request) wrapper.Result {
		demand++
		if now := wrapper.Now(); now.Sub(asked) >= 100*time.Millisecond {
			rate, held := wrapper.Lease("api", demand)
			if !held {
				rate = 10 // the safe share
			}
			demand, asked, tokens = 0, now, rate/10
		}
		if tokens < 1 {
			return wrapper.Reject(429, "over this micro's share of the limit on api")
		}
		tokens--
		return wrapper.Continue()
	}}
}

// A wrapper asks for its share of a global rate limit now and then, and applies a safe
// share of its own while micro holds no lease. Under wrappertest, the Instance's Leases
// play the quota service.
func ExampleLease() {
	inst, err := wrappertest.New(shareHandler(), "")
	if err != nil {
		fmt.Println(err)
		return
	}
	req := wrappertest.NewRequest("greeter", "Greeter.Hello")
	fmt.Println(inst.Request(req).Verdict, inst.Request(req).Verdict) // no lease: 1 per 100 ms

	inst.Leases.Grant("api", 20)
	inst.Clock.Advance(100 * time.Millisecond)
	fmt.Println(inst.Request(req).Verdict, inst.Request(req).Verdict, inst.Request(req).Verdict)
	fmt.Println(inst.Leases.Asks("api"))
	// Output:
	// continued rejected
	// continued continued rejected
	// [1 2]
}
