package pubsub

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/microhost/micro/runtime/broker"
)

// maxOtherTopics is how many topics that no subscription here names may still be their
// own label on micro_broker_published_total; later ones share the label "other".
const maxOtherTopics = 64

// other is the label of a topic past the bound.
const other = "other"

// metrics are pubsub's Prometheus series. A topic label is a topic that a service here
// subscribes to (or its dead-letter topic), or one of the first maxOtherTopics others that
// were published to; publishers cannot grow the series without bound.
type metrics struct {
	pub     *prometheus.CounterVec
	deliv   *prometheus.CounterVec
	redeliv *prometheus.CounterVec
	dead    *prometheus.CounterVec
	heldC   *prometheus.CounterVec
	pending *prometheus.GaugeVec
	oldest  *prometheus.GaugeVec
	mu      sync.Mutex
	known   map[string]bool // subscribed topics and their dead-letter topics
	others  map[string]bool // other topics that have their own label
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		pub: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_broker_published_total",
			Help: "Messages the broker accepted from publishers here, by topic.",
		}, []string{"topic"}),
		deliv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_broker_delivered_total",
			Help: "Messages delivered to a subscribing service fronted here and acknowledged, by topic and service.",
		}, []string{"topic", "service"}),
		redeliv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_broker_redelivered_total",
			Help: "Deliveries that failed and were returned to the broker to be delivered again, by topic and service.",
		}, []string{"topic", "service"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_broker_dead_lettered_total",
			Help: "Messages moved to their dead-letter topic after broker.max_deliveries failed deliveries, by topic and service.",
		}, []string{"topic", "service"}),
		heldC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "micro_broker_held_total",
			Help: "Deliveries held back because they could not reach the subscriber (a client wrapper refused them, or no node was up), by topic and service.",
		}, []string{"topic", "service"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "micro_broker_undelivered_messages",
			Help: "Messages the broker holds for a subscribing service fronted here, in flight included, by topic and service.",
		}, []string{"topic", "service"}),
		oldest: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "micro_broker_oldest_undelivered_seconds",
			Help: "Age of the oldest message the broker holds for a subscribing service fronted here; 0 when none, by topic and service.",
		}, []string{"topic", "service"}),
		known:  map[string]bool{},
		others: map[string]bool{},
	}
	reg.MustRegister(m.pub, m.deliv, m.redeliv, m.dead, m.heldC, m.pending, m.oldest)
	return m
}

// knowTopic makes topic a label of its own.
func (m *metrics) knowTopic(topic string) {
	m.mu.Lock()
	m.known[topic] = true
	m.mu.Unlock()
}

// label is topic's label value.
func (m *metrics) label(topic string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.known[topic], m.others[topic]:
		return topic
	case len(m.others) < maxOtherTopics:
		m.others[topic] = true
		return topic
	}
	return other
}

func (m *metrics) published(topic string) { m.pub.WithLabelValues(m.label(topic)).Inc() }

func (m *metrics) delivered(topic, service string) {
	m.deliv.WithLabelValues(m.label(topic), service).Inc()
}

func (m *metrics) redelivered(topic, service string) {
	m.redeliv.WithLabelValues(m.label(topic), service).Inc()
}

func (m *metrics) deadLettered(topic, service string) {
	m.dead.WithLabelValues(m.label(topic), service).Inc()
}

func (m *metrics) held(topic, service string) { m.heldC.WithLabelValues(m.label(topic), service).Inc() }

// backlog records what a subscription has yet to consume.
func (m *metrics) backlog(topic, service string, b broker.Backlog) {
	l := m.label(topic)
	m.pending.WithLabelValues(l, service).Set(float64(b.Messages))
	age := 0.0
	if b.Messages > 0 && !b.Oldest.IsZero() {
		age = max(time.Since(b.Oldest).Seconds(), 0)
	}
	m.oldest.WithLabelValues(l, service).Set(age)
}

// forget drops a stopped subscription's gauges.
func (m *metrics) forget(topic, service string) {
	l := m.label(topic)
	m.pending.DeleteLabelValues(l, service)
	m.oldest.DeleteLabelValues(l, service)
}
