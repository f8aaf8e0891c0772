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

// delChunk is how many value keys (each with its lease) one DEL deletes on a single server.
// One DEL of many keys costs Redis far less than as many DELs of two: its work per command
// (parsing, dispatch, the reply) is paid once, which is most of the cost of deleting a key that
// is small or absent. A failed DEL fails its chunk, which is retried whole.
const delChunk = 128

// Invalidate deletes value keys and their leases: the "delete" of update-then-delete. A loader
// that read a row before the write can no longer fill it. It returns the keys whose delete
// failed (all of them when Redis cannot be reached) and the first error.
//
// On a single server (standalone or Sentinel) the keys go delChunk to a DEL; in a Redis
// Cluster each value key goes with its lease alone, since a DEL's keys must share a slot.
func (d *Redis) Invalidate(ctx context.Context, values ...string) (failed []string, err error) {
	per := delChunk
	if _, cluster := d.rdb.(*redis.ClusterClient); cluster {
		per = 1
	}
	cmds := make([]*redis.IntCmd, 0, (len(values)+per-1)/per)
	_, err = d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for chunk := range slices.Chunk(values, per) {
			args := make([]any, 0, 1+2*len(chunk))
			args = append(args, "del")
			for _, k := range chunk {
				args = append(args, k, keys.Lease(k)) // one slot: the lease key shares the value key's hash tag
			}
			cmd := redis.NewIntCmd(ctx, args...)
			_ = p.Process(ctx, cmd)
			cmds = append(cmds, cmd)
		}
		return nil
	})
	if err == nil {
		return nil, nil
	}
	for i, c := range cmds {
		if c.Err() != nil {
			failed = append(failed, values[i*per:min((i+1)*per, len(values))]...)
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
