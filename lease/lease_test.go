package lease_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/lease"
)

func newLeases(t *testing.T, ttl time.Duration) (*lease.Leases, *redis.Client) {
	t.Helper()
	s := devstack.Require(t, stack)
	rc := s.Client(t)
	return lease.New(rc, ttl), rc
}

// key returns a key no earlier run has used.
func key(t *testing.T) string { return fmt.Sprintf("lt:{%s:%d}", t.Name(), time.Now().UnixNano()) }

func TestProbeFillRelease(t *testing.T) {
	l, rc := newLeases(t, time.Second)
	ctx := context.Background()
	k := key(t)

	first, err := l.Probe(ctx, []string{k})
	if err != nil || first[0].State != lease.Acquired {
		t.Fatalf("first probe: %+v %v, want Acquired", first, err)
	}
	second, err := l.Probe(ctx, []string{k})
	if err != nil || second[0].State != lease.Contended {
		t.Fatalf("second probe: %+v %v, want Contended", second, err)
	}
	held, err := l.Fill(ctx, []lease.Fill{{Lease: first[0].Lease, Value: []byte("v1"), TTL: time.Minute}})
	if err != nil || !held[0] {
		t.Fatalf("fill by the holder: %v %v, want it to land", held, err)
	}
	if n := rc.Exists(ctx, keys.Lease(k)).Val(); n != 0 {
		t.Errorf("the lease is still there after the fill")
	}
	third, err := l.Probe(ctx, []string{k})
	if err != nil || third[0].State != lease.Found || string(third[0].Value) != "v1" {
		t.Fatalf("probe after fill: %+v %v, want Found v1", third, err)
	}
	if ttl := rc.PTTL(ctx, k).Val(); ttl <= 59*time.Second {
		t.Errorf("value TTL %v, want about a minute", ttl)
	}
}

func TestReleaseOnlyByOwner(t *testing.T) {
	l, rc := newLeases(t, time.Second)
	ctx := context.Background()
	k := key(t)
	a, _ := l.Probe(ctx, []string{k})
	// The lease lapses and someone else takes it; the first holder's release must not free it.
	rc.Del(ctx, keys.Lease(k))
	b, _ := l.Probe(ctx, []string{k})
	if b[0].State != lease.Acquired {
		t.Fatalf("second holder: %+v", b)
	}
	if err := l.Release([]*lease.Lease{a[0].Lease}); err != nil {
		t.Fatal(err)
	}
	if n := rc.Exists(ctx, keys.Lease(k)).Val(); n != 1 {
		t.Fatal("a stale holder's release deleted another holder's lease")
	}
	held, _ := l.Fill(ctx, []lease.Fill{{Lease: a[0].Lease, Value: []byte("old"), TTL: time.Minute}})
	if held[0] {
		t.Fatal("a stale holder's fill landed")
	}
	if err := l.Release([]*lease.Lease{b[0].Lease}); err != nil {
		t.Fatal(err)
	}
	if n := rc.Exists(ctx, keys.Lease(k)).Val(); n != 0 {
		t.Fatal("the owner's release left the lease")
	}
}

func TestInvalidateVoidsLease(t *testing.T) {
	l, rc := newLeases(t, time.Second)
	ctx := context.Background()
	k := key(t)
	p, _ := l.Probe(ctx, []string{k})
	if _, err := invalidation.NewRedis(rc).Invalidate(ctx, k); err != nil {
		t.Fatal(err)
	}
	held, err := l.Fill(ctx, []lease.Fill{{Lease: p[0].Lease, Value: []byte("read before the write"), TTL: time.Minute}})
	if err != nil || held[0] {
		t.Fatalf("fill after invalidation: %v %v, want it rejected", held, err)
	}
	if n := rc.Exists(ctx, k).Val(); n != 0 {
		t.Fatal("the value landed after its key was invalidated")
	}
}

func TestKeepRenewsASlowLoad(t *testing.T) {
	const ttl = 150 * time.Millisecond
	l, rc := newLeases(t, ttl)
	ctx := context.Background()
	k := key(t)
	p, _ := l.Probe(ctx, []string{k})
	stop := l.Keep([]*lease.Lease{p[0].Lease})
	// Hold the lease across several lease periods; renewals show as the PTTL going back up.
	renewals, last := 0, rc.PTTL(ctx, keys.Lease(k)).Val()
	deadline := time.Now().Add(10 * ttl)
	for renewals < 4 && time.Now().Before(deadline) {
		cur := rc.PTTL(ctx, keys.Lease(k)).Val()
		if cur <= 0 {
			t.Fatalf("the lease lapsed during a slow load (PTTL %v)", cur)
		}
		if cur > last {
			renewals++
		}
		last = cur
		time.Sleep(5 * time.Millisecond)
	}
	if renewals < 4 {
		t.Fatalf("saw %d renewals in %v", renewals, 10*ttl)
	}
	if !stop.Stop() {
		t.Error("Keep reports a lost lease")
	}
	held, _ := l.Fill(ctx, []lease.Fill{{Lease: p[0].Lease, Value: []byte("v"), TTL: time.Minute}})
	if !held[0] {
		t.Fatal("the fill after a slow, renewed load did not land")
	}
}

func TestCrashedHolderFreesKeyWithinOneLeasePeriod(t *testing.T) {
	const ttl = 200 * time.Millisecond
	l, _ := newLeases(t, ttl)
	ctx := context.Background()
	k := key(t)
	p, _ := l.Probe(ctx, []string{k}) // the holder then "crashes": no renewal, no release
	// The lease was taken before the probe returned, so it must be gone from acquired+ttl on.
	// A probe that starts after that and still finds it held is the failure; a slow machine
	// only delays probes, which cannot make one.
	acquired := time.Now()
	if p[0].State != lease.Acquired {
		t.Fatal(p)
	}
	for {
		sent := time.Now()
		next, err := l.Probe(ctx, []string{k})
		if err != nil {
			t.Fatal(err)
		}
		if next[0].State == lease.Acquired {
			break
		}
		// Redis expires keys at millisecond resolution: 2 ms of slack.
		if late := sent.Sub(acquired); late > ttl+2*time.Millisecond {
			t.Fatalf("the key was still leased %v after the holder took it, past the lease period %v", late, ttl)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestKeepReportsALostLease(t *testing.T) {
	const ttl = 90 * time.Millisecond
	l, rc := newLeases(t, ttl)
	ctx := context.Background()
	k := key(t)
	p, _ := l.Probe(ctx, []string{k})
	keeper := l.Keep([]*lease.Lease{p[0].Lease})
	rc.Del(ctx, keys.Lease(k)) // voided, as an invalidation does
	select {
	case <-keeper.Lost():
	case <-time.After(10 * ttl):
		t.Fatal("the renewer did not notice the lease was gone")
	}
	if keeper.Stop() {
		t.Error("Stop reports the lease kept after it was deleted")
	}
}

// TestAcquireMissingAndFillMany: on one Redis server AcquireMissing and Fill run one script per
// chunk of keys; each key must still get its own answer, in order, across chunks.
func TestAcquireMissingAndFillMany(t *testing.T) {
	l, rc := newLeases(t, time.Second)
	ctx := context.Background()
	const n = 450 // more than two chunks
	base := key(t)
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("%s:%d", base, i)
	}
	// Every third key is cached; every fifth that is not is leased by another caller.
	cached := func(i int) bool { return i%3 == 0 }
	other := func(i int) bool { return !cached(i) && i%5 == 0 }
	var mine []lease.Probe
	for i, k := range ks {
		switch {
		case cached(i):
			rc.Set(ctx, k, "cached", time.Minute)
		case other(i):
			p, err := l.Probe(ctx, []string{k})
			if err != nil || p[0].State != lease.Acquired {
				t.Fatalf("another caller's probe of %s: %+v %v", k, p, err)
			}
			mine = append(mine, p[0])
		}
	}
	leases, err := l.AcquireMissing(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	var fills []lease.Fill
	for i, ls := range leases {
		if got, want := ls != nil, !cached(i) && !other(i); got != want {
			t.Fatalf("key %d (cached %t, leased by another %t): acquired %t, want %t", i, cached(i), other(i), got, want)
		}
		if ls != nil {
			fills = append(fills, lease.Fill{Lease: ls, Value: []byte(fmt.Sprint("v", i)), TTL: time.Minute})
		}
	}
	// One lease is voided, as an invalidation does, before the fill.
	voided := fills[len(fills)/2].Lease.Key
	rc.Del(ctx, voided, keys.Lease(voided))
	held, err := l.Fill(ctx, fills)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fills {
		want := f.Lease.Key != voided
		if held[i] != want {
			t.Errorf("fill of %s: landed %t, want %t", f.Lease.Key, held[i], want)
		}
		got, _ := rc.Get(ctx, f.Lease.Key).Result()
		if want && got != string(f.Value) {
			t.Errorf("%s holds %q, want %q", f.Lease.Key, got, f.Value)
		}
		if !want && got != "" {
			t.Errorf("%s holds %q after its lease was voided", f.Lease.Key, got)
		}
		if rc.Exists(ctx, keys.Lease(f.Lease.Key)).Val() != 0 {
			t.Errorf("the lease of %s is still there after the fill", f.Lease.Key)
		}
	}
	for i, k := range ks {
		if cached(i) && rc.Get(ctx, k).Val() != "cached" {
			t.Errorf("cached key %d was overwritten", i)
		}
	}
	// The other caller's leases are untouched.
	for _, p := range mine {
		if rc.Exists(ctx, keys.Lease(p.Lease.Key)).Val() != 1 {
			t.Errorf("another caller's lease on %s is gone", p.Lease.Key)
		}
	}
}
