package readthrough

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache is what the read path needs from Redis.
type Cache interface {
	// Get returns the value at key, or nil and no error when there is none.
	Get(ctx context.Context, key string) ([]byte, error)
	// GetMany returns the values at keys in order (nil where there is none) in one round trip.
	GetMany(ctx context.Context, keys []string) ([][]byte, error)
	// SetMany writes every entry with its TTL in one round trip.
	SetMany(ctx context.Context, entries []Entry) error
}

// Entry is one value to cache.
type Entry struct {
	Key   string
	Value []byte
	TTL   time.Duration
}

// RedisCache is the Cache on a go-redis client: a standalone server or a Redis Cluster.
type RedisCache struct {
	client redis.UniversalClient
}

var _ Cache = (*RedisCache)(nil)

// NewRedisCache returns a Cache that uses client.
func NewRedisCache(client redis.UniversalClient) *RedisCache { return &RedisCache{client: client} }

// Get implements Cache.
func (c *RedisCache) Get(ctx context.Context, key string) ([]byte, error) {
	b, err := c.client.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// GetMany implements Cache with a pipeline of GETs rather than MGET: in a Redis Cluster the keys
// live in different slots, and go-redis splits a pipeline by node.
func (c *RedisCache) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([][]byte, len(keys))
	for i, cmd := range cmds {
		b, err := cmd.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, err
		default:
			out[i] = b
		}
	}
	return out, nil
}

// SetMany implements Cache.
func (c *RedisCache) SetMany(ctx context.Context, entries []Entry) error {
	if len(entries) == 1 {
		return c.client.Set(ctx, entries[0].Key, entries[0].Value, entries[0].TTL).Err()
	}
	_, err := c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range entries {
			p.Set(ctx, e.Key, e.Value, e.TTL)
		}
		return nil
	})
	return err
}
