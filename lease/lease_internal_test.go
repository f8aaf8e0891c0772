package lease

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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
	rc := redis.NewClient(&redis.Options{Addr: s.RedisAddr})
	defer rc.Close()
	ctx := context.Background()
	k := fmt.Sprintf("lt:{retry:%d}", time.Now().UnixNano())
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
