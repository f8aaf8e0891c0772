package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/config"
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

// status reads GET /status.
func (e *env) status() (st struct {
	Ready    bool   `json:"ready"`
	Circuit  string `json:"circuit"`
	Degraded bool   `json:"degraded"`
}) {
	e.t.Helper()
	if err := json.Unmarshal(e.get("/status").want(e.t, 200, "").body, &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

// TestCircuitOpensProbesAndCloses: on a real Redis that hangs (SIGSTOP: the port accepts,
// nothing answers) and on one that is gone (SIGKILL: connections refused), the circuit opens
// after repeated failures while reads go on from MySQL, and closes again through a half-open
// probe once Redis answers.
func TestCircuitOpensProbesAndCloses(t *testing.T) {
	for _, tc := range []struct {
		name        string
		fail, heal  func() error
		emptyOnHeal bool
	}{
		{"SIGSTOP", stack.PauseRedis, stack.ResumeRedis, false},
		{"SIGKILL", func() error { stack.KillRedis(); return nil }, func() error { return stack.StartRedis(context.Background()) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newDB(t, itemsSchema).start(itemsEntity)
			e.get("/v1/items/1").want(t, 200, "miss")
			if err := tc.fail(); err != nil {
				t.Fatal(err)
			}
			healed := false
			t.Cleanup(func() {
				if !healed {
					tc.heal()
				}
			})
			devstack.EventuallyState(t, 20*time.Second, func() (bool, string) {
				r := e.get("/v1/items/1")
				if r.status != 200 || r.cache != "bypass" {
					t.Fatalf("read while Redis is down: %d X-Cache=%q %s, want 200 bypass", r.status, r.cache, r.body)
				}
				st := e.status()
				return st.Circuit == "open" && st.Degraded && st.Ready, fmt.Sprintf("status %+v, want the circuit open, degraded, ready", st)
			})
			if err := tc.heal(); err != nil {
				t.Fatal(err)
			}
			healed = true
			want := "hit"
			if tc.emptyOnHeal {
				want = "miss"
			}
			devstack.EventuallyState(t, 5*time.Second, func() (bool, string) {
				r := e.get("/v1/items/1")
				return r.cache == want, fmt.Sprintf("read after Redis is back: %d X-Cache=%q, want %s", r.status, r.cache, want)
			})
			if st := e.status(); st.Circuit != "closed" || st.Degraded {
				t.Errorf("status after Redis is back: %+v, want the circuit closed", st)
			}
			metrics := string(e.get("/metrics").body)
			for _, state := range []string{"open", "half-open", "closed"} {
				if !strings.Contains(metrics, `sidecache_redis_circuit_changes_total{state="`+state+`"}`) {
					t.Errorf("/metrics: the circuit never went %s", state)
				}
			}
		})
	}
}

// TestSentinelFailover: with redis.master_name the sidecar finds the master through the
// Sentinels and follows a failover to the promoted replica.
func TestSentinelFailover(t *testing.T) {
	devstack.Require(t, stack)
	ctx := context.Background()
	rs, err := devstack.Start(ctx, devstack.Options{RedisOnly: true, Sentinel: true, Sentinels: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	sentinels, _ := json.Marshal(rs.SentinelAddrs)
	e := newDB(t, itemsSchema)
	cfg, err := config.Parse([]byte(fmt.Sprintf("mysql:\n  dsn: %q\nredis:\n  addrs: %s\n  master_name: %q\n  key_prefix: %q\n%s",
		e.dsn, sentinels, rs.MasterName, e.prefix, itemsEntity)))
	if err != nil {
		t.Fatal(err)
	}
	e.serve(cfg)
	e.get("/v1/items/1").want(t, 200, "miss")
	e.get("/v1/items/1").want(t, 200, "hit")
	old, err := rs.KillRedisMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	promoted, err := rs.WaitFailover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if promoted == old {
		t.Fatalf("the Sentinels still name %s", old)
	}
	// Served from the promoted replica (the row was replicated), then an update invalidated
	// there reads back new.
	devstack.EventuallyState(t, 10*time.Second, func() (bool, string) {
		r := e.get("/v1/items/1")
		return r.cache == "hit", fmt.Sprintf("read after the failover: %d X-Cache=%q", r.status, r.cache)
	})
	e.exec("UPDATE items SET name = 'uno' WHERE id = 1")
	res, err := http.Post(e.url+"/v1/items/1/invalidate", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 {
		t.Fatalf("invalidate after the failover: %d", res.StatusCode)
	}
	if r := e.get("/v1/items/1").want(t, 200, "miss"); !strings.Contains(string(r.body), `"uno"`) {
		t.Errorf("after the failover and an invalidate: %s", r.body)
	}
}

// TestNoStaleRowAfterRedisReturnsWithItsData: Redis hangs, a row changes meanwhile (its
// invalidation cannot run), and Redis comes back with the old row still cached. No read may
// answer the old row: the cache is bypassed until the binlog tail has caught up past Redis's
// return, and only then used again.
func TestNoStaleRowAfterRedisReturnsWithItsData(t *testing.T) {
	e := newDB(t, itemsSchema)
	e.start(e.tailConfig() + itemsEntity)
	devstack.EventuallyState(t, 20*time.Second, func() (bool, string) {
		r := e.get("/v1/items/1")
		return r.cache == "hit", fmt.Sprintf("before the hang: %d X-Cache=%q, want the row cached", r.status, r.cache)
	})
	if err := stack.PauseRedis(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			stack.ResumeRedis()
		}
	})
	devstack.EventuallyState(t, 20*time.Second, func() (bool, string) {
		st := e.status()
		return st.Circuit == "open", fmt.Sprintf("status %+v, want the circuit open", st)
	})
	e.exec("UPDATE items SET name = 'uno' WHERE id = 1")
	if err := stack.ResumeRedis(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	cached := 0
	// The bound is for liveness only (the tail resumes leading within leader_ttl/3 and replays
	// a few rows); every answer meanwhile is checked.
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && cached < 20; time.Sleep(10 * time.Millisecond) {
		r := e.get("/v1/items/1")
		if r.status != 200 || !strings.Contains(string(r.body), `"uno"`) {
			t.Fatalf("read after Redis came back: %d X-Cache=%q %s, want the row as updated during the hang", r.status, r.cache, r.body)
		}
		if r.cache == "hit" || r.cache == "miss" {
			cached++ // the cache is in use again
		}
	}
	if cached < 20 {
		t.Errorf("the cache was not used again within 20s of Redis's return (%d cached answers)", cached)
	}
}
