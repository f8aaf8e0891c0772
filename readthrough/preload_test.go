package readthrough_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/lease"
	"github.com/sidecache/sidecache/readthrough"
)

const tableRows = 100_000

// TestPreload100k runs the penetration guard and the preload against a 100k-row table.
func TestPreload100k(t *testing.T) {
	g := newRig(t, false)
	g.exec("DELETE FROM items")
	g.exec(fmt.Sprintf("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d", tableRows))
	params, err := bloom.Size(110_000, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	g.entity.Bloom, g.entity.BloomParams = true, params
	g.entity.TTL, g.entity.Jitter = 60*time.Second, 0.2
	ctx := context.Background()
	leases := lease.New(g.rc, 3*time.Second)
	newFilters := func() *bloom.Filters { return bloom.New(g.rc, g.prefix) } // one per "sidecar process"
	filters := newFilters()
	r := g.reader(3*time.Second, func(o *readthrough.Options) { o.Filters = filters })

	// checkAll asserts that a fresh sidecar's filter holds every id in [1, n].
	checkAll := func(t *testing.T, n int) {
		t.Helper()
		f := newFilters()
		for from := 1; from <= n; from += 5000 {
			ids := make([]string, 0, 5000)
			for i := from; i < from+5000 && i <= n; i++ {
				ids = append(ids, strconv.Itoa(i))
			}
			may, err := f.MayContainMany(ctx, "items", ids)
			if err != nil {
				t.Fatal(err)
			}
			for i, m := range may {
				if !m {
					t.Fatalf("false negative: id %s exists but the filter says absent", ids[i])
				}
			}
		}
	}

	var nextID atomic.Int64
	nextID.Store(tableRows)
	// insert adds a row and, as the binlog tail will, tells the filter through another sidecar's
	// Filters.
	insert := func(t *testing.T, f *bloom.Filters) {
		id := nextID.Add(1)
		g.exec("INSERT INTO items VALUES (?, ?)", id, fmt.Sprintf("item %d", id))
		if err := f.Add(ctx, "items", strconv.FormatInt(id, 10)); err != nil {
			t.Error(err)
		}
	}

	t.Run("no false negatives", func(t *testing.T) {
		// Rows are inserted while the rebuild scans: ten after each batch the scan finishes,
		// so they land ahead of the scan and behind it, all through the rebuild.
		batches := make(chan struct{}, 1000)
		var during, calls atomic.Int32
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			other := newFilters()
			for range batches {
				for range 10 {
					insert(t, other)
					during.Add(1)
				}
			}
		}()
		st, err := r.Preload(ctx, readthrough.PreloadOptions{Entity: "items", Scanner: g.src, Leases: leases,
			Progress: func(p readthrough.PreloadStats) {
				calls.Add(1)
				select {
				case batches <- struct{}{}:
				default:
				}
			}})
		close(batches)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		f := st.Filter
		t.Logf("preload: %d rows in %v (%.0f rows/s), %d warmed; filter %d bits, %d hashes, ~%.0f items, %.1f bits/item, est. fp %.4f; %d rows inserted during the rebuild, %d batches",
			st.Rows, st.Elapsed.Round(time.Millisecond), st.RowsPerSecond(), st.Warmed, f.Params.M, f.Params.K, f.Items, f.BitsPerItem(), f.FPRate, during.Load(), calls.Load())
		if during.Load() == 0 {
			t.Fatal("no row was inserted during the rebuild; the test did not exercise it")
		}
		checkAll(t, int(nextID.Load()))

		// A restarted sidecar (nothing cached) adds new rows; yet another one checks them.
		restarted := newFilters()
		for range 300 {
			insert(t, restarted)
		}
		checkAll(t, int(nextID.Load()))
	})

	t.Run("penetration", func(t *testing.T) {
		const n = 100_000
		rng := rand.New(rand.NewPCG(7, 7))
		absent := make([]string, n)
		seen := make(map[uint64]bool, n)
		for i := range absent { // above every id the table has, within the INT key's range
			v := 10_000_000 + rng.Uint64N(2_000_000_000)
			for seen[v] {
				v = 10_000_000 + rng.Uint64N(2_000_000_000)
			}
			seen[v] = true
			absent[i] = strconv.FormatUint(v, 10)
		}
		// The filter holds more than the 100k rows the table began with: ten rows per scan batch
		// of the rebuild, and the scan keeps paging as long as it finds the inserter's newest rows,
		// so how many is a race (1k to 18k in practice), and 300 more. Its false-positive rate is
		// therefore not the configured 0.01 but what its size and fill make it, read here.
		fs, err := filters.Stats(ctx, "items")
		if err != nil {
			t.Fatal(err)
		}
		if !fs.Exists || fs.Params != params {
			t.Fatalf("filter %+v, want one sized %+v", fs, params)
		}
		mf, kf := float64(fs.Params.M), float64(fs.Params.K)
		// Every id in [1, items] is in the table and was added, and nothing else was: the bits
		// set must be what that many items set. A bit is unset after k·items random positions
		// with probability exp(-k·items/m); the bits set are a sum of negatively associated
		// indicators, so their spread is at most the binomial one, and 6 standard deviations is
		// a bound a correct filter stays within with overwhelming probability (Chernoff).
		items := float64(nextID.Load())
		q := -math.Expm1(-kf * items / mf)
		wantBits, bitsSD := mf*q, math.Sqrt(mf*q*(1-q))
		if d := math.Abs(float64(fs.BitsSet) - wantBits); d > 6*bitsSD {
			t.Errorf("filter has %d bits set, want %.0f ± %.0f (6 sd) for %.0f items in %d bits with %d hashes",
				fs.BitsSet, wantBits, 6*bitsSD, items, fs.Params.M, fs.Params.K)
		}
		// An absent id passes when all k of its bits are set: p = (bits set / m)^k.
		p := math.Pow(float64(fs.BitsSet)/mf, kf)
		before := g.queries()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
					if _, err := r.Get(ctx, "items", absent[i]); !errors.Is(err, readthrough.ErrNotFound) {
						t.Errorf("absent id %s: %v, want not found", absent[i], err)
						return
					}
				}
			}()
		}
		wg.Wait()
		queries := g.queries() - before
		// Each of the n distinct random absent ids passes the filter independently with
		// probability p and costs one query if it does, so queries is Binomial(n, p). The bound
		// is the mean plus 6 standard deviations: by the Chernoff bound
		// P(X ≥ (1+δ)μ) ≤ exp(-δ²μ/(2+δ)), a correct build exceeds it with probability about
		// 1e-7 at this size (μ ≈ 700–1400, δ = 6σ/μ ≈ 0.16–0.23). The lower bound, symmetric,
		// catches a count that misses queries. The sample of absent ids is the same every run,
		// and it sits 1.2–1.8 sd above the mean at every fill, in simulation and in runs (about
		// 0.3 sd of that is the double hashing of bloom/v3 letting through ~1% more than fill^k).
		mean, sd := n*p, math.Sqrt(n*p*(1-p))
		lo, hi := mean-6*sd, mean+6*sd
		t.Logf("penetration: %d random absent ids, %d reached MariaDB (measured false-positive rate %.4f); filter %d bits, %d hashes, %d set, %.0f items: expected rate %.4f, %.0f queries, bounds [%.0f, %.0f] (6 sd; configured rate 0.01 at 110k items)",
			n, queries, float64(queries)/n, fs.Params.M, fs.Params.K, fs.BitsSet, items, p, mean, lo, hi)
		if float64(queries) > hi || float64(queries) < lo {
			t.Errorf("%d of %d absent ids reached MariaDB, want %.0f ± %.0f (6 sd of Binomial(%d, %.4f), p from the filter's fill)",
				queries, n, mean, 6*sd, n, p)
		}

		// The ids that got through are now null markers: asking again costs no query.
		may, err := filters.MayContainMany(ctx, "items", absent)
		if err != nil {
			t.Fatal(err)
		}
		var passed []string
		for i, m := range may {
			if m {
				passed = append(passed, absent[i])
			}
		}
		if len(passed) == 0 {
			t.Fatal("no absent id got past the filter; the null-marker check has nothing to test")
		}
		before = g.queries()
		for _, id := range passed {
			res, err := r.Get(ctx, "items", id)
			if !errors.Is(err, readthrough.ErrNotFound) || res.Status != readthrough.Negative {
				t.Fatalf("repeat of %s: %+v %v, want a negative answer", id, res, err)
			}
		}
		if q := g.queries() - before; q != 0 {
			t.Errorf("repeating %d absent ids made %d queries, want 0 (null markers)", len(passed), q)
		}
	})

	t.Run("avalanche", func(t *testing.T) {
		const ttl = 60 * time.Second
		// preload fills every row under prefix and returns when the fills began and ended.
		preload := func(t *testing.T, prefix string, jitter float64) (time.Time, time.Time) {
			e := g.entity
			e.TTL, e.Jitter, e.Bloom = ttl, jitter, false
			rr := readthrough.New(readthrough.Options{Cache: readthrough.NewRedisCache(g.rc), Source: g.src,
				Entities: []readthrough.Entity{e}, KeyPrefix: prefix})
			start := time.Now()
			if _, err := rr.Preload(ctx, readthrough.PreloadOptions{Entity: "items", Scanner: g.src, Leases: leases}); err != nil {
				t.Fatal(err)
			}
			return start, time.Now()
		}
		// expiries reads every key's expiry time from Redis (now + PTTL).
		expiries := func(t *testing.T, prefix string) []time.Time {
			t.Helper()
			var out []time.Time
			for from := 1; from <= tableRows; from += 5000 {
				pipe := g.rc.Pipeline()
				var cmds []*redis.DurationCmd
				for i := from; i < from+5000 && i <= tableRows; i++ {
					cmds = append(cmds, pipe.PTTL(ctx, keys.Value(prefix, "items", strconv.Itoa(i))))
				}
				now := time.Now()
				if _, err := pipe.Exec(ctx); err != nil {
					t.Fatal(err)
				}
				for _, c := range cmds {
					out = append(out, now.Add(c.Val()))
				}
			}
			return out
		}
		peak := func(ts []time.Time) int {
			perSecond := map[int64]int{}
			most := 0
			for _, x := range ts {
				perSecond[x.Unix()]++
				most = max(most, perSecond[x.Unix()])
			}
			return most
		}
		start, end := preload(t, g.prefix+"j:", 0.2)
		jittered := expiries(t, g.prefix+"j:")
		// Every key was filled between start and end with a TTL in 60s ± 20%.
		lo, hi := start.Add(48*time.Second-time.Second), end.Add(72*time.Second+time.Second)
		first, last := jittered[0], jittered[0]
		for _, x := range jittered {
			if x.Before(lo) || x.After(hi) {
				t.Fatalf("a key expires at %v, outside [%v, %v]", x, lo, hi)
			}
			first, last = minTime(first, x), maxTime(last, x)
		}
		nStart, nEnd := preload(t, g.prefix+"n:", 0)
		plain := expiries(t, g.prefix+"n:")
		withJitter, without := peak(jittered), peak(plain)
		t.Logf("avalanche: %d keys preloaded with ttl 60s: at most %d expire in one second with ttl_jitter 0.2 (spread over %v; preload took %v), %d without jitter (preload took %v)",
			tableRows, withJitter, last.Sub(first).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond), without, nEnd.Sub(nStart).Round(time.Millisecond))
		if spread := last.Sub(first); spread < 20*time.Second {
			t.Errorf("expiries spread over %v only; the jitter window is 24s", spread)
		}
		if withJitter*3 > without {
			t.Errorf("jitter spread the peak only from %d to %d keys per second", without, withJitter)
		}
	})
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
