// Package broker defines how micro publishes messages and delivers them to subscribers: the
// Broker interface that every broker implements (the embedded default and the plugins
// alike), and the rules for topic names.
//
// A broker stores each published message until every subscribing group has it acknowledged.
// A group is a queue group: each message goes to one consumer of the group, and every group
// subscribed to a topic gets every message published to it after the group first
// subscribed (fan-out across groups). Delivery is at least once: a delivery that is not
// acknowledged in time, or is refused with Nak, is delivered again, with its Attempt count
// raised. Dead letters and backoff are the runtime's decisions, made with Nak and Publish.
package broker

import (
	"context"
	"errors"
	"fmt"
	"github.com/microhost/micro/abi"
	"strings"
	"time"
)

// Header keys that micro sets on a delivery, the call that carries a message to a
// subscriber, and on dead letters, as abi defines and documents them. The publisher's own
// headers travel with them.
const (
	HeaderTopic      = abi.HeaderTopic
	HeaderMessageID  = abi.HeaderMessageID
	HeaderDelivery   = abi.HeaderDelivery
	HeaderDeadTopic  = abi.HeaderDeadTopic
	HeaderDeadGroup  = abi.HeaderDeadGroup
	HeaderDeadReason = abi.HeaderDeadReason
)

// IsDeliveryHeader reports whether k, in any case, is one of the headers micro sets on a
// delivery (HeaderTopic, HeaderMessageID, HeaderDelivery). Unlike micro's other headers,
// the inbound server passes these on to the app that a delivery is for.
func IsDeliveryHeader(k string) bool {
	return strings.EqualFold(k, HeaderTopic) || strings.EqualFold(k, HeaderMessageID) || strings.EqualFold(k, HeaderDelivery)
}

// ValueSep joins the values of a header that has several in a Message's Header
// (abi.ValueSep).
const ValueSep = abi.ValueSep

// MaxTopicLen is the longest topic name, in bytes.
const MaxTopicLen = 200

// Errors that brokers return, wrapped with context.
var (
	// ErrFull means the broker refused a message because its store is full.
	ErrFull = errors.New("broker store is full")
	// ErrTooLarge means the message is larger than the broker accepts.
	ErrTooLarge = errors.New("message too large")
	// ErrUnavailable means the broker's backend cannot be reached.
	ErrUnavailable = errors.New("broker unavailable")
	// ErrClosed is returned by a closed Broker or Consumer.
	ErrClosed = errors.New("broker closed")
	// ErrUnknownDelivery is returned by Ack, Nak and Extend for a delivery that is no longer
	// this consumer's: acknowledged already, or redelivered after its AckTimeout.
	ErrUnknownDelivery = errors.New("unknown delivery")
)

// Message is one published message.
type Message struct {
	// ID identifies the message; Publish keeps a given ID and, within the broker's
	// duplicate window, stores a message once however often it is published with that ID.
	ID string
	// Topic is where it was published, a valid topic name (see ValidTopic).
	Topic string
	// Header is the publisher's headers; a header with several values has them joined by
	// ValueSep.
	Header map[string]string
	// Body is the payload.
	Body []byte
	// Time is when the broker accepted the message; Publish sets it.
	Time time.Time
}

// Size is what m counts for against size limits: its body and every header key and value.
func (m *Message) Size() int {
	n := len(m.Body)
	for k, v := range m.Header {
		n += len(k) + len(v)
	}
	return n
}

// Delivery is one delivery of a message to a consumer.
type Delivery struct {
	Message
	// Attempt counts the deliveries of the message to the consumer's group, 1 for the
	// first. Extend does not raise it; a Nak or a lapsed AckTimeout does.
	Attempt int
	// Token identifies the delivery to Ack, Nak and Extend; its form is the broker's.
	Token string
}

// Subscription says what a Consumer consumes.
type Subscription struct {
	// Topic to consume, a valid topic name.
	Topic string
	// Group is the queue group, a valid group name (see ValidGroup): each message goes to
	// one consumer of the group. micro uses the subscribing service's name. A group is
	// durable: messages published while none of its consumers runs wait for it.
	Group string
	// AckTimeout is how long a delivery may go unacknowledged (and not Extended) before
	// the broker delivers it again.
	AckTimeout time.Duration
	// MaxInflight bounds the deliveries a Consumer holds unacknowledged; Next waits while
	// it holds that many. 0 means 1.
	MaxInflight int
}

// Backlog describes what a group has yet to consume.
type Backlog struct {
	// Messages counts the messages not yet acknowledged, those in flight included.
	Messages int64
	// Oldest is when the oldest of them was published; zero when Messages is 0.
	Oldest time.Time
}

// Consumer receives a group's deliveries. Its methods may be called concurrently.
type Consumer interface {
	// Next waits for the next delivery, until ctx ends or the Consumer is closed
	// (ErrClosed).
	Next(ctx context.Context) (*Delivery, error)
	// Ack says the delivery succeeded: the message is done for this group.
	Ack(ctx context.Context, d *Delivery) error
	// Nak says the delivery failed: the message is delivered again, not before delay.
	Nak(ctx context.Context, d *Delivery, delay time.Duration) error
	// Extend says the delivery is still being worked on: its AckTimeout starts again.
	Extend(ctx context.Context, d *Delivery) error
	// Backlog reports what the group has yet to consume.
	Backlog(ctx context.Context) (Backlog, error)
	// Close stops the Consumer. Deliveries it holds unacknowledged go back to the group at
	// once, to be delivered again; Next returns ErrClosed.
	Close() error
}

// Broker stores published messages and delivers them to subscribing groups. Its methods
// may be called concurrently.
type Broker interface {
	// Publish stores m durably and returns once it is stored. It sets m.Time, and m.ID
	// when that is empty. Errors wrap ErrFull, ErrTooLarge or ErrUnavailable where those
	// apply.
	Publish(ctx context.Context, m *Message) error
	// Subscribe starts a consumer of s.Group on s.Topic, creating the group if it is new.
	Subscribe(ctx context.Context, s Subscription) (Consumer, error)
	// Messages returns up to limit messages held for topic that some group (or, while no
	// group has subscribed, the topic itself) has yet to consume, oldest first: how an
	// operator reads a dead-letter topic.
	Messages(ctx context.Context, topic string, limit int) ([]*Message, error)
	// Delete removes the message with id from topic for every group, as if each had
	// acknowledged it: how a replayed dead letter leaves its dead-letter topic. Deleting a
	// message that is not there is not an error.
	Delete(ctx context.Context, topic, id string) error
	// Close releases the broker; its Consumers close.
	Close() error
}

// ValidTopic returns nil when topic is a valid topic name, and else an error that says
// what is wrong with it. A topic is one or more segments joined by dots, each segment of
// ASCII letters, digits, '_' and '-', at most MaxTopicLen bytes in all: "orders.created".
// Wildcards, spaces, empty segments and other bytes are refused, so that every broker can
// map a topic to its own names (a NATS subject, a file name) one to one.
func ValidTopic(topic string) error {
	switch {
	case topic == "":
		return errors.New("topic is empty")
	case len(topic) > MaxTopicLen:
		return fmt.Errorf("topic is %d bytes long, longer than %d", len(topic), MaxTopicLen)
	}
	seg := 0
	for i := 0; i < len(topic); i++ {
		c := topic[i]
		switch {
		case c == '.':
			if seg == 0 {
				return fmt.Errorf("topic %q has an empty segment", topic)
			}
			seg = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			seg++
			continue
		}
		return fmt.Errorf("topic %q has %q at byte %d; a topic is segments of letters, digits, '_' and '-' joined by dots", topic, rune(c), i)
	}
	if seg == 0 {
		return fmt.Errorf("topic %q has an empty segment", topic)
	}
	return nil
}

// ValidGroup returns nil when group is a valid group name, which is what a valid topic
// name is (service names are such names).
func ValidGroup(group string) error {
	if err := ValidTopic(group); err != nil {
		return fmt.Errorf("group: %w", err)
	}
	return nil
}
