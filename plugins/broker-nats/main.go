// Command broker-nats is micro's NATS JetStream broker plugin: micro starts it as a
// go-plugin subprocess when micro.toml says
//
//	[broker]
//	plugin = "nats"
//	url = "nats://127.0.0.1:4222"
//
// It keeps micro's published messages in one JetStream stream, MICRO, whose subjects are
// "micro.msg.>": topic t is subject "micro.msg.t". Publish stores a message with its ID as
// Nats-Msg-Id (JetStream drops a second copy within two minutes) and returns once
// JetStream has stored it. Each subscribing group of a topic is a durable pull consumer
// with explicit acks, so every group gets every message and the consumers of one group,
// in any number of plugin processes, share its messages. Ack, Nak with a delay and Extend
// are JetStream's ack, nak and in-progress; a delivery's Attempt is JetStream's count of
// its deliveries. The stream's limits (max_age, max_bytes, max_message) come from micro;
// when it is full a publish is refused (discard new) rather than an old message dropped.
// The connection comes back by itself after the server restarts; meanwhile publishes fail
// at once as unavailable, and so does any request to JetStream that was waiting for its
// answer when the connection dropped. Credentials and TLS come from files that micro.toml names, as
// for transport-nats (plugins/internal/natsauth). See the README for the names, limits and permissions.
package main

import "github.com/microhost/micro/sdk/broker"

func main() { broker.Serve(newBroker(broker.Logger())) }
