package quota

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// eps is the rounding a sum of grants may show over a capacity.
const eps = 1e-9

// newTestServer returns a server on clock, with learning off unless opts says otherwise.
func newTestServer(t testing.TB, clock *fakeClock, capacities map[string]float64, opts ServerOptions) *Server {
	t.Helper()
	opts.Now = clock.Now
	if opts.Learning == 0 {
		opts.Learning = -1
	}
	s, err := NewServer(capacities, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ask sends one resource request and returns its grant.
func ask(t testing.TB, s *Server, client, name string, wants, has float64) Grant {
	t.Helper()
	resp, err := s.Lease(&Request{Client: client, Resources: []ResourceRequest{{Name: name, Wants: wants, Has: has}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 1 || resp.Resources[0].Name != name {
		t.Fatalf("answer %+v", resp)
	}
	return resp.Resources[0]
}

// total sums a server's holdings of a resource.
func total(s *Server, name string) float64 {
	var sum float64
	for _, h := range s.holdings(name) {
		sum += h
	}
	return sum
}

// bruteFair computes max-min fair shares by repeated equal splitting, independently of
// waterLevel.
func bruteFair(wants []float64, capacity float64) []float64 {
	share := make([]float64, len(wants))
	left := capacity
	open := make([]int, 0, len(wants))
	for i := range wants {
		open = append(open, i)
	}
	for len(open) > 0 && left > 1e-12 {
		split := left / float64(len(open))
		var still []int
		for _, i := range open {
			need := wants[i] - share[i]
			if need <= split {
				share[i] = wants[i]
				left -= need
			} else {
				share[i] += split
				left -= split
				still = append(still, i)
			}
		}
		open = still
	}
	return share
}

func TestWaterLevel(t *testing.T) {
	for _, tc := range []struct {
		wants    []float64
		capacity float64
		want     float64
	}{
		{[]float64{50, 50, 250}, 300, 200},
		{[]float64{10, 20, 30}, 300, math.Inf(1)},
		{[]float64{100, 100, 100}, 300, math.Inf(1)},
		{[]float64{200, 200, 200}, 300, 100},
		{nil, 300, math.Inf(1)},
		{[]float64{5}, 0, 0},
		{[]float64{10, 100, 1000}, 300, 190},
	} {
		if got := waterLevel(tc.wants, tc.capacity); got != tc.want {
			t.Errorf("waterLevel(%v, %v) = %v, want %v", tc.wants, tc.capacity, got, tc.want)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		wants := make([]float64, rng.IntN(20))
		for i := range wants {
			wants[i] = rng.Float64() * 200
		}
		capacity := rng.Float64() * 1000
		slices.Sort(wants)
		level := waterLevel(wants, capacity)
		fair := bruteFair(wants, capacity)
		for i, w := range wants {
			if got := min(w, level); math.Abs(got-fair[i]) > 1e-6 {
				t.Fatalf("wants %v capacity %v: share %v, brute force %v", wants, capacity, got, fair[i])
			}
		}
	}
}

// settle has the clients renew in turn, rounds times, each asking for its wants.
func settle(t *testing.T, s *Server, name string, wants map[string]float64, rounds int) map[string]float64 {
	t.Helper()
	ids := make([]string, 0, len(wants))
	for id := range wants {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	got := map[string]float64{}
	for range rounds {
		for _, id := range ids {
			got[id] = ask(t, s, id, name, wants[id], got[id]).Rate
			if sum := total(s, name); sum > 300+eps {
				t.Fatalf("granted %v of 300", sum)
			}
		}
	}
	return got
}

func TestServerFairShares(t *testing.T) {
	for _, tc := range []struct {
		name        string
		wants, want map[string]float64
	}{
		{"contended", map[string]float64{"a": 250, "b": 50, "c": 50}, map[string]float64{"a": 200, "b": 50, "c": 50}},
		{"under capacity", map[string]float64{"a": 100, "b": 50, "c": 25}, map[string]float64{"a": 100, "b": 50, "c": 25}},
		{"equal demand", map[string]float64{"a": 200, "b": 200, "c": 200}, map[string]float64{"a": 100, "b": 100, "c": 100}},
		{"one alone", map[string]float64{"a": 1000}, map[string]float64{"a": 300}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300}, ServerOptions{})
			got := settle(t, s, "api", tc.wants, 3)
			for id, w := range tc.want {
				if math.Abs(got[id]-w) > eps {
					t.Errorf("%s got %v, want %v (all: %v)", id, got[id], w, got)
				}
			}
		})
	}
}

func TestServerWaitsForOthersToGiveBack(t *testing.T) {
	s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300}, ServerOptions{})
	if g := ask(t, s, "a", "api", 300, 0); g.Rate != 300 {
		t.Fatalf("a alone got %v", g.Rate)
	}
	// b's fair share is 150, but a holds everything until it renews.
	if g := ask(t, s, "b", "api", 300, 0); g.Rate != 0 {
		t.Fatalf("b got %v while a holds 300", g.Rate)
	}
	if g := ask(t, s, "a", "api", 300, 300); g.Rate != 150 {
		t.Fatalf("a renewed to %v, want 150", g.Rate)
	}
	if g := ask(t, s, "b", "api", 300, 0); g.Rate != 150 {
		t.Fatalf("b renewed to %v, want 150", g.Rate)
	}
}

func TestServerReleaseFreesShare(t *testing.T) {
	s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300}, ServerOptions{})
	got := settle(t, s, "api", map[string]float64{"a": 200, "b": 200, "c": 200}, 2)
	if got["a"] != 100 {
		t.Fatalf("shares %v", got)
	}
	if g := ask(t, s, "c", "api", 0, 100); g.Rate != 0 || g.Code != 0 {
		t.Fatalf("release answered %+v", g)
	}
	if _, ok := s.holdings("api")["c"]; ok {
		t.Fatal("c still in the table after its release")
	}
	got = settle(t, s, "api", map[string]float64{"a": 200, "b": 200}, 2)
	if got["a"] != 150 || got["b"] != 150 {
		t.Fatalf("after c left: %v, want 150 each", got)
	}
}

func TestServerExpiry(t *testing.T) {
	clock := newFakeClock()
	s := newTestServer(t, clock, map[string]float64{"api": 300}, ServerOptions{})
	settle(t, s, "api", map[string]float64{"a": 200, "b": 200, "c": 200}, 2)
	// c stops renewing; a and b renew every refresh interval.
	for range 6 {
		clock.Advance(DefaultRefresh)
		ask(t, s, "a", "api", 200, 0)
		ask(t, s, "b", "api", 200, 0)
	}
	h := s.holdings("api")
	if _, ok := h["c"]; ok {
		t.Fatalf("c not expired: %v", h)
	}
	if h["a"] != 150 || h["b"] != 150 {
		t.Fatalf("after c expired: %v, want 150 each", h)
	}
	clock.Advance(DefaultLease)
	ask(t, s, "d", "api", 1, 0)
	if h := s.holdings("api"); len(h) != 1 {
		t.Fatalf("after the lease: %v, want d alone", h)
	}
}

func TestServerMaxClients(t *testing.T) {
	s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300}, ServerOptions{MaxClients: 2})
	ask(t, s, "a", "api", 10, 0)
	ask(t, s, "b", "api", 10, 0)
	if g := ask(t, s, "c", "api", 10, 0); g.Code != 503 || g.Rate != 0 || g.Error == "" {
		t.Fatalf("a third client got %+v, want a 503", g)
	}
	if g := ask(t, s, "a", "api", 20, 10); g.Code != 0 || g.Rate != 20 {
		t.Fatalf("a known client renewing got %+v", g)
	}
	ask(t, s, "b", "api", 0, 10)
	if g := ask(t, s, "c", "api", 10, 0); g.Code != 0 || g.Rate != 10 {
		t.Fatalf("c after b left got %+v", g)
	}
}

func TestServerUnknownResource(t *testing.T) {
	s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300}, ServerOptions{})
	resp, err := s.Lease(&Request{Client: "a", Resources: []ResourceRequest{{Name: "nope", Wants: 1}, {Name: "api", Wants: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if g := resp.Resources[0]; g.Code != 404 || g.Error == "" || g.Rate != 0 {
		t.Errorf("unknown resource: %+v", g)
	}
	if g := resp.Resources[1]; g.Code != 0 || g.Rate != 1 || g.LeaseMS != 10000 || g.RefreshMS != 2000 {
		t.Errorf("known resource: %+v", g)
	}
}

func TestServerLeaseValidates(t *testing.T) {
	s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300}, ServerOptions{})
	_, err := s.Lease(&Request{Client: "a", Resources: []ResourceRequest{{Name: "api", Wants: math.NaN()}}})
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("NaN wants: %v", err)
	}
}

func TestServerSetResources(t *testing.T) {
	s := newTestServer(t, newFakeClock(), map[string]float64{"api": 300, "db": 100}, ServerOptions{})
	settle(t, s, "api", map[string]float64{"a": 200, "b": 200}, 2)
	ask(t, s, "a", "db", 50, 0)

	if err := s.SetResources(map[string]float64{"api": 100, "new": 5}); err != nil {
		t.Fatal(err)
	}
	if g := ask(t, s, "a", "db", 50, 50); g.Code != 404 {
		t.Errorf("a removed resource answered %+v", g)
	}
	if g := ask(t, s, "a", "new", 50, 0); g.Rate != 5 {
		t.Errorf("a new resource answered %+v", g)
	}
	// The lowered capacity: a renewal never grows the total past it, and the shares
	// converge to it.
	if g := ask(t, s, "a", "api", 200, 150); g.Rate != 0 {
		t.Errorf("a got %v while b still holds 150 of 100", g.Rate)
	}
	got := settle(t, s, "api", map[string]float64{"a": 200, "b": 200}, 2)
	if got["a"] != 50 || got["b"] != 50 || total(s, "api") > 100 {
		t.Errorf("after lowering to 100: %v", got)
	}

	for _, bad := range []map[string]float64{{"api": -1}, {"api": math.NaN()}, {"a b": 1}, {"api": math.Inf(1)}} {
		if err := s.SetResources(bad); err == nil {
			t.Errorf("SetResources(%v) passes", bad)
		}
	}
	if g := ask(t, s, "a", "new", 5, 5); g.Code != 0 {
		t.Error("a refused SetResources changed the resources")
	}
}

func TestNewServerOptions(t *testing.T) {
	for _, opts := range []ServerOptions{
		{Lease: time.Second, Refresh: time.Second},
		{Lease: time.Second, Refresh: 2 * time.Second},
		{Lease: time.Microsecond},
		{MaxClients: -1},
	} {
		if _, err := NewServer(nil, opts); err == nil {
			t.Errorf("NewServer(%+v) passes", opts)
		}
	}
	if _, err := NewServer(map[string]float64{"": 1}, ServerOptions{}); err == nil {
		t.Error("an empty resource name passes")
	}
}

func TestServerLearning(t *testing.T) {
	clock := newFakeClock()
	caps := map[string]float64{"api": 300}
	old := newTestServer(t, clock, caps, ServerOptions{})
	settle(t, old, "api", map[string]float64{"a": 200, "b": 100}, 2)

	// The master changes: the new one starts its term knowing nothing.
	s := newTestServer(t, clock, caps, ServerOptions{Learning: DefaultLease})
	if !s.Learning() {
		t.Fatal("a new server is not learning")
	}
	if g := ask(t, s, "c", "api", 100, 0); g.Rate != 0 || g.Code != http.StatusServiceUnavailable {
		t.Fatalf("a new client got %+v while a and b may hold everything, want a refusal (its safe share)", g)
	}
	if g := ask(t, s, "a", "api", 250, 200); g.Rate != 200 {
		t.Fatalf("a, holding 200 and wanting more, got %v, want what it holds", g.Rate)
	}
	if g := ask(t, s, "c", "api", 100, 0); g.Rate != 0 || g.Code != http.StatusServiceUnavailable {
		t.Fatalf("c got %+v before b reported", g)
	}
	if g := ask(t, s, "b", "api", 40, 100); g.Rate != 40 {
		t.Fatalf("b, holding 100 and wanting 40, got %v", g.Rate)
	}
	if g := ask(t, s, "c", "api", 100, 0); g.Rate != 0 || g.Code != http.StatusServiceUnavailable {
		t.Fatalf("c got %+v in learning, want a refusal: what it may take is known only after", g)
	}
	if sum := total(s, "api"); sum > 300 {
		t.Fatalf("granted %v in learning", sum)
	}

	// After the learning period, the shares are fair again.
	clock.Advance(DefaultLease)
	if s.Learning() {
		t.Fatal("still learning after the period")
	}
	got := settle(t, s, "api", map[string]float64{"a": 250, "b": 40, "c": 100}, 3)
	if want := map[string]float64{"a": 160, "b": 40, "c": 100}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after learning: %v, want %v", got, want)
	}

	// A client reporting more than the capacity gets no more than the capacity.
	s.StartTerm()
	if g := ask(t, s, "x", "api", 500, 500); g.Rate != 300 {
		t.Fatalf("in learning, a client reporting 500 of 300 got %v", g.Rate)
	}
}

// simClient is a client in the property test, with the lease it holds.
type simClient struct {
	id       string
	rate     float64
	leaseEnd time.Time
	wants    float64
	dead     bool
}

func (c *simClient) has(now time.Time) float64 {
	if now.Before(c.leaseEnd) {
		return c.rate
	}
	return 0
}

// TestServerNeverOverCapacity drives servers with random clients, wants, renewal orders,
// releases, crashes and changes of master, and checks at every step that what the clients
// hold under unexpired leases never sums past the capacity.
func TestServerNeverOverCapacity(t *testing.T) {
	const capacity = 300
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		clock := newFakeClock()
		caps := map[string]float64{"api": capacity}
		opts := ServerOptions{Learning: DefaultLease, MaxClients: 8}
		if seed%4 == 0 {
			opts.Learning = -1 // no learning: safe as long as no master changes
		}
		servers := []*Server{newTestServer(t, clock, caps, opts), newTestServer(t, clock, caps, opts)}
		master := 0
		clients := make([]*simClient, 2+rng.IntN(10))
		for i := range clients {
			clients[i] = &simClient{id: fmt.Sprintf("c%d", i), wants: rng.Float64() * 200}
		}
		for step := range 400 {
			now := clock.Now()
			switch r := rng.IntN(100); {
			case r < 60: // a client renews
				c := clients[rng.IntN(len(clients))]
				if c.dead {
					break
				}
				if rng.IntN(10) == 0 {
					c.wants = rng.Float64() * 300
				}
				wants := c.wants
				if rng.IntN(20) == 0 {
					wants = 0 // a release
				}
				has := c.has(now)
				if wants == 0 {
					c.rate, c.leaseEnd = 0, time.Time{} // it stops using its share first
				}
				resp, err := servers[master].Lease(&Request{Client: c.id, Resources: []ResourceRequest{{Name: "api", Wants: wants, Has: has}}})
				if err != nil {
					t.Fatal(err)
				}
				if g := resp.Resources[0]; g.Code == 0 && wants > 0 {
					c.rate, c.leaseEnd = g.Rate, now.Add(time.Duration(g.LeaseMS)*time.Millisecond)
				} else {
					c.rate, c.leaseEnd = 0, time.Time{}
				}
			case r < 85:
				clock.Advance(time.Duration(rng.IntN(1500)) * time.Millisecond)
			case r < 88: // a client crashes; another starts
				clients[rng.IntN(len(clients))].dead = true
				clients = append(clients, &simClient{id: fmt.Sprintf("n%d", step), wants: rng.Float64() * 200})
			case r < 90 && opts.Learning > 0: // the master changes
				master = 1 - master
				servers[master].StartTerm()
			case r < 92: // the capacity grows (a lowered one is checked elsewhere)
				if err := servers[master].SetResources(map[string]float64{"api": capacity}); err != nil {
					t.Fatal(err)
				}
			}
			now = clock.Now()
			var sum float64
			for _, c := range clients {
				sum += c.has(now)
			}
			if sum > capacity+eps {
				t.Fatalf("seed %d step %d: clients hold %v of %v", seed, step, sum, capacity)
			}
			if sum := total(servers[master], "api"); sum > capacity+eps {
				t.Fatalf("seed %d step %d: the master granted %v of %v", seed, step, sum, capacity)
			}
		}
	}
}

// TestServerConverges checks that clients renewing every refresh interval, in random order,
// reach their fair shares within a few intervals, also after a change of master.
func TestServerConverges(t *testing.T) {
	const capacity = 300
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 11))
		clock := newFakeClock()
		caps := map[string]float64{"api": capacity}
		s := newTestServer(t, clock, caps, ServerOptions{})
		n := 2 + rng.IntN(8)
		wants := make([]float64, n)
		held := make([]float64, n)
		for i := range wants {
			wants[i] = 1 + rng.Float64()*150
		}
		fair := bruteFair(wants, capacity)
		round := func() {
			for _, i := range rng.Perm(n) {
				held[i] = ask(t, s, fmt.Sprintf("c%d", i), "api", wants[i], held[i]).Rate
			}
			clock.Advance(DefaultRefresh)
		}
		check := func(when string) {
			for i := range wants {
				if math.Abs(held[i]-fair[i]) > 1e-6 {
					t.Fatalf("seed %d %s: client %d holds %v, fair share %v (wants %v)", seed, when, i, held[i], fair[i], wants)
				}
			}
		}
		for range 3 {
			round()
		}
		check("after 3 intervals")

		// A new master learns, then converges as fast.
		s = newTestServer(t, clock, caps, ServerOptions{Learning: DefaultLease})
		for s.Learning() {
			round()
		}
		for range 3 {
			round()
		}
		check("after learning and 3 intervals")
	}
}
