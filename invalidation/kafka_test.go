package invalidation_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/invalidation"
)

const retryTopic, dlqTopic = "sidecache.invalidate.retry", "sidecache.invalidate.dlq"

// onePartition is a retry topic of one partition, where every message queues behind the last.
const onePartition = "sidecache.invalidate.retry.one"

func newKafka(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(4, retryTopic, dlqTopic),
		kfake.SeedTopics(1, onePartition))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// recorder is a Deleter that fails the keys it is told to, and records every attempt.
type recorder struct {
	mu       sync.Mutex
	fail     func(key string) bool
	attempts map[string]int
	deleted  map[string]string // key → who deleted it
	name     string
	block    map[string]bool // keys whose delete waits for the context to end
}

func newRecorder(name string, fail func(string) bool) *recorder {
	return &recorder{name: name, fail: fail, attempts: map[string]int{}, deleted: map[string]string{}, block: map[string]bool{}}
}

func (r *recorder) Invalidate(ctx context.Context, keys ...string) ([]string, error) {
	var failed []string
	for _, k := range keys {
		r.mu.Lock()
		r.attempts[k]++
		block := r.block[k]
		r.mu.Unlock()
		if block {
			<-ctx.Done()
			failed = append(failed, k)
			continue
		}
		if r.fail != nil && r.fail(k) {
			failed = append(failed, k)
			continue
		}
		r.mu.Lock()
		r.deleted[k] = r.name
		r.mu.Unlock()
	}
	if len(failed) > 0 {
		return failed, errors.New("injected")
	}
	return nil, nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runKafka runs a retry path until the test ends (or stop is called).
func runKafka(t *testing.T, k *invalidation.Kafka) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.Run(ctx) }()
	once := sync.Once{}
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func TestDeadLetterAfterExactlyMaxAttempts(t *testing.T) {
	c := newKafka(t)
	del := newRecorder("w", func(k string) bool { return k == "bad" })
	k := invalidation.NewKafka(invalidation.KafkaOptions{Brokers: c.ListenAddrs(), Topic: retryTopic, DLQTopic: dlqTopic,
		Group: "g1", MaxAttempts: 4, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Deleter: del, Logger: quiet()})
	runKafka(t, k)
	inv := invalidation.New(invalidation.Options{Deleter: del, Retrier: k, Delay: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, done, err := inv.Submit(ctx, invalidation.Change{Keys: []string{"bad", "good"}, Position: "0-1-42"})
	if err != nil {
		t.Fatal(err)
	}
	<-done // handed to Kafka

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.ListenAddrs(), Topic: dlqTopic, GroupID: "dlq-reader", StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var dead invalidation.Message
	json.Unmarshal(m.Value, &dead)
	if dead.Key != "bad" || dead.Attempt != 4 || dead.Position != "0-1-42" || dead.Error == "" {
		t.Errorf("dead letter %+v, want key bad after 4 attempts at 0-1-42 with the error", dead)
	}
	del.mu.Lock()
	defer del.mu.Unlock()
	if del.attempts["bad"] != 4 {
		t.Errorf("the failing key was tried %d times, want exactly max_attempts (4)", del.attempts["bad"])
	}
	if del.attempts["good"] != 1 {
		t.Errorf("the good key was tried %d times, want 1", del.attempts["good"])
	}
}

func TestWorkersShareAGroupAndTakeOver(t *testing.T) {
	c := newKafka(t)
	opts := func(d invalidation.Deleter) invalidation.KafkaOptions {
		return invalidation.KafkaOptions{Brokers: c.ListenAddrs(), Topic: retryTopic, DLQTopic: dlqTopic, Group: "shared",
			MaxAttempts: 10, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Deleter: d, Logger: quiet()}
	}
	a, b := newRecorder("a", nil), newRecorder("b", nil)
	a.block["stuck"] = true // a takes this one and dies before finishing it
	stopA := runKafka(t, invalidation.NewKafka(opts(a)))
	runKafka(t, invalidation.NewKafka(opts(b)))
	po := opts(nil)
	po.ProduceOnly = true
	producer := invalidation.NewKafka(po)
	runKafka(t, producer)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	deletedBy := func() (byA, byB, total int) {
		a.mu.Lock()
		defer a.mu.Unlock()
		b.mu.Lock()
		defer b.mu.Unlock()
		seen := map[string]bool{}
		for k := range a.deleted {
			seen[k] = true
			byA++
		}
		for k := range b.deleted {
			seen[k] = true
			byB++
		}
		return byA, byB, len(seen)
	}
	// Rounds of 20 keys, until the group has rebalanced and both workers have had a share;
	// every round is wholly deleted before the next.
	sent := 0
	for round := 0; ; round++ {
		keys := make([]string, 20)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%d-%d", round, i)
		}
		if _, err := producer.Retry(ctx, keys, "", errors.New("first attempt failed")); err != nil {
			t.Fatal(err)
		}
		sent += len(keys)
		for {
			if _, _, n := deletedBy(); n == sent {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("not every key was deleted")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if byA, byB, _ := deletedBy(); byA > 0 && byB > 0 {
			t.Logf("two workers in one group: a deleted %d keys, b deleted %d (after %d rounds)", byA, byB, round+1)
			break
		}
	}

	// A worker dies in the middle of a message: it was never committed, so the other gets it.
	var stuckKey string
	for i := 0; stuckKey == ""; i++ {
		// pick a key that lands on one of a's partitions: try them until a is the one stuck on it
		key := fmt.Sprintf("stuck-%d", i)
		a.mu.Lock()
		a.block[key] = true
		a.mu.Unlock()
		producer.Retry(ctx, []string{key}, "", errors.New("x"))
		for ctx.Err() == nil {
			a.mu.Lock()
			tried := a.attempts[key] > 0
			a.mu.Unlock()
			b.mu.Lock()
			_, byB := b.deleted[key]
			b.mu.Unlock()
			if tried {
				stuckKey = key
				break
			}
			if byB {
				break // b's partition; try another key
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	stopA()
	for {
		b.mu.Lock()
		_, done := b.deleted[stuckKey]
		b.mu.Unlock()
		if done {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the message the stopped worker held (%s) was never processed by the other", stuckKey)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// unreachable fails every delete with ErrUnreachable until its outage ends, then deletes.
type unreachable struct {
	mu      sync.Mutex
	down    bool
	calls   int
	deleted []string
}

func (u *unreachable) Invalidate(_ context.Context, keys ...string) ([]string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls++
	if u.down {
		return keys, fmt.Errorf("%w: circuit open", invalidation.ErrUnreachable)
	}
	u.deleted = append(u.deleted, keys...)
	return nil, nil
}

func (u *unreachable) state() (calls int, deleted []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls, slices.Clone(u.deleted)
}

// TestUnreachableRedisSpendsNoAttempts: while Redis cannot be reached the worker waits with the
// message in hand, however long, and deletes the key once Redis is back; it is never
// dead-lettered for an outage.
func TestUnreachableRedisSpendsNoAttempts(t *testing.T) {
	c := newKafka(t)
	del := &unreachable{down: true}
	reg := prometheus.NewRegistry()
	k := invalidation.NewKafka(invalidation.KafkaOptions{Brokers: c.ListenAddrs(), Topic: retryTopic, DLQTopic: dlqTopic,
		Group: "g-unreachable", MaxAttempts: 2, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Deleter: del,
		Registerer: reg, Logger: quiet()})
	runKafka(t, k)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := k.Retry(ctx, []string{"k1"}, "0-1-7", errors.New("first attempt failed")); err != nil {
		t.Fatal(err)
	}
	// Far more tries than max_attempts while Redis is down.
	devstack.Eventually(t, 20*time.Second, "the worker tries the key while Redis is down", func() bool {
		calls, _ := del.state()
		return calls >= 10
	})
	del.mu.Lock()
	del.down = false
	del.mu.Unlock()
	devstack.Eventually(t, 20*time.Second, "the key is deleted once Redis is back", func() bool {
		_, deleted := del.state()
		return slices.Contains(deleted, "k1")
	})
	if dead := counter(t, reg, "sidecache_retry_dead_lettered_total"); dead != 0 {
		t.Errorf("%v dead letters for an outage, want 0", dead)
	}
}

// counter reads a counter without labels from reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// writeRetries writes retry messages to topic as a producing sidecar would, in one batch, so
// that on one partition they stand in this order.
func writeRetries(t *testing.T, c *kfake.Cluster, topic string, msgs ...invalidation.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(c.ListenAddrs()...), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	kms := make([]kafka.Message, len(msgs))
	for i, m := range msgs {
		b, _ := json.Marshal(m)
		kms[i] = kafka.Message{Key: []byte(m.Key), Value: b}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, kms...); err != nil {
		t.Fatal(err)
	}
}

// committedOffset reads the group's committed offset of partition 0 of topic (-1: none).
func committedOffset(t *testing.T, c *kfake.Cluster, group, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := (&kafka.Client{Addr: kafka.TCP(c.ListenAddrs()...)}).OffsetFetch(ctx,
		&kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Error; err != nil {
		t.Fatal(err)
	}
	ps := res.Topics[topic]
	if len(ps) != 1 || ps[0].Error != nil {
		t.Fatalf("offset fetch for %s: %+v", topic, ps)
	}
	return ps[0].CommittedOffset
}

func (r *recorder) tried(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts[key]
}

func (r *recorder) wasDeleted(keys ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		if _, ok := r.deleted[k]; !ok {
			return false
		}
	}
	return true
}

// TestLongBackoffHoldsBackNoOtherMessage: on one partition, a message that must wait 3 s does
// not hold back the messages behind it that need not wait; and its offset stays uncommitted
// until it is done, though later ones are done, so that a worker stopped while it waits hands
// it to the next one in the group.
func TestLongBackoffHoldsBackNoOtherMessage(t *testing.T) {
	c := newKafka(t)
	opts := func(d invalidation.Deleter) invalidation.KafkaOptions {
		return invalidation.KafkaOptions{Brokers: c.ListenAddrs(), Topic: onePartition, DLQTopic: dlqTopic, Group: "g-long",
			MaxAttempts: 10, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Deleter: d, Logger: quiet()}
	}
	a := newRecorder("a", nil)
	stopA := runKafka(t, invalidation.NewKafka(opts(a)))

	// Offset 0: once it is deleted the worker has joined the group, and once it is committed the
	// worker commits what it has done.
	writeRetries(t, c, onePartition, invalidation.Message{Key: "warm-up", Attempt: 1})
	devstack.Eventually(t, 30*time.Second, "the warm-up message is deleted", func() bool { return a.wasDeleted("warm-up") })
	devstack.Eventually(t, 10*time.Second, "the warm-up message is committed", func() bool {
		return committedOffset(t, c, "g-long", onePartition) == 1
	})

	// Offset 1 waits 3 s; offsets 2 to 11 are due now.
	const wait = 3 * time.Second
	long := invalidation.Message{Key: "long", Attempt: 5, NotBefore: time.Now().Add(wait).UnixMilli()}
	msgs := []invalidation.Message{long}
	var short []string
	for i := range 10 {
		short = append(short, fmt.Sprintf("short-%d", i))
		msgs = append(msgs, invalidation.Message{Key: short[i], Attempt: 1, NotBefore: time.Now().UnixMilli()})
	}
	writeRetries(t, c, onePartition, msgs...)
	written := time.Now()
	// The short ones come in the fetch that brought the long one, and deleting them is a few map
	// writes: on a loaded 2-core machine they are done within 1 s with overwhelming probability,
	// while a worker that waits out the long one first needs the whole 3 s.
	devstack.Eventually(t, 20*time.Second, "the short messages are deleted", func() bool { return a.wasDeleted(short...) })
	if took := time.Since(written); took > time.Second {
		t.Errorf("the messages behind a 3 s wait were deleted after %v, want within 1s", took)
	}
	if n := a.tried("long"); n != 0 {
		t.Fatalf("the long one was tried %d times before the short ones behind it were done, want 0", n)
	}

	// Stopped while it waits for the long one: its offset must not have been committed, though
	// every offset after it is done.
	stopA()
	if n := a.tried("long"); n != 0 {
		t.Fatalf("the stopped worker tried the long one %d times, want 0 (stopped %v before it was due)", n, wait-time.Since(written))
	}
	if got := committedOffset(t, c, "g-long", onePartition); got != 1 {
		t.Fatalf("committed offset %d with offset 1 not done, want 1", got)
	}
	b := newRecorder("b", nil)
	runKafka(t, invalidation.NewKafka(opts(b)))
	devstack.Eventually(t, 30*time.Second, "the next worker in the group deletes the long one", func() bool { return b.wasDeleted("long") })
	devstack.Eventually(t, 10*time.Second, "the next worker commits everything once the long one is done", func() bool {
		return committedOffset(t, c, "g-long", onePartition) == 12
	})
}

// TestMaxInFlightBoundsTheFetch: a worker holds at most MaxInFlight messages; while it holds
// that many, waiting for their not-before time, it fetches no more.
func TestMaxInFlightBoundsTheFetch(t *testing.T) {
	c := newKafka(t)
	del := newRecorder("w", nil)
	reg := prometheus.NewRegistry()
	k := invalidation.NewKafka(invalidation.KafkaOptions{Brokers: c.ListenAddrs(), Topic: onePartition, DLQTopic: dlqTopic,
		Group: "g-bound", MaxInFlight: 2, Deleter: del, Registerer: reg, Logger: quiet()})
	runKafka(t, k)
	writeRetries(t, c, onePartition, invalidation.Message{Key: "warm-up", Attempt: 1})
	devstack.Eventually(t, 30*time.Second, "the warm-up message is deleted", func() bool { return del.wasDeleted("warm-up") })

	const n = 6
	var keys []string
	var msgs []invalidation.Message
	notBefore := time.Now().Add(1500 * time.Millisecond).UnixMilli()
	for i := range n {
		keys = append(keys, fmt.Sprintf("k%d", i))
		msgs = append(msgs, invalidation.Message{Key: keys[i], Attempt: 1, NotBefore: notBefore})
	}
	writeRetries(t, c, onePartition, msgs...)
	// Until the first of them is due, the worker holds two and no more: a count read before any
	// of them was tried was read before any slot came free. That it holds two by then needs two
	// fetches within 1.5 s of the write, which take milliseconds: on a loaded 2-core machine it
	// holds with overwhelming probability.
	most := 0.0
	for {
		held := counter(t, reg, "sidecache_retry_consumed_total") - 1 // the warm-up
		if slices.ContainsFunc(keys, func(k string) bool { return del.tried(k) > 0 }) {
			break
		}
		if held > 2 {
			t.Fatalf("the worker fetched %v messages with MaxInFlight 2", held)
		}
		most = max(most, held)
		time.Sleep(5 * time.Millisecond)
	}
	if most != 2 {
		t.Errorf("the worker held at most %v messages while they waited, want 2", most)
	}
	devstack.Eventually(t, 20*time.Second, "every message is deleted", func() bool { return del.wasDeleted(keys...) })
	if got := counter(t, reg, "sidecache_retry_handled_total"); got != n+1 {
		t.Errorf("%v messages handled, want %d", got, n+1)
	}
}
