// Package check is the consistency checker: it reads the cache and MySQL side by side, looks
// again at whatever differs once a change in flight has had time to be invalidated, and counts
// the mismatches that last: stale rows, ghosts and rows wrongly missing, as nines of
// consistency.
//
// It reads the cache as the read path writes it (readthrough's envelope, under the keys of
// internal/keys) and writes nothing. It is not part of the read path: `sidecache check` runs
// it, once or every so often.
package check

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/internal/retry"
	"github.com/sidecache/sidecache/readthrough"
)

// Errors callers branch on: the read path's, since a checker fails for the same reasons.
var (
	ErrUnknownEntity    = readthrough.ErrUnknownEntity
	ErrCacheUnavailable = readthrough.ErrCacheUnavailable // wraps a Redis failure
	ErrDBUnavailable    = readthrough.ErrDBUnavailable    // wraps a MySQL failure
)

// Defaults of Options and Round.
const (
	DefaultRate   = 1000
	DefaultSample = 1000
)

// The re-check of a mismatch waits for the second delete (DoubleDeleteDelay) and for the
// binlog tail to reach the change (the lag), plus SettleMargin: the lag is sampled once a
// second, and a failed delete's retry takes a moment. UnknownLag stands for the lag when
// nothing reports it, and MaxLag caps the wait for a tail that is far behind (its changes are
// then counted: the cache does serve them stale).
const (
	SettleMargin = time.Second
	UnknownLag   = 2 * time.Second
	MaxLag       = 30 * time.Second
)

// batchSize is the most ids read in one round trip to each of Redis and MySQL.
const batchSize = 100

// Source is what the checker reads from MySQL: rows by id, and ids in key order.
// *mysqlsource.Source is one.
type Source interface {
	// LoadMany returns the rows for ids by id, each as the read path caches it; ids with no
	// row are absent.
	LoadMany(ctx context.Context, entity string, ids []string) (map[string][]byte, error)
	// ScanIDs returns up to limit ids in key order after *after (nil: from the first) up to
	// *last.
	ScanIDs(ctx context.Context, entity string, after, last *string, limit int) ([]string, error)
	// LastID returns the greatest id; ok is false for an empty table.
	LastID(ctx context.Context, entity string) (id string, ok bool, err error)
}

// Filters are the Bloom filters. *bloom.Filters is one.
type Filters interface {
	// MayContainMany reports, for each of ids, false only when the filter is sure the row is
	// not there.
	MayContainMany(ctx context.Context, entity string, ids []string) ([]bool, error)
}

var (
	_ Source  = (*mysqlsource.Source)(nil)
	_ Filters = (*bloom.Filters)(nil)
)

// Entity is an entity the checker may check.
type Entity struct {
	Name string
	// Key is the key column's type: the table's ids are sampled by it, and the ids of cache
	// keys must be in its canonical form to count.
	Key mysqlsource.Key
	// Bloom says the entity has a Bloom filter, which must never say "absent" for a row that
	// exists.
	Bloom bool
}

// Options configure a Checker. Redis, Source and Entities are required.
type Options struct {
	// Redis is the cache: a standalone server or a Redis Cluster.
	Redis redis.UniversalClient
	// Source reads MySQL.
	Source Source
	// Filters are the Bloom filters; nil: no filter is checked.
	Filters Filters
	// Prefix starts every cache key (redis.key_prefix). Default none.
	Prefix   string
	Entities []Entity
	// DoubleDeleteDelay is how long after a change its second delete runs
	// (cdc.double_delete_delay).
	DoubleDeleteDelay time.Duration
	// Lag returns how far behind the binlog tail is; ok is false when nothing reports it. It
	// is called whenever a look finds mismatches, to set the time of their re-check. Nil: the
	// lag is unknown, and UnknownLag stands for it.
	Lag func(ctx context.Context) (lag time.Duration, ok bool, err error)
	// Settle, if set, is how long a mismatch waits for its re-check, instead of
	// DoubleDeleteDelay plus the lag plus SettleMargin.
	Settle time.Duration
	// Rate caps the ids read per second, each a Redis GET and a row from MySQL, re-checks
	// included. Default DefaultRate.
	Rate float64
	// Registerer receives the metrics; nil: unregistered metrics.
	Registerer prometheus.Registerer
}

// Checker checks the cache against MySQL, one round at a time. It is not safe for concurrent
// use.
type Checker struct {
	o        Options
	cache    *readthrough.RedisCache
	entities []*Entity
	byName   map[string]*Entity
	limit    *rate.Limiter
	batch    int
	seed     maphash.Seed
	m        *metrics
}

// New returns a Checker.
func New(o Options) *Checker {
	o.Rate = cmp.Or(max(o.Rate, 0), DefaultRate)
	c := &Checker{o: o, cache: readthrough.NewRedisCache(o.Redis), byName: make(map[string]*Entity), seed: maphash.MakeSeed()}
	names := make([]string, len(o.Entities))
	for i := range o.Entities {
		e := &o.Entities[i]
		c.entities = append(c.entities, e)
		c.byName[e.Name] = e
		names[i] = e.Name
	}
	// A batch is never more than a second's worth of reads, and the bucket holds one batch.
	c.batch = min(batchSize, max(1, int(o.Rate)))
	c.limit = rate.NewLimiter(rate.Limit(o.Rate), c.batch)
	c.m = newMetrics(o.Registerer, names)
	return c
}

// Round says what one round of checks reads.
type Round struct {
	// Entities are checked in turn; nil: every entity.
	Entities []string
	// Sample is how many ids of each entity to check: up to half of them from the cache's keys
	// (the only place a ghost shows), the rest from random ranges of the table's keys.
	// Default DefaultSample.
	Sample int
	// All checks every row of each table and every key of each entity in the cache instead.
	All bool
}

// Check runs one round: every id is looked at in the cache and in MySQL, and each mismatch is
// looked at again once the changes in flight at the first look have had time to be
// invalidated. Only a mismatch whose cached value is still there, and still wrong, counts.
func (c *Checker) Check(ctx context.Context, r Round) (rep Report, err error) {
	defer func() { c.m.observe(rep, err) }()
	es, err := c.pick(r.Entities)
	if err != nil {
		return Report{}, err
	}
	if err := c.o.Redis.Ping(ctx).Err(); err != nil {
		return Report{}, cacheErr(err)
	}
	start := time.Now()
	rd := &round{c: c, index: make(map[string]int, len(es))}
	rd.rep.Entities = make([]EntityReport, len(es))
	for i, e := range es {
		rd.rep.Entities[i].Entity = e.Name
		rd.index[e.Name] = i
	}
	for _, e := range es {
		if r.All {
			err = rd.all(ctx, e)
		} else {
			err = rd.sample(ctx, e, cmp.Or(max(r.Sample, 0), DefaultSample))
		}
		if err != nil {
			return Report{}, err
		}
	}
	if err := rd.drain(ctx); err != nil {
		return Report{}, err
	}
	rd.rep.Elapsed = time.Since(start)
	for _, e := range rd.rep.Entities {
		rd.rep.Total.Add(e.Counts)
	}
	return rd.rep, nil
}

func (c *Checker) pick(names []string) ([]*Entity, error) {
	if len(names) == 0 {
		return c.entities, nil
	}
	var out []*Entity
	for _, n := range names {
		e := c.byName[n]
		if e == nil {
			all := make([]string, len(c.entities))
			for i, e := range c.entities {
				all[i] = e.Name
			}
			return nil, fmt.Errorf("%w %q (configured: %s)", ErrUnknownEntity, n, strings.Join(all, ", "))
		}
		out = append(out, e)
	}
	return out, nil
}

// settle is how long a mismatch found now waits for its re-check; lagKnown is false when the
// binlog lag was not reported.
func (c *Checker) settle(ctx context.Context) (d time.Duration, lagKnown bool) {
	if c.o.Settle > 0 {
		return c.o.Settle, true
	}
	if c.o.Lag != nil {
		if lag, ok, err := c.o.Lag(ctx); err == nil && ok {
			return c.o.DoubleDeleteDelay + min(lag, MaxLag) + SettleMargin, true
		}
	}
	return c.o.DoubleDeleteDelay + UnknownLag, false
}

// finding is what one look at an id found.
type finding struct {
	kind Kind
	// state identifies what the cache held (a row or a null marker, not its soft deadline);
	// 0 for nothing.
	state        uint64
	exists       bool // MySQL has the row
	pastDeadline bool // a hot value past its soft deadline
}

// look reads ids of e from the cache and from MySQL, and the Bloom filter where it matters,
// and tells what each one is.
func (c *Checker) look(ctx context.Context, e *Entity, ids []string) ([]finding, error) {
	if err := c.limit.WaitN(ctx, len(ids)); err != nil {
		return nil, err
	}
	ks := make([]string, len(ids))
	for i, id := range ids {
		ks[i] = keys.Value(c.o.Prefix, e.Name, id)
	}
	vals, err := c.cache.GetMany(ctx, ks)
	if err != nil {
		return nil, cacheErr(err)
	}
	rows, err := c.o.Source.LoadMany(ctx, e.Name, ids)
	if err != nil {
		return nil, fmt.Errorf("%w: entity %q: %w", ErrDBUnavailable, e.Name, err)
	}
	out := make([]finding, len(ids))
	var ask []int // ids with nothing cached and a row: the filter must not call them absent
	now := time.Now()
	for i, id := range ids {
		row, exists := rows[id]
		f := &out[i]
		f.exists = exists
		if vals[i] == nil {
			f.kind = notCached
			if exists && e.Bloom && c.o.Filters != nil {
				ask = append(ask, i)
			}
			continue
		}
		v, ok := readthrough.DecodeCached(vals[i])
		if !ok {
			f.kind = unreadable
			continue
		}
		f.state = c.state(v)
		f.pastDeadline = !v.Null && !v.Deadline.IsZero() && now.After(v.Deadline)
		switch {
		case v.Null && exists:
			f.kind = WronglyMissing
		case v.Null:
			f.kind = consistent
		case !exists:
			f.kind = Ghost
		case string(v.Row) != string(row):
			f.kind = Stale
		default:
			f.kind = consistent
		}
	}
	if len(ask) == 0 {
		return out, nil
	}
	askIDs := make([]string, len(ask))
	for j, i := range ask {
		askIDs[j] = ids[i]
	}
	may, err := c.o.Filters.MayContainMany(ctx, e.Name, askIDs)
	if err != nil {
		return nil, fmt.Errorf("%w: the Bloom filter of entity %q: %v", ErrCacheUnavailable, e.Name, cause(err))
	}
	for j, i := range ask {
		out[i].kind = consistent
		if !may[j] {
			out[i].kind = WronglyMissing
		}
	}
	return out, nil
}

// state hashes what a cached value says, leaving out the soft deadline: a hot value refreshed
// with the same row says the same.
func (c *Checker) state(v readthrough.Cached) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	if v.Null {
		h.WriteByte('n')
	} else {
		h.WriteByte('v')
		h.Write(v.Row)
	}
	return h.Sum64() | 1 // never 0, which stands for nothing cached
}

// round is one Check: the report so far and the mismatches waiting for their re-check.
type round struct {
	c       *Checker
	rep     Report
	index   map[string]int // entity → its place in rep.Entities
	pending []pending
}

// pending is a mismatch waiting for its re-check.
type pending struct {
	e     *Entity
	id    string
	state uint64
	due   time.Time
}

// first takes the first look at ids of e and queues the mismatches for their re-check. With
// onlyAbsent, ids whose row exists are passed over (they were checked from the table's side),
// and so are ids in seen, which it adds to.
func (rd *round) first(ctx context.Context, e *Entity, ids []string, onlyAbsent bool, seen map[string]bool) error {
	fs, err := rd.c.look(ctx, e, ids)
	if err != nil {
		return err
	}
	counts := &rd.rep.Entities[rd.index[e.Name]].Counts
	var due time.Time
	for i, f := range fs {
		if onlyAbsent {
			if f.exists || seen[ids[i]] {
				continue
			}
			seen[ids[i]] = true
		}
		if f.pastDeadline {
			counts.PastSoftDeadline++
		}
		switch f.kind {
		case notCached:
			counts.NotCached++
			continue
		case unreadable:
			counts.Unreadable++
			continue
		}
		counts.Checked++
		if f.kind.mismatch() {
			if due.IsZero() {
				settle, known := rd.c.settle(ctx)
				rd.rep.Settle = max(rd.rep.Settle, settle)
				rd.rep.LagUnknown = rd.rep.LagUnknown || !known
				due = time.Now().Add(settle)
			}
			rd.pending = append(rd.pending, pending{e: e, id: ids[i], state: f.state, due: due})
		}
	}
	return rd.recheck(ctx)
}

// recheck looks again at the pending mismatches that are due. A mismatch lasts when the cache
// still holds what it held at the first look and that is still wrong; anything else was a
// change in flight.
func (rd *round) recheck(ctx context.Context) error {
	now := time.Now()
	var due []pending
	rest := rd.pending[:0]
	for _, p := range rd.pending {
		if p.due.After(now) {
			rest = append(rest, p)
		} else {
			due = append(due, p)
		}
	}
	rd.pending = rest
	for len(due) > 0 {
		// One entity's due mismatches at a time, at most a batch of them.
		e := due[0].e
		var batch []pending
		other := due[:0]
		for _, p := range due {
			if p.e == e && len(batch) < rd.c.batch {
				batch = append(batch, p)
			} else {
				other = append(other, p)
			}
		}
		due = other
		ids := make([]string, len(batch))
		for i, p := range batch {
			ids[i] = p.id
		}
		fs, err := rd.c.look(ctx, e, ids)
		if err != nil {
			return err
		}
		er := &rd.rep.Entities[rd.index[e.Name]]
		for i, f := range fs {
			if !f.kind.mismatch() || f.state != batch[i].state {
				er.InFlight++
				continue
			}
			er.count(f.kind, ids[i])
		}
	}
	return nil
}

// drain waits for the re-check of every pending mismatch.
func (rd *round) drain(ctx context.Context) error {
	for len(rd.pending) > 0 {
		next := rd.pending[0].due
		for _, p := range rd.pending {
			if p.due.Before(next) {
				next = p.due
			}
		}
		if err := retry.Sleep(ctx, time.Until(next)); err != nil {
			return err
		}
		if err := rd.recheck(ctx); err != nil {
			return err
		}
	}
	return nil
}

func cacheErr(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %s", ErrCacheUnavailable, cause(err))
}

// cause is err's text without the network addresses of a failed dial, which in a Redis Cluster
// are the nodes' own addresses rather than the configured ones.
func cause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}
