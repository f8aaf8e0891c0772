// Package keys builds every Redis key sidecache writes, so the read path, the invalidation
// path, the Bloom filters and the binlog tail agree on them.
//
// Each key carries a Redis Cluster hash tag ({...}): a row's value and its lease share one
// slot, as do the keys of one entity's filter and those of one database's binlog tail, so that
// every script touches a single slot.
package keys

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Value is the key of an entity's cached row: prefix{entity:id}.
func Value(prefix, entity, id string) string {
	return prefix + "{" + entity + ":" + id + "}"
}

// Lookup is the name under which a lookup's rows are cached, as if it were an entity:
// entity/lookup. No entity's name holds a '/', so its keys are apart from every entity's.
func Lookup(entity, lookup string) string { return entity + "/" + lookup }

// Lease is the key of the load lease on a value key.
func Lease(value string) string { return value + ":lease" }

// EntityPattern is the SCAN pattern that matches every value and lease key of entity (and only
// those of entity: other entities' names differ before the ':').
func EntityPattern(prefix, entity string) string {
	return globEscape(prefix+"{"+entity+":") + "*"
}

// IsEntityKey tells a value or lease key from anything else EntityPattern could match.
func IsEntityKey(k string) bool {
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

// BloomMeta is the hash that describes an entity's Bloom filter.
func BloomMeta(prefix, entity string) string { return prefix + "{bloom:" + entity + "}:meta" }

// BloomBits is the bitmap of one of an entity's two filter slots ("a" or "b").
func BloomBits(prefix, entity, slot string) string { return prefix + "{bloom:" + entity + "}:" + slot }

// CDC is one of the binlog tail's keys for database schema: "leader", "checkpoint" or "status".
func CDC(prefix, schema, name string) string { return prefix + "{cdc:" + schema + "}:" + name }

// Nodes returns the servers that hold sidecache's keys: every master of a Redis Cluster, or
// the one server (a Sentinel client's current master).
func Nodes(ctx context.Context, rdb redis.UniversalClient) ([]redis.UniversalClient, error) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return []redis.UniversalClient{rdb}, nil
	}
	var mu sync.Mutex
	var nodes []redis.UniversalClient
	err := cc.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		nodes = append(nodes, node)
		return nil
	})
	return nodes, err
}

// Token returns a random token: a lease's owner, or a version no other state has had.
func Token() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
