package invalidation

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/sidecache/sidecache/internal/retry"
)

// Defaults of KafkaOptions.
const (
	DefaultTopic       = "sidecache.invalidate.retry"
	DefaultDLQTopic    = "sidecache.invalidate.dlq"
	DefaultGroup       = "sidecache-invalidate"
	DefaultMaxAttempts = 10
	DefaultBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
	DefaultQueueSize   = 10000
	DefaultMaxInFlight = 256
)

// KafkaOptions configure the Kafka retry path. Brokers and Deleter are required.
type KafkaOptions struct {
	Brokers []string
	// Topic receives failed deletes, keyed by cache key; DLQTopic those that failed MaxAttempts
	// times. Defaults DefaultTopic and DefaultDLQTopic.
	Topic, DLQTopic string
	// Group is the consumer group of the retry workers. Default DefaultGroup.
	Group string
	// MaxAttempts counts every delete attempt of a key, the first included; at least 2.
	// Default DefaultMaxAttempts.
	MaxAttempts int
	// Backoff before the n-th retry is Backoff·2^(n-1), at most MaxBackoff, ±50% jitter.
	// Defaults DefaultBackoff and DefaultMaxBackoff.
	Backoff, MaxBackoff time.Duration
	// QueueSize bounds the keys waiting for Kafka while it is unreachable; when full, Retry
	// blocks (the binlog tail pauses) rather than drop anything. Default DefaultQueueSize.
	QueueSize int
	// MaxInFlight bounds the retry messages a worker holds at once, waiting for their
	// not-before time or being worked on; while it holds that many it fetches no more.
	// Default DefaultMaxInFlight.
	MaxInFlight int
	// ProduceOnly runs no retry worker in this process: the workers of other processes in
	// Group delete the keys it hands over.
	ProduceOnly bool
	Deleter     Deleter
	Registerer  prometheus.Registerer
	Logger      *slog.Logger
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
// consumes it. Run must be running.
type Kafka struct {
	o      KafkaOptions
	log    *slog.Logger
	m      kafkaMetrics
	writer *kafka.Writer
	dlq    *kafka.Writer
	queue  chan queued
	// waiting counts the queued keys and those of the batch being written: the keys Kafka has
	// not yet taken.
	waiting atomic.Int64
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

// init fills the defaults.
func (o *KafkaOptions) init() {
	o.Topic = cmp.Or(o.Topic, DefaultTopic)
	o.DLQTopic = cmp.Or(o.DLQTopic, DefaultDLQTopic)
	o.Group = cmp.Or(o.Group, DefaultGroup)
	o.MaxAttempts = cmp.Or(max(o.MaxAttempts, 0), DefaultMaxAttempts)
	o.MaxAttempts = max(o.MaxAttempts, 2) // a key is handed over after a failed first attempt
	o.Backoff = cmp.Or(max(o.Backoff, 0), DefaultBackoff)
	o.MaxBackoff = cmp.Or(max(o.MaxBackoff, 0), DefaultMaxBackoff)
	o.QueueSize = cmp.Or(max(o.QueueSize, 0), DefaultQueueSize)
	o.MaxInFlight = cmp.Or(max(o.MaxInFlight, 0), DefaultMaxInFlight)
	o.Logger = cmp.Or(o.Logger, slog.Default())
}

// NewKafka returns the Kafka retry path.
func NewKafka(o KafkaOptions) *Kafka {
	o.init()
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
	k.m = newKafkaMetrics(o.Registerer, func() float64 { return float64(k.waiting.Load()) })
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
		k.waiting.Add(1)
		select {
		case k.queue <- queued{msg: encode(m), group: g}:
		case <-ctx.Done():
			k.waiting.Add(-1)
			return nil, ctx.Err()
		}
	}
	return g.done, nil
}

// Run produces queued retries and, unless ProduceOnly, consumes the retry topic, until ctx
// ends; then it closes its Kafka writers.
func (k *Kafka) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); k.produce(ctx) }()
	if !k.o.ProduceOnly {
		wg.Add(1)
		go func() { defer wg.Done(); k.consume(ctx) }()
	}
	wg.Wait()
	k.writer.Close() // the worker writes later attempts with it too
	k.dlq.Close()
}

// produce sends queued retries to Kafka until ctx ends, retrying while Kafka is unreachable;
// the queue holds what waits meanwhile.
func (k *Kafka) produce(ctx context.Context) {
	for {
		var batch []queued
		select {
		case <-ctx.Done():
			return
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
			return // ctx ended; those keys were never acknowledged
		}
		k.m.produced.Add(float64(len(batch)))
		k.waiting.Add(-int64(len(batch)))
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

// consume consumes the retry topic as a member of the group until ctx ends. It keeps fetching
// while earlier messages wait for their not-before time, so that one long backoff holds back no
// other message, and handles up to MaxInFlight messages at once: each waits for its not-before
// time, deletes the key, and produces the next attempt or the dead letter. Offsets are committed
// only below the oldest message still in hand (at least once; deletes are idempotent).
func (k *Kafka) consume(ctx context.Context) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: k.o.Brokers, GroupID: k.o.Group, Topic: k.o.Topic,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 200 * time.Millisecond, StartOffset: kafka.FirstOffset,
		HeartbeatInterval: time.Second, SessionTimeout: 6 * time.Second, RebalanceTimeout: 6 * time.Second,
		ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
	})
	defer r.Close()
	offs := newOffsets(k.o.Topic)
	var wg sync.WaitGroup
	defer wg.Wait() // before r.Close: the handlers and the committer use r and the writers
	wg.Add(1)
	go func() { defer wg.Done(); k.commit(ctx, r, offs) }()
	slots := make(chan struct{}, k.o.MaxInFlight)
	for {
		select { // a free slot before the fetch: when full, the worker fetches no more
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		m, err := r.FetchMessage(ctx)
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return
			}
			k.m.errors.WithLabelValues("fetch").Inc()
			k.log.Warn("kafka fetch failed", "err", err)
			retry.Sleep(ctx, time.Second)
			continue
		}
		if !offs.fetched(m) {
			<-slots // fetched again after a rebalance while still in hand: that copy will do
			continue
		}
		k.m.consumed.Inc()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := k.handle(ctx, m); err != nil {
				return // ctx ended before the work was done: not committed, so redelivered
			}
			k.m.handled.Inc()
			offs.done(m)
		}()
	}
}

// commit commits the offsets that offs lets through, whenever a message is done, until ctx
// ends. One goroutine commits, so a partition's commits go out in order.
func (k *Kafka) commit(ctx context.Context, r *kafka.Reader, offs *offsets) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-offs.changed:
		}
		for msgs := offs.uncommitted(); len(msgs) > 0; msgs = offs.uncommitted() {
			if err := r.CommitMessages(ctx, msgs...); err == nil {
				offs.committed(msgs)
				break
			}
			if ctx.Err() != nil {
				return
			}
			k.m.errors.WithLabelValues("commit").Inc()
			retry.Sleep(ctx, 200*time.Millisecond)
		}
	}
}

// offsets tracks, per partition of one topic, the messages a worker holds, so that it commits
// an offset only once every message below it is done. kafka-go's CommitMessages(m) commits
// m.Offset+1 for m's partition, whatever is still in hand below it, and it has nothing that
// waits for a contiguous run (its offset stash keeps the highest offset per partition), hence
// this.
//
// A partition's fetches are runs of consecutive offsets, each run starting at a committed
// offset (after a rebalance the reader starts again from there), so every offset below the
// lowest one in hand, or below the highest fetched when none is, has been done by someone.
type offsets struct {
	topic   string
	mu      sync.Mutex
	parts   map[int]*partition
	changed chan struct{} // holds a token once a message is done, for the committer
}

type partition struct {
	inHand    map[int64]bool // fetched and not yet done
	next      int64          // one past the highest offset fetched
	committed int64          // the highest offset committed (or known to be)
}

func newOffsets(topic string) *offsets {
	return &offsets{topic: topic, parts: map[int]*partition{}, changed: make(chan struct{}, 1)}
}

// fetched records m as in hand, and reports false if it already was: a partition read again
// from its committed offset after a rebalance hands out messages this worker still holds.
func (o *offsets) fetched(m kafka.Message) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.parts[m.Partition]
	if p == nil {
		// The reader starts a partition at its committed offset (or the log's start, with
		// nothing committed): there is nothing to commit below the first message.
		p = &partition{inHand: map[int64]bool{}, committed: m.Offset}
		o.parts[m.Partition] = p
	}
	if p.inHand[m.Offset] {
		return false
	}
	p.inHand[m.Offset] = true
	p.next = max(p.next, m.Offset+1)
	return true
}

// done records that m's work is done.
func (o *offsets) done(m kafka.Message) {
	o.mu.Lock()
	delete(o.parts[m.Partition].inHand, m.Offset)
	o.mu.Unlock()
	select {
	case o.changed <- struct{}{}:
	default: // the committer has not yet taken the last token; it will see this one too
	}
}

// uncommitted returns, for every partition whose commit point has moved past what was
// committed, the message to pass to CommitMessages: the one just below the commit point.
func (o *offsets) uncommitted() []kafka.Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	var msgs []kafka.Message
	for id, p := range o.parts {
		point := p.next
		for off := range p.inHand {
			point = min(point, off)
		}
		if point > p.committed {
			msgs = append(msgs, kafka.Message{Topic: o.topic, Partition: id, Offset: point - 1})
		}
	}
	return msgs
}

// committed records that msgs were committed.
func (o *offsets) committed(msgs []kafka.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range msgs {
		p := o.parts[m.Partition]
		p.committed = max(p.committed, m.Offset+1)
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
	// While Redis cannot be reached at all, an attempt says nothing of the key: wait here, with
	// backoff, rather than spend the message's attempts and dead-letter it in a long outage.
	for b := (retry.Backoff{Min: k.o.Backoff, Max: time.Second}); len(failed) > 0 && errors.Is(err, ErrUnreachable); {
		if err := retry.Sleep(ctx, b.Next()); err != nil {
			return err
		}
		failed, err = k.o.Deleter.Invalidate(ctx, m.Key)
	}
	if len(failed) == 0 {
		k.m.succeeded.Inc()
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	k.m.failed.Inc()
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
	produced, consumed, handled, succeeded, failed, deadLettered prometheus.Counter
	errors                                                       *prometheus.CounterVec
	delay                                                        prometheus.Histogram
}

func newKafkaMetrics(reg prometheus.Registerer, depth func() float64) kafkaMetrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := kafkaMetrics{
		produced:     c("sidecache_retry_produced_total", "Failed deletes written to the retry topic (first hand-offs and later attempts)."),
		consumed:     c("sidecache_retry_consumed_total", "Retry messages consumed."),
		handled:      c("sidecache_retry_handled_total", "Retry messages whose work is done: the key deleted, the next attempt produced, or the message dead-lettered."),
		succeeded:    c("sidecache_retry_succeeded_total", "Retried deletes that succeeded."),
		failed:       c("sidecache_retry_failed_total", "Retried deletes that failed again; each is produced again or dead-lettered."),
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
		reg.MustRegister(m.produced, m.consumed, m.handled, m.succeeded, m.failed, m.deadLettered, m.errors, m.delay, depthGauge)
	}
	return m
}
