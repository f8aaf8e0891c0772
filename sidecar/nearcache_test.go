package sidecar_test

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/readthrough"
)

// nearHits reads sidecache_near_cache_hits_total from /metrics.
func (e *env) nearHits() int {
	m := regexp.MustCompile(`(?m)^sidecache_near_cache_hits_total (\S+)$`).FindSubmatch(e.get("/metrics").body)
	if m == nil {
		e.t.Fatal("/metrics has no sidecache_near_cache_hits_total")
	}
	n, _ := strconv.ParseFloat(string(m[1]), 64)
	return int(n)
}

// TestNearCache: values are served from memory, and a copy goes when Redis says its key changed
// or when the connection that read it is lost. max_staleness is an hour, so nothing else could
// refresh a copy within the test.
func TestNearCache(t *testing.T) {
	e := newDB(t, itemsSchema).start("near_cache: {enabled: true, max_staleness: 1h}\n" + itemsEntity)
	ctx := context.Background()
	e.get("/v1/items/1").want(t, 200, "miss")
	before := e.nearHits()
	for range 5 {
		e.get("/v1/items/1").want(t, 200, "hit")
	}
	if hits := e.nearHits() - before; hits < 4 {
		t.Fatalf("%d of 5 hits came from the near cache, want at least 4 (the first may fetch from Redis)", hits)
	}

	// Another writer deletes the key (as the binlog tail of another sidecar would): the copy goes.
	key := e.prefix + "{items:1}"
	e.exec("UPDATE items SET name = 'uno' WHERE id = 1")
	if err := e.redis.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	devstack.EventuallyState(t, 5*time.Second, func() (bool, string) {
		r := e.get("/v1/items/1")
		return strings.Contains(string(r.body), `"uno"`), "after a DEL by another client: " + string(r.body)
	})

	// Every connection of the sidecar is killed, then the key is overwritten: no invalidation can
	// reach the sidecar, so only dropping the lost connection's copies keeps it right.
	for range 3 {
		e.get("/v1/items/2")
	}
	if err := e.redis.Do(ctx, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	forged := readthrough.Cached{Row: []byte(`{"id":2,"name":"forged","price":"0.00"}`)}.Encode()
	if err := e.redis.Set(ctx, e.prefix+"{items:2}", forged, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	devstack.EventuallyState(t, 5*time.Second, func() (bool, string) {
		r := e.get("/v1/items/2")
		return strings.Contains(string(r.body), `"forged"`), "after the connections were lost and the key overwritten: " + string(r.body)
	})
}
