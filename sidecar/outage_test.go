package sidecar_test

import (
	"context"
	"testing"
	"time"
)

func TestRedisOutageIs503AndRecovers(t *testing.T) {
	e := newDB(t, itemsSchema).start(itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")
	e.get("/readyz").want(t, 200, "")

	stack.StopRedis()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			stack.StartRedis(context.Background())
		}
	})
	before := e.queries("items")
	for _, path := range []string{"/v1/items/1", "/v1/items/2", "/v1/items?id=1&id=3"} {
		start := time.Now()
		r := e.get(path).want(t, 503, "")
		if code := r.errorCode(t); code != "cache_unavailable" {
			t.Errorf("%s: code %q, want cache_unavailable", path, code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s took %v: outages must fail fast, within the request timeout", path, d)
		}
	}
	if code := e.get("/readyz").want(t, 503, "").errorCode(t); code != "not_ready" {
		t.Errorf("readyz code %q", code)
	}
	e.get("/healthz").want(t, 200, "")
	if n := e.queries("items") - before; n != 0 {
		t.Errorf("with Redis down, %d queries reached MariaDB", n)
	}

	if err := stack.StartRedis(context.Background()); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// Redis came back empty: the first read is a miss, then a hit again.
	e.get("/v1/items/1").want(t, 200, "miss")
	e.get("/v1/items/1").want(t, 200, "hit")
	e.get("/readyz").want(t, 200, "")
}
