//go:build !wasip1

package wrapper

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	abi "github.com/microhost/micro/abi/wrapper"
	"github.com/microhost/micro/sdk/wrapper/internal/nativehost"
)

// Outside a wasm guest, as in a wrapper's tests, this package is run by a host that plays
// micro: package wrappertest, which calls the exports through nativehost.Call. The host
// functions below go to that host. Outside such a call they panic: this package does its
// work only in a guest that micro runs, or under wrappertest.

func init() { nativehost.Call = nativeCall }

// The state of native guest calls. The package's state (the handler, the call block, the
// field caches) is a guest instance's, so one guest call runs at a time.
var (
	native sync.Mutex
	// host is the host of the guest call in progress, or nil.
	host nativehost.Host
	// lastHost is the host of the previous guest call: the field caches hold its values.
	lastHost nativehost.Host
	// failure is what ended the guest call in progress early, or nil.
	failure error
)

// nativeCall implements nativehost.Call: it runs an export on a goroutine of its own,
// which hostFail and a trap end with runtime.Goexit, as micro's host unwinds a guest's
// stack.
func nativeCall(h nativehost.Host, hd any, e nativehost.Export) (int32, error) {
	native.Lock()
	defer native.Unlock()
	hnd, ok := hd.(*Handler)
	if !ok {
		return 0, fmt.Errorf("sdk/wrapper: the native guest's handler is a %T, not a *wrapper.Handler", hd)
	}
	handler, handleErr = hnd, nil
	if hnd != nil {
		handleErr = hnd.check()
	}
	if h != lastHost { // another instance: its versions say nothing of these values
		fieldVersion = [fieldError + 1]uint64{}
		lastHost = h
	}
	host, failure = h, nil
	block = callBlock{} // written by h.Begin for a call; not before on_init
	defer func() { host, block = nil, callBlock{} }()

	var result int32
	returned := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Begin(e)
		switch e {
		case nativehost.OnInit:
			result = onInit()
		case nativehost.OnRequest:
			result = onRequest()
		case nativehost.OnResponse:
			onResponse()
		}
		returned = true
	}()
	<-done
	switch {
	case failure != nil:
		return 0, failure
	case !returned:
		return 0, errors.New("the guest call ended without returning: runtime.Goexit in the handler (t.FailNow?)")
	}
	return result, nil
}

// theHost returns the host of the guest call in progress.
func theHost() nativehost.Host {
	if host == nil {
		panic("sdk/wrapper: no host: this package works only in a GOOS=wasip1 guest run by micro, or in a handler run by package wrappertest")
	}
	return host
}

// trapIf ends the guest call with err, as micro traps a guest for a bad host call.
func trapIf(err error) {
	if err != nil {
		failure = err
		runtime.Goexit()
	}
}

func hostGetConfig(buf []byte) int32 { return theHost().GetConfig(buf) }

func hostGetField(f field, buf []byte) int32 {
	n, err := theHost().GetField(int32(f), buf)
	trapIf(err)
	return n
}

func hostGetHeader(name string, buf []byte) int32 {
	n, err := theHost().GetHeader(name, buf)
	trapIf(err)
	return n
}

func hostGetLease(name string, demand uint64) (float64, bool) {
	rate, held, err := theHost().GetLease(name, demand)
	trapIf(err)
	return rate, held
}

func hostSetHeader(name, value string)           { trapIf(theHost().SetHeader(name, value)) }
func hostSetReplyHeader(name, value string)      { trapIf(theHost().SetReplyHeader(name, value)) }
func hostSetReject(status int32, message string) { trapIf(theHost().SetReject(status, message)) }
func hostSetPhases(mask int32)                   { trapIf(theHost().SetPhases(mask)) }

func hostSetCallBlock(b *callBlock) {
	trapIf(theHost().SetCallBlock(unsafe.Slice((*byte)(unsafe.Pointer(b)), unsafe.Sizeof(*b))))
}

func hostLog(level int32, message string) { theHost().Log(level, message) }

func hostSetState(service, endpoint, node, value string) {
	trapIf(theHost().SetState(service, endpoint, node, value))
}

// hostFail ends the guest call as a failure with message; it does not return.
func hostFail(message string) {
	theHost()
	if message == "" {
		message = "the guest failed without a message"
	}
	if len(message) > abi.MaxMessageLen { // micro cuts it so
		message = strings.ToValidUTF8(message[:abi.MaxMessageLen], "\uFFFD")
	}
	trapIf(errors.New(message))
}
