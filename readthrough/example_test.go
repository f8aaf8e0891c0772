package readthrough_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/sidecache/sidecache/readthrough"
)

// mapCache is a Cache in a map; readthrough.NewRedisCache is the real one.
type mapCache struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (c *mapCache) Get(_ context.Context, key string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key], nil
}

func (c *mapCache) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i], _ = c.Get(ctx, k)
	}
	return out, nil
}

func (c *mapCache) SetMany(_ context.Context, entries []readthrough.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		c.m[e.Key] = e.Value
	}
	return nil
}

// table is a Source with one row; the mysqlsource package is the real one.
type table struct{ queries int }

func (t *table) Load(_ context.Context, _, id string) ([]byte, bool, error) {
	t.queries++
	if id != "42" {
		return nil, false, nil
	}
	return []byte(`{"id":42,"name":"towel"}`), true, nil
}

func (t *table) LoadMany(ctx context.Context, entity string, ids []string) (map[string][]byte, error) {
	rows := map[string][]byte{}
	for _, id := range ids {
		if row, ok, _ := t.Load(ctx, entity, id); ok {
			rows[id] = row
		}
	}
	return rows, nil
}

// A miss is loaded from the database and cached; the next read of the key is a hit, and a
// missing row is cached as a null marker.
func ExampleReader_Get() {
	src := &table{}
	r := readthrough.New(readthrough.Options{
		Cache:  &mapCache{m: map[string][]byte{}},
		Source: src,
		Entities: []readthrough.Entity{{
			Name: "items", TTL: 10 * time.Minute, NullTTL: time.Minute, Jitter: 0.1,
			ParseID: func(raw string) (string, error) {
				n, err := strconv.ParseUint(raw, 10, 64)
				if err != nil {
					return "", fmt.Errorf("%w: %q is not a number", readthrough.ErrInvalidID, raw)
				}
				return strconv.FormatUint(n, 10), nil
			},
		}},
	})
	defer r.Close()
	ctx := context.Background()
	for _, id := range []string{"42", "042", "7", "7", "x"} {
		res, err := r.Get(ctx, "items", id)
		switch {
		case errors.Is(err, readthrough.ErrNotFound):
			fmt.Printf("%s: not found (%s)\n", id, res.Status)
		case err != nil:
			fmt.Printf("%s: %v\n", id, err)
		default:
			fmt.Printf("%s: %s (%s)\n", id, res.Body, res.Status)
		}
	}
	fmt.Println("queries:", src.queries)
	// Output:
	// 42: {"id":42,"name":"towel"} (miss)
	// 042: {"id":42,"name":"towel"} (hit)
	// 7: not found (miss)
	// 7: not found (negative)
	// x: invalid id: "x" is not a number
	// queries: 2
}
