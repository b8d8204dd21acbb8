package server

import (
	"net/http"
	"net/url"
	"strconv"

	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/tracing"
)

// TracesPath is where the ingress serves the recent traces this micro kept:
// GET /traces lists them, the most recent first (?failed=1 only failed ones, ?limit=N at
// most N, 20 by default), and GET /traces?id=TRACE_ID returns one whole.
const TracesPath = "/traces"

// maxTracesListed bounds ?limit.
const maxTracesListed = 1000

// traces answers GET /traces with query q: a status and what to send as JSON.
func (in *Ingress) traces(q url.Values) (int, any) {
	if in.cfg.Tracer == nil {
		return http.StatusNotFound, callerr.New(IngressID, http.StatusNotFound, "this micro keeps no traces")
	}
	store := in.cfg.Tracer.Store()
	if id := q.Get("id"); id != "" {
		t, ok := store.Trace(id)
		if !ok {
			return http.StatusNotFound, callerr.New(IngressID, http.StatusNotFound, "no trace %q is kept here (only the most recent ones are)", id)
		}
		return http.StatusOK, t
	}
	limit := 20
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxTracesListed {
			return http.StatusBadRequest, callerr.New(IngressID, http.StatusBadRequest, "limit %q: want 1 to %d", s, maxTracesListed)
		}
		limit = n
	}
	list := store.Recent(limit, q.Get("failed") == "1")
	if list == nil {
		list = []tracing.TraceData{}
	}
	return http.StatusOK, list
}
