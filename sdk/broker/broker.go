// Package broker is what a broker plugin is written against: implement Broker, and call
// Serve from main. micro starts the plugin as a subprocess and talks to it over go-plugin's
// gRPC channel (see abi/brokerpb).
//
// A broker stores each published message until every subscribing group has it
// acknowledged. A group is a queue group: each message goes to one consumer of the group,
// and every group subscribed to a topic gets every message published to it after the group
// first subscribed. Delivery is at least once: a delivery that is not acknowledged within
// the subscription's AckTimeout, or is refused with Nak, is delivered again with its
// Attempt raised. micro decides backoff and dead letters; the broker keeps the messages.
//
// micro checks names before they reach a plugin: a topic or a group is one or more
// segments of ASCII letters, digits, '_' and '-' joined by dots, at most 200 bytes.
package broker

import (
	"context"
	"errors"
	"time"
)

// Errors a Broker returns (wrapped or not) that micro tells apart; they cross the plugin
// channel as gRPC status codes.
var (
	// ErrFull means the store is full: micro answers the publisher 503.
	ErrFull = errors.New("broker store is full")
	// ErrTooLarge means the message is larger than the broker accepts: 413.
	ErrTooLarge = errors.New("message too large")
	// ErrUnavailable means the backend cannot be reached now: 503.
	ErrUnavailable = errors.New("broker unavailable")
	// ErrUnknownDelivery is returned by Ack, Nak and Extend for a delivery that is no
	// longer the consumer's.
	ErrUnknownDelivery = errors.New("unknown delivery")
	// ErrClosed is returned by Next on a closed Consumer.
	ErrClosed = errors.New("consumer closed")
)

// Message is one published message.
type Message struct {
	// ID identifies the message. micro always sets it; a broker stores a message once
	// however often it is published with one ID within its duplicate window.
	ID    string
	Topic string
	// Header is the publisher's headers; several values of one header are joined by a
	// line feed.
	Header map[string]string
	Body   []byte
	// Time is when the broker accepted the message; Publish sets it.
	Time time.Time
}

// Delivery is one delivery of a message to a consumer.
type Delivery struct {
	Message
	// Attempt counts the deliveries of the message to the group, 1 for the first.
	Attempt int
	// Token identifies the delivery to Ack, Nak and Extend; its form is the broker's.
	Token string
}

// Subscription says what a Consumer consumes.
type Subscription struct {
	Topic string
	// Group is the queue group (micro uses the subscribing service's name). It is
	// durable: messages published while no consumer of it runs wait for it.
	Group string
	// AckTimeout is how long a delivery may go unacknowledged (and not extended) before it
	// is delivered again.
	AckTimeout time.Duration
	// MaxInflight bounds the deliveries the Consumer holds unacknowledged; Next waits
	// while it holds that many.
	MaxInflight int
}

// Backlog describes what a group has yet to consume.
type Backlog struct {
	// Messages counts the messages not yet acknowledged, those in flight included.
	Messages int64
	// Oldest is when the oldest of them was published; zero when Messages is 0.
	Oldest time.Time
}

// Consumer receives a group's deliveries. Its methods are called concurrently.
type Consumer interface {
	// Next waits for the next delivery, until ctx ends or the Consumer closes.
	Next(ctx context.Context) (*Delivery, error)
	// Ack says the delivery succeeded.
	Ack(ctx context.Context, d *Delivery) error
	// Nak says the delivery failed: deliver the message again, not before delay.
	Nak(ctx context.Context, d *Delivery, delay time.Duration) error
	// Extend says the delivery is still being worked on: its AckTimeout starts again.
	Extend(ctx context.Context, d *Delivery) error
	// Backlog reports what the group has yet to consume.
	Backlog(ctx context.Context) (Backlog, error)
	// Close stops the Consumer; what it holds unacknowledged is delivered again.
	Close() error
}

// Config is the plugin's part of micro.toml's [broker] section. Secrets reach the plugin
// as the paths of files it reads, never as values. A plugin refuses a setting its backend
// has no use for, rather than ignoring it.
type Config struct {
	// URL of the backend, e.g. "nats://127.0.0.1:4222", or "" for the plugin's default.
	URL string
	// MaxAge is how long a message is kept at most; 0 means the plugin's default.
	MaxAge time.Duration
	// MaxBytes bounds the store; 0 means the plugin's default.
	MaxBytes int64
	// MaxMessage bounds one message (body, header keys and values); 0 means the plugin's
	// default.
	MaxMessage int64

	// CredentialsFile is a NATS credentials file (.creds: a user JWT and its nkey seed);
	// "" for none. The plugin reads it, at every connect, and never logs what it holds.
	CredentialsFile string
	// NkeySeedFile holds a user nkey seed ("SU…"), for a server that lists the user's
	// public nkey; "" for none.
	NkeySeedFile string
	// TokenFile holds the backend's token; "" for none.
	TokenFile string
	// User names the backend user that PasswordFile authenticates; "" for none.
	User string
	// PasswordFile holds User's password; set with User, or neither.
	PasswordFile string
	// TLSCAFile is a PEM bundle of the CAs that verify the backend's certificate; ""
	// means the system's roots. Setting it requires TLS.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the PEM certificate and key the plugin shows the
	// backend (mutual TLS); both or neither. Setting them requires TLS.
	TLSCertFile, TLSKeyFile string
	// TLSRequired requires TLS even when URL does not ask for it (NATS: a nats:// URL; a
	// tls:// URL always requires it).
	TLSRequired bool
}

// Broker is a broker backend. Methods are called concurrently.
type Broker interface {
	// Init configures the plugin and checks that its backend answers. micro calls it
	// after every start of the plugin process, before anything else.
	Init(ctx context.Context, c Config) error
	// Publish stores m durably and returns once it is stored, having set m.Time.
	Publish(ctx context.Context, m *Message) error
	// Subscribe starts a consumer of s.Group on s.Topic, creating the group if it is new.
	Subscribe(ctx context.Context, s Subscription) (Consumer, error)
	// Messages returns up to limit messages held for topic that some group (or, while no
	// group has subscribed, the topic itself) has yet to consume, oldest first.
	Messages(ctx context.Context, topic string, limit int) ([]*Message, error)
	// Delete removes the message with id from topic for every group. Deleting a message
	// that is not there is not an error.
	Delete(ctx context.Context, topic, id string) error
}
