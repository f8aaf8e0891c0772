package singleflight

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// EntityPattern is the SCAN pattern that matches every value and lease key of entity (and only
// those: other entities' names differ before the ':').
func EntityPattern(prefix, entity string) string {
	return globEscape(prefix+"{"+entity+":") + "*"
}

// isEntityKey tells a value or lease key from anything else the pattern could match.
func isEntityKey(k string) bool {
	return strings.HasSuffix(k, "}") || strings.HasSuffix(k, "}:lease")
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
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
func (l *Leases) DropEntity(ctx context.Context, prefix, entity string) (failed []string, err error) {
	pattern := EntityPattern(prefix, entity)
	scan := func(ctx context.Context, c redis.UniversalClient) error {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, pattern, 1000).Result()
			if err != nil {
				return err
			}
			keys = slices.DeleteFunc(keys, func(k string) bool { return !isEntityKey(k) })
			if len(keys) > 0 {
				cmds := make([]*redis.IntCmd, len(keys))
				// One UNLINK per key: in a Redis Cluster the keys of one node span many slots.
				c.Pipelined(ctx, func(p redis.Pipeliner) error {
					for i, k := range keys {
						cmds[i] = p.Unlink(ctx, k)
					}
					return nil
				})
				for i, cmd := range cmds {
					if cmd.Err() != nil {
						failed = append(failed, keys[i])
					}
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	if cc, ok := l.rdb.(*redis.ClusterClient); ok {
		// Nodes are scanned one at a time, so failed is only appended to by one of them.
		err = forEachMasterInTurn(ctx, cc, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, l.rdb)
	}
	return failed, err
}

// forEachMasterInTurn calls fn for each master of the cluster, one after another.
func forEachMasterInTurn(ctx context.Context, cc *redis.ClusterClient, fn func(context.Context, *redis.Client) error) error {
	var mu sync.Mutex
	var nodes []*redis.Client
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		nodes = append(nodes, c)
		return nil
	})
	if err != nil {
		return err
	}
	for _, c := range nodes {
		if err := fn(ctx, c); err != nil {
			return err
		}
	}
	return nil
}
