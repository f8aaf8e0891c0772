package invalidation

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/sidecache/sidecache/internal/retry"
)

// KafkaOptions configure the Kafka retry path. Brokers, Deleter and the topics are required.
type KafkaOptions struct {
	Brokers []string
	// Topic receives failed deletes, keyed by cache key; DLQTopic those that failed MaxAttempts
	// times.
	Topic, DLQTopic string
	// Group is the consumer group of the retry workers. Default "sidecache-invalidate".
	Group string
	// MaxAttempts counts every delete attempt of a key, the first included; at least 2.
	// Default 10.
	MaxAttempts int
	// Backoff before the n-th retry is Backoff·2^(n-1), at most MaxBackoff, ±50% jitter.
	// Defaults 100ms and 30s.
	Backoff, MaxBackoff time.Duration
	// QueueSize bounds the keys waiting for Kafka while it is unreachable; when full, Retry
	// blocks (the binlog tail pauses) rather than drop anything. Default 10000.
	QueueSize  int
	Deleter    Deleter
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Message is a retry (or dead-letter) record.
type Message struct {
	Key       string `json:"key"`
	Position  string `json:"position,omitempty"` // the change's binlog position
	Attempt   int    `json:"attempt"`            // delete attempts that failed so far
	NotBefore int64  `json:"not_before"`         // Unix milliseconds
	Error     string `json:"error,omitempty"`    // the last failure
}

// Kafka is the Retrier that retries failed deletes through a Kafka topic, and the worker that
// consumes it. RunProducer and RunWorker must run.
type Kafka struct {
	o      KafkaOptions
	log    *slog.Logger
	m      kafkaMetrics
	writer *kafka.Writer
	dlq    *kafka.Writer
	queue  chan queued
}

type queued struct {
	msg   kafka.Message
	group *ackGroup
}

// ackGroup closes done when all of a Retry call's keys are acknowledged.
type ackGroup struct {
	left atomic.Int32
	done chan struct{}
}

var _ Retrier = (*Kafka)(nil)

// NewKafka returns the Kafka retry path.
func NewKafka(o KafkaOptions) *Kafka {
	if o.Group == "" {
		o.Group = "sidecache-invalidate"
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 10
	}
	o.MaxAttempts = max(o.MaxAttempts, 2) // a key is handed over after a failed first attempt
	if o.Backoff <= 0 {
		o.Backoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 10000
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	writer := func(topic string) *kafka.Writer {
		return &kafka.Writer{
			Addr: kafka.TCP(o.Brokers...), Topic: topic, Balancer: &kafka.Hash{},
			RequiredAcks: kafka.RequireAll, AllowAutoTopicCreation: true,
			BatchTimeout: 2 * time.Millisecond, WriteTimeout: 5 * time.Second,
			MaxAttempts: 2, WriteBackoffMin: 20 * time.Millisecond, WriteBackoffMax: 200 * time.Millisecond,
		}
	}
	k := &Kafka{o: o, log: o.Logger.With("component", "kafka-retry"), writer: writer(o.Topic), dlq: writer(o.DLQTopic),
		queue: make(chan queued, o.QueueSize)}
	k.m = newKafkaMetrics(o.Registerer, func() float64 { return float64(len(k.queue)) })
	return k
}

func (k *Kafka) backoff(attempt int) time.Duration {
	return retry.Delay(k.o.Backoff, k.o.MaxBackoff, attempt)
}

func encode(m Message) kafka.Message {
	b, _ := json.Marshal(m)
	return kafka.Message{Key: []byte(m.Key), Value: b}
}

// Retry queues keys for retried deletes; the channel is closed once Kafka acknowledged them.
func (k *Kafka) Retry(ctx context.Context, keys []string, position string, cause error) (<-chan struct{}, error) {
	g := &ackGroup{done: make(chan struct{})}
	g.left.Store(int32(len(keys)))
	msg := ""
	if cause != nil {
		msg = cause.Error()
	}
	for _, key := range keys {
		m := Message{Key: key, Position: position, Attempt: 1, NotBefore: time.Now().Add(k.backoff(1)).UnixMilli(), Error: msg}
		select {
		case k.queue <- queued{msg: encode(m), group: g}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.done, nil
}

// RunProducer sends queued retries to Kafka until ctx ends, retrying while Kafka is
// unreachable; the queue holds what waits meanwhile.
func (k *Kafka) RunProducer(ctx context.Context) error {
	defer k.writer.Close()
	for {
		var batch []queued
		select {
		case <-ctx.Done():
			return nil
		case q := <-k.queue:
			batch = append(batch, q)
		}
	drain:
		for len(batch) < 500 {
			select {
			case q := <-k.queue:
				batch = append(batch, q)
			default:
				break drain
			}
		}
		msgs := make([]kafka.Message, len(batch))
		for i, q := range batch {
			msgs[i] = q.msg
		}
		if err := k.write(ctx, k.writer, msgs); err != nil {
			return nil // ctx ended; those keys were never acknowledged
		}
		k.m.produced.Add(float64(len(batch)))
		for _, q := range batch {
			if q.group.left.Add(-1) == 0 {
				close(q.group.done)
			}
		}
	}
}

// write sends msgs, retrying with backoff until Kafka takes them or ctx ends.
func (k *Kafka) write(ctx context.Context, w *kafka.Writer, msgs []kafka.Message) error {
	err := retry.Do(ctx, retry.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}, func(n int) error {
		err := w.WriteMessages(ctx, msgs...)
		if err != nil && ctx.Err() == nil {
			k.m.errors.WithLabelValues("produce").Inc()
			if n == 1 || n%20 == 0 {
				k.log.Warn("kafka write failed; retrying", "topic", w.Topic, "messages", len(msgs), "attempt", n, "err", err)
			}
		}
		return err
	})
	if err != nil {
		return ctx.Err()
	}
	return nil
}

// RunWorker consumes the retry topic as a member of the group until ctx ends: it waits for each
// message's not-before time, deletes the key, produces the next attempt or the dead letter,
// and only then commits the message's offset (at least once; deletes are idempotent).
func (k *Kafka) RunWorker(ctx context.Context) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: k.o.Brokers, GroupID: k.o.Group, Topic: k.o.Topic,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 200 * time.Millisecond, StartOffset: kafka.FirstOffset,
		HeartbeatInterval: time.Second, SessionTimeout: 6 * time.Second, RebalanceTimeout: 6 * time.Second,
		ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
	})
	defer r.Close()
	defer k.dlq.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			k.m.errors.WithLabelValues("fetch").Inc()
			k.log.Warn("kafka fetch failed", "err", err)
			retry.Sleep(ctx, time.Second)
			continue
		}
		k.m.consumed.Inc()
		if err := k.handle(ctx, m); err != nil {
			return nil // ctx ended before the work was done: not committed, so redelivered
		}
		for {
			err := r.CommitMessages(ctx, m)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			k.m.errors.WithLabelValues("commit").Inc()
			retry.Sleep(ctx, 200*time.Millisecond)
		}
	}
}

func (k *Kafka) handle(ctx context.Context, km kafka.Message) error {
	var m Message
	if err := json.Unmarshal(km.Value, &m); err != nil || m.Key == "" {
		k.log.Error("unreadable retry message; dead-lettering it", "err", err)
		k.m.deadLettered.Inc()
		return k.write(ctx, k.dlq, []kafka.Message{{Key: km.Key, Value: km.Value}})
	}
	if err := retry.Sleep(ctx, time.Until(time.UnixMilli(m.NotBefore))); err != nil {
		return err
	}
	if !km.Time.IsZero() {
		k.m.delay.Observe(time.Since(km.Time).Seconds())
	}
	failed, err := k.o.Deleter.Invalidate(ctx, m.Key)
	if len(failed) == 0 {
		k.m.succeeded.Inc()
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	m.Attempt++
	m.Error = errString(err)
	if m.Attempt >= k.o.MaxAttempts {
		k.log.Error("cache delete failed every attempt; dead-lettered", "key", m.Key, "attempts", m.Attempt, "position", m.Position, "err", m.Error)
		if err := k.write(ctx, k.dlq, []kafka.Message{encode(m)}); err != nil {
			return err
		}
		k.m.deadLettered.Inc()
		return nil
	}
	m.NotBefore = time.Now().Add(k.backoff(m.Attempt)).UnixMilli()
	if err := k.write(ctx, k.writer, []kafka.Message{encode(m)}); err != nil {
		return err
	}
	k.m.produced.Inc()
	return nil
}

func errString(err error) string {
	if err == nil {
		return "delete failed"
	}
	return err.Error()
}

type kafkaMetrics struct {
	produced, consumed, succeeded, deadLettered prometheus.Counter
	errors                                      *prometheus.CounterVec
	delay                                       prometheus.Histogram
}

func newKafkaMetrics(reg prometheus.Registerer, depth func() float64) kafkaMetrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := kafkaMetrics{
		produced:     c("sidecache_retry_produced_total", "Failed deletes written to the retry topic (first hand-offs and later attempts)."),
		consumed:     c("sidecache_retry_consumed_total", "Retry messages consumed."),
		succeeded:    c("sidecache_retry_succeeded_total", "Retried deletes that succeeded."),
		deadLettered: c("sidecache_retry_dead_lettered_total", "Deletes that failed every attempt and went to the dead-letter topic."),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_kafka_errors_total", Help: "Kafka calls that failed, by op: produce, fetch, commit.",
		}, []string{"op"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidecache_retry_delay_seconds",
			Help:    "From a retry message's production to its delete attempt (backoff and queueing).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
	depthGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidecache_retry_queue_depth", Help: "Failed deletes waiting in process for Kafka to take them.",
	}, depth)
	if reg != nil {
		reg.MustRegister(m.produced, m.consumed, m.succeeded, m.deadLettered, m.errors, m.delay, depthGauge)
	}
	return m
}
