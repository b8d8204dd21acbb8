//go:build !wasip1

package wrapper

// Outside a wasm guest the host functions go to fakeHost, which tests set. Without one
// they panic: this package does its work only in a GOOS=wasip1 guest that micro runs.

// hostABI is the host's functions, for a fake.
type hostABI interface {
	getConfig(buf []byte) int32
	getField(f field, buf []byte) int32
	getHeader(name string, buf []byte) int32
	setHeader(name, value string)
	setReplyHeader(name, value string)
	setReject(status int32, message string)
	setPhases(mask int32)
	setCallBlock(b *callBlock)
	log(level int32, message string)
	fail(message string)
}

// fakeHost stands for micro in tests.
var fakeHost hostABI

func theHost() hostABI {
	if fakeHost == nil {
		panic("sdk/wrapper: no host: this package works only in a GOOS=wasip1 guest run by micro")
	}
	return fakeHost
}

func hostGetConfig(buf []byte) int32              { return theHost().getConfig(buf) }
func hostGetField(f field, buf []byte) int32      { return theHost().getField(f, buf) }
func hostGetHeader(name string, buf []byte) int32 { return theHost().getHeader(name, buf) }
func hostSetHeader(name, value string)            { theHost().setHeader(name, value) }
func hostSetReplyHeader(name, value string)       { theHost().setReplyHeader(name, value) }
func hostSetReject(status int32, message string)  { theHost().setReject(status, message) }
func hostSetPhases(mask int32)                    { theHost().setPhases(mask) }
func hostSetCallBlock(b *callBlock)               { theHost().setCallBlock(b) }
func hostLog(level int32, message string)         { theHost().log(level, message) }
func hostFail(message string)                     { theHost().fail(message) }
