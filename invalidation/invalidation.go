// Package invalidation deletes cache keys after their rows changed: delete now (which also
// voids any lease on the key, so a loader that read the old row cannot fill it back), then
// delete again after a delay, for fills that raced the first delete or read a lagging replica.
// A delete that fails is retried: in process, with backoff, until it succeeds, or, with a
// Retrier (Kafka), handed to the retry topic. The caller's progress (the binlog checkpoint)
// waits until every key is deleted or durably handed off.
package invalidation

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/internal/retry"
)

// ErrUnreachable marks a delete that did not reach Redis at all (its circuit breaker is open):
// the retry path waits for Redis instead of counting the attempt.
var ErrUnreachable = errors.New("redis is unreachable")

// Deleter deletes keys and voids their leases (Redis.Invalidate), and reports
// the keys whose delete failed.
type Deleter interface {
	Invalidate(ctx context.Context, keys ...string) (failed []string, err error)
}

// Dropper deletes every cached key of an entity at once: after DDL on its table, or when the
// binlog no longer says which rows changed (Redis.DropEntity).
type Dropper interface {
	// DropEntity deletes every value and lease of entity under prefix and returns the keys
	// whose delete failed. An error means the pass did not complete and must run again.
	DropEntity(ctx context.Context, prefix, entity string) (failed []string, err error)
}

// Filters are the Bloom filters an invalidation keeps exact (bloom.Filters): an id must be in
// its entity's filter before any delete can expose it as a miss.
type Filters interface {
	// Add adds ids to entity's filter.
	Add(ctx context.Context, entity string, ids ...string) error
	// Reset drops entity's filter, so that it answers "maybe" until rebuilt.
	Reset(ctx context.Context, entity string) error
}

// Retrier takes keys whose delete failed off the caller's hands (the Kafka retry path).
type Retrier interface {
	// Retry queues keys for retried deletes; acked is closed once they are durably handed off.
	// It blocks while its queue is full, so a caller that must not drop anything pauses.
	Retry(ctx context.Context, keys []string, position string, cause error) (acked <-chan struct{}, err error)
}

// Defaults of Options.
const (
	DefaultDelay      = 500 * time.Millisecond
	DefaultRetryMin   = 20 * time.Millisecond
	DefaultRetryMax   = 2 * time.Second
	DefaultMaxPending = 200_000
)

// Options configure an Invalidator. Deleter is required.
type Options struct {
	Deleter Deleter
	// Dropper drops whole entities; required for changes with Entities.
	Dropper Dropper
	// Prefix is the key prefix entity drops match under. Default none.
	Prefix string
	// Filters, if set, take the Adds and Resets of every change before its deletes.
	Filters Filters
	// OnReset, if set, is called after an entity's filter was reset; the caller rebuilds it.
	OnReset func(entity string)
	// Retrier, if set, takes failed deletes after one attempt. Nil: retry in process until
	// the delete succeeds.
	Retrier Retrier
	// Delay is the time between the first delete and the second. Default DefaultDelay; a
	// negative value turns the second delete off.
	Delay time.Duration
	// RetryMin and RetryMax bound the backoff between attempts of a failed delete.
	// Defaults DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// WaitReplica, if set, runs before the second deletes that fell due together, once for all
	// of them: gtids are their changes' GTID sets (Change.GTID, each once), and it returns once
	// the replica loads read has applied all of them, or when it gives up, which it bounds and
	// reports itself. The second deletes then run either way: Delay is the floor of their wait,
	// WaitReplica's bound the rest. Changes without a GTID set are not waited for. Default
	// none: the second delete runs after Delay alone.
	WaitReplica func(ctx context.Context, gtids []string)
	// MaxPending bounds the keys waiting for their second delete; Submit waits while more are
	// pending, so a huge transaction cannot grow memory without bound. Default
	// DefaultMaxPending.
	MaxPending int
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
	// Logger; nil: slog.Default().
	Logger *slog.Logger
}

// Invalidator deletes keys twice. Run must be running for second deletes to happen.
type Invalidator struct {
	del                Deleter
	dropper            Dropper
	prefix             string
	filters            Filters
	onReset            func(entity string)
	waitReplica        func(ctx context.Context, gtids []string)
	maxPending         int
	retrier            Retrier
	delay              time.Duration
	retryMin, retryMax time.Duration
	log                *slog.Logger
	m                  metrics

	mu      sync.Mutex
	queue   []second      // due in order: the delay is the same for all
	wake    chan struct{} // signalled when the queue gains a head
	drained chan struct{} // signalled when second deletes are done, for Submit's back-pressure
	pending int
	waiters sync.WaitGroup // finish's goroutines; Run waits for them
}

type second struct {
	due      time.Time
	keys     []string
	entities []string
	position string
	gtid     string
	first    <-chan struct{} // the first pass's hand-off, when it had failures
	done     chan struct{}
}

// init fills the defaults.
func (o *Options) init() {
	o.Delay = cmp.Or(o.Delay, DefaultDelay) // negative: no second delete
	o.RetryMin = cmp.Or(max(o.RetryMin, 0), DefaultRetryMin)
	o.RetryMax = cmp.Or(max(o.RetryMax, 0), DefaultRetryMax)
	o.MaxPending = cmp.Or(max(o.MaxPending, 0), DefaultMaxPending)
	o.Logger = cmp.Or(o.Logger, slog.Default())
}

// New returns an Invalidator.
func New(opts Options) *Invalidator {
	opts.init()
	return &Invalidator{
		del: opts.Deleter, dropper: opts.Dropper, prefix: opts.Prefix, filters: opts.Filters, onReset: opts.OnReset, waitReplica: opts.WaitReplica,
		maxPending: opts.MaxPending, retrier: opts.Retrier, delay: opts.Delay, retryMin: opts.RetryMin, retryMax: opts.RetryMax,
		log: opts.Logger, wake: make(chan struct{}, 1), drained: make(chan struct{}, 1), m: newMetrics(opts.Registerer),
	}
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Change is one unit of invalidation: the keys of changed rows, and entities whose every key
// must go (DDL on their table, a row whose key could not be read).
type Change struct {
	Keys     []string
	Entities []string
	// Adds are ids to add to their entity's Bloom filter (entity → ids) before anything is
	// deleted: an inserted row's, a moved key's new one. Ids of an entity in Resets are skipped.
	Adds map[string][]string
	// Resets are entities whose Bloom filter is reset before anything is deleted: their table
	// changed in ways the binlog does not list row by row.
	Resets []string
	// Position is the change's binlog position, which a retry message carries.
	Position string
	// GTID is the server's GTID set once the change is applied (its own transaction included):
	// what a replica must have applied before the second delete can be sure that no load reads
	// the row as it was (Options.WaitReplica). Empty when unknown (no GTIDs): not waited for.
	GTID string
}

// Delete deletes keys now and schedules the second delete. It returns once the first delete
// is done or handed off (retrying in process until then when there is no Retrier). The
// returned channel is closed once both passes are done or handed off: only then is the change
// fully invalidated.
func (inv *Invalidator) Delete(ctx context.Context, keys []string) (done <-chan struct{}, err error) {
	_, done, err = inv.Submit(ctx, Change{Keys: keys})
	return done, err
}

// Submit invalidates a change: filters are reset and ids added to them first (retried until
// they succeed), so that no delete exposes an id a filter calls absent; then entities are
// dropped (their first pass runs here, retried until the scan completes) and keys deleted now,
// and the second pass of both is scheduled. first is closed once the first pass is done or
// durably handed off (a Retrier acknowledged its failed keys); done once both passes are. It
// waits while MaxPending keys wait for their second pass.
func (inv *Invalidator) Submit(ctx context.Context, c Change) (first, done <-chan struct{}, err error) {
	if err := inv.updateFilters(ctx, c); err != nil {
		return nil, nil, err
	}
	if len(c.Keys) == 0 && len(c.Entities) == 0 {
		return closed, closed, nil
	}
	if err := inv.waitPending(ctx); err != nil {
		return nil, nil, err
	}
	first, err = inv.pass(ctx, c, inv.m.first)
	if err != nil {
		return nil, nil, err
	}
	if inv.delay < 0 {
		return first, first, nil
	}
	s := second{due: time.Now().Add(inv.delay), keys: c.Keys, entities: c.Entities, position: c.Position, gtid: c.GTID, first: first, done: make(chan struct{})}
	inv.mu.Lock()
	inv.queue = append(inv.queue, s)
	inv.pending += len(c.Keys)
	inv.m.pending.Set(float64(inv.pending))
	inv.mu.Unlock()
	select {
	case inv.wake <- struct{}{}:
	default:
	}
	return first, s.done, nil
}

// updateFilters resets the filters of c.Resets and adds c.Adds to the others, retrying each
// until it succeeds or ctx ends.
func (inv *Invalidator) updateFilters(ctx context.Context, c Change) error {
	if inv.filters == nil {
		return nil
	}
	for _, e := range c.Resets {
		err := inv.retry(ctx, "bloom reset failed; retrying", func() ([]any, error) {
			return []any{"entity", e}, inv.filters.Reset(ctx, e)
		})
		if err != nil {
			return err
		}
		if inv.onReset != nil {
			inv.onReset(e)
		}
	}
	for e, ids := range c.Adds {
		if slices.Contains(c.Resets, e) || len(ids) == 0 {
			continue
		}
		err := inv.retry(ctx, "bloom add failed; retrying", func() ([]any, error) {
			return []any{"entity", e}, inv.filters.Add(ctx, e, ids...)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// waitPending blocks while MaxPending keys or more wait for their second delete.
func (inv *Invalidator) waitPending(ctx context.Context) error {
	for {
		inv.mu.Lock()
		n := inv.pending
		inv.mu.Unlock()
		if n < inv.maxPending {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-inv.drained:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pass runs one pass of a change: its entity drops, then its key deletes. What fails goes to
// the Retrier, or is retried here until it succeeds. The returned channel is closed once every
// key is deleted or handed off.
func (inv *Invalidator) pass(ctx context.Context, c Change, deleted prometheus.Counter) (<-chan struct{}, error) {
	keys := c.Keys
	if len(c.Entities) > 0 {
		failed, err := inv.drop(ctx, c.Entities)
		if err != nil {
			return nil, err
		}
		keys = append(slices.Clip(keys), failed...)
	}
	return inv.deleteKeys(ctx, keys, c.Position, deleted)
}

// drop runs one full drop of each entity, retrying a scan that did not complete, and returns
// the keys whose delete failed. Those are retried on their own; a scan that did not complete
// runs again whole, since only a complete one finds every key.
func (inv *Invalidator) drop(ctx context.Context, entities []string) (failed []string, err error) {
	if inv.dropper == nil {
		return nil, errors.New("invalidation: an entity drop needs a Dropper")
	}
	for _, e := range entities {
		err := inv.retry(ctx, "dropping an entity's cached keys failed; retrying", func() ([]any, error) {
			f, err := inv.dropper.DropEntity(ctx, inv.prefix, e)
			failed = append(failed, f...)
			if err != nil {
				inv.m.failures.Inc()
				return []any{"entity", e}, err
			}
			inv.m.drops.Inc()
			return nil, nil
		})
		if err != nil {
			return nil, err
		}
	}
	return failed, nil
}

// deleteKeys deletes keys once; what fails goes to the Retrier, or is retried here until it
// succeeds. The returned channel is closed once every key is deleted or handed off.
func (inv *Invalidator) deleteKeys(ctx context.Context, keys []string, position string, deleted prometheus.Counter) (<-chan struct{}, error) {
	if len(keys) == 0 {
		return closed, nil
	}
	if inv.retrier == nil {
		if err := inv.deleteRetrying(ctx, keys, deleted); err != nil {
			return nil, err
		}
		return closed, nil
	}
	failed, err := inv.del.Invalidate(ctx, keys...)
	deleted.Add(float64(len(keys) - len(failed)))
	if len(failed) == 0 {
		return closed, nil
	}
	inv.m.failures.Add(float64(len(failed)))
	return inv.retrier.Retry(ctx, failed, position, err)
}

// deleteRetrying deletes keys, backing off with jitter between failures and retrying only the
// keys that failed, until all are deleted or ctx ends.
func (inv *Invalidator) deleteRetrying(ctx context.Context, keys []string, deleted prometheus.Counter) error {
	return inv.retry(ctx, "cache delete failed; retrying", func() ([]any, error) {
		failed, err := inv.del.Invalidate(ctx, keys...)
		deleted.Add(float64(len(keys) - len(failed)))
		if len(failed) == 0 {
			return nil, nil
		}
		inv.m.failures.Add(float64(len(failed)))
		keys = failed
		if err == nil {
			err = errors.New("delete failed")
		}
		return []any{"keys", len(failed)}, err
	})
}

// retry runs attempt until it returns no error or ctx ends, backing off with jitter from
// RetryMin to RetryMax, and logs msg with the failed attempt's attributes on the first failure
// and every tenth.
func (inv *Invalidator) retry(ctx context.Context, msg string, attempt func() (attrs []any, err error)) error {
	return retry.Do(ctx, retry.Backoff{Min: inv.retryMin, Max: inv.retryMax}, func(n int) error {
		attrs, err := attempt()
		if err != nil && (n == 1 || n%10 == 0) {
			inv.log.Warn(msg, append(attrs, "attempt", n, "err", err)...)
		}
		return err
	})
}

// Run performs second deletes as they fall due, until ctx ends. Second deletes still queued
// then are not done, and their channels stay open: a checkpoint never passes them.
func (inv *Invalidator) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer inv.waiters.Wait()
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
			inv.awaitReplica(ctx, due)
			n := 0
			for _, s := range due {
				ack, err := inv.pass(ctx, Change{Keys: s.keys, Entities: s.entities, Position: s.position}, inv.m.second)
				if err != nil {
					return // ctx ended: not done, so never checkpointed past
				}
				n += len(s.keys)
				inv.finish(ctx, s, ack)
			}
			inv.mu.Lock()
			inv.pending -= n
			inv.m.pending.Set(float64(inv.pending))
			inv.mu.Unlock()
			select {
			case inv.drained <- struct{}{}:
			default:
			}
			continue
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-inv.wake:
		case <-timer.C:
		}
	}
}

// awaitReplica waits, once for a batch of due second deletes, until the replica has applied
// their changes: a load that reads it after that sees them, and a load that read it before
// holds a lease these deletes void.
func (inv *Invalidator) awaitReplica(ctx context.Context, due []second) {
	if inv.waitReplica == nil {
		return
	}
	var gtids []string
	seen := map[string]bool{}
	for _, s := range due {
		if s.gtid != "" && !seen[s.gtid] {
			seen[s.gtid] = true
			gtids = append(gtids, s.gtid)
		}
	}
	if len(gtids) > 0 {
		inv.waitReplica(ctx, gtids)
	}
}

// finish closes a change's done channel once both of its passes are done or handed off.
func (inv *Invalidator) finish(ctx context.Context, s second, secondAck <-chan struct{}) {
	if isClosed(s.first) && isClosed(secondAck) {
		close(s.done)
		return
	}
	inv.waiters.Add(1)
	go func() {
		defer inv.waiters.Done()
		for _, c := range []<-chan struct{}{s.first, secondAck} {
			select {
			case <-c:
			case <-ctx.Done():
				return
			}
		}
		close(s.done)
	}()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

type metrics struct {
	first, second, failures, drops prometheus.Counter
	pending                        prometheus.Gauge
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
		drops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecache_entity_drop_passes_total", Help: "Passes that deleted every cached key of an entity (after DDL on its table, an unreadable key, or a restart without a checkpoint).",
		}),
	}
	if reg != nil {
		reg.MustRegister(deleted, m.failures, m.pending, m.drops)
	}
	return m
}
