// Package bloom is the penetration guard: a Bloom filter per entity, kept in Redis as a bitmap
// so that every sidecar shares it, at the hash locations of github.com/bits-and-blooms/bloom/v3.
//
// The invariant: the filter never says "absent" for an id that was added, or that a completed
// rebuild's scan saw. A rebuild fills a second bitmap while the current one keeps answering;
// from the moment it begins, Add writes to both, and the switch is one atomic script. While no
// filter exists the guard is open: it says "maybe".
//
// Redis may lose any key (eviction, a restart without persistence, a failover). A lost meta
// hash reads as "no filter"; a lost bitmap reads as "maybe" for every id, and is never
// recreated by Add with only the ids added since; a rebuild whose bitmap is lost fails rather
// than commit a partial filter. Every change of the meta hash sets a new random version, so a
// sidecar never checks a filter with the sizes of another that happened to have the same
// version (a counter would start again at 1 after FLUSHALL).
package bloom

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	bbloom "github.com/bits-and-blooms/bloom/v3"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/keys"
)

// maxBits is the largest bitmap Redis can hold (a string of 512 MiB).
const maxBits = 1 << 32

// Defaults of a filter's size, which the configuration applies.
const (
	DefaultExpectedItems = 1_000_000
	DefaultFPRate        = 0.01
)

// Params size a filter: M bits and K hash locations per item.
type Params struct {
	M, K uint
}

// Size returns the parameters for expectedItems at false-positive rate fpRate.
func Size(expectedItems uint, fpRate float64) (Params, error) {
	m, k := bbloom.EstimateParameters(expectedItems, fpRate)
	if m > maxBits {
		return Params{}, fmt.Errorf("a filter for %d items at %v needs %d bits, more than Redis holds (%d)", expectedItems, fpRate, m, uint64(maxBits))
	}
	return Params{M: max(m, 64), K: max(k, 1)}, nil
}

// positions returns the bit offsets of id.
func (p Params) positions(id string) []uint64 {
	locs := bbloom.Locations([]byte(id), p.K)
	for i := range locs {
		locs[i] %= uint64(p.M)
	}
	return locs
}

// meta is what the filter of one entity looks like in Redis now.
type meta struct {
	version string // "0": no filter
	cur     string // slot answering checks: "a" or "b"
	curP    Params
	build   string // slot being rebuilt, or ""
	buildP  Params
}

// Filters are the Bloom filters of all entities, in Redis. Safe for concurrent use.
type Filters struct {
	rdb    redis.UniversalClient
	prefix string

	mu    sync.Mutex
	metas map[string]meta // cached; every script checks the version and asks for a reload
}

// New returns the filters kept under key prefix in rdb.
func New(rdb redis.UniversalClient, prefix string) *Filters {
	return &Filters{rdb: rdb, prefix: prefix, metas: make(map[string]meta)}
}

// Keys share one hash tag per entity, so every script's keys are in one Redis Cluster slot.
func (f *Filters) metaKey(entity string) string       { return keys.BloomMeta(f.prefix, entity) }
func (f *Filters) bitsKey(entity, slot string) string { return keys.BloomBits(f.prefix, entity, slot) }

// errStale means the cached meta is older than Redis's; reload and try again.
var errStale = errors.New("bloom: filter changed")

const attempts = 5

func (f *Filters) cached(entity string) (meta, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.metas[entity]
	return m, ok
}

func (f *Filters) load(ctx context.Context, entity string) (meta, error) {
	h, err := f.rdb.HGetAll(ctx, f.metaKey(entity)).Result()
	if err != nil {
		return meta{}, err
	}
	var m meta
	num := func(k string) uint64 { v, _ := strconv.ParseUint(h[k], 10, 64); return v }
	m.version = h["v"]
	if m.version == "" {
		m.version = "0"
	}
	m.cur, m.build = h["cur"], h["build"]
	m.curP = Params{M: uint(num("cur_m")), K: uint(num("cur_k"))}
	m.buildP = Params{M: uint(num("build_m")), K: uint(num("build_k"))}
	f.mu.Lock()
	f.metas[entity] = m
	f.mu.Unlock()
	return m, nil
}

// current returns the cached meta, loading it the first time or after a stale answer.
func (f *Filters) current(ctx context.Context, entity string, reload bool) (meta, error) {
	if m, ok := f.cached(entity); ok && !reload {
		return m, nil
	}
	return f.load(ctx, entity)
}

// check: KEYS meta, bits; ARGV version, positions... → -1 stale, 1 maybe, 0 absent. A bitmap
// that is gone (evicted, lost) answers "maybe".
const checkScript = `
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then return -1 end
local cur = redis.call('HGET', KEYS[1], 'cur')
if v == '0' or not cur or cur == '' then return 1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 1 end
for i = 2, #ARGV do
  if redis.call('GETBIT', KEYS[2], ARGV[i]) == 0 then return 0 end
end
return 1`

// MayContainMany reports, for each of ids in one round trip, whether it may be in entity's table:
// false only when the filter is sure it is not. With no filter built every answer is true.
func (f *Filters) MayContainMany(ctx context.Context, entity string, ids []string) ([]bool, error) {
	out := make([]bool, len(ids))
	for i := range out {
		out[i] = true
	}
	reload := false
	for range attempts {
		m, err := f.current(ctx, entity, reload)
		if err != nil {
			return out, err
		}
		if m.version == "0" || m.cur == "" {
			// No filter, as of our cache. Redis may have one now; the script says so.
			m.cur = "a"
		}
		cmds := make([]*redis.Cmd, len(ids))
		_, err = f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				args := []any{m.version}
				if m.curP.M > 0 {
					for _, pos := range m.curP.positions(id) {
						args = append(args, pos)
					}
				}
				cmds[i] = p.Eval(ctx, checkScript, []string{f.metaKey(entity), f.bitsKey(entity, m.cur)}, args...)
			}
			return nil
		})
		if err != nil {
			return out, err
		}
		stale := false
		for i, c := range cmds {
			switch n, _ := c.Int64(); n {
			case -1:
				stale = true
			case 0:
				out[i] = false
			}
		}
		if !stale {
			return out, nil
		}
		for i := range out {
			out[i] = true
		}
		reload = true
	}
	return out, errStale
}

// add: KEYS meta, cur bits, build bits; ARGV version, n cur positions, cur positions...,
// build positions... → -1 stale, 1 done. A bitmap that is gone is not recreated: holding only
// the ids added since, it would call every other id absent.
const addScript = `
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
if n > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  for i = 3, 2 + n do redis.call('SETBIT', KEYS[2], ARGV[i], 1) end
end
if #ARGV > 2 + n and redis.call('EXISTS', KEYS[3]) == 1 then
  for i = 3 + n, #ARGV do redis.call('SETBIT', KEYS[3], ARGV[i], 1) end
end
return 1`

// Add records ids as present, in the current filter and in a rebuild under way. The binlog
// tail calls it for every INSERT before it deletes the key's null marker.
func (f *Filters) Add(ctx context.Context, entity string, ids ...string) error {
	reload := false
	for range attempts {
		m, err := f.current(ctx, entity, reload)
		if err != nil {
			return err
		}
		curSlot, buildSlot := orSlot(m.cur), orSlot(m.build)
		cmds := make([]*redis.Cmd, len(ids))
		_, err = f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				args := []any{m.version, 0}
				n := 0
				if m.cur != "" {
					for _, pos := range m.curP.positions(id) {
						args = append(args, pos)
						n++
					}
				}
				args[1] = n
				if m.build != "" {
					for _, pos := range m.buildP.positions(id) {
						args = append(args, pos)
					}
				}
				cmds[i] = p.Eval(ctx, addScript, []string{f.metaKey(entity), f.bitsKey(entity, curSlot), f.bitsKey(entity, buildSlot)}, args...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		stale := false
		for _, c := range cmds {
			if n, _ := c.Int64(); n == -1 {
				stale = true
			}
		}
		if !stale {
			return nil
		}
		reload = true
	}
	return errStale
}

// orSlot names a slot even when there is none, so that scripts always get their three keys.
func orSlot(s string) string {
	if s == "" {
		return "a"
	}
	return s
}

// begin: KEYS meta, bits a, bits b; ARGV m, k, token, version, now ms → the slot being built.
// The new bitmap is created at its full size, so that its loss can be told from its absence.
const beginScript = `
local cur = redis.call('HGET', KEYS[1], 'cur')
local slot, bits = 'a', KEYS[2]
if cur == 'a' then slot, bits = 'b', KEYS[3] end
redis.call('DEL', bits)
redis.call('SETBIT', bits, tonumber(ARGV[1]) - 1, 0)
redis.call('HSET', KEYS[1], 'build', slot, 'build_m', ARGV[1], 'build_k', ARGV[2], 'build_token', ARGV[3],
  'v', ARGV[4], 'build_beat', ARGV[5])
return slot`

// buildBeat: KEYS meta, build bits; ARGV token, now ms → 1 the build goes on, 0 it was taken
// over, -2 its bitmap is gone. The scan's own bits are not sent until Commit.
const buildBeatScript = `
if redis.call('HGET', KEYS[1], 'build_token') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
redis.call('HSET', KEYS[1], 'build_beat', ARGV[2])
return 1`

// commit: KEYS meta, bits a, bits b, the scan's bits; ARGV token, version, the scan's bytes → 1
// switched, 0 the build was taken over, -2 its bitmap or the scan's bits are gone. The scan's
// bits are ORed into the new bitmap, which holds the ids added since the build began, and
// dropped. Scan bits that Redis lost, or holds only in part, fail the commit: BITOP would read
// what is missing as zeros, and the filter would say "absent" for the scan's ids.
const commitScript = `
local function done(r) redis.call('DEL', KEYS[4]) return r end
if redis.call('HGET', KEYS[1], 'build_token') ~= ARGV[1] then return done(0) end
local old = redis.call('HGET', KEYS[1], 'cur')
local slot = redis.call('HGET', KEYS[1], 'build')
local bits = KEYS[2]
if slot == 'b' then bits = KEYS[3] end
if redis.call('EXISTS', bits) == 0 then return done(-2) end
if redis.call('STRLEN', KEYS[4]) ~= tonumber(ARGV[3]) then return done(-2) end
redis.call('BITOP', 'OR', bits, bits, KEYS[4])
redis.call('HSET', KEYS[1], 'cur', slot,
  'cur_m', redis.call('HGET', KEYS[1], 'build_m'), 'cur_k', redis.call('HGET', KEYS[1], 'build_k'),
  'build', '', 'build_m', '0', 'build_k', '0', 'build_token', '', 'v', ARGV[2])
if old == 'a' and slot == 'b' then redis.call('DEL', KEYS[2]) end
if old == 'b' and slot == 'a' then redis.call('DEL', KEYS[3]) end
return done(1)`

// abort: KEYS meta, bits a, bits b; ARGV token, version → 1 aborted, 0 not ours.
const abortScript = `
if redis.call('HGET', KEYS[1], 'build_token') ~= ARGV[1] then return 0 end
local slot = redis.call('HGET', KEYS[1], 'build')
redis.call('HSET', KEYS[1], 'build', '', 'build_m', '0', 'build_k', '0', 'build_token', '', 'v', ARGV[2])
if slot == 'a' then redis.call('DEL', KEYS[2]) end
if slot == 'b' then redis.call('DEL', KEYS[3]) end
return 1`

// reset: KEYS meta, bits a, bits b. Drops the filter and any rebuild: "maybe" for every id.
const resetScript = `
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1`

// Build is a rebuild under way. The current filter answers until Commit. Its Add and Commit
// may be called from several goroutines.
type Build struct {
	f      *Filters
	entity string
	slot   string
	params Params
	token  string

	// The bits of the scan's ids are set here, in Redis's bit order, and sent once, at Commit:
	// setting a scan's bits one command each cost Redis more than warming its rows did.
	mu   sync.Mutex
	bits []byte
}

// ErrTakenOver means another rebuild began after this one (or the filter was reset); this one
// cannot commit.
var ErrTakenOver = errors.New("bloom: another rebuild of this filter began meanwhile")

// ErrBuildLost means the rebuild's bitmap vanished from Redis (eviction, a restart); committing
// it would lose every id added before.
var ErrBuildLost = errors.New("bloom: the rebuild's bitmap was lost from Redis")

// Begin starts a rebuild sized by params. From now on Add writes to the new bitmap too, so
// ids added during the scan are not lost. A later Begin takes over from an unfinished one.
func (f *Filters) Begin(ctx context.Context, entity string, params Params) (*Build, error) {
	b := &Build{f: f, entity: entity, params: params, token: keys.Token(), bits: make([]byte, (params.M+7)/8)}
	slot, err := f.rdb.Eval(ctx, beginScript, f.allKeys(entity), params.M, params.K, b.token, keys.Token(), time.Now().UnixMilli()).Text()
	if err != nil {
		return nil, err
	}
	b.slot = slot
	f.load(ctx, entity)
	return b, nil
}

func (f *Filters) allKeys(entity string) []string {
	return []string{f.metaKey(entity), f.bitsKey(entity, "a"), f.bitsKey(entity, "b")}
}

// Add sets the bits of ids in the new filter only: the scan's part of the rebuild. They reach
// Redis with Commit. It fails with ErrTakenOver or ErrBuildLost when the rebuild cannot commit
// any more.
func (b *Build) Add(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	b.mu.Lock()
	for _, id := range ids {
		for _, pos := range b.params.positions(id) {
			b.bits[pos>>3] |= 0x80 >> (pos & 7) // Redis numbers a byte's bits from the high one
		}
	}
	b.mu.Unlock()
	n, err := b.f.rdb.Eval(ctx, buildBeatScript, []string{b.f.metaKey(b.entity), b.f.bitsKey(b.entity, b.slot)},
		b.token, time.Now().UnixMilli()).Int64()
	return buildResult(n, err)
}

func buildResult(n int64, err error) error {
	switch {
	case err != nil:
		return err
	case n == 0:
		return ErrTakenOver
	case n == -2:
		return ErrBuildLost
	}
	return nil
}

// Commit makes the new bitmap the filter, atomically, and drops the old one.
func (b *Build) Commit(ctx context.Context) error {
	// The scan's bits go to a key of their own (the build's token in its name, so a build that
	// was taken over cannot write into its successor's), which the commit script merges and
	// drops. The key expires from its first piece on, so an upload cut off, or a process that
	// dies before the commit, leaves nothing behind for longer than a minute; each piece is a
	// round trip of its own, so that a large filter is not one write that must fit in the
	// client's write timeout.
	scan := b.f.bitsKey(b.entity, "scan:"+b.token)
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.upload(ctx, scan); err != nil {
		b.f.rdb.Del(context.WithoutCancel(ctx), scan)
		return err
	}
	n, err := b.f.rdb.Eval(ctx, commitScript, append(b.f.allKeys(b.entity), scan), b.token, keys.Token(), len(b.bits)).Int64()
	if err := buildResult(n, err); err != nil {
		return err
	}
	_, err = b.f.load(ctx, b.entity)
	return err
}

// uploadPiece is the bytes of the scan's bits one command sends: a few milliseconds on a
// slow link, far inside a write timeout.
const uploadPiece = 256 << 10

// upload writes the scan's bits to key, a piece a command; b.mu is held.
func (b *Build) upload(ctx context.Context, key string) error {
	first := b.bits[:min(uploadPiece, len(b.bits))]
	if err := b.f.rdb.Do(ctx, "SET", key, first, "PX", time.Minute.Milliseconds()).Err(); err != nil {
		return err
	}
	for off := len(first); off < len(b.bits); off += uploadPiece {
		// SETRANGE keeps the key's expiry.
		if err := b.f.rdb.Do(ctx, "SETRANGE", key, off, b.bits[off:min(off+uploadPiece, len(b.bits))]).Err(); err != nil {
			return err
		}
	}
	return nil
}

// Abort drops the new bitmap and leaves the current filter as it was. It runs even when ctx
// has ended (an interrupted preload aborts on its way out).
func (b *Build) Abort(ctx context.Context) error {
	err := b.f.rdb.Eval(context.WithoutCancel(ctx), abortScript, b.f.allKeys(b.entity), b.token, keys.Token()).Err()
	b.f.load(context.WithoutCancel(ctx), b.entity)
	return err
}

// Reset drops entity's filter and any rebuild under way: every id is "maybe" until a rebuild
// commits. The binlog tail calls it when the table changed in ways the filter cannot follow
// (TRUNCATE, a table swap, DDL), before it drops the cached keys.
func (f *Filters) Reset(ctx context.Context, entity string) error {
	if err := f.rdb.Eval(ctx, resetScript, f.allKeys(entity)).Err(); err != nil {
		return err
	}
	_, err := f.load(ctx, entity)
	return err
}

// State is whether an entity's filter guards it.
type State string

const (
	Ready    State = "ready"    // a filter answers checks
	Missing  State = "missing"  // none, or its bitmap is lost: every id passes, a rebuild is due
	Building State = "building" // none yet, and a rebuild is under way and alive
)

// staleBuild is how long a rebuild may go without adding ids before it counts as abandoned.
const staleBuild = 30 * time.Second

// State reads whether entity's filter is ready, missing or being rebuilt.
func (f *Filters) State(ctx context.Context, entity string) (State, error) {
	h, err := f.rdb.HGetAll(ctx, f.metaKey(entity)).Result()
	if err != nil {
		return "", err
	}
	if cur := h["cur"]; cur != "" {
		n, err := f.rdb.Exists(ctx, f.bitsKey(entity, cur)).Result()
		if err != nil {
			return "", err
		}
		if n == 1 {
			return Ready, nil
		}
	}
	if h["build"] != "" {
		beat, _ := strconv.ParseInt(h["build_beat"], 10, 64)
		if time.Since(time.UnixMilli(beat)) < staleBuild {
			return Building, nil
		}
	}
	return Missing, nil
}

// Stats describe an entity's current filter.
type Stats struct {
	Exists  bool
	Params  Params
	BitsSet uint64
	// Items is the number of distinct ids the filter holds, estimated from the bits set.
	Items float64
	// FPRate is the false-positive rate at that fill, estimated from the bits set.
	FPRate float64
}

// BitsPerItem is the filter's size per estimated item.
func (s Stats) BitsPerItem() float64 {
	if s.Items == 0 {
		return 0
	}
	return float64(s.Params.M) / s.Items
}

// Stats reads the current filter's size and fill.
func (f *Filters) Stats(ctx context.Context, entity string) (Stats, error) {
	m, err := f.load(ctx, entity)
	if err != nil || m.cur == "" || m.curP.M == 0 {
		return Stats{}, err
	}
	x, err := f.rdb.BitCount(ctx, f.bitsKey(entity, m.cur), nil).Result()
	if err != nil {
		return Stats{}, err
	}
	s := Stats{Exists: true, Params: m.curP, BitsSet: uint64(x)}
	mf, kf := float64(m.curP.M), float64(m.curP.K)
	frac := float64(x) / mf
	if frac < 1 {
		s.Items = -mf / kf * math.Log(1-frac)
	} else {
		s.Items = math.Inf(1)
	}
	s.FPRate = math.Pow(frac, kf)
	return s, nil
}
