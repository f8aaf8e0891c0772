package readthrough_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/readthrough"
)

// fakeSource serves rows from a map and counts loads.
type fakeSource struct {
	mu    sync.Mutex
	rows  map[string]string
	err   error
	loads atomic.Int32
}

func (f *fakeSource) Load(ctx context.Context, entity, id string) ([]byte, bool, error) {
	f.loads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, false, f.err
	}
	row, ok := f.rows[id]
	return []byte(row), ok, nil
}

func (f *fakeSource) LoadMany(ctx context.Context, entity string, ids []string) (map[string][]byte, error) {
	f.loads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	out := make(map[string][]byte)
	for _, id := range ids {
		if row, ok := f.rows[id]; ok {
			out[id] = []byte(row)
		}
	}
	return out, nil
}

// noCache fails the test if the read path touches the cache.
type noCache struct{ t *testing.T }

func (c noCache) Get(context.Context, string) ([]byte, error) {
	c.t.Error("cache Get called")
	return nil, nil
}
func (c noCache) GetMany(context.Context, []string) ([][]byte, error) {
	c.t.Error("cache GetMany called")
	return nil, nil
}
func (c noCache) SetMany(context.Context, []readthrough.Entry) error {
	c.t.Error("cache SetMany called")
	return nil
}

var items = readthrough.Entity{
	Name: "items", ParseID: func(raw string) (string, error) {
		return mysqlsource.Key{{Kind: mysqlsource.KeyUint, Bits: 64}}.Parse(raw, 255)
	},
	TTL: time.Minute, NullTTL: 10 * time.Second, Jitter: 0.2,
}

func newReader(t *testing.T) (*readthrough.Reader, *fakeSource, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rc.Close() })
	src := &fakeSource{rows: map[string]string{"1": `{"id":1}`, "2": `{"id":2}`}}
	r := readthrough.New(readthrough.Options{
		Cache: readthrough.NewRedisCache(rc), Source: src, Entities: []readthrough.Entity{items}, KeyPrefix: "t:", MaxIDs: 5,
	})
	return r, src, mr
}

func TestMissThenHit(t *testing.T) {
	r, src, mr := newReader(t)
	ctx := context.Background()
	for i, want := range []readthrough.Status{readthrough.Miss, readthrough.Hit} {
		res, err := r.Get(ctx, "items", "1")
		if err != nil || res.Status != want || string(res.Body) != `{"id":1}` {
			t.Fatalf("request %d: %+v %v, want %s with the row", i, res, err, want)
		}
	}
	if n := src.loads.Load(); n != 1 {
		t.Errorf("loads = %d, want 1", n)
	}
	ttl := mr.TTL("t:{items:1}")
	if lo, hi := 48*time.Second, 72*time.Second; ttl < lo || ttl > hi {
		t.Errorf("TTL %v outside ttl ± jitter [%v, %v]", ttl, lo, hi)
	}
}

func TestNotFoundCachesNullMarker(t *testing.T) {
	r, src, mr := newReader(t)
	ctx := context.Background()
	res, err := r.Get(ctx, "items", "9")
	if !errors.Is(err, readthrough.ErrNotFound) || res.Status != readthrough.Miss {
		t.Fatalf("first: %+v %v, want ErrNotFound from a miss", res, err)
	}
	res, err = r.Get(ctx, "items", "9")
	if !errors.Is(err, readthrough.ErrNotFound) || res.Status != readthrough.Negative {
		t.Fatalf("second: %+v %v, want ErrNotFound from a null marker", res, err)
	}
	if n := src.loads.Load(); n != 1 {
		t.Errorf("loads = %d, want 1", n)
	}
	if ttl := mr.TTL("t:{items:9}"); ttl < 8*time.Second || ttl > 12*time.Second {
		t.Errorf("null marker TTL %v outside null_ttl ± jitter", ttl)
	}
}

func TestConcurrentMissesLoadOnce(t *testing.T) {
	r, src, _ := newReader(t)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res, err := r.Get(context.Background(), "items", "2"); err != nil || string(res.Body) != `{"id":2}` {
				t.Errorf("got %+v %v", res, err)
			}
		}()
	}
	wg.Wait()
	// The flight re-checks the cache, so even a caller that missed before the fill and joined
	// after the flight ended finds the value instead of loading again.
	if n := src.loads.Load(); n != 1 {
		t.Errorf("loads = %d, want 1", n)
	}
}

func TestBadIDsNeverReachCacheOrSource(t *testing.T) {
	src := &fakeSource{}
	r := readthrough.New(readthrough.Options{Cache: noCache{t}, Source: src, Entities: []readthrough.Entity{items}, MaxIDs: 3})
	ctx := context.Background()
	for _, id := range []string{"abc", "-1", "1.5", "", "99999999999999999999999"} {
		if _, err := r.Get(ctx, "items", id); !errors.Is(err, readthrough.ErrInvalidID) {
			t.Errorf("Get(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	if _, err := r.Get(ctx, "nope", "1"); !errors.Is(err, readthrough.ErrUnknownEntity) {
		t.Errorf("unknown entity: %v", err)
	}
	if _, err := r.GetMany(ctx, "items", []string{"1", "x"}); !errors.Is(err, readthrough.ErrInvalidID) {
		t.Errorf("GetMany with a bad id: %v", err)
	}
	if _, err := r.GetMany(ctx, "items", []string{"1", "2", "3", "4"}); !errors.Is(err, readthrough.ErrTooManyIDs) {
		t.Errorf("GetMany over the bound: %v", err)
	}
	if _, err := r.GetMany(ctx, "items", nil); !errors.Is(err, readthrough.ErrInvalidID) {
		t.Errorf("GetMany with no ids: %v", err)
	}
	if n := src.loads.Load(); n != 0 {
		t.Errorf("source loaded %d times", n)
	}
}

func TestUnreadableValueIsAMiss(t *testing.T) {
	r, src, mr := newReader(t)
	mr.Set("t:{items:1}", "\x09from a future version")
	res, err := r.Get(context.Background(), "items", "1")
	if err != nil || res.Status != readthrough.Miss {
		t.Fatalf("got %+v %v, want a miss", res, err)
	}
	if n := src.loads.Load(); n != 1 {
		t.Errorf("loads = %d, want 1", n)
	}
}

func TestCacheDownIsUnavailable(t *testing.T) {
	r, src, mr := newReader(t)
	mr.Close()
	if _, err := r.Get(context.Background(), "items", "1"); !errors.Is(err, readthrough.ErrCacheUnavailable) {
		t.Fatalf("got %v, want ErrCacheUnavailable", err)
	}
	if _, err := r.GetMany(context.Background(), "items", []string{"1"}); !errors.Is(err, readthrough.ErrCacheUnavailable) {
		t.Fatalf("GetMany got %v, want ErrCacheUnavailable", err)
	}
	if n := src.loads.Load(); n != 0 {
		t.Errorf("with the cache down the source was asked %d times; MySQL must be spared", n)
	}
}

// TestCacheDownDegraded: with a Degraded limiter, reads the cache cannot answer go to the
// source, one query per token, and past the tokens answer ErrOverloaded; nothing is filled.
func TestCacheDownDegraded(t *testing.T) {
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rc.Close() })
	src := &fakeSource{rows: map[string]string{"1": `{"id":1}`, "2": `{"id":2}`}}
	// A bucket of 3 that refills once an hour: exactly 3 loads in this test.
	r := readthrough.New(readthrough.Options{
		Cache: readthrough.NewRedisCache(rc), Source: src, Entities: []readthrough.Entity{items}, KeyPrefix: "t:",
		Degraded: rate.NewLimiter(rate.Every(time.Hour), 3),
	})
	mr.Close()
	ctx := context.Background()
	if res, err := r.Get(ctx, "items", "1"); err != nil || res.Status != readthrough.Bypass || string(res.Body) != `{"id":1}` {
		t.Fatalf("Get with the cache down: %+v %v, want the row, bypass", res, err)
	}
	if res, err := r.Get(ctx, "items", "9"); !errors.Is(err, readthrough.ErrNotFound) || res.Status != readthrough.Bypass {
		t.Fatalf("Get of an absent row: %+v %v, want not found from the source", res, err)
	}
	many, err := r.GetMany(ctx, "items", []string{"1", "2", "9"})
	if err != nil || many.Status != readthrough.Bypass || len(many.Items) != 2 || len(many.Missing) != 1 {
		t.Fatalf("GetMany with the cache down: %+v %v", many, err)
	}
	if n := src.loads.Load(); n != 3 {
		t.Errorf("source asked %d times, want 3 (one query each)", n)
	}
	if _, err := r.Get(ctx, "items", "2"); !errors.Is(err, readthrough.ErrOverloaded) {
		t.Fatalf("Get past the limiter: %v, want ErrOverloaded", err)
	}
	if n := src.loads.Load(); n != 3 {
		t.Errorf("source asked %d times past the limiter, want still 3", n)
	}
}

func TestSourceErrorCachesNothing(t *testing.T) {
	r, src, mr := newReader(t)
	src.err = errors.New("connection refused")
	if _, err := r.Get(context.Background(), "items", "1"); !errors.Is(err, readthrough.ErrDBUnavailable) {
		t.Fatalf("got %v, want ErrDBUnavailable", err)
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("cached %v after a failed load", keys)
	}
}

func TestGetMany(t *testing.T) {
	r, src, _ := newReader(t)
	ctx := context.Background()
	if _, err := r.Get(ctx, "items", "1"); err != nil { // 1 is now cached
		t.Fatal(err)
	}
	many, err := r.GetMany(ctx, "items", []string{"2", "1", "7", "02"})
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%v %s", many.Missing, many.Status)
	for _, it := range many.Items {
		got += fmt.Sprintf(" %s=%s", it.ID, it.Body)
	}
	if want := `[7] miss 2={"id":2} 1={"id":1}`; got != want {
		t.Errorf("GetMany = %s, want %s", got, want)
	}
	if n := src.loads.Load(); n != 2 {
		t.Errorf("loads = %d, want 2 (one Get, one batch)", n)
	}
	many, err = r.GetMany(ctx, "items", []string{"1", "2", "7"})
	if err != nil || many.Status != readthrough.Hit || len(many.Items) != 2 || len(many.Missing) != 1 {
		t.Errorf("second GetMany = %+v %v, want all from the cache", many, err)
	}
	if n := src.loads.Load(); n != 2 {
		t.Errorf("loads = %d after an all-cached GetMany, want 2", n)
	}
}

func TestJitterBounds(t *testing.T) {
	const d, j = time.Minute, 0.25
	lo, hi := time.Duration(float64(d)*(1-j)), time.Duration(float64(d)*(1+j))
	var below, above int
	for range 10000 {
		got := readthrough.Jitter(d, j)
		if got < lo || got > hi {
			t.Fatalf("Jitter = %v outside [%v, %v]", got, lo, hi)
		}
		if got < d {
			below++
		} else {
			above++
		}
	}
	// Uniform over the window: both halves are well used (the chance of either under 40% is nil).
	if below < 4000 || above < 4000 {
		t.Errorf("below=%d above=%d: not spread over the window", below, above)
	}
	if got := readthrough.Jitter(d, 0); got != d {
		t.Errorf("Jitter(d, 0) = %v, want %v", got, d)
	}
}

// memCache is an in-memory Cache, so BenchmarkGetHit measures the read path's own work.
type memCache map[string][]byte

func (m memCache) Get(_ context.Context, key string) ([]byte, error) { return m[key], nil }
func (m memCache) GetMany(_ context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out, nil
}
func (m memCache) SetMany(_ context.Context, es []readthrough.Entry) error {
	for _, e := range es {
		m[e.Key] = e.Value
	}
	return nil
}

func BenchmarkGetHit(b *testing.B) {
	cache := memCache{}
	src := &fakeSource{rows: map[string]string{"42": `{"id":42}`}}
	r := readthrough.New(readthrough.Options{Cache: cache, Source: src, Entities: []readthrough.Entity{items}})
	ctx := context.Background()
	if _, err := r.Get(ctx, "items", "42"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if res, err := r.Get(ctx, "items", "42"); err != nil || res.Status != readthrough.Hit {
			b.Fatal(res, err)
		}
	}
}
