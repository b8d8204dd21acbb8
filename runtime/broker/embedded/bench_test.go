package embedded

import (
	"context"
	"testing"
	"time"

	"github.com/microhost/micro/runtime/broker"
)

// BenchmarkPublish measures a durable publish to a topic with one group: a message file
// written and flushed, linked and its directories flushed.
func BenchmarkPublish(b *testing.B) {
	br := openB(b, Options{})
	subscribe(b, br, "bench", "g", time.Minute, 1).Close()
	ctx := context.Background()
	body := make([]byte, 256)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := br.Publish(ctx, &broker.Message{Topic: "bench", Body: body}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishConsume measures a publish and its delivery and acknowledgement.
func BenchmarkPublishConsume(b *testing.B) {
	br := openB(b, Options{})
	c := subscribe(b, br, "bench", "g", time.Minute, 1)
	ctx := context.Background()
	body := make([]byte, 256)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := br.Publish(ctx, &broker.Message{Topic: "bench", Body: body}); err != nil {
			b.Fatal(err)
		}
		d, err := c.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Ack(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}
