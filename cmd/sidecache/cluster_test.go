package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
)

// addrsYAML is the redis.addrs list of a config for the stack's Redis.
func addrsYAML(s *devstack.Stack) string {
	b, _ := json.Marshal(s.RedisConfigAddrs()) // a JSON list of strings is a YAML flow list
	return string(b)
}

// replaceOnce replaces old in s once, and fails the test when s does not hold it.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%q is not in:\n%s", old, s)
	}
	return strings.Replace(s, old, new, 1)
}

// masterOf returns a client of the cluster master that holds key: in a cluster of masters
// only, it holds the key for the whole test.
func masterOf(t *testing.T, cc redis.UniversalClient, key string) *redis.Client {
	t.Helper()
	m, err := cc.(*redis.ClusterClient).MasterForKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: m.Options().Addr})
	t.Cleanup(func() { rc.Close() })
	return rc
}

// keysPerMaster counts the keys matching pattern on each master of the cluster.
func keysPerMaster(t *testing.T, cc redis.UniversalClient, pattern string) map[string]int {
	t.Helper()
	nodes, err := keys.Nodes(context.Background(), cc)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, n := range nodes {
		ks, err := n.Keys(context.Background(), pattern).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[n.(*redis.Client).Options().Addr] = len(ks)
	}
	return out
}

// onCluster makes a consistency run's sidecars use the cluster, and its checkpoint reads go to
// the master that holds the checkpoint.
func onCluster(t *testing.T, s *devstack.Stack, c *consistencyRun) {
	t.Helper()
	c.cfg = replaceOnce(t, c.cfg, `addrs: ["`+s.RedisAddr+`"]`, "addrs: "+addrsYAML(s))
	c.rc = masterOf(t, s.UniversalClient(t), keys.CDC(c.db+":", c.db, "checkpoint"))
}

// configFile writes the run's config for the one-shot commands (check, preload).
func (c *consistencyRun) configFile() string {
	doc := strings.Replace(fmt.Sprintf(c.cfg, "127.0.0.1:0"), "SERVERID", "1999", 1)
	path := filepath.Join(c.t.TempDir(), "sc.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// bloomYAML turns on the Bloom filter of a consistency run's entity.
const bloomYAML = "    bloom: {enabled: true, expected_items: 40000, fp_rate: 0.01}\n"

// preload runs `sidecache preload` of every row, with the Bloom filter, and returns its output.
// It warms rows only once a binlog tail covers the entity: start the sidecars first.
func (c *consistencyRun) preload() string {
	c.t.Helper()
	out, errOut, code := runBin(c.t, "preload", "--config", c.configFile(), "--entity", "items")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("preloaded items: %d rows", consistencyRows)) || !strings.Contains(out, "bloom filter items:") {
		c.t.Fatalf("preload: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	return out
}

var checkTotal = regexp.MustCompile(`total in [^:]*: (\d+) checked, (\d+) lasting mismatch`)

// check runs `sidecache check` with args on the run's config, at 50,000 ids/s rather than the
// default 1,000, and returns the ids it checked; a lasting mismatch fails the test.
func (c *consistencyRun) check(args ...string) int {
	c.t.Helper()
	out, errOut, code := runBin(c.t, append([]string{"check", "--config", c.configFile(), "--rate", "50000"}, args...)...)
	m := checkTotal.FindStringSubmatch(out)
	if code != 0 || m == nil || m[2] != "0" {
		c.t.Fatalf("check %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
	}
	var n int
	fmt.Sscan(m[1], &n)
	if n == 0 {
		c.t.Fatalf("check %v checked nothing:\n%s", args, out)
	}
	return n
}

// TestRedisCluster runs sidecache against a real Redis Cluster of 3 masters: the binlog tail
// under load, the lease and the Bloom filter, whose keys all land on different masters.
func TestRedisCluster(t *testing.T) {
	cs := devstack.StartFor(t, devstack.Options{Cluster: true, GeneralLog: true})
	cc := cs.UniversalClient(t)

	t.Run("consistency", func(t *testing.T) {
		begin := time.Now()
		c := newConsistencyRunOn(t, cs, "cl_cons", "")
		onCluster(t, cs, c)
		c.start()
		c.start()
		t.Logf("database and sidecars up in %v", time.Since(begin).Round(time.Millisecond))
		writes := c.load(consistencyFor, consistencyRate, nil)
		begin = time.Now()
		c.report("Redis Cluster of 3 masters, 2 sidecars", writes, consistencyFor, c.settle())
		t.Logf("settled and verified in %v", time.Since(begin).Round(time.Millisecond))
		begin = time.Now()
		// The rows were cached on every master, so every master's deletes were tested.
		per := keysPerMaster(t, cc, c.db+":{items:*")
		t.Logf("cached rows per master: %v", per)
		for addr, n := range per {
			if n == 0 {
				t.Errorf("the master %s holds no cached row", addr)
			}
		}
		checked := c.check("--all")
		sampled := c.check() // a sample, up to half of it from the keys scanned on every master
		msg := fmt.Sprintf("check on the settled cluster: --all %d checked, a sample %d checked, 0 lasting mismatches, in %v",
			checked, sampled, time.Since(begin).Round(time.Millisecond))
		t.Log(msg)
		fmt.Println(msg)
	})

	// Midway through a load, a master is killed and comes back empty: its deletes fail
	// meanwhile, and the leader must notice and still leave nothing stale. First the master
	// that holds the checkpoint, which is then gone; then, with a Bloom filter, a master that
	// holds neither the checkpoint nor the filter, so that only the leader's check of each
	// master's run id can tell that deletes of changes it already passed were lost.
	for _, tc := range []struct {
		name, db string
		bloom    bool
	}{
		{"checkpoint's master restarted empty", "cl_restart_cp", false},
		{"another master restarted empty, with a Bloom filter", "cl_restart_rows", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newConsistencyRunOn(t, cs, tc.db, "")
			onCluster(t, cs, c)
			node := slices.Index(cs.RedisAddrs, c.rc.Options().Addr)
			if tc.bloom {
				c.cfg = replaceOnce(t, c.cfg, "    ttl: 10m\n", "    ttl: 10m\n"+bloomYAML)
				filter := masterOf(t, cc, keys.BloomMeta(c.db+":", "items")).Options().Addr
				cp := node
				for i, addr := range cs.RedisAddrs { // of 3 masters, one at least holds neither
					if i != cp && addr != filter {
						node = i
					}
				}
			}
			c.start()
			c.start()
			if tc.bloom {
				c.preload()
			}
			const d = 10 * time.Second
			var down time.Duration
			writes := c.load(d, consistencyRate, func() {
				begin := time.Now()
				cs.KillClusterNode(node)
				if err := cs.RestartClusterNode(context.Background(), node); err != nil {
					t.Error(err)
				}
				down = time.Since(begin)
			})
			c.report(fmt.Sprintf("Redis Cluster, %s, back after %v", tc.name, down.Round(time.Millisecond)), writes, d, c.settle())
		})
	}

	t.Run("master restored from a snapshot while no sidecar ran", func(t *testing.T) {
		// A row is cached on a master that does not hold the checkpoint, changed and
		// invalidated; then every sidecar stops, and that master restarts from a snapshot taken
		// before the delete, so the old row is back (planted here, as the snapshot would hold
		// it). The checkpoint, on another master, covers the change: only the masters' ids,
		// saved with it, can tell the next leader that a master lost deletes.
		c := newConsistencyRunOn(t, cs, "cl_snapshot", "")
		onCluster(t, cs, c)
		cpNode := slices.Index(cs.RedisAddrs, c.rc.Options().Addr)
		p := c.start()
		var id int
		var key string
		for id = 1; ; id++ {
			key = keys.Value(c.db+":", "items", fmt.Sprint(id))
			if masterOf(t, cc, key).Options().Addr != cs.RedisAddrs[cpNode] {
				break
			}
		}
		node := slices.Index(cs.RedisAddrs, masterOf(t, cc, key).Options().Addr)
		read := func(p *sidecarProc) string {
			t.Helper()
			res, err := http.Get(fmt.Sprintf("http://%s/v1/items/%d", p.addr, id))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			return strings.TrimSpace(string(b))
		}
		var old []byte
		devstack.Eventually(t, 10*time.Second, "the row was never cached", func() bool {
			read(p)
			var err error
			old, err = cc.Get(context.Background(), key).Bytes()
			return err == nil
		})
		if _, err := c.root.Exec("UPDATE items SET name = 'changed' WHERE id = ?", id); err != nil {
			t.Fatal(err)
		}
		c.settle()
		if n, _ := cc.Exists(context.Background(), key).Result(); n != 0 {
			t.Fatalf("the leader did not delete %s", key)
		}
		c.kill(p)
		cs.KillClusterNode(node)
		if err := cs.RestartClusterNode(context.Background(), node); err != nil {
			t.Fatal(err)
		}
		if err := cc.Set(context.Background(), key, old, 10*time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		q := c.start()
		devstack.Eventually(t, 15*time.Second, "the restored row outlived the new leader's start", func() bool {
			n, err := cc.Exists(context.Background(), key).Result()
			return q.isLeader() && err == nil && n == 0
		})
		want := fmt.Sprintf(`{"id":%d,"name":"changed","n":0}`, id)
		if got := read(q); got != want {
			t.Errorf("after the restore, id %d reads %s, want %s", id, got, want)
		}
		if !slices.ContainsFunc(q.log.snapshot(), func(l string) bool { return strings.Contains(l, "since the checkpoint was written") }) {
			t.Error("the new leader did not report the master's restart")
		}
		msg := fmt.Sprintf("Redis Cluster, master %d of 3 restored from a snapshot while no sidecar ran: id %d reads the changed row", node+1, id)
		t.Log(msg)
		fmt.Println(msg)
	})

	t.Run("lookup", func(t *testing.T) {
		// A lookup's key and its row's key are in different slots: a change of the unique
		// column must reach the old value's key, the new one's and the row's, each on its master.
		c := newConsistencyRunOn(t, cs, "cl_lookup", "")
		onCluster(t, cs, c)
		if _, err := c.root.Exec(`CREATE TABLE users (id INT NOT NULL PRIMARY KEY, email VARCHAR(40) NOT NULL UNIQUE, n INT NOT NULL);
			INSERT INTO users SELECT seq, CONCAT('u', seq, '@x'), 0 FROM seq_1_to_100`); err != nil {
			t.Fatal(err)
		}
		c.cfg += "  - name: users\n    lookups: [{name: by-email, columns: [email]}]\n"
		p := c.start()
		get := func(email string) string {
			t.Helper()
			res, err := http.Get("http://" + p.addr + "/v1/users/by-email/" + email)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			return fmt.Sprintf("%d %s", res.StatusCode, strings.TrimSpace(string(b)))
		}
		want := func(email, row string) {
			t.Helper()
			if got := get(email); (row == "" && !strings.HasPrefix(got, "404 ")) || (row != "" && got != "200 "+row) {
				t.Errorf("by-email %s: %s, want %s", email, got, cmp.Or(row, "404"))
			}
		}
		// Reads fill the cache once the sidecar sees a checkpoint that covers the entities.
		devstack.Eventually(t, 10*time.Second, "lookups still bypass the cache", func() bool {
			res, err := http.Get("http://" + p.addr + "/v1/users/by-email/u1@x")
			if err != nil {
				return false
			}
			res.Body.Close()
			return res.Header.Get("X-Cache") != "bypass"
		})
		for id := 1; id <= 100; id++ { // cached, and the keys of the new values cached as absent
			get(fmt.Sprintf("u%d@x", id))
			get(fmt.Sprintf("v%d@x", id))
		}
		per := keysPerMaster(t, cc, c.db+":{users/by-email:*")
		t.Logf("cached lookup keys per master: %v", per)
		total := 0
		for addr, n := range per {
			total += n
			if n == 0 {
				t.Errorf("the master %s holds no cached lookup key", addr)
			}
		}
		if total != 200 {
			t.Errorf("%d lookup keys cached, want the 200 read (100 rows, 100 absent values)", total)
		}
		if _, err := c.root.Exec(`UPDATE users SET email = CONCAT('v', id, '@x'), n = 1 WHERE id % 2 = 0;
			UPDATE users SET n = 2 WHERE id % 2 = 1`); err != nil {
			t.Fatal(err)
		}
		c.settle()
		for id := 1; id <= 100; id++ {
			if id%2 == 0 {
				want(fmt.Sprintf("u%d@x", id), "")
				want(fmt.Sprintf("v%d@x", id), fmt.Sprintf(`{"id":%d,"email":"v%d@x","n":1}`, id, id))
			} else {
				want(fmt.Sprintf("u%d@x", id), fmt.Sprintf(`{"id":%d,"email":"u%d@x","n":2}`, id, id))
				want(fmt.Sprintf("v%d@x", id), "")
			}
		}
	})

	t.Run("breakdown", func(t *testing.T) {
		// One key on each master: every request waits inside a sidecar while the table is
		// locked, so each key is loaded exactly once across both processes, or the lease failed.
		const perKey, procs = 100, 2
		c := startClusterOn(t, cs, "cl_breakdown", 30, procs, true, 3*time.Second)
		var ids []int
		seen := map[string]bool{}
		for id := 1; id <= 30 && len(ids) < 3; id++ {
			m, err := cc.(*redis.ClusterClient).MasterForKey(context.Background(), keys.Value(c.db+":", "items", fmt.Sprint(id)))
			if err != nil {
				t.Fatal(err)
			}
			if addr := m.Options().Addr; !seen[addr] {
				seen[addr] = true
				ids = append(ids, id)
			}
		}
		if len(ids) != 3 {
			t.Fatalf("ids 1-30 have keys on %d masters, want 3", len(ids))
		}
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 3 * perKey, MaxConnsPerHost: 3 * perKey}}
		unlock := lockItems(t, c.root)
		var replies []<-chan reply
		for _, id := range ids {
			replies = append(replies, c.storm(client, perKey, id))
		}
		devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
			n := c.inFlight()
			return n >= 3*perKey, fmt.Sprintf("only %d of %d requests reached the sidecars", n, 3*perKey)
		})
		unlock()
		for i, id := range ids {
			want := fmt.Sprintf(`{"id":%d,"name":"item %d"}`, id, id)
			for range perKey {
				if r := <-replies[i]; r.status != 200 || r.body != want {
					t.Fatalf("a request got %d %s, want 200 %s", r.status, r.body, want)
				}
			}
		}
		var selects []int
		for _, id := range ids {
			selects = append(selects, c.queries(id))
		}
		msg := fmt.Sprintf("breakdown on Redis Cluster, %d processes, %d waiting requests for each of ids %v (one per master): SELECTs %v",
			procs, perKey, ids, selects)
		t.Log(msg)
		fmt.Println(msg)
		for i, n := range selects {
			if n != 1 {
				t.Errorf("id %d: %d SELECTs, want exactly 1", ids[i], n)
			}
		}
	})

	t.Run("bloom and preload", func(t *testing.T) {
		c := newConsistencyRunOn(t, cs, "cl_bloom", "")
		onCluster(t, cs, c)
		c.cfg = replaceOnce(t, c.cfg, "    ttl: 10m\n", "    ttl: 10m\n"+bloomYAML)
		c.start()
		c.start()
		out := c.preload()
		per := keysPerMaster(t, cc, c.db+":{items:*")
		total := 0
		for _, n := range per {
			total += n
		}
		t.Logf("preload: %s; rows per master %v", strings.TrimSpace(out), per)
		if total != consistencyRows || len(per) != 3 {
			t.Errorf("preload cached %d rows on the masters %v, want %d on all 3", total, per, consistencyRows)
		}

		// Inserts and key moves add ids the filter must not call absent; verify counts a row
		// the filter hides as wrongly missing.
		const d = 10 * time.Second // a shorter run makes up less of a stall, and the writers could fall under 1,000/s
		writes := c.load(d, consistencyRate, nil)
		c.report("Redis Cluster, Bloom filter built by preload, 2 sidecars", writes, d, c.settle())

		// Ids that never existed are answered by the filter, not MySQL: at most its
		// false-positive rate (1% sized for 40,000 ids, with fewer in it) reaches MySQL. 200 such
		// ids make more than 20 queries with a probability under 1e-12 for a working filter;
		// without one, every id does.
		const absent = 200
		for id := 900_001; id <= 900_000+absent; id++ {
			res, err := http.Get(fmt.Sprintf("http://%s/v1/items/%d", c.procs[id%2].addr, id))
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != 404 {
				t.Fatalf("absent id %d: %d, want 404", id, res.StatusCode)
			}
		}
		var loaded int
		if err := c.root.QueryRow("SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Execute' AND argument LIKE ?",
			"%FROM `"+c.db+"`.`items` WHERE `id` = 900___").Scan(&loaded); err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("bloom on Redis Cluster: %d absent ids read, %d reached MySQL", absent, loaded)
		t.Log(msg)
		fmt.Println(msg)
		if loaded > 20 {
			t.Errorf("%d of %d absent ids were loaded from MySQL: the filter did not guard them", loaded, absent)
		}
		checked := c.check("--all")
		t.Logf("check --all: %d checked, 0 lasting mismatches", checked)
	})

	t.Run("eviction policy", func(t *testing.T) {
		// Each master has its own maxmemory-policy: one that may evict the checkpoint or a
		// filter is named, whichever master it is.
		ctx := context.Background()
		last := redis.NewClient(&redis.Options{Addr: cs.RedisAddrs[len(cs.RedisAddrs)-1]})
		defer last.Close()
		if err := last.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
			t.Fatal(err)
		}
		defer last.ConfigSet(ctx, "maxmemory-policy", "noeviction")
		c := newConsistencyRunOn(t, cs, "cl_policy", "")
		onCluster(t, cs, c)
		p := c.start()
		want := "maxmemory-policy=allkeys-lru node=" + last.Options().Addr
		devstack.Eventually(t, 10*time.Second, "no warning naming "+want, func() bool {
			return strings.Contains(strings.Join(p.log.snapshot(), "\n"), want)
		})
	})
}
