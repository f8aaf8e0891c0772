package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// stopRedis stops the stack's Redis (SIGKILL: connections are refused) and restarts it at the
// test's end unless the test did.
func stopRedis(t *testing.T) (restart func()) {
	stack.StopRedis()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			stack.StartRedis(context.Background())
		}
	})
	return func() {
		if err := stack.StartRedis(context.Background()); err != nil {
			t.Fatal(err)
		}
		restarted = true
	}
}

// TestRedisOutageUnavailableMode: with degraded.mode unavailable a Redis outage answers 503 at
// once, spares MySQL, and makes the sidecar unready.
func TestRedisOutageUnavailableMode(t *testing.T) {
	e := newDB(t, itemsSchema).start("degraded:\n  mode: unavailable\n" + itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")
	e.get("/readyz").want(t, 200, "")

	restart := stopRedis(t)
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

	restart()
	// Redis came back empty: the first read is a miss, then a hit again.
	devstack.Eventually(t, 5*time.Second, "reads use the cache again", func() bool {
		return e.get("/v1/items/1").status == 200
	})
	e.get("/v1/items/1").want(t, 200, "hit")
	e.get("/readyz").want(t, 200, "")
}

// TestRedisOutageLoadMode: with degraded.mode load (the default) a Redis outage is served from
// MySQL without the cache, at most max_db_rate queries a second, past which reads answer 503
// with Retry-After; the sidecar stays ready, the circuit opens, and it closes again once Redis
// is back.
func TestRedisOutageLoadMode(t *testing.T) {
	const rate = 5
	e := newDB(t, itemsSchema).start("degraded:\n  max_db_rate: 5\n" + itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")

	restart := stopRedis(t)
	before := e.queries("items")
	start := time.Now()
	r := e.get("/v1/items/1").want(t, 200, "bypass")
	if string(r.body) != `{"id":1,"name":"one","price":"1.10"}` {
		t.Errorf("degraded read: %s", r.body)
	}
	// Drain the bucket: a burst of reads, far past the rate, of which some are refused.
	var ok, overloaded int
	for i := 0; i < 40; i++ {
		r := e.get("/v1/items/2")
		switch {
		case r.status == 200 && r.cache == "bypass":
			ok++
		case r.status == 503 && r.errorCode(t) == "overloaded":
			overloaded++
			if got := r.header.Get("Retry-After"); got != "1" {
				t.Errorf("Retry-After %q, want 1", got)
			}
		default:
			t.Fatalf("degraded read: %d X-Cache=%q %s", r.status, r.cache, r.body)
		}
	}
	elapsed := time.Since(start)
	// The bucket holds one token and refills rate a second: over elapsed, at most
	// 1 + rate·elapsed loads, whatever the timing (+1 for the token's rounding).
	if limit := 2 + int(rate*elapsed.Seconds()); 1+ok > limit {
		t.Errorf("%d degraded loads in %v, above the limiter's %d", 1+ok, elapsed, limit)
	}
	if overloaded == 0 {
		t.Error("40 reads in a burst at max_db_rate 5: none was refused")
	}
	if n := e.queries("items") - before; n > 1+ok {
		t.Errorf("%d queries reached MariaDB for %d degraded loads", n, 1+ok)
	}
	time.Sleep(time.Second / rate * 2) // a token again
	e.get("/v1/items?id=1&id=9").want(t, 200, "bypass")
	time.Sleep(time.Second / rate * 2)
	e.get("/v1/items/9").want(t, 404, "bypass")

	e.get("/readyz").want(t, 200, "")
	var st struct {
		Ready        bool   `json:"ready"`
		Circuit      string `json:"circuit"`
		Degraded     bool   `json:"degraded"`
		DegradedMode string `json:"degraded_mode"`
		Redis        struct{ OK bool }
	}
	if err := json.Unmarshal(e.get("/status").want(t, 200, "").body, &st); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Circuit != "open" || !st.Degraded || st.DegradedMode != "load" || st.Redis.OK {
		t.Errorf("status during the outage: %+v, want ready, circuit open, degraded, redis not ok", st)
	}

	restart()
	// The circuit lets a probe through half a second after it opened; the reads close it.
	devstack.EventuallyState(t, 3*time.Second, func() (bool, string) {
		r := e.get("/v1/items/3")
		return r.cache == "miss", fmt.Sprintf("the circuit did not close once Redis was back: last read %d X-Cache=%q %s", r.status, r.cache, r.body)
	})
	e.get("/v1/items/3").want(t, 200, "hit")
}
