// Package invalidation deletes cache keys after their rows changed: delete now (which also
// voids any lease on the key, so a loader that read the old row cannot fill it back), then
// delete again after a delay, for fills that raced the first delete or read a lagging replica.
// A delete that fails is retried with backoff until it succeeds; the caller's progress (the
// binlog checkpoint) waits for it.
package invalidation

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Deleter deletes keys and voids their leases (singleflight.Leases.Invalidate).
type Deleter interface {
	Invalidate(ctx context.Context, keys ...string) error
}

// Options configure an Invalidator. Deleter is required.
type Options struct {
	Deleter Deleter
	// Delay is the time between the first delete and the second. Default 500ms; 0 keeps the
	// default, a negative value turns the second delete off.
	Delay time.Duration
	// RetryMin and RetryMax bound the backoff between attempts of a failed delete.
	// Defaults 20ms and 2s.
	RetryMin, RetryMax time.Duration
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
	// Logger; nil: slog.Default().
	Logger *slog.Logger
}

// Invalidator deletes keys twice. Run must be running for second deletes to happen.
type Invalidator struct {
	del                Deleter
	delay              time.Duration
	retryMin, retryMax time.Duration
	log                *slog.Logger
	m                  metrics

	mu      sync.Mutex
	queue   []second      // due in order: the delay is the same for all
	wake    chan struct{} // signalled when the queue gains a head
	pending int
}

type second struct {
	due  time.Time
	keys []string
	done chan struct{}
}

// New returns an Invalidator.
func New(opts Options) *Invalidator {
	inv := &Invalidator{
		del: opts.Deleter, delay: opts.Delay, retryMin: opts.RetryMin, retryMax: opts.RetryMax,
		log: opts.Logger, wake: make(chan struct{}, 1), m: newMetrics(opts.Registerer),
	}
	if inv.delay == 0 {
		inv.delay = 500 * time.Millisecond
	}
	if inv.retryMin <= 0 {
		inv.retryMin = 20 * time.Millisecond
	}
	if inv.retryMax <= 0 {
		inv.retryMax = 2 * time.Second
	}
	if inv.log == nil {
		inv.log = slog.Default()
	}
	return inv
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Delete deletes keys now, retrying until that succeeds or ctx ends, and schedules the second
// delete. The returned channel is closed once the second delete is done too; only then is the
// change fully invalidated.
func (inv *Invalidator) Delete(ctx context.Context, keys []string) (secondDone <-chan struct{}, err error) {
	if len(keys) == 0 {
		return closed, nil
	}
	if err := inv.deleteRetrying(ctx, keys, inv.m.first); err != nil {
		return nil, err
	}
	if inv.delay < 0 {
		return closed, nil
	}
	s := second{due: time.Now().Add(inv.delay), keys: keys, done: make(chan struct{})}
	inv.mu.Lock()
	inv.queue = append(inv.queue, s)
	inv.pending += len(keys)
	inv.m.pending.Set(float64(inv.pending))
	inv.mu.Unlock()
	select {
	case inv.wake <- struct{}{}:
	default:
	}
	return s.done, nil
}

// deleteRetrying deletes keys, backing off with jitter between failures, until it succeeds or
// ctx ends.
func (inv *Invalidator) deleteRetrying(ctx context.Context, keys []string, deleted prometheus.Counter) error {
	backoff := inv.retryMin
	for attempt := 1; ; attempt++ {
		err := inv.del.Invalidate(ctx, keys...)
		if err == nil {
			deleted.Add(float64(len(keys)))
			return nil
		}
		inv.m.failures.Inc()
		if attempt == 1 || attempt%10 == 0 {
			inv.log.Warn("cache delete failed; retrying", "keys", len(keys), "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(backoff/2 + rand.N(backoff)):
		}
		backoff = min(2*backoff, inv.retryMax)
	}
}

// Run performs second deletes as they fall due, until ctx ends. Second deletes still queued
// then are not done, and their channels stay open: a checkpoint never passes them.
func (inv *Invalidator) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		inv.mu.Lock()
		var due []second
		now := time.Now()
		for len(inv.queue) > 0 && !inv.queue[0].due.After(now) {
			due = append(due, inv.queue[0])
			inv.queue = inv.queue[1:]
		}
		var next time.Duration = time.Hour
		if len(inv.queue) > 0 {
			next = time.Until(inv.queue[0].due)
		}
		inv.mu.Unlock()

		if len(due) > 0 {
			var keys []string
			for _, s := range due {
				keys = append(keys, s.keys...)
			}
			if err := inv.deleteRetrying(ctx, keys, inv.m.second); err != nil {
				return nil // ctx ended
			}
			inv.mu.Lock()
			inv.pending -= len(keys)
			inv.m.pending.Set(float64(inv.pending))
			inv.mu.Unlock()
			for _, s := range due {
				close(s.done)
			}
			continue
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return nil
		case <-inv.wake:
		case <-timer.C:
		}
	}
}

type metrics struct {
	first, second, failures prometheus.Counter
	pending                 prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) metrics {
	deleted := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecache_keys_deleted_total", Help: "Cache keys deleted (with their leases) by invalidation, by pass: first or second.",
	}, []string{"pass"})
	m := metrics{
		first:  deleted.WithLabelValues("first"),
		second: deleted.WithLabelValues("second"),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecache_delete_failures_total", Help: "Invalidation deletes that failed and were retried.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecache_second_deletes_pending", Help: "Keys waiting for their delayed second delete.",
		}),
	}
	if reg != nil {
		reg.MustRegister(deleted, m.failures, m.pending)
	}
	return m
}
