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

func newKafka(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.SeedTopics(4, retryTopic, dlqTopic))
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
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "sidecache_retry_dead_lettered_total" && mf.GetMetric()[0].GetCounter().GetValue() != 0 {
			t.Errorf("%v dead letters for an outage, want 0", mf.GetMetric()[0].GetCounter().GetValue())
		}
	}
}
