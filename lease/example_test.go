package lease_test

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/lease"
)

// One load per key across every process: probe the key; if it has no value and this caller took
// its lease, load the row while the lease is renewed, and fill only if the lease is still held
// (an invalidation in between deletes the lease, and the fill then does nothing).
func ExampleLeases_Probe() {
	leases := lease.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"}), 3*time.Second)
	ctx, key := context.Background(), "sc:{items:42}"
	probes, err := leases.Probe(ctx, []string{key})
	if err != nil {
		panic(err)
	}
	switch p := probes[0]; p.State {
	case lease.Found:
		_ = p.Value // cached: serve it
	case lease.Contended:
		// another process loads it: wait a little and probe again
	case lease.Acquired:
		keeper := leases.Keep([]*lease.Lease{p.Lease})
		row := []byte(`{"id":42}`) // SELECT ... WHERE id = 42
		keeper.Stop()
		landed, err := leases.Fill(ctx, []lease.Fill{{Lease: p.Lease, Value: row, TTL: 10 * time.Minute}})
		_ = landed[0] && err == nil // false: invalidated meanwhile, so the row read may be old
	}
}
