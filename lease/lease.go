// Package lease makes "one load per key" hold across processes, on Redis. A loader takes the
// lease for a key with an owner token (SET NX PX), renews it while the load runs, and writes the
// value only if it still holds the lease (compare-and-set in one script). Deleting a key also
// deletes its lease (invalidation does both), so a loader that read the row before a write
// cannot put the old value back after the write's invalidation: its fill finds the lease gone,
// or someone else's, and does nothing.
//
// A value key and its lease key (keys.Lease) share a Redis Cluster hash slot when the value key
// carries a hash tag ({...}), which every sidecache key does.
package lease

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/keys"
)

// The scripts run with EVAL rather than EVALSHA: Redis caches them by hash either way, and EVAL
// cannot fail with NOSCRIPT after a Redis restart or failover, which in a pipeline could not be
// retried.
const (
	// getOrAcquire: KEYS value, lease; ARGV token, lease ms.
	// Returns {1, value} when there is a value, {2} when this caller now holds the lease, {0}
	// when another holds it. Running it twice with one token is harmless: the client retries a
	// pipeline after a timeout, and the retry must not find its own lease "held by another".
	getOrAcquire = `
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
local owner = redis.call('GET', KEYS[2])
if owner == ARGV[1] then return {2} end
if not owner and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}`

	// acquire: KEYS lease; ARGV token, lease ms. 1 when the caller holds the lease (also on a
	// retry with the same token), 0 otherwise.
	acquire = `
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return 1 end
if not owner and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0`

	// acquireMissing: KEYS value, lease; ARGV token, lease ms. 1 when the key has a value, 2 when
	// the caller now holds the lease (also on a retry), 0 when another holds it.
	acquireMissing = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local owner = redis.call('GET', KEYS[2])
if owner == ARGV[1] then return 2 end
if not owner and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0`

	// dropIfSame: KEYS value; ARGV bytes. Deletes the value only if it still holds these bytes,
	// and never touches the lease.
	dropIfSame = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

	// fillIfHeld: KEYS value, lease; ARGV token, value, ttl ms. Sets the value and drops the
	// lease only while the caller holds it; returns 1 if it did.
	fillIfHeld = `
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0`

	// acquireMissingMany is acquireMissing for many keys: KEYS value, lease, value, lease, ...;
	// ARGV token, lease ms. Returns acquireMissing's answer for each pair. It reads a lease's
	// owner only when it could not take it: a warm finds most leases free.
	acquireMissingMany = `
local out = {}
for i = 1, #KEYS, 2 do
  local r = 0
  if redis.call('EXISTS', KEYS[i]) == 1 then r = 1
  elseif redis.call('SET', KEYS[i+1], ARGV[1], 'NX', 'PX', ARGV[2]) then r = 2
  elseif redis.call('GET', KEYS[i+1]) == ARGV[1] then r = 2 end
  out[#out+1] = r
end
return out`

	// fillIfHeldMany is fillIfHeld for many keys: KEYS value, lease, value, lease, ...; ARGV
	// token, value, ttl ms for each pair in turn. Returns fillIfHeld's answer for each pair. It
	// reads the owners with one MGET and drops the leases with one DEL: each command a script
	// calls costs Redis more than the command itself.
	fillIfHeldMany = `
local n = #KEYS / 2
local leases = {}
for j = 1, n do leases[j] = KEYS[2 * j] end
local owners = redis.call('MGET', unpack(leases))
local held, out = {}, {}
for j = 1, n do
  local a = 3 * (j - 1)
  if owners[j] == ARGV[a + 1] then
    redis.call('SET', KEYS[2 * j - 1], ARGV[a + 2], 'PX', ARGV[a + 3])
    held[#held + 1] = leases[j]
    out[j] = 1
  else
    out[j] = 0
  end
end
if #held > 0 then redis.call('DEL', unpack(held)) end
return out`

	// release: KEYS lease; ARGV token. Deletes the lease only for its owner.
	release = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

	// renew: KEYS lease; ARGV token, lease ms. Extends the lease only for its owner.
	renew = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`
)

// Leases takes and keeps Redis leases. It is safe for concurrent use.
type Leases struct {
	rdb redis.UniversalClient
	ttl time.Duration
	// oneNode: every key lives on one Redis server (not Cluster), so one script may take many
	// keys. Redis spends most of a one-key EVAL on starting the script rather than on its few
	// commands, so AcquireMissing and Fill run one script per chunk of keys there; in a Cluster,
	// where a script's keys must share a hash slot and each of ours has its own, one per key.
	oneNode bool
}

// chunk is the most keys one many-key script takes: about a millisecond of Redis's time, so
// that other clients' commands are not held up for longer.
const chunk = 200

// DefaultTTL is the lease period when none is given.
const DefaultTTL = 3 * time.Second

// New returns Leases on rdb with lease period ttl (0: DefaultTTL). A holder renews every
// ttl/3; a holder that dies frees the key within ttl.
func New(rdb redis.UniversalClient, ttl time.Duration) *Leases {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	_, oneNode := rdb.(*redis.Client) // a standalone server, or the master Sentinels name
	return &Leases{rdb: rdb, ttl: ttl, oneNode: oneNode}
}

// TTL returns the lease period.
func (l *Leases) TTL() time.Duration { return l.ttl }

// ProbeState is what a probe found.
type ProbeState int

const (
	Contended ProbeState = iota // another caller holds the lease
	Found                       // the key has a value
	Acquired                    // the caller now holds the lease
)

// Probe is the answer for one key.
type Probe struct {
	State ProbeState
	Value []byte // with Found
	Lease *Lease // with Acquired
}

// Lease is a held lease on one key.
type Lease struct {
	Key   string // the value key
	token string
}

// Probe reads each key's value or, where there is none, tries to take its lease, in one round
// trip. A caller that gets Acquired must Fill or Release every lease it got.
func (l *Leases) Probe(ctx context.Context, values []string) ([]Probe, error) {
	ms := strconv.FormatInt(l.ttl.Milliseconds(), 10)
	tokens := make([]string, len(values))
	cmds := make([]*redis.Cmd, len(values))
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range values {
			tokens[i] = keys.Token()
			cmds[i] = p.Eval(ctx, getOrAcquire, []string{k, keys.Lease(k)}, tokens[i], ms)
		}
		return nil
	})
	fail := func(err error) ([]Probe, error) {
		// Some scripts may have run and taken leases; give back any we hold (release only
		// deletes a lease whose token is ours).
		ls := make([]*Lease, len(values))
		for i, k := range values {
			ls[i] = &Lease{Key: k, token: tokens[i]}
		}
		l.Release(ls)
		return nil, err
	}
	if err != nil {
		return fail(err)
	}
	out := make([]Probe, len(values))
	for i, cmd := range cmds {
		res, err := cmd.Slice()
		if err != nil || len(res) == 0 {
			return fail(fmt.Errorf("lease probe of %s: %v %w", values[i], res, err))
		}
		switch code, _ := res[0].(int64); code {
		case 1:
			s, _ := res[1].(string)
			out[i] = Probe{State: Found, Value: []byte(s)}
		case 2:
			out[i] = Probe{State: Acquired, Lease: &Lease{Key: values[i], token: tokens[i]}}
		default:
			out[i] = Probe{State: Contended}
		}
	}
	return out, nil
}

// Acquire tries to take the lease on key whether or not it has a value; nil means another
// caller holds it. Background refreshes of values that are still there use it.
func (l *Leases) Acquire(ctx context.Context, key string) (*Lease, error) {
	lease := &Lease{Key: key, token: keys.Token()}
	n, err := l.rdb.Eval(ctx, acquire, []string{keys.Lease(key)}, lease.token, l.ttl.Milliseconds()).Int64()
	if err != nil {
		l.Release([]*Lease{lease})
		return nil, err
	}
	if n != 1 {
		return nil, nil
	}
	return lease, nil
}

// AcquireMissing takes the leases of those keys that have no value and no holder, in one round
// trip, without reading values: bulk warming uses it. leases[i] is nil where keys[i] has a value
// or another holder.
func (l *Leases) AcquireMissing(ctx context.Context, values []string) (leases []*Lease, err error) {
	ms := l.ttl.Milliseconds()
	all := make([]*Lease, len(values))
	var cmds []*redis.Cmd
	_, err = l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if !l.oneNode {
			for i, k := range values {
				all[i] = &Lease{Key: k, token: keys.Token()}
				cmds = append(cmds, p.Eval(ctx, acquireMissing, []string{k, keys.Lease(k)}, all[i].token, ms))
			}
			return nil
		}
		for from := 0; from < len(values); from += chunk {
			part := values[from:min(from+chunk, len(values))]
			token := keys.Token() // one owner: the leases of a chunk are taken and filled together
			ks := make([]string, 0, 2*len(part))
			for i, k := range part {
				all[from+i] = &Lease{Key: k, token: token}
				ks = append(ks, k, keys.Lease(k))
			}
			cmds = append(cmds, p.Eval(ctx, acquireMissingMany, ks, token, ms))
		}
		return nil
	})
	var codes []int64
	if err == nil {
		codes, err = results(cmds, len(values))
	}
	if err != nil {
		l.Release(all)
		return nil, err
	}
	leases = make([]*Lease, len(values))
	for i, n := range codes {
		if n == 2 {
			leases[i] = all[i]
		}
	}
	return leases, nil
}

// results reads the answers of one-key scripts, or of many-key scripts that answer one integer
// per key, as n integers in order.
func results(cmds []*redis.Cmd, n int) ([]int64, error) {
	out := make([]int64, 0, n)
	for _, c := range cmds {
		if v, err := c.Int64(); err == nil {
			out = append(out, v)
			continue
		}
		vs, err := c.Int64Slice()
		if err != nil {
			return nil, err
		}
		out = append(out, vs...)
	}
	if len(out) != n {
		return nil, fmt.Errorf("lease: %d answers for %d keys", len(out), n)
	}
	return out, nil
}

// DropIfSame deletes key only if it still holds value, leaving any lease alone. It clears a
// value this build cannot read without disturbing a load in flight.
func (l *Leases) DropIfSame(ctx context.Context, key string, value []byte) error {
	return l.rdb.Eval(ctx, dropIfSame, []string{key}, value).Err()
}

// Fill is one value to write under a held lease.
type Fill struct {
	Lease *Lease
	Value []byte
	TTL   time.Duration
}

// Fill writes each value only if its lease is still held, and drops the lease. held[i] says
// whether fills[i] landed; a fill that did not land lost its lease, usually to an invalidation.
// It runs on its own deadline of one lease period, whatever ctx's cancellation: a client that
// hangs up after the load must not leave the key leased. If it fails, the leases are released.
func (l *Leases) Fill(ctx context.Context, fills []Fill) (held []bool, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.ttl)
	defer cancel()
	var cmds []*redis.Cmd
	_, err = l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if !l.oneNode || len(fills) == 1 {
			for _, f := range fills {
				cmds = append(cmds, p.Eval(ctx, fillIfHeld, []string{f.Lease.Key, keys.Lease(f.Lease.Key)},
					f.Lease.token, f.Value, f.TTL.Milliseconds()))
			}
			return nil
		}
		for from := 0; from < len(fills); from += chunk {
			part := fills[from:min(from+chunk, len(fills))]
			ks := make([]string, 0, 2*len(part))
			args := make([]any, 0, 3*len(part))
			for _, f := range part {
				ks = append(ks, f.Lease.Key, keys.Lease(f.Lease.Key))
				args = append(args, f.Lease.token, f.Value, f.TTL.Milliseconds())
			}
			cmds = append(cmds, p.Eval(ctx, fillIfHeldMany, ks, args...))
		}
		return nil
	})
	var codes []int64
	if err == nil {
		codes, err = results(cmds, len(fills))
	}
	if err != nil {
		ls := make([]*Lease, len(fills))
		for i, f := range fills {
			ls[i] = f.Lease
		}
		l.Release(ls)
		return nil, err
	}
	held = make([]bool, len(fills))
	for i, n := range codes {
		held[i] = n == 1
	}
	return held, nil
}

// Release gives up leases without writing anything (after a failed load). It uses its own
// short deadline, so it runs even when the caller's context has ended.
func (l *Leases) Release(leases []*Lease) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.ttl)
	defer cancel()
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, ls := range leases {
			p.Eval(ctx, release, []string{keys.Lease(ls.Key)}, ls.token)
		}
		return nil
	})
	return err
}

// Keeper renews held leases in the background until stopped.
type Keeper struct {
	done     chan struct{}
	lost     chan struct{}
	lostOnce sync.Once
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// Keep renews leases every ttl/3 until Stop. A load that outlives the lease period keeps its
// lease this way, and a crashed holder's lease lapses within ttl.
func (l *Leases) Keep(leases []*Lease) *Keeper {
	k := &Keeper{done: make(chan struct{}), lost: make(chan struct{})}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		tick := time.NewTicker(l.ttl / 3)
		defer tick.Stop()
		ms := l.ttl.Milliseconds()
		for {
			select {
			case <-k.done:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
			cmds := make([]*redis.Cmd, len(leases))
			_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, ls := range leases {
					cmds[i] = p.Eval(ctx, renew, []string{keys.Lease(ls.Key)}, ls.token, ms)
				}
				return nil
			})
			cancel()
			lost := err != nil
			for _, c := range cmds {
				if n, _ := c.Int64(); n != 1 {
					lost = true
				}
			}
			if lost {
				// Once a lease is gone, renewing the others cannot save the fill's purpose.
				k.lostOnce.Do(func() { close(k.lost) })
				return
			}
		}
	}()
	return k
}

// Lost is closed once a renewal finds a lease gone or taken, or cannot reach Redis.
func (k *Keeper) Lost() <-chan struct{} { return k.lost }

// Stop ends the renewals, waits for the renewer to exit, and reports whether every lease was
// kept throughout. It may be called more than once.
func (k *Keeper) Stop() (kept bool) {
	k.stopOnce.Do(func() { close(k.done) })
	k.wg.Wait()
	select {
	case <-k.lost:
		return false
	default:
		return true
	}
}
