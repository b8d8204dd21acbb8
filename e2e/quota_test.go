package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microhost/micro/plugins/registry-consul/consultest"
)

// pacer calls a micro's greeter at a fixed rate, whatever the answers, and counts the
// answers per status and per second since start.
type pacer struct {
	c     *timed
	rate  int
	start time.Time
	stop  chan struct{}
	done  sync.WaitGroup

	mu  sync.Mutex
	per map[int]map[int]int // second → status → calls
	odd []string            // the first answers other than 200 and 429
}

func startPacer(m *micro, rate int, start time.Time) *pacer {
	tc := newTimed(m)
	tc.body = `{"name":"quota"}`
	p := &pacer{c: tc, rate: rate, start: start, stop: make(chan struct{}), per: map[int]map[int]int{}}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		sem := make(chan struct{}, 64)
		var calls sync.WaitGroup
		defer calls.Wait()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default: // 64 calls out: the callee is stuck; count it as a failure
				p.record(time.Now(), 0)
				continue
			}
			calls.Go(func() {
				defer func() { <-sem }()
				at := time.Now()
				status, body, _ := p.c.do("greeter", "Greeter.Hello", "", "2s")
				p.record(at, status)
				if status != http.StatusOK && status != http.StatusTooManyRequests {
					p.mu.Lock()
					if len(p.odd) < 5 {
						p.odd = append(p.odd, fmt.Sprintf("%s: %d %s", at.Format("15:04:05.000"), status, body))
					}
					p.mu.Unlock()
				}
			})
		}
	}()
	return p
}

func (p *pacer) record(at time.Time, status int) {
	s := int(at.Sub(p.start) / time.Second)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.per[s] == nil {
		p.per[s] = map[int]int{}
	}
	p.per[s][status]++
}

// accepted returns the calls per second answered 200 in seconds [from, to) since start.
func (p *pacer) accepted(from, to int) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for s := from; s < to; s++ {
		n += p.per[s][http.StatusOK]
	}
	return float64(n) / float64(to-from)
}

// offered returns the calls per second made in seconds [from, to) since start, whatever
// their answers: less than the pacer's rate when the machine could not keep up.
func (p *pacer) offered(from, to int) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for s := from; s < to; s++ {
		for _, k := range p.per[s] {
			n += k
		}
	}
	return float64(n) / float64(to-from)
}

// others returns the answers of seconds [from, to) that were neither 200 nor 429.
func (p *pacer) others(from, to int) map[int]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int]int{}
	for s := from; s < to; s++ {
		for status, n := range p.per[s] {
			if status != http.StatusOK && status != http.StatusTooManyRequests {
				out[status] += n
			}
		}
	}
	return out
}

// checkAnswers checks the answers of the seconds before until: the limiter answers 200 or
// 429. Calls through a machine as busy as a test's may also, rarely, time out (their
// attempts get 50ms at least): at most one in a thousand.
func (p *pacer) checkAnswers(t *testing.T, until int) {
	t.Helper()
	n := 0
	for _, k := range p.others(0, until) {
		n += k
	}
	calls := p.offered(0, until) * float64(until)
	switch {
	case float64(n) > calls/1000:
		t.Errorf("%d answers other than 200 and 429 of %.0f calls: %q", n, calls, p.odd)
	case n > 0:
		t.Logf("%d answers other than 200 and 429 of %.0f calls: %q", n, calls, p.odd)
	}
}

func (p *pacer) halt() {
	close(p.stop)
	p.done.Wait()
}

// limitedCaller is the config of a micro that fronts a greeter and limits its calls to
// greeter with the rate-limit wrapper's global scope on resource "api", with safe share
// fallback calls per second.
func limitedCaller(regDir string, fallback int) string {
	return strings.Replace(baseConfig(regDir, greeterService("greeter", 1, "")+fmt.Sprintf(`
[wrappers.limit]
path = %q
services = ["greeter"]
config = { scope = "global", resource = "api", fallback_rate = %d }
`, bins.ratelimit, fallback)), "[client]", "[client]\nwrappers = [\"limit\"]", 1)
}

// quotaMaster waits until one of two instances of the quota service has become master, and
// returns it and the other.
func quotaMaster(t *testing.T, q1, q2 *micro) (master, other *micro) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		switch {
		case strings.Contains(q1.logs.String(), "quota: became master"):
			master, other = q1, q2
		case strings.Contains(q2.logs.String(), "quota: became master"):
			master, other = q2, q1
		default:
			return fmt.Errorf("no quota master yet")
		}
		return nil
	})
	return master, other
}

// TestGlobalRateLimit: three micros share a global limit of 300 calls/s on one resource,
// held by two instances of the quota service. Under uneven demand (250/s, 50/s and 50/s)
// the calls accepted stay within ±10% of 300/s once the shares have converged, and the
// shares are max-min fair (200, 50, 50). Killing the master quota instance keeps the total
// within the limit while the other takes over, and the shares stay; with no instance left,
// each micro keeps its lease until it ends, then applies its safe share.
func TestGlobalRateLimit(t *testing.T) {
	reg := t.TempDir()
	quotaCfg := `
[quota]
serve = true
lease = "2s"
refresh = "500ms"
[quota.resources]
api = 300
`
	master, other := quotaMaster(t, startMicro(t, baseConfig(reg, quotaCfg)), startMicro(t, baseConfig(reg, quotaCfg)))
	caller := limitedCaller(reg, 100)
	a, b, c := startMicro(t, caller), startMicro(t, caller), startMicro(t, caller)
	for _, m := range []*micro{a, b, c} {
		eventually(t, 20*time.Second, func() error {
			if s := mustServices(t, m); len(s["greeter"]) != 3 || len(s["micro.quota"]) != 2 {
				return fmt.Errorf("services: %v", s)
			}
			return nil
		})
	}

	start := time.Now()
	pa, pb, pc := startPacer(a, 250, start), startPacer(b, 50, start), startPacer(c, 50, start)
	defer pc.halt()
	defer pb.halt()
	defer pa.halt()
	total := func(from, to int) float64 {
		return pa.accepted(from, to) + pb.accepted(from, to) + pc.accepted(from, to)
	}
	wait := func(until int) {
		if d := time.Until(start.Add(time.Duration(until) * time.Second)); d > 0 {
			time.Sleep(d) // the pacers run on the clock: this waits for their seconds to pass
		}
	}

	// Convergence: the first second whose next three seconds have fair shares.
	converged := -1
	for s := 1; s <= 12 && converged < 0; s++ {
		wait(s + 3)
		if ra := pa.accepted(s, s+3); ra > 170 && ra < 230 && pb.accepted(s, s+3) > 40 && pc.accepted(s, s+3) > 40 {
			converged = s
		}
	}
	if converged < 0 {
		t.Fatalf("shares did not converge in 15s: per second, a %v, b %v, c %v; answers %v", pa.accepted(1, 15), pb.accepted(1, 15), pc.accepted(1, 15), pa.per)
	}
	from := converged + 3
	wait(from + 4)
	steady := total(from, from+4)
	// What the limit should let through: 300/s, or all that was asked when the pacers
	// could not ask for that much (a busy machine), within ±10% of the limit.
	want := min(300, pa.offered(from, from+4)+pb.offered(from, from+4)+pc.offered(from, from+4))
	t.Logf("converged %ds after the load started (lease 2s, refresh 500ms); steady: a %.0f/s, b %.0f/s, c %.0f/s, total %.0f/s of %.0f/s asked",
		converged, pa.accepted(from, from+4), pb.accepted(from, from+4), pc.accepted(from, from+4), steady,
		pa.offered(from, from+4)+pb.offered(from, from+4)+pc.offered(from, from+4))
	if steady < want-30 || steady > 330 {
		t.Errorf("accepted %.0f calls/s in total, want %.0f ± 30 (the limit 300 ± 10%%, or all that was asked)", steady, want)
	}

	// The master dies.
	killedAt := from + 4
	master.kill(syscall.SIGKILL)
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(other.logs.String(), "quota: became master") {
			return fmt.Errorf("no new master")
		}
		return nil
	})
	wait(killedAt + 6)
	after := total(killedAt, killedAt+6)
	t.Logf("after the master was killed: a %.0f/s, b %.0f/s, c %.0f/s, total %.0f/s",
		pa.accepted(killedAt, killedAt+6), pb.accepted(killedAt, killedAt+6), pc.accepted(killedAt, killedAt+6), after)
	// A limit with bursts (each bucket holds 200ms of its rate) holds over windows, not
	// every second: the takeover's six seconds stay within it.
	most := 0.0
	for s := killedAt; s < killedAt+6; s++ {
		most = max(most, total(s, s+1))
	}
	t.Logf("the busiest second after the kill: %.0f calls accepted", most)
	if after > 330 {
		t.Errorf("accepted %.0f calls/s in the six seconds after the kill, over the limit of 300 (+10%%)", after)
	}
	if after < 240 {
		t.Errorf("accepted %.0f calls/s in total after the takeover, want close to 300", after)
	}

	// No quota service at all: each micro keeps its lease until it ends (2s), then applies
	// its safe share (100/s), so a gets 100/s and the others what they want.
	goneAt := killedAt + 6
	other.kill(syscall.SIGKILL)
	wait(goneAt + 6)
	ra := pa.accepted(goneAt+3, goneAt+6)
	t.Logf("with no quota service, from 3s on: a %.0f/s, b %.0f/s, c %.0f/s", ra, pb.accepted(goneAt+3, goneAt+6), pc.accepted(goneAt+3, goneAt+6))
	if ra < 90 || ra > 110 {
		t.Errorf("a accepted %.0f calls/s with no quota service, want its safe share of 100", ra)
	}
	for _, p := range []*pacer{pa, pb, pc} {
		p.checkAnswers(t, goneAt+6)
	}
}

// TestGlobalRateLimitConsul: with Consul as the registry, the quota instances elect their
// master through a Consul session, a caller's wrapper enforces the lease it gets from that
// master (its safe share is 1/s, so what passes is the lease's), and a master that stops
// gracefully resigns, so that the other instance takes over at once.
func TestGlobalRateLimitConsul(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	reg, dir := consulRegistry(agent.Addr, ""), t.TempDir()
	quotaCfg := `
[quota]
serve = true
lease = "2s"
refresh = "500ms"
[quota.resources]
api = 40
`
	master, other := quotaMaster(t, startMicro(t, withRegistry(baseConfig(dir, quotaCfg), reg)), startMicro(t, withRegistry(baseConfig(dir, quotaCfg), reg)))
	caller := startMicro(t, withRegistry(limitedCaller(dir, 1), reg))
	start := time.Now()
	p := startPacer(caller, 100, start)
	defer p.halt()
	eventually(t, 20*time.Second, func() error {
		if !strings.Contains(caller.logs.String(), "holds a lease for resource") {
			return fmt.Errorf("no lease yet")
		}
		return nil
	})
	from := int(time.Since(start)/time.Second) + 1
	time.Sleep(time.Until(start.Add(time.Duration(from+3) * time.Second))) // three seconds of paced calls
	got := p.accepted(from, from+3)
	t.Logf("through Consul: %.0f calls/s accepted of 100/s, capacity 40/s", got)
	if got < 36 || got > 44 {
		t.Errorf("accepted %.0f calls/s, want the lease's 40 ± 10%%", got)
	}

	stopped := time.Now()
	master.kill(syscall.SIGINT)
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(other.logs.String(), "quota: became master") {
			return fmt.Errorf("no new master")
		}
		return nil
	})
	t.Logf("the other instance became master %v after the master was told to stop", time.Since(stopped).Round(time.Millisecond))
	from = int(time.Since(start)/time.Second) + 1
	time.Sleep(time.Until(start.Add(time.Duration(from+3) * time.Second)))
	if got := p.accepted(from, from+3); got > 44 {
		t.Errorf("accepted %.0f calls/s after the master changed, over the capacity of 40", got)
	}
	p.checkAnswers(t, from+3)
}
