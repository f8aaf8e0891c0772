package main

// Tests of known holes, written against the public contract only (the HTTP API, the config
// YAML, the Redis key names the README documents, MariaDB, and /proc of the sidecar process):
// a big transaction's memory, Redis coming back empty, an invalidate that answers 204 for a
// delete nobody did, foreign-key cascades the binlog does not show, error bodies that leak
// addresses, and a rolling deploy that adds an entity the CDC leader does not know.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

// hoServerIDs hands out CDC server ids of a range of their own.
var hoServerIDs atomic.Int32

func hoServerID() int { return 7100 + int(hoServerIDs.Add(1)) }

// hoHTTP is the client of these tests: generous, but never unbounded.
var hoHTTP = &http.Client{Timeout: 60 * time.Second}

// hoTickTable is the unrelated table whose inserts move the binlog position.
const hoTickTable = "CREATE TABLE ho_tick (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY);\n"

// hoRedis is a Redis client for the test's own reads of the documented keys.
func hoRedis(t *testing.T) *redis.Client {
	rc := stack.Client(t)
	return rc
}

// hoCDC is the cdc section for db, with a server id of its own.
func hoCDC(db string) string {
	return fmt.Sprintf(`cdc: {enabled: true, flavor: mariadb, server_id: %d, dsn: %q, leader_ttl: 1s, double_delete_delay: 200ms}
`, hoServerID(), stack.DSN("root", "", db))
}

// hoConfig is a config document for hoStartLogged (its %s is the listen address): text logs,
// the sidecar user of db, key_prefix "<db>:", then extra (cdc:, kafka:, entities: ...).
func hoConfig(db, redisAddr, extra string) string {
	return fmt.Sprintf("listen: %%s\nlog: {format: text}\nmysql: {dsn: %q}\nredis: {addrs: [%q], key_prefix: %q}\n",
		stack.DSN(db, db, db), redisAddr, db+":") + strings.ReplaceAll(extra, "%", "%%")
}

// hoGet sends a request and returns the status and body.
func hoGet(method, url string) (status int, body string, err error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, "", err
	}
	res, err := hoHTTP.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

// hoKey is the documented cache key of an entity's id.
func hoKey(db, entity, id string) string { return db + ":{" + entity + ":" + id + "}" }

// hoCheckpointKey is the documented checkpoint key of the binlog tail of db.
func hoCheckpointKey(db string) string { return db + ":{cdc:" + db + "}:checkpoint" }

// hoCheckpointGTID reads the GTID set of the checkpoint; ok is false while there is none.
func hoCheckpointGTID(rc *redis.Client, db string) (gtid string, ok bool) {
	b, err := rc.Get(context.Background(), hoCheckpointKey(db)).Bytes()
	if err != nil {
		return "", false
	}
	var cp struct {
		GTID string `json:"gtid"`
	}
	if json.Unmarshal(b, &cp) != nil {
		return "", false
	}
	return cp.GTID, true
}

// hoWaitTail waits until the binlog tail of db runs: its checkpoint exists. Inserts into the
// unrelated ho_tick table move the position until it does.
func hoWaitTail(t *testing.T, root *sql.DB, rc *redis.Client, db string) {
	t.Helper()
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		if _, ok := hoCheckpointGTID(rc, db); ok {
			return true, ""
		}
		if _, err := root.Exec("INSERT INTO ho_tick VALUES ()"); err != nil {
			return false, fmt.Sprintf("insert into ho_tick: %v", err)
		}
		return false, fmt.Sprintf("no checkpoint %s: the binlog tail does not run", hoCheckpointKey(db))
	})
}

// hoWaitCaughtUp waits until the checkpoint's GTID set equals the server's @@gtid_binlog_pos.
// sample is called on every round (to watch the process while it works).
func hoWaitCaughtUp(t *testing.T, root *sql.DB, rc *redis.Client, db string, timeout time.Duration, sample func()) time.Duration {
	t.Helper()
	var want string
	if err := root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&want); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	devstack.EventuallyState(t, timeout, func() (bool, string) {
		if sample != nil {
			sample()
		}
		got, ok := hoCheckpointGTID(rc, db)
		return ok && got == want, fmt.Sprintf("the checkpoint is at %q (present: %t), the server at %q", got, ok, want)
	})
	return time.Since(start)
}

// hoCacheRow reads entity/id through p until the row is in Redis under its documented key (a
// correct build may bypass the cache for a while after start), and returns the body read.
func hoCacheRow(t *testing.T, p *sidecarProc, rc *redis.Client, db, entity, id string) string {
	t.Helper()
	var body string
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		status, b, err := hoGet(http.MethodGet, "http://"+p.addr+"/v1/"+entity+"/"+id)
		body = b
		if err != nil || status != http.StatusOK {
			return false, fmt.Sprintf("GET %s/%s: %d %s %v", entity, id, status, b, err)
		}
		if n := rc.Exists(context.Background(), hoKey(db, entity, id)).Val(); n != 1 {
			return false, fmt.Sprintf("GET %s/%s answered %s, but %s is not in Redis", entity, id, b, hoKey(db, entity, id))
		}
		return true, ""
	})
	return body
}

// hoPeakRSS reads the peak resident set size (VmHWM) of a process in bytes.
func hoPeakRSS(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			if len(f) < 1 {
				return 0, false
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, false
			}
			return kb << 10, true
		}
	}
	return 0, false // a zombie has no memory lines
}

// hoRows is N from SIDECACHE_BIG_TXN_ROWS, default 500000: big enough that a tail which holds
// a transaction in memory goes far past the limit (at 200000 it was only sometimes over).
func hoRows(t *testing.T) int {
	const def = 500_000
	s := os.Getenv("SIDECACHE_BIG_TXN_ROWS")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 4 {
		t.Fatalf("SIDECACHE_BIG_TXN_ROWS=%q: want a number of rows of at least 4", s)
	}
	return n
}

// TestBigTransactionMemory updates every row of a big table in one transaction: the binlog tail
// must invalidate the cached rows without holding the whole transaction in memory.
func TestBigTransactionMemory(t *testing.T) {
	const db = "ho_bigtxn"
	const limit = 128 << 20
	n := hoRows(t)
	root := devstack.NewDatabase(t, stack, db, fmt.Sprintf(`CREATE TABLE big (id INT NOT NULL PRIMARY KEY, n INT NOT NULL, name VARCHAR(40) NOT NULL);
		INSERT INTO big SELECT seq, 0, CONCAT('row ', seq) FROM seq_1_to_%d;
		`, n)+hoTickTable).Root
	rc := hoRedis(t)
	p, _ := hoStartLogged(t, hoConfig(db, stack.RedisAddr, hoCDC(db)+"entities:\n  - name: big\n    ttl: 10m\n"))
	pid := p.cmd.Process.Pid
	ids := []int{1, 2, n / 2, n}
	for _, id := range ids {
		want := fmt.Sprintf(`{"id":%d,"n":0,"name":"row %d"}`, id, id)
		if got := hoCacheRow(t, p, rc, db, "big", fmt.Sprint(id)); got != want {
			t.Fatalf("big/%d before the update: %s, want %s", id, got, want)
		}
	}
	hoWaitTail(t, root, rc, db)
	idle, _ := hoPeakRSS(pid)

	start := time.Now()
	if _, err := root.Exec("UPDATE big SET n = n + 1"); err != nil {
		t.Fatal(err)
	}
	updated := time.Since(start)
	var peak int64
	sample := func() {
		if v, ok := hoPeakRSS(pid); ok {
			peak = max(peak, v)
		}
	}
	// Generous: a tail that streams the transaction works through tens of thousands of rows a
	// second, even on a busy 2-core machine.
	timeout := 90*time.Second + time.Duration(n/4000)*time.Second
	caught := "had not caught up"
	defer func() {
		sample()
		msg := fmt.Sprintf("big transaction: %d rows updated in one transaction; sidecar peak RSS %.1f MiB (peak %.1f MiB before the update; the UPDATE took %v, the checkpoint %s %v after it)",
			n, float64(peak)/(1<<20), float64(idle)/(1<<20), updated.Round(time.Millisecond), caught, time.Since(start).Round(time.Millisecond))
		t.Log(msg)
		fmt.Println(msg)
	}()
	hoWaitCaughtUp(t, root, rc, db, timeout, sample)
	caught = "caught up"
	sample()

	// The checkpoint covers the update, so both deletes of every key are done.
	for _, id := range ids {
		want := fmt.Sprintf(`{"id":%d,"n":1,"name":"row %d"}`, id, id)
		status, got, err := hoGet(http.MethodGet, fmt.Sprintf("http://%s/v1/big/%d", p.addr, id))
		if err != nil || status != http.StatusOK || got != want {
			t.Errorf("big/%d once the checkpoint covers the update: %d %s %v, want %s (the cached row was not invalidated)", id, status, got, err, want)
		}
	}
	// What the tail holds must not grow with the transaction: the same bound for any N.
	if peak >= limit {
		t.Errorf("peak RSS %.1f MiB while tailing a %d-row transaction, want under %d MiB", float64(peak)/(1<<20), n, limit>>20)
	}
}

// TestRedisRestartedEmptyUnderWrites restarts Redis empty (no persistence) five times during
// a write load: the checkpoint, the leader lease and every cached row are gone at once, and no
// row may stay stale once the tail has caught up.
//
// Besides the usual load, an application keeps rows of its own (ids from 1,000,001, which the
// load's writers never pick) and, for a while after each restart, reads one into the cache and
// then updates it (read-modify-write, each row once): a row cached after Redis came back and
// changed before the tail resumed must still be invalidated. Once the checkpoint covers those
// writes, and before the next restart empties Redis again, the application's rows of that
// restart are compared with MariaDB; the load's ids are compared at the end.
func TestRedisRestartedEmptyUnderWrites(t *testing.T) {
	const db = "ho_redis_restart"
	const d = 26 * time.Second
	// A first outage of 1s, then longer ones: a leader that stops tailing still saves its
	// checkpoint on the way out for about a second, and a Redis back by then gets it back.
	// Whether a restart opens a window depends on which sidecar's Redis client reconnects
	// first, hence several.
	outages := []time.Duration{time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second}
	const appFor = 1200 * time.Millisecond
	const appFirst, appRows = 1_000_001, 2000 // per restart
	c := newConsistencyRun(t, db)
	if _, err := c.root.Exec(fmt.Sprintf("INSERT INTO items SELECT %d + seq, CONCAT('app ', seq), 0 FROM seq_0_to_%d",
		appFirst, len(outages)*appRows-1)); err != nil {
		t.Fatal(err)
	}
	logs := []*procLog{hoStartInRun(c), hoStartInRun(c)}
	var redisDown atomic.Bool
	var broken atomic.Value // a string: why the scenario could not go on
	t.Cleanup(func() {
		if redisDown.Load() {
			stack.StartRedis(context.Background())
		}
	})
	restarted := make([]time.Time, len(outages))
	firstCached := make([]time.Time, len(outages)) // the first row cached after each restart
	app := make([][]int64, len(outages))           // rows read into the cache, then written, after each restart
	appStale := make([]int, len(outages))          // how many of them were stale once the checkpoint covered them
	back := make([]atomic.Int64, len(outages))     // ns from each restart until a checkpoint was back in Redis
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { // the restarts, from 2s into the load
		defer bg.Done()
		time.Sleep(2 * time.Second)
		for i, outage := range outages {
			stack.StopRedis()
			redisDown.Store(true)
			time.Sleep(outage) // the outage: part of the scenario, not a wait for a condition
			if err := stack.StartRedis(context.Background()); err != nil {
				broken.Store(fmt.Sprintf("restarting Redis: %v", err))
				return
			}
			redisDown.Store(false)
			at := time.Now()
			restarted[i] = at
			bg.Add(1)
			go func() {
				defer bg.Done()
				for time.Since(at) < 2*time.Minute {
					if _, ok := hoCheckpointGTID(c.rc, db); ok {
						back[i].Store(int64(time.Since(at)))
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
			app[i], firstCached[i] = hoReadThenWrite(c, appFirst+int64(i*appRows), at.Add(appFor))
			// Once the checkpoint covers the application's writes, both deletes of each are done.
			var pos string
			c.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos)
			deadline := time.Now().Add(30 * time.Second)
			for {
				got, _ := hoCheckpointGTID(c.rc, db)
				if hoGTIDSeq(got) >= hoGTIDSeq(pos) {
					break
				}
				if time.Now().After(deadline) {
					broken.Store(fmt.Sprintf("restart %d: the checkpoint is at %q 30s after the application's writes, which end at %q", i+1, got, pos))
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			n, err := hoVerifyIDs(c, app[i])
			if err != nil {
				broken.Store(fmt.Sprintf("restart %d: %v", i+1, err))
				return
			}
			appStale[i] = n
		}
	}()
	writes := c.load(d, consistencyRate, nil)
	bg.Wait()
	if msg, _ := broken.Load().(string); msg != "" {
		t.Fatal(msg)
	}
	settle := c.settle()
	sinceRestart := time.Since(restarted[len(restarted)-1])
	checked, stale := c.verify()
	var appWrites, appStaleAll int
	for i, ids := range app {
		appWrites += len(ids)
		appStaleAll += appStale[i]
		t.Logf("restart %d: Redis down %v, back at %s, first row cached again at %s; the application cached then updated %d of its rows in the %v after, %d of them stale once the checkpoint covered them",
			i+1, outages[i], restarted[i].UTC().Format("15:04:05.000"), firstCached[i].UTC().Format("15:04:05.000"), len(ids), appFor, appStale[i])
	}
	// How each new leader began: from a checkpoint, or, finding none, at the current position.
	for i, l := range logs {
		for _, line := range l.snapshot() {
			if strings.Contains(line, "resuming from the checkpoint") || strings.Contains(line, "no checkpoint") {
				t.Logf("sidecar %d: %s", i, line)
			}
		}
	}
	var backs []string
	for i := range back {
		if ns := back[i].Load(); ns > 0 {
			backs = append(backs, time.Duration(ns).Round(time.Millisecond).String())
		} else {
			backs = append(backs, "never (2 minutes)")
		}
	}
	msg := fmt.Sprintf("redis restarted empty %d times under writes: %d writes in %v (%.0f/s) on %d rows, 2 sidecars; a checkpoint was back in Redis %s after the restarts; the checkpoint caught up %v after the writes (%v after the last restart); %d ids checked, %d stale or wrongly missing; the application's read-then-write rows: %d updated, %d stale (by restart: %v)",
		len(outages), writes, d, float64(writes)/d.Seconds(), consistencyRows, strings.Join(backs, ", "),
		settle.Round(time.Millisecond), sinceRestart.Round(time.Millisecond), checked, stale, appWrites, appStaleAll, appStale)
	t.Log(msg)
	fmt.Println(msg)
	if stale+appStaleAll != 0 {
		t.Errorf("%d of %d ids of the load and %d of the application's %d rows stale or wrongly missing after Redis came back empty and the checkpoint caught up",
			stale, checked, appStaleAll, appWrites)
	}
}

// hoStartInRun starts a sidecar of a consistencyRun, as its start does, and keeps its log.
func hoStartInRun(c *consistencyRun) *procLog {
	p, log := hoStartLogged(c.t, strings.Replace(c.cfg, "SERVERID", fmt.Sprint(hoServerID()), 1))
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return log
}

// hoReadThenWrite is an application that reads a row through a sidecar and then updates it
// (read-modify-write), each row once, ids first, first+1, ... until until. Right after a Redis
// restart reads and fills fail for a while: a row is read (through the sidecars in turn) until
// it is in the cache, and only then written. It returns the ids cached and then written, and
// when the first was cached.
func hoReadThenWrite(c *consistencyRun, first int64, until time.Time) (cached []int64, firstCached time.Time) {
	rng := rand.New(rand.NewPCG(uint64(first), 3))
	for id := first; time.Now().Before(until); id++ {
		inCache := false
		for time.Now().Before(until) {
			p := c.anyProc(rng)
			if p == nil {
				break
			}
			hoGet(http.MethodGet, fmt.Sprintf("http://%s/v1/items/%d", p.addr, id))
			if c.rc.Exists(context.Background(), hoKey(c.db, "items", fmt.Sprint(id))).Val() == 1 {
				if firstCached.IsZero() {
					firstCached = time.Now()
				}
				inCache = true
				break
			}
		}
		if _, err := c.root.Exec("UPDATE items SET name = ?, n = n + 1 WHERE id = ?", fmt.Sprintf("rmw%d", rng.Int()), id); err != nil {
			c.t.Errorf("read-then-write: %v", err)
			return cached, firstCached
		}
		if inCache {
			cached = append(cached, id)
		}
	}
	return cached, firstCached
}

// hoVerifyIDs reads ids through the first sidecar, 100 at a time, compares them with MariaDB
// and returns how many differ (the first few are reported). It may run beside the test.
func hoVerifyIDs(c *consistencyRun, ids []int64) (stale int, err error) {
	for from := 0; from < len(ids); from += 100 {
		chunk := ids[from:min(from+100, len(ids))]
		var q []string
		for _, id := range chunk {
			q = append(q, fmt.Sprintf("id=%d", id))
		}
		status, body, err := hoGet(http.MethodGet, "http://"+c.procs[0].addr+"/v1/items?"+strings.Join(q, "&"))
		if err != nil || status != http.StatusOK {
			return stale, fmt.Errorf("multi-get: %d %s %v", status, body, err)
		}
		var got struct {
			Items map[string]json.RawMessage
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			return stale, fmt.Errorf("multi-get: %v: %s", err, body)
		}
		for _, id := range chunk {
			var name string
			var n int
			want := ""
			if c.root.QueryRow("SELECT name, n FROM items WHERE id = ?", id).Scan(&name, &n) == nil {
				want = fmt.Sprintf(`{"id":%d,"name":%q,"n":%d}`, id, name, n)
			}
			if row := string(got.Items[fmt.Sprint(id)]); row != want {
				stale++
				if stale <= 5 {
					c.t.Errorf("application row %d: sidecar %s, MariaDB %s", id, row, want)
				}
			}
		}
	}
	return stale, nil
}

// hoGTIDSeq is the highest sequence number in a MariaDB GTID set ("0-1-123,1-2-5").
func hoGTIDSeq(set string) int64 {
	var top int64
	for _, g := range strings.Split(set, ",") {
		parts := strings.Split(strings.TrimSpace(g), "-")
		if len(parts) != 3 {
			continue
		}
		if n, err := strconv.ParseInt(parts[2], 10, 64); err == nil {
			top = max(top, n)
		}
	}
	return top
}

// hoErrorBody decodes an error body; ok is false unless it is JSON with both fields set.
func hoErrorBody(body string) (code string, ok bool) {
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" || e.Message == "" {
		return "", false
	}
	return e.Error, true
}

// TestInvalidateNoContentMeansDone: 204 from POST .../invalidate promises the key is deleted.
// With every delete failing and Kafka unreachable, nothing deleted it and nothing took the
// retry over, so the answer must be an error, within the request timeout.
func TestInvalidateNoContentMeansDone(t *testing.T) {
	const db = "ho_inval"
	const requestTimeout = 3 * time.Second // more than lease.wait (2s), which the config requires
	devstack.NewDatabase(t, stack, db, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items VALUES (1, 'one'), (2, 'two')`)
	rc := hoRedis(t)
	common := fmt.Sprintf("limits: {request_timeout: %s}\nkafka: {brokers: [\"127.0.0.1:1\"]}\n", requestTimeout)
	entities := "entities:\n  - name: items\n    ttl: 10m\n"

	t.Run("deletes work", func(t *testing.T) {
		p, _ := hoStartLogged(t, hoConfig(db, stack.RedisAddr, common+"faults: {delete_failure_rate: 0}\n"+entities))
		hoCacheRow(t, p, rc, db, "items", "1")
		status, body, err := hoGet(http.MethodPost, "http://"+p.addr+"/v1/items/1/invalidate")
		if err != nil || status != http.StatusNoContent {
			t.Fatalf("invalidate with working deletes: %d %s %v, want 204", status, body, err)
		}
		if n := rc.Exists(context.Background(), hoKey(db, "items", "1")).Val(); n != 0 {
			t.Errorf("invalidate answered 204, but %s is still in Redis", hoKey(db, "items", "1"))
		}
	})

	t.Run("every delete fails, Kafka unreachable", func(t *testing.T) {
		p, _ := hoStartLogged(t, hoConfig(db, stack.RedisAddr, common+"faults: {delete_failure_rate: 1}\n"+entities))
		hoCacheRow(t, p, rc, db, "items", "2")
		start := time.Now()
		status, body, err := hoGet(http.MethodPost, "http://"+p.addr+"/v1/items/2/invalidate")
		took := time.Since(start)
		if err != nil {
			t.Fatalf("invalidate: %v after %v", err, took)
		}
		if status == http.StatusNoContent {
			t.Fatalf("invalidate answered 204 after %v, but the delete failed and Kafka never acknowledged a retry (%s still in Redis: %d); want 503 cache_unavailable",
				took.Round(time.Millisecond), hoKey(db, "items", "2"), rc.Exists(context.Background(), hoKey(db, "items", "2")).Val())
		}
		if code, ok := hoErrorBody(body); status != http.StatusServiceUnavailable || !ok || code != "cache_unavailable" {
			t.Errorf("invalidate: %d %s, want 503 with a JSON body {\"error\": \"cache_unavailable\", \"message\": ...}", status, body)
		}
		// The request timeout bounds the answer; the slack is for a busy machine.
		if took > requestTimeout+3*time.Second {
			t.Errorf("invalidate answered after %v, want within limits.request_timeout (%v)", took.Round(time.Millisecond), requestTimeout)
		}
	})
}

// hoStartLogged is startServe, with the process's log.
func hoStartLogged(t *testing.T, cfgDoc string) (*sidecarProc, *procLog) {
	t.Helper()
	p := startServe(t, cfgDoc)
	return p, p.log
}

// hoWaitReady polls /readyz until it answers 200.
func hoWaitReady(t *testing.T, p *sidecarProc) {
	t.Helper()
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		status, body, err := hoGet(http.MethodGet, "http://"+p.addr+"/readyz")
		return err == nil && status == http.StatusOK, fmt.Sprintf("/readyz: %d %s %v", status, body, err)
	})
}

// hoCascadeWarnings are the WARN lines that mention a foreign-key cascade, by the entity= they name.
func hoCascadeWarnings(lines []string, entities ...string) (found map[string]string, all []string) {
	found = map[string]string{}
	for _, l := range lines {
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "foreign-key cascade") {
			continue
		}
		all = append(all, l)
		for _, e := range entities {
			if strings.Contains(l, "entity="+e+" ") || strings.HasSuffix(l, "entity="+e) {
				found[e] = l
			}
		}
	}
	return found, all
}

// TestForeignKeyCascadeWarning: rows that a cascade changes never appear in the binlog, so the
// tail cannot invalidate them; sidecache must say so at start for each such entity.
func TestForeignKeyCascadeWarning(t *testing.T) {
	const db = "ho_fk"
	devstack.NewDatabase(t, stack, db, `CREATE TABLE parent (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		CREATE TABLE child (id INT NOT NULL PRIMARY KEY, parent_id INT NOT NULL,
			FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE);
		CREATE TABLE child2 (id INT NOT NULL PRIMARY KEY, parent_id INT NULL,
			FOREIGN KEY (parent_id) REFERENCES parent(id) ON UPDATE SET NULL);
		INSERT INTO parent VALUES (1, 'p');
		INSERT INTO child VALUES (1, 1);
		INSERT INTO child2 VALUES (1, 1)`)

	t.Run("children", func(t *testing.T) {
		p, log := hoStartLogged(t, hoConfig(db, stack.RedisAddr, hoCDC(db)+`entities:
  - name: parents
    table: parent
  - name: kids
    table: child
  - name: pets
    table: child2
`))
		// Checks run at start; allow for a build that logs them just after it serves.
		var found map[string]string
		var all []string
		deadline := time.Now().Add(15 * time.Second)
		for {
			found, all = hoCascadeWarnings(log.snapshot(), "parents", "kids", "pets")
			if (found["kids"] != "" && found["pets"] != "") || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, e := range []string{"kids (child, ON DELETE CASCADE)", "pets (child2, ON UPDATE SET NULL)"} {
			name, _, _ := strings.Cut(e, " ")
			if found[name] == "" {
				t.Errorf("no WARN line with \"foreign-key cascade\" and entity=%s for entity %s; foreign-key cascade warnings: %q", name, e, all)
			}
		}
		if found["parents"] != "" {
			t.Errorf("a cascade warning names the parent, whose rows no cascade changes: %s", found["parents"])
		}
		if t.Failed() {
			t.Logf("log of the sidecar %s:\n%s", p.addr, strings.Join(log.snapshot(), "\n"))
		}
	})

	t.Run("parent only", func(t *testing.T) {
		p, log := hoStartLogged(t, hoConfig(db, stack.RedisAddr, hoCDC(db)+`entities:
  - name: parents
    table: parent
`))
		hoWaitReady(t, p)
		if _, all := hoCascadeWarnings(log.snapshot()); len(all) != 0 {
			t.Errorf("a parent-only config warned of foreign-key cascades: %q", all)
		}
	})
}

// hoNoLeak fails the test if body holds any of the strings.
func hoNoLeak(t *testing.T, what, body string, leaks ...string) {
	t.Helper()
	for _, s := range leaks {
		if strings.Contains(body, s) {
			t.Errorf("%s: the body %s contains %q", what, body, s)
		}
	}
}

// TestErrorBodiesCarryNoAddresses: a 503's body goes to any client; it must name the failure,
// not the addresses, ports and users of the servers behind it.
func TestErrorBodiesCarryNoAddresses(t *testing.T) {
	const db = "ho_errbody"
	root := devstack.NewDatabase(t, stack, db, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items VALUES (1, 'one'), (2, 'two')`).Root
	entities := "entities:\n  - name: items\n    ttl: 10m\n"

	t.Run("redis down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := ln.Addr().String()
		ln.Close()
		_, port, _ := net.SplitHostPort(closed)
		// degraded.mode unavailable: a Redis outage is a 503 then (with mode load, reads go to
		// MySQL and stay 200).
		p, _ := hoStartLogged(t, hoConfig(db, closed, "degraded:\n  mode: unavailable\n"+entities))
		for _, path := range []string{"/v1/items/1", "/readyz"} {
			status, body, err := hoGet(http.MethodGet, "http://"+p.addr+path)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			if status != http.StatusServiceUnavailable {
				t.Errorf("GET %s with Redis at a closed port: %d %s, want 503", path, status, body)
			}
			if _, ok := hoErrorBody(body); !ok {
				t.Errorf("GET %s: body %s, want JSON with \"error\" and \"message\"", path, body)
			}
			hoNoLeak(t, "GET "+path+" with Redis down", body, "127.0.0.1", port, "dial", "tcp")
		}
	})

	t.Run("mysql access denied", func(t *testing.T) {
		p, _ := hoStartLogged(t, hoConfig(db, stack.RedisAddr, entities))
		devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
			status, body, err := hoGet(http.MethodGet, "http://"+p.addr+"/v1/items/1")
			return err == nil && status == http.StatusOK && body == `{"id":1,"name":"one"}`, fmt.Sprintf("GET items/1: %d %s %v", status, body, err)
		})
		if _, err := root.Exec("REVOKE SELECT ON `" + db + "`.* FROM '" + db + "'@'127.0.0.1'"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { root.Exec("GRANT SELECT ON `" + db + "`.* TO '" + db + "'@'127.0.0.1'") })
		// A session keeps the database privileges it had when it chose its default database:
		// end the sidecar's sessions, so that the revoke applies to the next query.
		var sessions []int64
		rows, err := root.Query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", db)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int64
			rows.Scan(&id)
			sessions = append(sessions, id)
		}
		rows.Close()
		for _, id := range sessions {
			root.Exec(fmt.Sprintf("KILL CONNECTION %d", id))
		}
		status, body, err := hoGet(http.MethodGet, "http://"+p.addr+"/v1/items/2")
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusServiceUnavailable {
			t.Errorf("GET items/2 without SELECT: %d %s, want 503", status, body)
		}
		if _, ok := hoErrorBody(body); !ok {
			t.Errorf("GET items/2 without SELECT: body %s, want JSON with \"error\" and \"message\"", body)
		}
		hoNoLeak(t, "GET items/2 without SELECT", body, "127.0.0.1", db)
	})
}

// TestRollingDeployNewEntity: sidecar A (the CDC leader) knows only items; sidecar B, the new
// version, adds things. B caches things rows, so a change to one must reach B's cache even though
// the leader that advances the shared checkpoint has never heard of things.
func TestRollingDeployNewEntity(t *testing.T) {
	const db = "ho_rolling"
	root := devstack.NewDatabase(t, stack, db, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		CREATE TABLE things (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items VALUES (1, 'item one');
		INSERT INTO things VALUES (1, 'thing one');
		`+hoTickTable).Root
	rc := hoRedis(t)
	a, _ := hoStartLogged(t, hoConfig(db, stack.RedisAddr, hoCDC(db)+"entities:\n  - name: items\n    ttl: 10m\n"))
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) { return a.isLeader(), "sidecar A does not lead (sidecache_cdc_leader is not 1)" })
	hoWaitTail(t, root, rc, db)

	b, _ := hoStartLogged(t, hoConfig(db, stack.RedisAddr, hoCDC(db)+"entities:\n  - name: items\n    ttl: 10m\n  - name: things\n    ttl: 10m\n"))
	hoCacheRow(t, b, rc, db, "items", "1")
	// A leads and does not cover things: B answers it from MySQL and caches nothing, since no
	// invalidation would ever reach what it cached.
	for range 5 {
		status, body, err := hoGet(http.MethodGet, "http://"+b.addr+"/v1/things/1")
		if err != nil || status != http.StatusOK || body != `{"id":1,"name":"thing one"}` {
			t.Fatalf("things/1 through B: %d %s %v", status, body, err)
		}
	}
	if n := rc.Exists(context.Background(), db+":{things:1}").Val(); n != 0 {
		t.Fatal("B cached things/1 while the leader does not cover things")
	}
	t.Logf("before the updates: A leads: %t, B leads: %t", a.isLeader(), b.isLeader())

	if _, err := root.Exec("UPDATE items SET name = 'item two' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Exec("UPDATE things SET name = 'thing two' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	// items, which both know: the tail runs.
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		status, body, err := hoGet(http.MethodGet, "http://"+b.addr+"/v1/items/1")
		return err == nil && status == http.StatusOK && body == `{"id":1,"name":"item two"}`,
			fmt.Sprintf("items/1 through B: %d %s %v, want the new name \"item two\"", status, body, err)
	})
	// things, which only B knows.
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		status, body, err := hoGet(http.MethodGet, "http://"+b.addr+"/v1/things/1")
		cp, _ := hoCheckpointGTID(rc, db)
		var pos string
		root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos)
		return err == nil && status == http.StatusOK && body == `{"id":1,"name":"thing two"}`,
			fmt.Sprintf("things/1 through B still %d %s %v, want the new name \"thing two\" (A leads: %t, B leads: %t; checkpoint %q, server %q; A is running: %t)",
				status, body, err, a.isLeader(), b.isLeader(), cp, pos, hoRunning(a))
	})
	if !hoRunning(a) {
		t.Error("sidecar A stopped during the rolling deploy")
	}

	// A goes (the deploy rolls on); B leads, covers things, and caches it from then on.
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.cmd.Wait()
	if got := hoCacheRow(t, b, rc, db, "things", "1"); got != `{"id":1,"name":"thing two"}` {
		t.Fatalf("things/1 through B once it leads: %s", got)
	}
	if _, err := root.Exec("UPDATE things SET name = 'thing three' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		status, body, err := hoGet(http.MethodGet, "http://"+b.addr+"/v1/things/1")
		return err == nil && status == http.StatusOK && body == `{"id":1,"name":"thing three"}`,
			fmt.Sprintf("things/1 through B, its leader: %d %s %v, want \"thing three\"", status, body, err)
	})
}

// hoRunning reports whether the sidecar still answers /healthz.
func hoRunning(p *sidecarProc) bool {
	status, _, err := hoGet(http.MethodGet, "http://"+p.addr+"/healthz")
	return err == nil && status == http.StatusOK
}
