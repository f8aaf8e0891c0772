package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `
mysql:
  dsn: "app:secret@tcp(127.0.0.1:3306)/app"
entities:
  - name: items
`

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Entities[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", c.Listen, DefaultListen},
		{"redis.addrs", strings.Join(c.Redis.Addrs, ","), DefaultRedisAddr},
		{"redis.key_prefix", c.Redis.KeyPrefix, DefaultKeyPrefix},
		{"limits.max_ids", c.Limits.MaxIDs, 100},
		{"cdc.flavor", c.CDC.Flavor, "mysql"},
		{"cdc.double_delete_delay", c.CDC.DoubleDeleteDelay.D(), 500 * time.Millisecond},
		{"table", e.Table, "items"},
		{"key", len(e.Key), 0},
		{"ttl", e.TTL.D(), 10 * time.Minute},
		{"ttl_jitter", *e.TTLJitter, 0.1},
		{"null_ttl", e.NullTTL.D(), time.Minute},
		{"bloom.fp_rate", e.Bloom.FPRate, 0.01},
		{"stale_ttl", e.StaleTTL.D(), 10 * time.Minute},
		{"lease.enabled", *c.Lease.Enabled, true},
		{"lease.ttl", c.Lease.TTL.D(), 3 * time.Second},
		{"lease.wait", c.Lease.Wait.D(), 2 * time.Second},
		{"lease.fallback", c.Lease.Fallback, "load"},
		{"lease.fallback_concurrency", c.Lease.FallbackConcurrency, 4},
		{"degraded.mode", c.Degraded.Mode, "load"},
		{"degraded.max_db_rate", c.Degraded.MaxDBRate, 100.0},
		{"admin_listen", c.AdminListen, ""},
		{"redis.master_name", c.Redis.MasterName, ""},
		{"near_cache.enabled", c.NearCache.Enabled, false},
		{"near_cache.max_entries", c.NearCache.MaxEntries, 100000},
		{"near_cache.max_staleness", c.NearCache.MaxStaleness.D(), time.Second},
		{"mysql.replica_dsn", c.MySQL.ReplicaDSN, ""},
		{"mysql.replica_wait_timeout", c.MySQL.ReplicaWaitTimeout.D(), 5 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLookupsNeedTheTailToServe(t *testing.T) {
	c, err := Parse([]byte(minimal + "    lookups: [{name: by-email, columns: [email]}]\n"))
	if err != nil {
		t.Fatal(err) // a preload or a check can use it
	}
	if err := c.CheckServe(); err == nil || !strings.Contains(err.Error(), `entity "items": lookups need the binlog tail`) {
		t.Errorf("CheckServe: %v, want lookups refused without cdc.enabled", err)
	}
	c.CDC.Enabled = true
	if err := c.CheckServe(); err != nil {
		t.Errorf("CheckServe with the tail: %v", err)
	}
}

func TestParseKeyColumns(t *testing.T) {
	for doc, want := range map[string]string{
		"    key: id\n":                    "[id]",
		"    key: [actor_id, film_id]\n":   "[actor_id film_id]",
		"    key:\n      - a\n      - b\n": "[a b]",
		"    key: \"\"\n":                  "[]",
	} {
		c, err := Parse([]byte(minimal + doc))
		if err != nil {
			t.Errorf("%q: %v", doc, err)
			continue
		}
		if got := fmt.Sprint([]string(c.Entities[0].Key)); got != want {
			t.Errorf("%q: key = %s, want %s", doc, got, want)
		}
	}
}

func TestParseExplicitZeroJitter(t *testing.T) {
	c, err := Parse([]byte(minimal + "    ttl_jitter: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := *c.Entities[0].TTLJitter; got != 0 {
		t.Errorf("ttl_jitter = %v, want an explicit 0 kept", got)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		want      []string // substrings of the one-line error
	}{
		{"unknown top-level key", minimal + "lisen: x\n", []string{"line 6", `unknown field "lisen"`}},
		{"unknown entity key", minimal + "    tll: 1m\n", []string{`unknown field "tll"`}},
		{"bad duration", minimal + "    ttl: 10 minutes\n", []string{"bad duration", "10 minutes"}},
		{"duration as number", minimal + "    ttl: 10\n", []string{"bad duration"}},
		{"jitter too big", minimal + "    ttl_jitter: 1\n", []string{`entity "items": ttl_jitter`, "[0, 1)"}},
		{"jitter negative", minimal + "    ttl_jitter: -0.1\n", []string{"ttl_jitter"}},
		{"negative ttl", minimal + "    ttl: -1s\n", []string{`entity "items": ttl: must be positive`}},
		{"duplicate entity", minimal + "  - name: items\n", []string{"duplicate", "entities[0] and entities[1]"}},
		{"bad entity name", strings.Replace(minimal, "name: items", "name: Items!", 1), []string{"entities[0].name"}},
		{"table not an identifier", minimal + "    table: \"items; DROP TABLE x\"\n", []string{`entity "items": table`}},
		{"column listed twice", minimal + "    columns: [id, ID]\n", []string{"columns[1]", "twice"}},
		{"key column listed twice", minimal + "    key: [a, A]\n", []string{`entity "items": key[1]`, "twice"}},
		{"key column not an identifier", minimal + "    key: [a, \"b c\"]\n", []string{`entity "items": key[1]`, "identifier"}},
		{"key as a map", minimal + "    key: {a: 1}\n", []string{"column name or a list"}},
		{"near cache with Sentinel", minimal + "near_cache: {enabled: true}\nredis: {master_name: m, addrs: [\"h:26379\"]}\n", []string{"near_cache.enabled", "Sentinel"}},
		{"near cache with Cluster", minimal + "near_cache: {enabled: true}\nredis: {addrs: [\"a:1\", \"b:1\"]}\n", []string{"near_cache.enabled", "Cluster"}},
		{"profiler off loopback", minimal + "pprof_listen: \"0.0.0.0:6060\"\n", []string{"pprof_listen", "loopback"}},
		{"near cache size", minimal + "near_cache: {enabled: true, max_entries: -1}\n", []string{"near_cache.max_entries"}},
		{"near cache staleness", minimal + "near_cache: {enabled: true, max_staleness: -1s}\n", []string{"near_cache.max_staleness"}},
		{"lookup name", minimal + "    lookups: [{name: By/Email, columns: [email]}]\ncdc: {enabled: true}\n", []string{"lookups[0].name"}},
		{"lookup twice", minimal + "    lookups: [{name: e, columns: [a]}, {name: e, columns: [b]}]\ncdc: {enabled: true}\n", []string{"lookups[1].name", "duplicate"}},
		{"lookup without columns", minimal + "    lookups: [{name: e}]\ncdc: {enabled: true}\n", []string{"lookups[0].columns", "at least one"}},
		{"lookup column twice", minimal + "    lookups: [{name: e, columns: [a, A]}]\ncdc: {enabled: true}\n", []string{"lookups[0].columns[1]", "twice"}},
		{"no dsn", "entities:\n  - name: items\n", []string{"mysql.dsn: is required"}},
		{"dsn without database", strings.Replace(minimal, "/app", "/", 1), []string{"mysql.dsn", "names no database"}},
		{"replica dsn unparsable", withReplica("replica_dsn: \"app@127.0.0.1/app\""), []string{"mysql.replica_dsn"}},
		{"replica of another database", withReplica("replica_dsn: \"app:secret@tcp(10.0.0.2:3306)/other\""),
			[]string{"mysql.replica_dsn", `"other"`, `"app"`, "same database"}},
		{"negative replica wait", withReplica("replica_wait_timeout: -1s"), []string{"mysql.replica_wait_timeout", "negative"}},
		{"no entities", "mysql:\n  dsn: \"a:b@tcp(h:1)/d\"\n", []string{"at least one entity"}},
		{"prefix with braces", minimal + "redis:\n  key_prefix: \"{x}\"\n", []string{"redis.key_prefix"}},
		{"bad redis addr", minimal + "redis:\n  addrs: [\"nohost\"]\n", []string{"redis.addrs[0]"}},
		{"bad flavor", minimal + "cdc:\n  flavor: postgres\n", []string{"cdc.flavor"}},
		{"admin endpoint off loopback", minimal + "faults:\n  admin_listen: \"0.0.0.0:9091\"\n", []string{"faults.admin_listen", "loopback"}},
		{"failure rate past 1", minimal + "faults:\n  delete_failure_rate: 1.5\n", []string{"faults.delete_failure_rate"}},
		{"one attempt", minimal + "kafka:\n  max_attempts: 1\n", []string{"kafka.max_attempts", "at least 2"}},
		{"same retry and dlq topic", minimal + "kafka:\n  dlq_topic: sidecache.invalidate.retry\n", []string{"kafka.dlq_topic"}},
		{"bad fallback", minimal + "lease:\n  fallback: retry\n", []string{"lease.fallback"}},
		{"bad degraded mode", minimal + "degraded:\n  mode: stale\n", []string{"degraded.mode"}},
		{"negative max_db_rate", minimal + "degraded:\n  max_db_rate: -5\n", []string{"degraded.max_db_rate", "positive"}},
		{"admin on the data address", minimal + "admin_listen: \"127.0.0.1:8080\"\n", []string{"admin_listen", "differ"}},
		{"bad admin address", minimal + "admin_listen: \"9090\"\n", []string{"admin_listen"}},
		{"lease wait past the request timeout", minimal + "lease:\n  wait: 5s\n", []string{"lease.wait", "limits.request_timeout"}},
		{"lease ttl too short", minimal + "lease:\n  ttl: 1ms\n", []string{"lease.ttl"}},
		{"negative stale_ttl", minimal + "    hot: true\n    stale_ttl: -1s\n", []string{`entity "items": stale_ttl`}},
		{"too many ids", minimal + "limits:\n  max_ids: 5000\n", []string{"limits.max_ids"}},
		{"unset env var", strings.Replace(minimal, "secret", "${SIDECACHE_TEST_UNSET}", 1), []string{"SIDECACHE_TEST_UNSET"}},
		{"empty", "", []string{"empty"}},
		{"not yaml", "{{{", []string{"invalid configuration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

// withReplica adds a line to minimal's mysql section.
func withReplica(line string) string {
	return strings.Replace(minimal, "/app\"\n", "/app\"\n  "+line+"\n", 1)
}

func TestReplicaWaitCanBeTurnedOff(t *testing.T) {
	c, err := Parse([]byte(withReplica("replica_dsn: \"app:secret@tcp(10.0.0.2:3306)/app\"\n  replica_wait_timeout: 0s")))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.MySQL.ReplicaWaitTimeout.D(); got != 0 {
		t.Errorf("replica_wait_timeout = %v, want an explicit 0 kept (the wait off)", got)
	}
	if got := c.MySQL.ReplicaDSN; !strings.Contains(got, "10.0.0.2") {
		t.Errorf("replica_dsn = %q", got)
	}
}

func TestLeaseCanBeTurnedOff(t *testing.T) {
	c, err := Parse([]byte(minimal + "lease:\n  enabled: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if *c.Lease.Enabled {
		t.Error("lease.enabled: false was not kept")
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("SIDECACHE_TEST_PASS", "p@ss$word")
	c, err := Parse([]byte(strings.Replace(minimal, "secret", "${SIDECACHE_TEST_PASS}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if want := "app:p@ss$word@tcp(127.0.0.1:3306)/app"; c.MySQL.DSN != want {
		t.Errorf("dsn = %q, want %q", c.MySQL.DSN, want)
	}
}

func TestLoadNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte(minimal+"    ttl_jitter: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+": ") {
		t.Fatalf("Load error = %v, want it to start with the file name", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "    ttl: 1s\n    ttl_jitter: 0.5\n"))
	f.Add([]byte("listen: [1,2]\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := Parse(doc)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// Whatever parses is valid: the invariants the rest of the program relies on hold.
		for _, e := range c.Entities {
			if e.TTL <= 0 || e.NullTTL <= 0 || *e.TTLJitter < 0 || *e.TTLJitter >= 1 {
				t.Fatalf("invalid entity accepted: %+v", e)
			}
		}
	})
}
