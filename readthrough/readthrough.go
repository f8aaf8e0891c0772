// Package readthrough is sidecache's read path: look the entity up in Redis, answer null
// markers as "not found", load misses from MySQL once per key across the cluster (an in-process
// flight, then a Redis lease), and fill the cache with jittered TTLs so that keys filled
// together do not expire together. Hot entities expire logically: past a soft deadline the
// stale value is served while one background refresh runs.
package readthrough

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/lease"
	"github.com/sidecache/sidecache/singleflight"
)

// Errors callers branch on.
var (
	ErrNotFound      = errors.New("not found")
	ErrUnknownEntity = errors.New("unknown entity")
	// ErrInvalidID reports an id that cannot be a value of the entity's key.
	ErrInvalidID  = errors.New("invalid id")
	ErrTooManyIDs = errors.New("too many ids")
	// ErrCacheUnavailable wraps a Redis failure on the way to an answer.
	ErrCacheUnavailable = errors.New("cache unavailable")
	// ErrDBUnavailable wraps a MySQL failure while loading a miss.
	ErrDBUnavailable = errors.New("database unavailable")
	// ErrWaitTimeout: another caller held the load lease past the wait bound and the fallback
	// is FallbackUnavailable.
	ErrWaitTimeout = errors.New("timed out waiting for another load")
	// ErrOverloaded: the cache is unavailable and this process has used its MySQL loads for
	// now (Options.Degraded); the caller may retry in a second.
	ErrOverloaded = errors.New("too many database loads while the cache is unavailable")
)

// Fallback is what a caller does when another's load holds the lease past the wait bound.
type Fallback int

const (
	// FallbackLoad loads from MySQL directly, behind a per-process concurrency limit, and does
	// not fill the cache (X-Cache: bypass).
	FallbackLoad Fallback = iota
	// FallbackUnavailable answers ErrWaitTimeout.
	FallbackUnavailable
)

// Status says where an answer came from; it is the X-Cache header.
type Status string

const (
	Hit      Status = "hit"      // from the cache
	Miss     Status = "miss"     // loaded from MySQL
	Negative Status = "negative" // a cached "no such row"
	Stale    Status = "stale"    // a cached value past its soft deadline
	Bypass   Status = "bypass"   // served without the cache
)

// Source loads rows from the database.
type Source interface {
	// Load returns the row with key id as a JSON object; found is false when there is none.
	Load(ctx context.Context, entity, id string) (row []byte, found bool, err error)
	// LoadMany returns the rows for ids by id; ids with no row are absent.
	LoadMany(ctx context.Context, entity string, ids []string) (map[string][]byte, error)
}

// Entity is what the read path knows of an entity.
type Entity struct {
	Name string
	// ParseID validates a raw id from a request and returns its canonical form, the one cache
	// keys and the Source use. Its errors wrap ErrInvalidID. Required.
	ParseID func(raw string) (string, error)
	// TTL and NullTTL are spread by ±Jitter (a fraction in [0, 1)).
	TTL, NullTTL time.Duration
	Jitter       float64
	// Hot entities expire logically: a value carries a soft deadline TTL±Jitter from its fill
	// and lives StaleTTL longer in Redis, and a read past the deadline is served stale while
	// one background refresh runs.
	Hot      bool
	StaleTTL time.Duration
	// Bloom consults the entity's Bloom filter on a miss: "absent" answers not found without
	// a query. BloomParams size the filter's rebuilds.
	Bloom       bool
	BloomParams bloom.Params
}

// Defaults of Options.
const (
	DefaultMaxIDs              = 100
	DefaultLoadTimeout         = 5 * time.Second
	DefaultLeaseWait           = 2 * time.Second
	DefaultFallbackConcurrency = 4
	DefaultMaxRefreshes        = 16
	DefaultBypassConcurrency   = 16
)

// Defaults of Entity, which the configuration applies.
const (
	DefaultTTL     = 10 * time.Minute
	DefaultNullTTL = time.Minute
	DefaultJitter  = 0.1
)

// Options configure a Reader. Cache, Source and Entities are required.
type Options struct {
	Cache    Cache
	Source   Source
	Entities []Entity
	// KeyPrefix starts every cache key. Default none.
	KeyPrefix string
	// MaxIDs bounds a multi-get. Default DefaultMaxIDs.
	MaxIDs int
	// LoadTimeout bounds a miss: waiting for the flight, the load and the fill. Default
	// DefaultLoadTimeout. (A hit is one cache call, bounded by the cache client's own timeouts.)
	LoadTimeout time.Duration
	// Filters are the Bloom filters; nil: no penetration guard.
	Filters *bloom.Filters
	// Leases make one load per key hold across processes. Nil: in-process flights only.
	Leases *lease.Leases
	// LeaseWait bounds how long a caller waits for another's load before Fallback. Default
	// DefaultLeaseWait.
	LeaseWait time.Duration
	// Fallback after LeaseWait. Default FallbackLoad.
	Fallback Fallback
	// FallbackConcurrency caps direct loads by FallbackLoad in this process. Default
	// DefaultFallbackConcurrency.
	FallbackConcurrency int
	// MaxRefreshes caps concurrent background refreshes of stale hot values. Default
	// DefaultMaxRefreshes.
	MaxRefreshes int
	// Covered, if set, says whether the binlog tail covers an entity: every change to its table
	// is invalidated. While it says no, the entity's reads bypass the cache (MySQL directly,
	// X-Cache: bypass, nothing written to Redis, and what Redis answered is not used): a row
	// cached then could outlive a change no invalidation will ever delete. It is asked after the
	// cache answered. Nil: always covered.
	Covered func(entity string) bool
	// BypassConcurrency caps MySQL loads of uncovered entities in this process. Default
	// DefaultBypassConcurrency.
	BypassConcurrency int
	// Degraded, if set, answers the reads the cache cannot (Redis unreachable, or its circuit
	// breaker open): from the Source directly, without the Bloom filter, the lease or a fill
	// (X-Cache: bypass), each query taking a token of Degraded first; without one the read
	// answers ErrOverloaded. Nil: such reads fail with ErrCacheUnavailable.
	Degraded *rate.Limiter
	// AfterLoad, if set, runs after rows are read from MySQL and before they are cached. Tests
	// use it to interleave a write with a load.
	AfterLoad func(ids []string)
	// Metrics; nil: unregistered metrics.
	Metrics *Metrics
	// Logger; nil: slog.Default().
	Logger *slog.Logger
}

// Reader answers reads. It is safe for concurrent use.
type Reader struct {
	cache    Cache
	source   Source
	prefix   string
	maxIDs   int
	timeout  time.Duration
	log      *slog.Logger
	entities map[string]*entity
	flights  singleflight.Group[Result]

	filters   *bloom.Filters
	leases    *lease.Leases
	wait      time.Duration
	fallback  Fallback
	fallbacks chan struct{} // FallbackLoad's concurrency limit
	afterLoad func(ids []string)
	covered   func(entity string) bool
	bypassing chan struct{} // loads of uncovered entities
	degraded  *rate.Limiter // loads while the cache is unavailable

	refreshSlots chan struct{} // background refresh concurrency limit
	refreshing   sync.Map      // cache key → struct{}: refreshes running in this process
	refreshWG    sync.WaitGroup
	closeMu      sync.Mutex // orders refreshWG.Add before Close's Wait
	closed       bool
}

type entity struct {
	Entity
	m entityMetrics
}

// Result is one answer.
type Result struct {
	// Body is the row as a JSON object; nil when the row does not exist.
	Body   []byte
	Status Status
}

// init fills the defaults.
func (o *Options) init() {
	o.MaxIDs = cmp.Or(max(o.MaxIDs, 0), DefaultMaxIDs)
	o.LoadTimeout = cmp.Or(max(o.LoadTimeout, 0), DefaultLoadTimeout)
	o.LeaseWait = cmp.Or(max(o.LeaseWait, 0), DefaultLeaseWait)
	o.FallbackConcurrency = cmp.Or(max(o.FallbackConcurrency, 0), DefaultFallbackConcurrency)
	o.MaxRefreshes = cmp.Or(max(o.MaxRefreshes, 0), DefaultMaxRefreshes)
	o.BypassConcurrency = cmp.Or(max(o.BypassConcurrency, 0), DefaultBypassConcurrency)
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	o.Logger = cmp.Or(o.Logger, slog.Default())
}

// New returns a Reader.
func New(opts Options) *Reader {
	opts.init()
	r := &Reader{
		cache:    opts.Cache,
		source:   opts.Source,
		prefix:   opts.KeyPrefix,
		maxIDs:   opts.MaxIDs,
		timeout:  opts.LoadTimeout,
		log:      opts.Logger,
		entities: make(map[string]*entity, len(opts.Entities)),

		filters:   opts.Filters,
		leases:    opts.Leases,
		wait:      opts.LeaseWait,
		fallback:  opts.Fallback,
		afterLoad: opts.AfterLoad,
		covered:   opts.Covered,
		degraded:  opts.Degraded,

		fallbacks:    make(chan struct{}, opts.FallbackConcurrency),
		refreshSlots: make(chan struct{}, opts.MaxRefreshes),
		bypassing:    make(chan struct{}, opts.BypassConcurrency),
	}
	for _, e := range opts.Entities {
		if e.Hot && e.StaleTTL <= 0 {
			e.StaleTTL = e.TTL
		}
		r.entities[e.Name] = &entity{Entity: e, m: opts.Metrics.forEntity(e.Name)}
	}
	return r
}

// Close stops starting background refreshes and waits for those running to end.
func (r *Reader) Close() {
	r.closeMu.Lock()
	r.closed = true
	r.closeMu.Unlock()
	r.refreshWG.Wait()
}

// cacheKey is the Redis key of an entity's row.
func (r *Reader) cacheKey(e *entity, id string) string { return keys.Value(r.prefix, e.Name, id) }

// Get answers one id. When the row does not exist the error is ErrNotFound and the Result still
// says where that answer came from (Negative: a null marker; Miss: MySQL).
func (r *Reader) Get(ctx context.Context, entityName, rawID string) (Result, error) {
	e := r.entities[entityName]
	if e == nil {
		return Result{}, fmt.Errorf("%w: %q", ErrUnknownEntity, entityName)
	}
	id, err := e.parse(rawID)
	if err != nil {
		return Result{}, err
	}
	key := r.cacheKey(e, id)
	start := time.Now()
	b, err := r.cache.Get(ctx, key)
	e.m.redisGet.Observe(time.Since(start).Seconds())
	if err != nil {
		return r.cacheDown(ctx, e, id, key, err)
	}
	// Coverage is read after the cache: a Redis that came back during this read (and may hold
	// rows older than changes it missed) has withdrawn it by the time its answer arrives.
	if r.covered != nil && !r.covered(e.Name) {
		return r.bypass(ctx, e, id, key)
	}
	if res, ok := e.answer(b); ok {
		if res.Status == Stale {
			r.refresh(e, id, key)
		}
		return res.orNotFound(e.Name, id)
	}
	if absent := r.absent(ctx, e, []string{id}); absent[0] {
		return Result{Status: Negative}.orNotFound(e.Name, id)
	}
	res, err := r.load(ctx, e, id, key)
	if r.degraded != nil && errors.Is(err, ErrCacheUnavailable) {
		return r.cacheDown(ctx, e, id, key, err)
	}
	return res, err
}

// cacheDown answers a read that failed on Redis: from MySQL behind the Degraded limiter, or
// ErrCacheUnavailable without one.
func (r *Reader) cacheDown(ctx context.Context, e *entity, id, key string, err error) (Result, error) {
	if r.degraded == nil {
		if !errors.Is(err, ErrCacheUnavailable) {
			err = fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
		}
		return Result{}, err
	}
	return r.direct(ctx, e, id, "degraded:"+key, r.degradedLoad)
}

// absent asks the Bloom filter which ids are surely not in the table. On an error the guard
// opens: it must never answer "absent" for a row that exists.
func (r *Reader) absent(ctx context.Context, e *entity, ids []string) []bool {
	out := make([]bool, len(ids))
	if !e.Bloom || r.filters == nil {
		return out
	}
	may, err := r.filters.MayContainMany(ctx, e.Name, ids)
	if err != nil {
		e.m.bloomErrors.Inc()
		r.log.Warn("bloom check failed; letting the ids through", "entity", e.Name, "err", err)
		return out
	}
	for i, m := range may {
		if !m {
			out[i] = true
			e.m.bloomAbsent.Inc()
		} else {
			e.m.bloomMaybe.Inc()
		}
	}
	return out
}

// ParseID validates raw as an id of entity and returns its canonical form.
func (r *Reader) ParseID(entityName, raw string) (string, error) {
	e := r.entities[entityName]
	if e == nil {
		return "", fmt.Errorf("%w: %q", ErrUnknownEntity, entityName)
	}
	return e.parse(raw)
}

// parse validates a raw id with the entity's ParseID.
func (e *entity) parse(raw string) (string, error) {
	id, err := e.ParseID(raw)
	if err != nil && !errors.Is(err, ErrInvalidID) {
		err = fmt.Errorf("%w: %w", ErrInvalidID, err)
	}
	return id, err
}

// answer turns a cached value into a result; ok is false for a miss.
func (e *entity) answer(b []byte) (res Result, ok bool) {
	if b == nil {
		return Result{}, false
	}
	env, ok := decodeEnvelope(b)
	if !ok {
		e.m.badEnvelopes.Inc()
		return Result{}, false
	}
	if env.kind == kindNull {
		return Result{Status: Negative}, true
	}
	if !env.deadline.IsZero() && time.Now().After(env.deadline) {
		e.m.staleServes.Inc()
		return Result{Body: env.body, Status: Stale}, true
	}
	return Result{Body: env.body, Status: Hit}, true
}

// orNotFound returns res with ErrNotFound when it has no row.
func (res Result) orNotFound(entity, id string) (Result, error) {
	if res.Body == nil {
		return res, fmt.Errorf("%w: %s %q", ErrNotFound, entity, id)
	}
	return res, nil
}

func (e *entity) valueEntry(key string, row []byte) Entry {
	ttl := Jitter(e.TTL, e.Jitter)
	if !e.Hot {
		return Entry{Key: key, Value: encodeEnvelope(kindValue, time.Time{}, row), TTL: ttl}
	}
	// Logical expiry: the soft deadline is jittered, and the value outlives it by StaleTTL so
	// that reads past the deadline are served while the refresh runs.
	return Entry{Key: key, Value: encodeEnvelope(kindValue, time.Now().Add(ttl), row), TTL: ttl + e.StaleTTL}
}

// entry is what caches a load's answer: the row, or a null marker when there is none.
func (e *entity) entry(key string, row []byte) Entry {
	if row == nil {
		return e.nullEntry(key)
	}
	return e.valueEntry(key, row)
}

func (e *entity) nullEntry(key string) Entry {
	return Entry{Key: key, Value: encodeEnvelope(kindNull, time.Time{}, nil), TTL: Jitter(e.NullTTL, e.Jitter)}
}

// Jitter returns d spread uniformly over d·(1 ± j), and at least a millisecond.
func Jitter(d time.Duration, j float64) time.Duration {
	if j > 0 {
		d = time.Duration(float64(d) * (1 + j*(2*rand.Float64()-1)))
	}
	return max(d, time.Millisecond)
}

// Many is the answer to a multi-get.
type Many struct {
	// Items are the rows found, in the order first asked for.
	Items []Item
	// Missing are the canonical ids with no row, in the order first asked for.
	Missing []string
	// Status is Miss when any id went to MySQL, else Bypass when any was loaded without the
	// cache, else Stale when any was served past its soft deadline, else Hit.
	Status Status
}

// Item is one row of a multi-get.
type Item struct {
	ID   string
	Body []byte
}

// GetMany answers several ids of one entity with one Redis round trip and, for the misses, one
// MySQL query. Repeated ids are answered once.
func (r *Reader) GetMany(ctx context.Context, entityName string, rawIDs []string) (Many, error) {
	e := r.entities[entityName]
	if e == nil {
		return Many{}, fmt.Errorf("%w: %q", ErrUnknownEntity, entityName)
	}
	if len(rawIDs) == 0 {
		return Many{}, fmt.Errorf("%w: no id given (want ?id=1&id=2)", ErrInvalidID)
	}
	if len(rawIDs) > r.maxIDs {
		return Many{}, fmt.Errorf("%w: %d ids, at most %d", ErrTooManyIDs, len(rawIDs), r.maxIDs)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	ids := make([]string, 0, len(rawIDs))
	seen := make(map[string]bool, len(rawIDs))
	for _, raw := range rawIDs {
		id, err := e.parse(raw)
		if err != nil {
			return Many{}, err
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.cacheKey(e, id)
	}
	start := time.Now()
	vals, err := r.cache.GetMany(ctx, keys)
	e.m.redisGetMany.Observe(time.Since(start).Seconds())
	if err != nil {
		return r.cacheDownMany(ctx, e, ids, fmt.Errorf("%w: %w", ErrCacheUnavailable, err))
	}
	if r.covered != nil && !r.covered(e.Name) { // after the cache, as in Get
		return r.bypassMany(ctx, e, ids)
	}

	out := Many{Status: Hit}
	results := make(map[string]Result, len(ids))
	var misses []string
	for i, id := range ids {
		if res, ok := e.answer(vals[i]); ok {
			results[id] = res
			if res.Status == Stale {
				r.refresh(e, id, keys[i])
			}
		} else {
			misses = append(misses, id)
		}
	}
	if len(misses) > 0 {
		absent := r.absent(ctx, e, misses)
		maybe := misses[:0:0]
		for i, id := range misses {
			if absent[i] {
				results[id] = Result{Status: Negative}
			} else {
				maybe = append(maybe, id)
			}
		}
		misses = maybe
	}
	if len(misses) > 0 {
		loaded, err := r.loadMisses(ctx, e, misses)
		if errors.Is(err, ErrCacheUnavailable) {
			return r.cacheDownMany(ctx, e, ids, err)
		}
		if err != nil {
			return Many{}, err
		}
		for id, res := range loaded {
			results[id] = res
		}
	}
	for _, id := range ids {
		res := results[id]
		out.Status = worse(out.Status, res.Status)
		if res.Body != nil {
			out.Items = append(out.Items, Item{ID: id, Body: res.Body})
		} else {
			out.Missing = append(out.Missing, id)
		}
	}
	return out, nil
}

// cacheDownMany is cacheDown for a multi-get: all its ids with one query.
func (r *Reader) cacheDownMany(ctx context.Context, e *entity, ids []string, err error) (Many, error) {
	if r.degraded == nil {
		return Many{}, err
	}
	return r.directMany(ctx, e, ids, r.degradedLoad)
}

// worse returns the status a multi-get reports: the one furthest from a plain hit.
func worse(a, b Status) Status {
	if rank(b) > rank(a) {
		return b
	}
	return a
}

func rank(s Status) int {
	switch s {
	case Stale:
		return 1
	case Bypass:
		return 2
	case Miss:
		return 3
	}
	return 0 // Hit, Negative
}
