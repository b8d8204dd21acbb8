package server

import (
	"testing"

	"github.com/valyala/fasthttp"
)

// TestWatchWithoutSocket: a call whose connection has no socket under it (a RequestCtx
// made by Init, as tests and embedders make them) that outlives watchAfter stops its
// watcher without touching the connection, which would panic.
func TestWatchWithoutSocket(t *testing.T) {
	var c fasthttp.RequestCtx
	c.Init(&fasthttp.Request{}, nil, nil)
	for name, w := range map[string]*watcher{
		"Init's connection": watchCaller(c.Conn(), func() { t.Error("cancelled a call with no socket") }),
		"no connection":     watchCaller(nil, func() { t.Error("cancelled a call with no connection") }),
	} {
		if w.timer.Stop() {
			w.watch() // as when the timer fires: the call ran past watchAfter
		}
		w.stop()
		t.Logf("%s: stopped", name)
	}
}
