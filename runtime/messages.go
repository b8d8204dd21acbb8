package runtime

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/microhost/micro/runtime/config"
	"github.com/microhost/micro/runtime/pubsub"
)

// This file wires publish and subscribe: the broker that [broker] names, the
// subscriptions that [services.NAME] subscribe declares, and a live switch of brokers.

// openPubSub opens the broker of cfg; Start then starts the subscriptions of its services.
func (r *Runtime) openPubSub(ctx context.Context, cfg *config.Config) error {
	b, err := r.factories.Broker(ctx, cfg.Broker, r.logger)
	if err != nil {
		return fmt.Errorf("broker %q: %w", cfg.Broker.Plugin, err)
	}
	r.pubsub = pubsub.New(b, cfg.Broker.Plugin, r.client, r.metrics.Registry(), r.logger, pubsubOptions(cfg))
	r.pubsub.SetTracer(r.tracer)
	return nil
}

// applyBroker makes cfg's [broker] and subscriptions the running ones; it returns the
// broker section that runs afterwards: cfg's, or old's when a switch failed.
func (r *Runtime) applyBroker(ctx context.Context, old, cfg *config.Config) config.Broker {
	running := old.Broker
	r.regMu.Lock()
	r.brokerSwapErr = nil
	r.regMu.Unlock()
	if brokerChanged(old.Broker, cfg.Broker) {
		start := time.Now()
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		b, err := r.factories.Broker(octx, cfg.Broker, r.logger)
		cancel()
		if err != nil {
			r.logger.Error("broker switch failed; the old broker stays in use", "from", old.Broker.Plugin, "to", cfg.Broker.Plugin, "err", err)
			r.regMu.Lock()
			r.brokerSwapErr = fmt.Errorf("switch to broker %q failed: %w", cfg.Broker.Plugin, err)
			r.regMu.Unlock()
			r.observed.swapped(roleBroker, old.Broker.Plugin, cfg.Broker.Plugin, err)
		} else {
			r.observed.swapped(roleBroker, old.Broker.Plugin, cfg.Broker.Plugin, nil)
			r.pubsub.Swap(b, cfg.Broker.Plugin)
			running = cfg.Broker
			r.logger.Info("broker switched; the old one delivers what it holds, then closes", "from", old.Broker.Plugin, "to", cfg.Broker.Plugin,
				"took", time.Since(start).Round(time.Millisecond))
		}
	}
	// Delivery settings apply live, whichever broker runs.
	next := *cfg
	next.Broker = mergeBroker(running, cfg.Broker)
	r.pubsub.SetOptions(pubsubOptions(&next))
	r.pubsub.SetSubscriptions(subscriptions(cfg.Services))
	return next.Broker
}

// mergeBroker is the broker section that runs after a reload: where messages are kept
// (the keys that make a broker) from running, and how they are delivered from cfg: the one
// list of the keys that switch brokers.
func mergeBroker(running, cfg config.Broker) config.Broker {
	cfg.Plugin, cfg.Dir, cfg.URL, cfg.Path, cfg.SHA256, cfg.Auth = running.Plugin, running.Dir, running.URL, running.Path, running.SHA256, running.Auth
	cfg.MaxBytes, cfg.MaxAge, cfg.MaxMessage = running.MaxBytes, running.MaxAge, running.MaxMessage
	return cfg
}

// brokerChanged reports whether b keeps messages elsewhere, or under other limits, than
// a: micro must switch to a new broker.
func brokerChanged(a, b config.Broker) bool { return mergeBroker(a, b) != b }

// subscriptions lists the subscriptions that services declare, in a stable order.
func subscriptions(services map[string]config.Service) []pubsub.Subscription {
	var out []pubsub.Subscription
	for _, name := range slices.Sorted(maps.Keys(services)) {
		subs := services[name].Subscribe
		for _, topic := range slices.Sorted(maps.Keys(subs)) {
			out = append(out, pubsub.Subscription{Service: name, Topic: topic, Endpoint: subs[topic]})
		}
	}
	return out
}

func pubsubOptions(cfg *config.Config) pubsub.Options {
	b := cfg.Broker
	pattern := b.DeadLetter
	return pubsub.Options{
		MaxMessage:      int64(b.MaxMessage),
		MaxDeliveries:   b.MaxDeliveries,
		DeliveryTimeout: b.DeliveryTimeout,
		PublishTimeout:  cfg.Client.Timeout,
		Backoff:         b.Backoff,
		BackoffMax:      b.BackoffMax,
		MaxInflight:     b.MaxInflight,
		DeadLetter:      func(topic string) string { return config.DeadLetterTopic(pattern, topic) },
		DrainTimeout:    b.DrainTimeout,
	}
}
