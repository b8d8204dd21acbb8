package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microhost/micro/sdk/broker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Every benchmark publishes a 128-byte body with one header, from parallelism ×
// GOMAXPROCS goroutines (a publish waits for JetStream's ack, so throughput comes from
// publishes in flight together), to the in-process server with a file store.
const (
	benchBody        = 128
	benchParallelism = 8
)

var benchHeader = map[string]string{"Content-Type": "application/json"}

// BenchmarkPublish is Publish through the plugin's broker, waiting for each ack.
func BenchmarkPublish(b *testing.B) {
	s := startNATS(b)
	br := newTestBroker(b, s.URL, broker.Config{})
	body := make([]byte, benchBody)
	var seq atomic.Int64
	ctx := context.Background()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := &broker.Message{ID: fmt.Sprint(seq.Add(1)), Topic: "bench", Header: benchHeader, Body: body}
			if err := br.Publish(ctx, m); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkJetStreamPublish is the anchor: the bare nats.go jetstream client publishing
// the same messages to the same stream (made by the broker's Init), with a message ID,
// waiting for each ack.
func BenchmarkJetStreamPublish(b *testing.B) {
	s := startNATS(b)
	newTestBroker(b, s.URL, broker.Config{}) // the stream
	nc, err := nats.Connect(s.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, benchBody)
	var seq atomic.Int64
	ctx := context.Background()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			msg := &nats.Msg{Subject: subject("bench"), Header: nats.Header{"Content-Type": {"application/json"}}, Data: body}
			if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(fmt.Sprint(seq.Add(1)))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkPublishConsume publishes b.N messages while one consumer (MaxInflight 256)
// takes and acks them, and reports the throughput and the latency from the start of a
// Publish to Next returning its message (p50, p99).
func BenchmarkPublishConsume(b *testing.B) {
	s := startNATS(b)
	br := newTestBroker(b, s.URL, broker.Config{})
	c := subscribe(b, br, broker.Subscription{Topic: "bench", Group: "g", MaxInflight: 256})
	body := make([]byte, benchBody)
	var (
		seq     atomic.Int64
		started sync.Map // ID → time.Time
		lats    = make([]time.Duration, 0, b.N)
		latMu   sync.Mutex
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	consumed := make(chan struct{})
	var acks sync.WaitGroup
	go func() {
		defer close(consumed)
		for n := 0; n < b.N; {
			d, err := c.Next(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			t0, ok := started.LoadAndDelete(d.ID)
			if !ok { // a redelivery
				acks.Go(func() { _ = c.Ack(ctx, d) })
				continue
			}
			lat := time.Since(t0.(time.Time))
			latMu.Lock()
			lats = append(lats, lat)
			latMu.Unlock()
			n++
			acks.Go(func() {
				if err := c.Ack(ctx, d); err != nil {
					b.Error(err)
				}
			})
		}
	}()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprint(seq.Add(1))
			started.Store(id, time.Now())
			m := &broker.Message{ID: id, Topic: "bench", Header: benchHeader, Body: body}
			if err := br.Publish(ctx, m); err != nil {
				b.Error(err)
				return
			}
		}
	})
	<-consumed
	elapsed := time.Since(start)
	b.StopTimer()
	acks.Wait()
	slices.Sort(lats)
	if len(lats) > 0 {
		b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "msgs/s")
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
	}
}
