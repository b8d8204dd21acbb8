package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microhost/micro/runtime/budget"
	"github.com/microhost/micro/runtime/client"
	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/quota"
	"github.com/microhost/micro/runtime/registry"
	"github.com/microhost/micro/runtime/selector"
	"github.com/microhost/micro/runtime/transport"
)

// This file wires global rate limits: every micro runs a quota client, which the wrappers
// read their leases from (wrapper.Leases), and a micro with [quota] serve runs an instance
// of the quota service. The instance is served like an app that micro fronts: a loopback
// HTTP server of this process, registered under quota.service, so that calls reach it
// through the inbound as any call does (mutual TLS, any transport). Its instances elect a
// master through the registry.

// quotas is this micro's part in global rate limits.
type quotas struct {
	r       *Runtime
	client  *quota.Client
	service atomic.Value // string: the quota service's name, which clients call

	mu      sync.Mutex // guards serving
	serving *quotaInstance
}

// quotaInstance is this micro's instance of the quota service.
type quotaInstance struct {
	cfg    config.Quota
	srv    *quota.Server
	svc    *quota.Service
	http   *http.Server
	addr   string             // its loopback base URL, which the inbound forwards to
	cancel context.CancelFunc // ends its campaign
	done   chan struct{}      // closed when the campaign has ended
}

// newQuotas makes the quota client of r, for calls to the quota service named in cfg.
func newQuotas(r *Runtime, cfg config.Quota) (*quotas, error) {
	q := &quotas{r: r}
	q.service.Store(cfg.Service)
	c, err := quota.NewClient(quota.ClientOptions{ID: processID(r.procID), Caller: q, Logger: r.logger})
	if err != nil {
		return nil, fmt.Errorf("quota client: %w", err)
	}
	q.client = c
	return q, nil
}

// processID names this process to the quota service and in its spans: its host, pid and
// process id.
func processID(procID string) string {
	host, _ := os.Hostname()
	host = strings.Map(func(c rune) rune {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' {
			return c
		}
		return '_'
	}, host)
	if len(host) > 64 {
		host = host[:64]
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), procID)
}

// Call implements quota.Caller: a lease request goes to the quota service's node at
// address, or to one the selector picks when address is "", as a message over micro's
// transports, past the client wrappers (a rate limit must not limit its own leases) and
// without retries (the quota client retries on its own schedule).
func (q *quotas) Call(ctx context.Context, address string, body []byte) (int, []byte, error) {
	service := q.service.Load().(string)
	node := &registry.Node{Address: address}
	var pick selector.Pick
	if address == "" {
		var err error
		if pick, err = q.r.sel.Select(ctx, service, quota.Endpoint, nil); err != nil {
			return 0, nil, fmt.Errorf("quota service %q: %w", service, err)
		}
		node = pick.Node()
	}
	left, ok := budget.Remaining(ctx, time.Now())
	if !ok {
		left = 2 * time.Second
	}
	req := &client.Request{Service: service, Endpoint: quota.Endpoint, Method: http.MethodPost, Target: "/" + quota.Endpoint,
		Header: map[string]string{"Content-Type": "application/json"}}
	start := time.Now()
	m, status, _, err := client.RoundTrip(ctx, q.r.pool, node.Address, &transport.Message{Header: client.MessageHeader(ctx, req, node, left, nil), Body: body})
	if address == "" {
		outcome := selector.Success
		if err != nil {
			outcome = selector.NodeFailure
		}
		pick.Done(time.Since(start), outcome)
	}
	if err != nil {
		return 0, nil, err
	}
	return status, m.Body, nil
}

// run renews this micro's leases until ctx ends, then gives them back.
func (q *quotas) run(ctx context.Context) {
	if err := q.client.Run(ctx); err != nil && ctx.Err() == nil {
		q.r.logger.Error("quota client stopped", "err", err)
	}
}

// services returns specs with this micro's quota instance added, when it serves one.
func (q *quotas) services(specs map[string]config.Service) map[string]config.Service {
	q.mu.Lock()
	inst := q.serving
	q.mu.Unlock()
	if inst == nil {
		return specs
	}
	out := make(map[string]config.Service, len(specs)+1)
	for k, v := range specs {
		out[k] = v
	}
	out[inst.cfg.Service] = config.Service{
		Address:    inst.addr,
		Instances:  1,
		Endpoints:  []string{quota.Endpoint},
		Idempotent: []string{quota.Endpoint}, // a lease request asks for a state, not a change
	}
	return out
}

// apply makes this micro follow cfg: it starts, restarts or stops its quota instance, and
// gives a running one new capacities. The caller applies the services afterwards
// (services), so that the instance's registration follows.
func (q *quotas) apply(ctx context.Context, cfg config.Quota) error {
	q.service.Store(cfg.Service)
	q.mu.Lock()
	defer q.mu.Unlock()
	cur := q.serving
	switch {
	case cur != nil && cfg.Serve && cur.cfg.Service == cfg.Service && cur.cfg.Lease == cfg.Lease && cur.cfg.Refresh == cfg.Refresh:
		if err := cur.srv.SetResources(cfg.Resources); err != nil {
			return fmt.Errorf("quota.resources: %w", err)
		}
		cur.cfg.Resources = cfg.Resources
		return nil
	case cur != nil:
		q.serving = nil
		cur.stop(ctx)
		q.r.logger.Info("quota service instance stopped", "service", cur.cfg.Service)
	}
	if !cfg.Serve {
		return nil
	}
	inst, err := startQuotaInstance(cfg, q.r)
	if err != nil {
		return err
	}
	q.serving = inst
	q.campaign(inst)
	q.r.logger.Info("quota service instance started", "service", cfg.Service, "resources", len(cfg.Resources),
		"lease", cfg.Lease, "refresh", cfg.Refresh)
	return nil
}

// startQuotaInstance starts an instance of the quota service on a loopback port.
func startQuotaInstance(cfg config.Quota, r *Runtime) (*quotaInstance, error) {
	srv, err := quota.NewServer(cfg.Resources, quota.ServerOptions{Lease: cfg.Lease, Refresh: cfg.Refresh})
	if err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("quota: listening on loopback: %w", err)
	}
	inst := &quotaInstance{cfg: cfg, srv: srv, svc: quota.NewService(srv, quota.ServiceOptions{Logger: r.logger}),
		addr: "http://" + ln.Addr().String()}
	inst.http = &http.Server{Handler: inst, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	go func() {
		if err := inst.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.logger.Error("quota service instance stopped serving", "err", err)
		}
	}()
	return inst, nil
}

// ServeHTTP serves the quota service's calls, which the inbound forwards here.
func (inst *quotaInstance) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, `{"id":"micro.quota","code":405,"detail":"POST only","status":"Method Not Allowed"}`, http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, quota.MaxRequestBytes+1))
	if err != nil {
		return
	}
	status, answer := inst.svc.Handle(req.Context(), strings.TrimPrefix(req.URL.Path, "/"), body)
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusServiceUnavailable {
		var ref quota.Refusal
		if json.Unmarshal(answer, &ref) == nil && ref.RetryAfterMS > 0 {
			w.Header().Set("Retry-After", strconv.FormatInt(max(1, (ref.RetryAfterMS+999)/1000), 10))
		}
	}
	w.WriteHeader(status)
	_, _ = w.Write(answer)
}

// campaign runs inst's election on the registry in use, until stop or a registry switch
// (recampaign).
func (q *quotas) campaign(inst *quotaInstance) {
	ctx, cancel := context.WithCancel(q.r.bgctx)
	inst.cancel, inst.done = cancel, make(chan struct{})
	reg := q.r.registry()
	self := quota.Member{Node: "quota-" + q.r.procID, Address: q.r.InboundAddr()}
	go func() {
		defer close(inst.done)
		el, ok := reg.(registry.Elector)
		if !ok {
			q.r.logger.Error("the registry cannot elect a quota master: this quota instance only redirects", "service", inst.cfg.Service)
			return
		}
		if err := inst.svc.Run(ctx, el, inst.cfg.Service, self); err != nil && ctx.Err() == nil {
			q.r.logger.Error("quota service instance: election ended", "service", inst.cfg.Service, "err", err)
		}
	}()
}

// recampaign moves the election of this micro's quota instance to the registry in use,
// after a registry switch.
func (q *quotas) recampaign() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if inst := q.serving; inst != nil {
		inst.cancel()
		<-inst.done
		q.campaign(inst)
	}
}

// stop ends inst: its campaign (resigning a leadership) and its server.
func (inst *quotaInstance) stop(ctx context.Context) {
	inst.cancel()
	<-inst.done
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_ = inst.http.Shutdown(sctx)
}

// close stops this micro's quota instance, if it serves one.
func (q *quotas) close(ctx context.Context) {
	q.mu.Lock()
	inst := q.serving
	q.serving = nil
	q.mu.Unlock()
	if inst != nil {
		inst.stop(ctx)
	}
}
