package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/tracing"
	"github.com/microhost/micro/runtime/transport"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// PublishPrefix starts the ingress paths of the broker: POST /publish/{topic} publishes,
// GET /publish/{topic} lists what the broker holds for a topic, and DELETE
// /publish/{topic}/{id} removes a message (a replayed dead letter). No service named
// "publish" can be called at the ingress by its path.
const PublishPrefix = "/publish/"

// maxListed is the most messages GET /publish/{topic} lists.
const maxListed = 1000

// Publisher publishes messages and reads what the broker holds; *pubsub.PubSub is one.
// Its errors are *callerr.Error values.
type Publisher interface {
	Publish(ctx context.Context, topic string, header map[string]string, body []byte) (id string, err error)
	Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error)
	Delete(ctx context.Context, topic, id string) error
}

// Published is the answer to a publish: 202 Accepted, once the broker has stored it.
type Published struct {
	ID    string `json:"id"`
	Topic string `json:"topic"`
}

// HeldMessage is one message in the answer to GET /publish/{topic}.
type HeldMessage struct {
	ID     string            `json:"id"`
	Topic  string            `json:"topic"`
	Time   time.Time         `json:"time"`
	Header map[string]string `json:"header,omitempty"`
	// Body is the body when it is UTF-8 text; BodyBase64 holds it otherwise.
	Body       string `json:"body,omitempty"`
	BodyBase64 []byte `json:"body_base64,omitempty"`
}

// publishRequest is a request to the broker paths, as both HTTP paths read it.
type publishRequest struct {
	method string
	rest   string // the path after PublishPrefix, unescaped
	limit  string // the limit query parameter
	header map[string]string
	// body reads the body, at most max bytes.
	body    func(max int64) ([]byte, *callerr.Error)
	timeout string // Micro-Timeout
}

// publish serves a broker path; it returns the status and JSON answer.
func (in *Ingress) publish(ctx context.Context, st *Settings, pr *publishRequest) (code int, answer []byte, e *callerr.Error) {
	defer func() {
		if p := recover(); p != nil {
			detail := recovered(in.log, p, "a broker request at the ingress", "method", pr.method, "path", PublishPrefix+truncate(pr.rest))
			code, answer, e = 0, nil, callerr.New(IngressID, http.StatusInternalServerError, "%s", detail)
		}
	}()
	if in.cfg.Publisher == nil {
		return 0, nil, callerr.New(IngressID, http.StatusNotFound, "this micro has no broker")
	}
	if e := in.gate.enter(IngressID, st.MaxInflight); e != nil {
		return 0, nil, e
	}
	defer in.gate.leave()
	d, _, e := options("", false, pr.timeout, st)
	if e != nil {
		return 0, nil, e
	}
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	topic, id, hasID := strings.Cut(pr.rest, "/")
	if err := broker.ValidTopic(topic); err != nil {
		return 0, nil, callerr.New(IngressID, http.StatusBadRequest, "%v", err)
	}
	switch {
	case pr.method == http.MethodPost && !hasID:
		body, e := pr.body(st.MaxBody)
		if e != nil {
			return 0, nil, e
		}
		// The message carries the publish's span, which its deliveries descend from.
		_, tp := tracing.Lookup(pr.header, tracing.Header)
		tracing.Del(pr.header, tracing.Header)
		ctx, span, validParent := in.cfg.Tracer.Start(ctx, tp, "publish", trace.SpanKindProducer)
		if !validParent {
			tracing.Del(pr.header, tracing.HeaderState)
		}
		if tp := tracing.HeaderOf(ctx); tp != "" {
			if pr.header == nil {
				pr.header = make(map[string]string, 1)
			}
			pr.header[tracing.Header] = tp
		}
		id, err := in.cfg.Publisher.Publish(ctx, topic, pr.header, body)
		if span.Recording() {
			span.Set(attribute.String("messaging.destination.name", topic), attribute.String("messaging.message.id", id))
			if err != nil {
				span.Fail(err.Error())
			}
			span.End()
		}
		if err != nil {
			return 0, nil, callerr.As(IngressID, err)
		}
		b, _ := json.Marshal(Published{ID: id, Topic: topic})
		return http.StatusAccepted, b, nil
	case pr.method == http.MethodGet && !hasID:
		limit := 100
		if pr.limit != "" {
			n, err := strconv.Atoi(pr.limit)
			if err != nil || n < 1 || n > maxListed {
				return 0, nil, callerr.New(IngressID, http.StatusBadRequest, "limit %.20q: want a number from 1 to %d", pr.limit, maxListed)
			}
			limit = n
		}
		ms, err := in.cfg.Publisher.Messages(ctx, topic, limit)
		if err != nil {
			return 0, nil, callerr.As(IngressID, err)
		}
		out := make([]HeldMessage, 0, len(ms))
		for _, m := range ms {
			hm := HeldMessage{ID: m.ID, Topic: m.Topic, Time: m.Time, Header: m.Header}
			if utf8.Valid(m.Body) {
				hm.Body = string(m.Body)
			} else {
				hm.BodyBase64 = m.Body
			}
			out = append(out, hm)
		}
		b, _ := json.Marshal(out)
		return http.StatusOK, b, nil
	case pr.method == http.MethodDelete && hasID:
		if err := in.cfg.Publisher.Delete(ctx, topic, id); err != nil {
			return 0, nil, callerr.As(IngressID, err)
		}
		return http.StatusNoContent, nil, nil
	}
	e = callerr.New(IngressID, http.StatusMethodNotAllowed, "%s %s%s: publish with POST %s{topic}, list with GET %s{topic}, remove with DELETE %s{topic}/{id}",
		pr.method, PublishPrefix, truncate(pr.rest), PublishPrefix, PublishPrefix, PublishPrefix)
	return 0, nil, e
}

// publishHeader is a publisher's headers as a message header: its end-to-end headers,
// without micro's, and without those that describe the request to the ingress rather than
// the message.
func publishHeader(h map[string]string) map[string]string {
	for k := range h {
		switch http.CanonicalHeaderKey(k) {
		case "Host", "Content-Length", "Origin", "Referer", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest", "Accept-Encoding":
			delete(h, k)
		}
	}
	return h
}

// fastPublish serves a broker path on the HTTP/1.1 path.
func (in *Ingress) fastPublish(c *fasthttp.RequestCtx, st *Settings, uri []byte) {
	path, query, _ := bytes.Cut(uri[len(PublishPrefix):], []byte("?"))
	rest, err := url.PathUnescape(string(path))
	if err != nil {
		fastError(c, callerr.New(IngressID, http.StatusBadRequest, "path %.60q: %v", path, err), "")
		return
	}
	h := &c.Request.Header
	pr := &publishRequest{
		method:  string(c.Method()),
		rest:    rest,
		header:  publishHeader(messageHeader(h)),
		timeout: string(h.Peek(transport.HeaderTimeout)),
		body: func(max int64) ([]byte, *callerr.Error) {
			body, stream, e := fastBody(c, max, IngressID)
			if e != nil || stream == nil {
				return bytes.Clone(body), e
			}
			b, err := io.ReadAll(stream)
			if err != nil {
				c.SetConnectionClose()
				if err == fasthttp.ErrBodyTooLarge {
					return nil, tooLarge(IngressID, max)
				}
				return nil, callerr.New(IngressID, http.StatusBadRequest, "reading the message: %v", err)
			}
			return b, nil
		},
	}
	if q, err := url.ParseQuery(string(query)); err == nil {
		pr.limit = q.Get("limit")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer watchCaller(c.Conn(), cancel).stop()
	code, body, e := in.publish(ctx, st, pr)
	if e != nil {
		fastError(c, e, "")
		return
	}
	c.SetStatusCode(code)
	if body != nil {
		c.SetContentType("application/json")
		c.SetBody(append(body, '\n'))
	}
}

// servePublish serves a broker path on the net/http path (HTTP/2, or HTTP/1.1 after an
// upgrade that did not take).
func (in *Ingress) servePublish(w http.ResponseWriter, r *http.Request) {
	st := in.settings.load()
	h := make(map[string]string, len(r.Header))
	for k, v := range r.Header {
		if !hopByHop(k) && !transport.IsMicroHeader(k) {
			h[k] = strings.Join(v, transport.ValueSep)
		}
	}
	pr := &publishRequest{
		method:  r.Method,
		rest:    strings.TrimPrefix(r.URL.Path, PublishPrefix),
		limit:   r.URL.Query().Get("limit"),
		header:  publishHeader(h),
		timeout: r.Header.Get(transport.HeaderTimeout),
		body: func(max int64) ([]byte, *callerr.Error) {
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					return nil, tooLarge(IngressID, max)
				}
				return nil, callerr.New(IngressID, http.StatusBadRequest, "reading the message: %v", err)
			}
			return b, nil
		},
	}
	code, body, e := in.publish(r.Context(), st, pr)
	if e != nil {
		e.Write(w)
		return
	}
	if body != nil {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(code)
	if body != nil {
		_, _ = w.Write(append(body, '\n'))
	}
}
