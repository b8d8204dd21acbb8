package server

import "testing"

// TestWatchWithoutConn: a call with no connection under it (fasthttp's RequestCtx in tests)
// that outlives watchAfter stops its watcher without touching a connection.
func TestWatchWithoutConn(t *testing.T) {
	w := watchCaller(nil, func() { t.Error("cancelled a call with no connection") })
	if w.timer.Stop() {
		w.watch() // as when the timer fires: the call ran past watchAfter
	}
	w.stop()
}
