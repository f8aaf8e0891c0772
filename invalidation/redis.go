package invalidation

import (
	"context"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/keys"
)

// Redis deletes cached values and their leases: the Deleter and Dropper on a go-redis client,
// a standalone server or a Redis Cluster.
type Redis struct {
	rdb redis.UniversalClient
}

var (
	_ Deleter = (*Redis)(nil)
	_ Dropper = (*Redis)(nil)
)

// NewRedis returns the deletes on rdb.
func NewRedis(rdb redis.UniversalClient) *Redis { return &Redis{rdb: rdb} }

// Invalidate deletes value keys and their leases: the "delete" of update-then-delete. A loader
// that read a row before the write can no longer fill it. It returns the keys whose delete
// failed (all of them when Redis cannot be reached) and the first error.
func (d *Redis) Invalidate(ctx context.Context, values ...string) (failed []string, err error) {
	cmds := make([]*redis.IntCmd, len(values))
	_, err = d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range values {
			cmds[i] = p.Del(ctx, k, keys.Lease(k)) // one slot: the lease key shares the value key's hash tag
		}
		return nil
	})
	if err == nil {
		return nil, nil
	}
	for i, c := range cmds {
		if c == nil || c.Err() != nil {
			failed = append(failed, values[i])
		}
	}
	if len(failed) == 0 {
		failed = values // the pipeline failed without saying which
	}
	return failed, err
}

// DropEntity deletes every cached value of entity and every lease on one, scanning each Redis
// master (SCAN MATCH prefix{entity:*, deleting each batch with UNLINK as it goes). It returns
// the keys whose delete failed, and an error when a scan did not complete: then the whole pass
// must run again, since only a complete scan is sure to find every key.
//
// A loader that read a row before the change and holds its lease cannot fill afterwards: a
// lease present for the whole scan is found and deleted; one that went away during the scan
// was filled during it, so its value exists when a second pass begins. The invalidation path
// therefore runs DropEntity twice, like every delete.
func (d *Redis) DropEntity(ctx context.Context, prefix, entity string) (failed []string, err error) {
	pattern := keys.EntityPattern(prefix, entity)
	scan := func(ctx context.Context, c redis.UniversalClient) error {
		var cursor uint64
		for {
			found, next, err := c.Scan(ctx, cursor, pattern, 1000).Result()
			if err != nil {
				return err
			}
			found = slices.DeleteFunc(found, func(k string) bool { return !keys.IsEntityKey(k) })
			if len(found) > 0 {
				cmds := make([]*redis.IntCmd, len(found))
				// One UNLINK per key: in a Redis Cluster the keys of one node span many slots.
				c.Pipelined(ctx, func(p redis.Pipeliner) error {
					for i, k := range found {
						cmds[i] = p.Unlink(ctx, k)
					}
					return nil
				})
				for i, cmd := range cmds {
					if cmd.Err() != nil {
						failed = append(failed, found[i])
					}
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	nodes, err := keys.Nodes(ctx, d.rdb)
	if err != nil {
		return nil, err
	}
	for _, node := range nodes { // one after another, so failed is appended to by one at a time
		if err := scan(ctx, node); err != nil {
			return failed, err
		}
	}
	return failed, nil
}
