// Package readthrough is sidecache's read path: look the entity up in Redis, answer null
// markers as "not found", load misses from MySQL once per key, and fill the cache with jittered
// TTLs so that keys filled together do not expire together.
package readthrough

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/singleflight"
)

// Errors callers branch on.
var (
	ErrNotFound      = errors.New("not found")
	ErrUnknownEntity = errors.New("unknown entity")
	ErrInvalidID     = mysqlsource.ErrInvalidID
	ErrTooManyIDs    = errors.New("too many ids")
	// ErrCacheUnavailable wraps a Redis failure on the way to an answer.
	ErrCacheUnavailable = errors.New("cache unavailable")
	// ErrDBUnavailable wraps a MySQL failure while loading a miss.
	ErrDBUnavailable = errors.New("database unavailable")
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
	// Key validates ids.
	Key mysqlsource.Key
	// TTL and NullTTL are spread by ±Jitter (a fraction in [0, 1)).
	TTL, NullTTL time.Duration
	Jitter       float64
}

// Options configure a Reader. Cache, Source and Entities are required.
type Options struct {
	Cache    Cache
	Source   Source
	Entities []Entity
	// KeyPrefix starts every cache key. Default none.
	KeyPrefix string
	// MaxIDs bounds a multi-get. Default 100.
	MaxIDs int
	// MaxIDLength bounds string ids, in bytes. Default 255.
	MaxIDLength int
	// LoadTimeout bounds a miss: waiting for the flight, the load and the fill. Default 5s.
	// (A hit is one cache call, bounded by the cache client's own timeouts.)
	LoadTimeout time.Duration
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
	maxIDLen int
	timeout  time.Duration
	log      *slog.Logger
	entities map[string]*entity
	flights  singleflight.Group[Result]
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

// New returns a Reader.
func New(opts Options) *Reader {
	r := &Reader{
		cache:    opts.Cache,
		source:   opts.Source,
		prefix:   opts.KeyPrefix,
		maxIDs:   opts.MaxIDs,
		maxIDLen: opts.MaxIDLength,
		timeout:  opts.LoadTimeout,
		log:      opts.Logger,
		entities: make(map[string]*entity, len(opts.Entities)),
	}
	if r.maxIDs <= 0 {
		r.maxIDs = 100
	}
	if r.maxIDLen <= 0 {
		r.maxIDLen = 255
	}
	if r.timeout <= 0 {
		r.timeout = 5 * time.Second
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	m := opts.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	for _, e := range opts.Entities {
		r.entities[e.Name] = &entity{Entity: e, m: m.forEntity(e.Name)}
	}
	return r
}

// CacheKey is the Redis key of an entity's row: prefix{entity:id}. The braces are a Redis
// Cluster hash tag, so the row and anything keyed beside it (its lease) share a slot.
func CacheKey(prefix, entity, id string) string {
	return prefix + "{" + entity + ":" + id + "}"
}

// Get answers one id. When the row does not exist the error is ErrNotFound and the Result still
// says where that answer came from (Negative: a null marker; Miss: MySQL).
func (r *Reader) Get(ctx context.Context, entityName, rawID string) (Result, error) {
	e := r.entities[entityName]
	if e == nil {
		return Result{}, fmt.Errorf("%w: %q", ErrUnknownEntity, entityName)
	}
	id, err := e.Key.Parse(rawID, r.maxIDLen)
	if err != nil {
		return Result{}, err
	}
	key := CacheKey(r.prefix, e.Name, id)
	start := time.Now()
	b, err := r.cache.Get(ctx, key)
	e.m.redisGet.Observe(time.Since(start).Seconds())
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	if res, ok := e.answer(b); ok {
		return res.orNotFound(e.Name, id)
	}
	return r.load(ctx, e, id, key)
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
	return Result{Body: env.body, Status: Hit}, true
}

// orNotFound returns res with ErrNotFound when it has no row.
func (res Result) orNotFound(entity, id string) (Result, error) {
	if res.Body == nil {
		return res, fmt.Errorf("%w: %s %q", ErrNotFound, entity, id)
	}
	return res, nil
}

// load runs one flight per key in this process.
func (r *Reader) load(ctx context.Context, e *entity, id, key string) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, shared, err := r.flights.Do(ctx, key, func(ctx context.Context) (Result, error) {
		// The flight outlives any one caller's cancellation, but not its own bound.
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		// Re-check the cache: a flight for this key may have filled it and ended between our GET
		// and the start of this flight, and loading again would be a second query for one fill.
		b, err := r.cache.Get(ctx, key)
		if err != nil {
			return Result{}, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
		}
		if res, ok := e.answer(b); ok {
			return res.orNotFound(e.Name, id)
		}
		start := time.Now()
		row, found, err := r.source.Load(ctx, e.Name, id)
		e.m.mysqlLoad.Observe(time.Since(start).Seconds())
		e.m.dbQueries.Inc()
		if err != nil {
			return Result{}, fmt.Errorf("%w: %w", ErrDBUnavailable, err)
		}
		if !found {
			r.fill(ctx, e, []Entry{e.nullEntry(key)})
			return Result{Status: Miss}.orNotFound(e.Name, id)
		}
		r.fill(ctx, e, []Entry{e.valueEntry(key, row)})
		return Result{Body: row, Status: Miss}, nil
	})
	if shared {
		e.m.sharedLoads.Inc()
	}
	return res, err
}

func (e *entity) valueEntry(key string, row []byte) Entry {
	return Entry{Key: key, Value: encodeEnvelope(kindValue, time.Time{}, row), TTL: Jitter(e.TTL, e.Jitter)}
}

func (e *entity) nullEntry(key string) Entry {
	return Entry{Key: key, Value: encodeEnvelope(kindNull, time.Time{}, nil), TTL: Jitter(e.NullTTL, e.Jitter)}
}

// fill writes loaded rows and null markers. A failed fill is logged and counted, not returned:
// the caller already has the right answer from MySQL.
func (r *Reader) fill(ctx context.Context, e *entity, entries []Entry) {
	start := time.Now()
	err := r.cache.SetMany(ctx, entries)
	e.m.redisSet.Observe(time.Since(start).Seconds())
	if err != nil {
		e.m.fillErrors.Add(float64(len(entries)))
		r.log.Warn("cache fill failed", "entity", e.Name, "keys", len(entries), "err", err)
		return
	}
	for _, en := range entries {
		if en.Value[1] == kindNull {
			e.m.nullMarkers.Inc()
		} else {
			e.m.fills.Inc()
		}
	}
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
	// Status is Hit when every id was answered by the cache, Miss when any went to MySQL.
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
		id, err := e.Key.Parse(raw, r.maxIDLen)
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
		keys[i] = CacheKey(r.prefix, e.Name, id)
	}
	start := time.Now()
	vals, err := r.cache.GetMany(ctx, keys)
	e.m.redisGetMany.Observe(time.Since(start).Seconds())
	if err != nil {
		return Many{}, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}

	found := make(map[string][]byte, len(ids))
	var misses []string
	for i, id := range ids {
		res, ok := e.answer(vals[i])
		switch {
		case !ok:
			misses = append(misses, id)
		case res.Body != nil:
			found[id] = res.Body
		}
	}
	out := Many{Status: Hit}
	if len(misses) > 0 {
		out.Status = Miss
		start := time.Now()
		rows, err := r.source.LoadMany(ctx, e.Name, misses)
		e.m.mysqlLoadMany.Observe(time.Since(start).Seconds())
		e.m.dbQueries.Inc()
		if err != nil {
			return Many{}, fmt.Errorf("%w: %w", ErrDBUnavailable, err)
		}
		entries := make([]Entry, 0, len(misses))
		for _, id := range misses {
			key := CacheKey(r.prefix, e.Name, id)
			if row, ok := rows[id]; ok {
				found[id] = row
				entries = append(entries, e.valueEntry(key, row))
			} else {
				entries = append(entries, e.nullEntry(key))
			}
		}
		r.fill(ctx, e, entries)
	}
	for _, id := range ids {
		if row, ok := found[id]; ok {
			out.Items = append(out.Items, Item{ID: id, Body: row})
		} else {
			out.Missing = append(out.Missing, id)
		}
	}
	return out, nil
}
