package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/microhost/micro/abi"
	"github.com/microhost/micro/sdk/registry"
)

// Leader election (registry.Elector) follows Consul's own recipe: a candidate creates a
// session and acquires the key micro/elect/<name> with it, writing its value into the key;
// whoever holds the key leads. A session lives while it is renewed within its TTL, so the
// leadership of a process that dies ends one to two TTLs later (Consul waits up to twice the
// TTL before it invalidates a session). The session's behavior is delete: its key goes with
// it, and its lock-delay is as short as Consul takes (1ms), so that another candidate takes
// over at once instead of after Consul's default delay of 15s.
const (
	// electPrefix is the KV prefix of the election keys.
	electPrefix = "micro/elect/"
	// electSessionTTL is the TTL of a candidate's session: Consul's minimum.
	electSessionTTL = 10 * time.Second
	// electLockDelay is the lock-delay of a candidate's session. Zero would mean Consul's
	// default of 15s, and Consul counts it in milliseconds.
	electLockDelay = time.Millisecond
	// electWait bounds one blocking query on an election key.
	electWait = 30 * time.Second
	// electRetry is how long a candidate waits before it tries a free key again, after
	// a failed acquisition (the lock-delay of a session just invalidated), and between
	// the failed queries of a leader that watches its key.
	electRetry = 50 * time.Millisecond
	// electCleanup bounds the destruction of a session once the leadership is lost or
	// the Campaign gave up.
	electCleanup = 5 * time.Second
)

var _ registry.Elector = (*consul)(nil)

// Campaign implements registry.Elector: it creates a session (TTL 10s, lock-delay 1ms,
// behavior delete), renews it from then on, and acquires the key micro/elect/<name> with
// the value, waiting on blocking queries while another session holds the key. It returns
// when the key is acquired, or ctx ends, or the agent fails; the session is destroyed then.
// name is 1 to 128 bytes of [A-Za-z0-9._-]; value is UTF-8 of at most 4 KiB.
//
// The Leadership is lost when the key stops being held by the session (someone deleted or
// released it, or the session was invalidated), or when the session cannot be renewed for
// a TTL, after which Consul may have invalidated it.
func (r *consul) Campaign(ctx context.Context, name, value string) (registry.Leadership, error) {
	if err := abi.CheckElection(name, &value); err != nil {
		return nil, fmt.Errorf("consul registry: campaign: %w", err)
	}
	client, addr, err := r.conn()
	if err != nil {
		return nil, err
	}
	key := electPrefix + name
	failed := func(err error) error { return fmt.Errorf("consul agent at %s: campaign %q: %w", addr, name, err) }
	id, _, err := client.Session().Create(&api.SessionEntry{
		Name:      "micro election " + name,
		TTL:       electSessionTTL.String(),
		LockDelay: electLockDelay,
		Behavior:  api.SessionBehaviorDelete,
	}, writeOpts(ctx))
	if err != nil {
		return nil, failed(fmt.Errorf("create a session: %w", err))
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &leadership{
		log:     r.log.With("election", name),
		client:  client,
		addr:    addr,
		name:    name,
		key:     key,
		session: id,
		ctx:     lctx,
		cancel:  cancel,
		lost:    make(chan struct{}),
	}
	l.wg.Add(1)
	go l.renew() // a campaign may outlast the session's TTL
	if err := l.acquire(ctx, value); err != nil {
		l.end("")
		return nil, failed(err)
	}
	r.log.Info("elected", "election", name)
	l.wg.Add(1)
	go l.monitor()
	return l, nil
}

// Leader implements registry.Elector: the value of the key micro/elect/<name> when a
// session holds it, else registry.ErrNoLeader.
func (r *consul) Leader(ctx context.Context, name string) (string, error) {
	if err := abi.CheckElection(name, nil); err != nil {
		return "", fmt.Errorf("consul registry: leader: %w", err)
	}
	client, addr, err := r.conn()
	if err != nil {
		return "", err
	}
	pair, _, err := client.KV().Get(electPrefix+name, queryOpts(ctx))
	if err != nil {
		return "", fmt.Errorf("consul agent at %s: leader of %q: %w", addr, name, err)
	}
	if pair == nil || pair.Session == "" {
		return "", fmt.Errorf("consul registry: election %q: %w", name, registry.ErrNoLeader)
	}
	return string(pair.Value), nil
}

// writeOpts returns write options bound to ctx.
func writeOpts(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

// leadership is a candidate's session, and, once its Campaign returned, its leadership.
type leadership struct {
	log     *slog.Logger
	client  *api.Client
	addr    string
	name    string
	key     string
	session string

	ctx    context.Context // ends when the leadership ends
	cancel context.CancelFunc
	wg     sync.WaitGroup // renew and monitor

	once sync.Once
	lost chan struct{} // closed by end
	err  error         // from destroying the session; written before lost is closed
}

// acquire acquires the key with the session, waiting while another session holds it,
// until campaign ends or the leadership does (its session was lost).
func (l *leadership) acquire(campaign context.Context, value string) error {
	ctx, stop := context.WithCancel(campaign)
	defer stop()
	defer context.AfterFunc(l.ctx, stop)()
	kv := l.client.KV()
	for {
		ok, _, err := kv.Acquire(&api.KVPair{Key: l.key, Value: []byte(value), Session: l.session}, writeOpts(ctx))
		if err != nil {
			return l.why(campaign, fmt.Errorf("acquire %s: %w", l.key, err))
		}
		if ok {
			return nil
		}
		// Wait until no session holds the key.
		var index uint64
		for {
			pair, meta, err := kv.Get(l.key, (&api.QueryOptions{WaitIndex: index, WaitTime: electWait}).WithContext(ctx))
			if err != nil {
				return l.why(campaign, fmt.Errorf("watch %s: %w", l.key, err))
			}
			if pair == nil || pair.Session == "" {
				break
			}
			index = meta.LastIndex
		}
		if index != 0 {
			continue // the key was freed while we watched: try at once
		}
		// The key was free as the acquisition failed: the lock-delay of a session just
		// invalidated runs.
		select {
		case <-ctx.Done():
			return l.why(campaign, ctx.Err())
		case <-time.After(electRetry):
		}
	}
}

// why returns why acquire failed with err: the session was lost, or the campaign's
// context ended, or err.
func (l *leadership) why(campaign context.Context, err error) error {
	switch {
	case l.ctx.Err() != nil:
		return fmt.Errorf("its session was lost: %w", err)
	case campaign.Err() != nil:
		return campaign.Err()
	}
	return err
}

// renew renews the session every half TTL until the leadership ends, and ends it when the
// session is gone, or could not be renewed for a TTL.
func (l *leadership) renew() {
	defer l.wg.Done()
	ticker := time.NewTicker(electSessionTTL / 2)
	defer ticker.Stop()
	renewed := time.Now()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-ticker.C:
		}
		entry, _, err := l.client.Session().Renew(l.session, writeOpts(l.ctx))
		switch {
		case l.ctx.Err() != nil:
			return
		case err == nil && entry == nil:
			go l.end("its session expired")
			return
		case err == nil:
			renewed = time.Now()
		case time.Since(renewed) >= electSessionTTL:
			go l.end(fmt.Sprintf("its session could not be renewed for %v: %v", electSessionTTL, err))
			return
		}
	}
}

// monitor watches the key until the leadership ends, and ends it when the session no
// longer holds the key.
func (l *leadership) monitor() {
	defer l.wg.Done()
	var index uint64
	for {
		opts := &api.QueryOptions{RequireConsistent: true, WaitIndex: index, WaitTime: electWait}
		pair, meta, err := l.client.KV().Get(l.key, opts.WithContext(l.ctx))
		switch {
		case l.ctx.Err() != nil:
			return
		case err != nil:
			// The agent may come back; the session's renewal decides.
			index = 0
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(electRetry):
			}
			continue
		case pair == nil || pair.Session != l.session:
			go l.end("the key " + l.key + " is no longer held by its session")
			return
		}
		index = meta.LastIndex
	}
}

// end ends the leadership, logging why unless it was given up: it stops the renewal and
// the monitor, destroys the session, which deletes the key if the session holds it, and
// closes Lost.
func (l *leadership) end(why string) {
	l.once.Do(func() {
		if why != "" {
			l.log.Info("leadership lost", "why", why)
		}
		l.cancel()
		l.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), electCleanup)
		defer cancel()
		if _, err := l.client.Session().Destroy(l.session, writeOpts(ctx)); err != nil {
			l.err = fmt.Errorf("consul agent at %s: resign %q: destroy the session: %w", l.addr, l.name, err)
		}
		close(l.lost)
	})
}

// Lost implements registry.Leadership.
func (l *leadership) Lost() <-chan struct{} { return l.lost }

// Resign implements registry.Leadership: it destroys the session, which deletes the key, so
// that a waiting candidate takes over at once. When the agent cannot be told, the session
// expires within two TTLs, and Resign returns the error. Resigning a lost leadership does
// nothing.
func (l *leadership) Resign(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.end("")
	}()
	select {
	case <-done:
		return l.err
	case <-ctx.Done():
		return fmt.Errorf("consul registry: resign %q: %w", l.name, ctx.Err())
	}
}
