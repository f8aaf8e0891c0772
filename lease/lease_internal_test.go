package lease

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
)

// redisClient starts a Redis of the test's own (the internal tests cannot share the external
// ones' stack).
func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	s, err := devstack.Start(context.Background(), devstack.Options{RedisOnly: true})
	if err != nil {
		if devstack.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Cleanup(s.Stop)
	return s.Client(t)
}

// TestProbeRetryKeepsOwnLease: the client retries a pipeline after a timeout, so a probe may
// run twice with one token. The second run must see the caller's own lease, not "another".
func TestProbeRetryKeepsOwnLease(t *testing.T) {
	rc := redisClient(t)
	ctx := context.Background()
	k := "lt:{retry:" + keys.Token() + "}"
	for i, want := range []int64{2, 2} {
		res, err := rc.Eval(ctx, getOrAcquire, []string{k, keys.Lease(k)}, "token-a", 1000).Slice()
		if err != nil || res[0].(int64) != want {
			t.Fatalf("run %d with the same token: %v %v, want {%d}", i, res, err, want)
		}
	}
	if res, _ := rc.Eval(ctx, getOrAcquire, []string{k, keys.Lease(k)}, "token-b", 1000).Slice(); res[0].(int64) != 0 {
		t.Fatalf("another token: %v, want contended", res)
	}
	for i := range 2 {
		if n, err := rc.Eval(ctx, acquire, []string{keys.Lease(k)}, "token-a", 1000).Int64(); err != nil || n != 1 {
			t.Fatalf("acquire run %d with the owner's token: %d %v", i, n, err)
		}
	}
}

// TestAcquireMissingManyRetryKeepsOwnLease: the many-key script, run twice with one token (a
// retried pipeline), finds its own leases taken, not another's.
func TestAcquireMissingManyRetryKeepsOwnLease(t *testing.T) {
	rc := redisClient(t)
	ctx := context.Background()
	a, b := "lt:{many:"+keys.Token()+"}", "lt:{many:"+keys.Token()+"}"
	ks := []string{a, keys.Lease(a), b, keys.Lease(b)}
	for run := range 2 {
		got, err := rc.Eval(ctx, acquireMissingMany, ks, "token-a", 1000).Int64Slice()
		if err != nil || len(got) != 2 || got[0] != 2 || got[1] != 2 {
			t.Fatalf("run %d with the same token: %v %v, want [2 2]", run, got, err)
		}
	}
	if got, _ := rc.Eval(ctx, acquireMissingMany, ks, "token-b", 1000).Int64Slice(); len(got) != 2 || got[0] != 0 || got[1] != 0 {
		t.Fatalf("another token: %v, want [0 0]", got)
	}
}
