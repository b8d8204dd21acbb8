package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/broker"
	"github.com/microhost/micro/runtime/callerr"
	"github.com/microhost/micro/runtime/transport"
)

// recordingPublisher is a Publisher that keeps what it is given; the broker paths end to
// end, with real brokers, are tested in e2e/pubsub_test.go.
type recordingPublisher struct {
	mu       sync.Mutex
	topic    string
	header   map[string]string
	body     string
	deadline bool
	deleted  string
	err      error
}

func (p *recordingPublisher) Publish(ctx context.Context, topic string, header map[string]string, body []byte) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, p.deadline = ctx.Deadline()
	p.topic, p.header, p.body = topic, header, string(body)
	if p.err != nil {
		return "", p.err
	}
	return "id1", nil
}

func (p *recordingPublisher) Messages(ctx context.Context, topic string, limit int) ([]*broker.Message, error) {
	return []*broker.Message{
		{ID: "a", Topic: topic, Body: []byte(`{"x":1}`), Time: time.Unix(1, 0)},
		{ID: "b", Topic: topic, Body: []byte{0xff, 0}, Header: map[string]string{broker.HeaderDeadReason: "500"}},
	}[:min(limit, 2)], nil
}

func (p *recordingPublisher) Delete(ctx context.Context, topic, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deleted = topic + "/" + id
	return nil
}

func publishIngress(p Publisher) *Ingress {
	in := newTestIngress(&echoCaller{})
	in.cfg.Publisher = p
	return in
}

func TestIngressPublish(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		p := &recordingPublisher{}
		w := serve(h(publishIngress(p)), "POST", "/publish/orders.created", `{"n":1}`, map[string]string{
			"Content-Type": "application/json", "X-Trace": "t1", "Micro-Topic": "forged", "Micro-Caller": "forged",
			"Micro-Timeout": "2s", "Origin": "http://127.0.0.1:8080",
		})
		if w.Code != http.StatusAccepted {
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
		var got Published
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.ID != "id1" || got.Topic != "orders.created" {
			t.Errorf("answer %s", w.Body)
		}
		if p.topic != "orders.created" || p.body != `{"n":1}` || !p.deadline {
			t.Errorf("published %q %q (deadline %v)", p.topic, p.body, p.deadline)
		}
		if p.header["Content-Type"] != "application/json" || p.header["X-Trace"] != "t1" {
			t.Errorf("the message lost the publisher's headers: %v", p.header)
		}
		for k := range p.header {
			if strings.HasPrefix(k, "Micro-") || k == "Host" || k == "Origin" || k == "Content-Length" {
				t.Errorf("the message keeps header %s", k)
			}
		}
	})
}

func TestIngressPublishBadInput(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		p := &recordingPublisher{}
		in := publishIngress(p)
		for _, tc := range []struct {
			method, path, body string
			hdr                map[string]string
			want               int
		}{
			{"POST", "/publish/orders..created", "{}", nil, 400},
			{"POST", "/publish/a%2Fb", "{}", nil, 405},
			{"POST", "/publish/orders.*", "{}", nil, 400},
			{"POST", "/publish/", "{}", nil, 400},
			{"POST", "/publish/%ff", "{}", nil, 400},
			{"POST", "/publish/" + strings.Repeat("a", 201), "{}", nil, 400},
			{"POST", "/publish/t", strings.Repeat("x", 17), nil, 413},
			{"POST", "/publish/t", "{}", map[string]string{"Micro-Timeout": "soon"}, 400},
			{"POST", "/publish/t", "{}", map[string]string{"Micro-Timeout": "2h"}, 400},
			{"PUT", "/publish/t", "{}", nil, 405},
			{"DELETE", "/publish/t", "", nil, 405},
			{"GET", "/publish/t?limit=0", "", nil, 400},
			{"GET", "/publish/t?limit=x", "", nil, 400},
			{"POST", "/publish/t", "{}", map[string]string{"Origin": "https://evil.example"}, 403},
		} {
			w := serve(h(in), tc.method, tc.path, tc.body, tc.hdr)
			if w.Code != tc.want {
				t.Errorf("%s %.40s: %d %s, want %d", tc.method, tc.path, w.Code, w.Body, tc.want)
				continue
			}
			if e, ok := callerr.Parse(w.Body.Bytes()); !ok || e.Code != tc.want || e.Detail == "" {
				t.Errorf("%s %.40s: not a JSON error: %s", tc.method, tc.path, w.Body)
			}
		}
		if p.topic != "" {
			t.Errorf("a bad publish reached the broker: %q", p.topic)
		}
	})
}

func TestIngressPublishBrokerErrors(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		p := &recordingPublisher{err: callerr.New("micro.broker", http.StatusServiceUnavailable, "broker embedded did not accept the message to t: broker store is full")}
		w := serve(h(publishIngress(p)), "POST", "/publish/t", "{}", nil)
		if e, ok := callerr.Parse(w.Body.Bytes()); w.Code != 503 || !ok || !strings.Contains(e.Detail, "full") {
			t.Errorf("a full broker: %d %s", w.Code, w.Body)
		}
		if w := serve(h(newTestIngress(&echoCaller{})), "POST", "/publish/t", "{}", nil); w.Code != 404 {
			t.Errorf("an ingress without a broker: %d %s", w.Code, w.Body)
		}
	})
}

func TestIngressMessagesAndDelete(t *testing.T) {
	bothHandlers(t, func(t *testing.T, h handlerOf) {
		p := &recordingPublisher{}
		in := publishIngress(p)
		w := serve(h(in), "GET", "/publish/t.dead?limit=5", "", nil)
		var list []HeldMessage
		if err := json.Unmarshal(w.Body.Bytes(), &list); w.Code != 200 || err != nil || len(list) != 2 {
			t.Fatalf("GET: %d %s", w.Code, w.Body)
		}
		if list[0].Body != `{"x":1}` || list[1].Body != "" || string(list[1].BodyBase64) != "\xff\x00" || list[1].Header[broker.HeaderDeadReason] != "500" {
			t.Errorf("listed %+v", list)
		}
		if w := serve(h(in), "DELETE", "/publish/t.dead/abc", "", nil); w.Code != http.StatusNoContent || p.deleted != "t.dead/abc" {
			t.Errorf("DELETE: %d %s, deleted %q", w.Code, w.Body, p.deleted)
		}
	})
}

// FuzzPublish sends arbitrary methods, paths, budgets, headers and bodies to the broker
// paths of both handlers: every answer is 202, 200 or 204 from the publisher or a JSON 4xx
// error, and what reaches the publisher has a valid topic and none of micro's headers.
func FuzzPublish(f *testing.F) {
	f.Add("POST", "orders.created", "1s", "X-Trace", "t1", `{"n":1}`)
	f.Add("GET", "orders.created.dead?limit=5", "", "", "", "")
	f.Add("DELETE", "t.dead/abc", "", "Micro-Topic", "forged", "")
	f.Add("POST", "a..b", "1h", "Micro-Message-Id", "x", "")
	f.Add("POST", "%2e%2e/%ff", "-1s", "Origin", "https://evil.example", "\x00")
	p := &recordingPublisher{}
	in := publishIngress(p)
	f.Fuzz(func(t *testing.T, method, rest, timeout, hk, hv, body string) {
		for i, h := range []http.Handler{in, fastAdapter{in}} {
			req, err := http.NewRequest(method, "http://127.0.0.1:8080/", strings.NewReader(body))
			if err != nil {
				return
			}
			req.URL.Opaque = PublishPrefix + rest
			req.RequestURI = req.URL.Opaque
			if strings.ContainsAny(rest, " \r\n\t#") {
				return // not a request line a client could send
			}
			if timeout != "" {
				req.Header["Micro-Timeout"] = []string{timeout}
			}
			if hk != "" {
				req.Header[hk] = []string{hv}
			}
			p.mu.Lock()
			p.topic, p.header = "", nil
			p.mu.Unlock()
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			handler := []string{"net/http", "fasthttp"}[i]
			switch w.Code {
			case http.StatusAccepted, http.StatusOK, http.StatusNoContent:
			default:
				if w.Code < 400 || w.Code > 499 {
					t.Fatalf("%s: %s %q: status %d %s", handler, method, rest, w.Code, w.Body)
				}
				if _, ok := callerr.Parse(w.Body.Bytes()); !ok {
					t.Fatalf("%s: %s %q: body is not a JSON error: %q", handler, method, rest, w.Body)
				}
			}
			p.mu.Lock()
			topic, header := p.topic, p.header
			p.mu.Unlock()
			if topic != "" && broker.ValidTopic(topic) != nil {
				t.Fatalf("%s: published to an invalid topic %q", handler, topic)
			}
			for k := range header {
				if transport.IsMicroHeader(k) {
					t.Fatalf("%s: a caller's %s reached the broker", handler, k)
				}
			}
		}
	})
}
