package lease

import (
	"context"
	"testing"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
)

// TestProbeRetryKeepsOwnLease: the client retries a pipeline after a timeout, so a probe may
// run twice with one token. The second run must see the caller's own lease, not "another".
func TestProbeRetryKeepsOwnLease(t *testing.T) {
	s, err := devstack.Start(context.Background(), devstack.Options{RedisOnly: true})
	if err != nil {
		if devstack.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	defer s.Stop()
	rc := s.Client(t)
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
