package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

// sidecarProc is one `sidecache serve` process.
type sidecarProc struct {
	addr string
	cmd  *exec.Cmd
	log  *procLog
}

// procLog collects a process's stderr lines.
type procLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *procLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// startServe starts sidecache serve with cfg (a config document with %s for the listen
// address) and waits until it serves. The process's log is kept for the test to read, and
// shown when it exits before it serves.
func startServe(t *testing.T, cfgDoc string) *sidecarProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	path := filepath.Join(t.TempDir(), "sc.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(cfgDoc, addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	log := &procLog{}
	serving := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		var once sync.Once
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if testing.Verbose() && (strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")) {
				fmt.Fprintln(os.Stderr, addr, line)
			}
			log.mu.Lock()
			log.lines = append(log.lines, line)
			log.mu.Unlock()
			if strings.Contains(line, "msg=serving") {
				once.Do(func() { close(serving) })
			}
		}
	}()
	select {
	case <-serving:
	case <-exited:
		t.Fatalf("sidecache exited before serving:\n%s", strings.Join(log.snapshot(), "\n"))
	case <-time.After(30 * time.Second):
		t.Fatalf("sidecache did not serve within 30s:\n%s", strings.Join(log.snapshot(), "\n"))
	}
	return &sidecarProc{addr: addr, cmd: cmd, log: log}
}

func (p *sidecarProc) isLeader() bool {
	res, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return false
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return strings.Contains(string(b), "\nsidecache_cdc_leader 1\n")
}

type consistencyRun struct {
	t     *testing.T
	db    string
	root  *sql.DB
	rc    *redis.Client
	cfg   string
	mu    sync.Mutex
	procs []*sidecarProc
	maxID atomic.Int64
	reads atomic.Int64 // answered reads during load
	// writeLatency holds the last load's statement times, sorted, for the report.
	writeLatency []time.Duration
	// contrast: stale rows are counted, not failures (a run of a configuration known to leave
	// some, for comparison).
	contrast bool
}

const consistencyRows = 10_000

func newConsistencyRun(t *testing.T, db string) *consistencyRun {
	return newConsistencyRunWith(t, db, "")
}

// newConsistencyRunWith adds extra top-level configuration (kafka:, faults:).
func newConsistencyRunWith(t *testing.T, db, extra string) *consistencyRun {
	return newConsistencyRunOn(t, stack, db, extra)
}

// newConsistencyRunOn is newConsistencyRunWith on a stack of the test's own.
func newConsistencyRunOn(t *testing.T, stack *devstack.Stack, db, extra string) *consistencyRun {
	c := &consistencyRun{t: t, db: db}
	c.root = devstack.NewDatabase(t, stack, db, fmt.Sprintf(`CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL, n INT NOT NULL);
		INSERT INTO items SELECT seq, CONCAT('item ', seq), 0 FROM seq_1_to_%d`, consistencyRows)).Root
	c.maxID.Store(consistencyRows)
	c.rc = stack.Client(t)
	c.cfg = `listen: %s
log: {format: text}
mysql: {dsn: "` + stack.DSN(db, db, db) + `"}
redis: {addrs: ["` + stack.RedisAddr + `"], key_prefix: "` + db + `:"}
cdc: {enabled: true, flavor: mariadb, server_id: SERVERID, dsn: "` + stack.DSN("root", "", db) + `", leader_ttl: 1s, double_delete_delay: 200ms}
entities:
  - name: items
    ttl: 10m
` + extra
	return c
}

var serverIDs atomic.Int32

func (c *consistencyRun) start() *sidecarProc {
	doc := strings.Replace(c.cfg, "SERVERID", fmt.Sprint(2000+serverIDs.Add(1)), 1)
	p := startServe(c.t, doc)
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

func (c *consistencyRun) remove(p *sidecarProc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.procs {
		if q == p {
			c.procs = append(c.procs[:i], c.procs[i+1:]...)
			return
		}
	}
}

// kill ends p with SIGKILL, as a crash would, takes it out of the readers' choice and waits
// until it has exited.
func (c *consistencyRun) kill(p *sidecarProc) {
	c.remove(p)
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

func (c *consistencyRun) anyProc(rng *rand.Rand) *sidecarProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.procs) == 0 {
		return nil
	}
	return c.procs[rng.IntN(len(c.procs))]
}

// load writes at rate for d (inserts, updates, key changes, deletes) while readers read
// through the sidecars, and returns the writes done.
func (c *consistencyRun) load(d time.Duration, rate int, midway func()) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var writes atomic.Int64
	var wg sync.WaitGroup
	// Each writer is paced to rate/writers and waits for its statement, so the rate holds only
	// while a statement takes under writers/rate on average: 58 ms with 64 writers at
	// 1,100/s. A writer that falls behind catches up.
	const writers = 64
	latencies := make([][]time.Duration, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			interval := time.Duration(writers) * time.Second / time.Duration(rate)
			next := time.Now()
			for ctx.Err() == nil {
				id := 1 + rng.Int64N(c.maxID.Load())
				var err error
				start := time.Now()
				switch r := rng.IntN(10); {
				case r < 4:
					_, err = c.root.Exec("UPDATE items SET name = ?, n = n + 1 WHERE id = ?", fmt.Sprintf("v%d", rng.Int()), id)
				case r < 6:
					_, err = c.root.Exec("INSERT INTO items VALUES (?, 'inserted', 0)", c.maxID.Add(1))
				case r < 8:
					_, err = c.root.Exec("UPDATE IGNORE items SET id = ? WHERE id = ?", c.maxID.Add(1), id)
				default:
					_, err = c.root.Exec("DELETE FROM items WHERE id = ?", id)
				}
				if err != nil {
					c.t.Errorf("write: %v", err)
					return
				}
				latencies[w] = append(latencies[w], time.Since(start))
				writes.Add(1)
				next = next.Add(interval)
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
			}
		}()
	}
	// The readers are paced too, at up to consistencyReadRate in all: unpaced, they took
	// whatever CPU the box had left and competed with the writers for it, so a slower machine
	// lost writes rather than reads. A reader that falls behind does not catch up in a burst,
	// so on a starved machine reads give way and the writers keep their rate.
	const readers = 8
	// http.DefaultClient keeps 2 idle connections per sidecar, so the readers would dial a
	// new connection for most reads.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: readers}}
	defer client.CloseIdleConnections()
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			interval := time.Duration(readers) * time.Second / consistencyReadRate
			next := time.Now()
			for ctx.Err() == nil {
				if p := c.anyProc(rng); p != nil {
					if res, err := client.Get(fmt.Sprintf("http://%s/v1/items/%d", p.addr, 1+rng.Int64N(c.maxID.Load()))); err == nil {
						io.Copy(io.Discard, res.Body)
						res.Body.Close()
						c.reads.Add(1)
					}
				}
				if next = next.Add(interval); time.Until(next) < 0 {
					next = time.Now()
				}
				time.Sleep(time.Until(next))
			}
		}()
	}
	if midway != nil {
		time.Sleep(d / 2)
		midway()
	}
	wg.Wait()
	c.writeLatency = slices.Concat(latencies...)
	slices.Sort(c.writeLatency)
	return writes.Load()
}

// settle waits until the sidecars' checkpoint covers every write: then both deletes of every
// change are done.
func (c *consistencyRun) settle() time.Duration {
	c.t.Helper()
	var want string
	if err := c.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&want); err != nil {
		c.t.Fatal(err)
	}
	start := time.Now()
	for {
		var cp struct{ GTID string }
		b, _ := c.rc.Get(context.Background(), c.db+":{cdc:"+c.db+"}:checkpoint").Bytes()
		json.Unmarshal(b, &cp)
		if cp.GTID == want {
			return time.Since(start)
		}
		if time.Since(start) > 60*time.Second {
			c.t.Fatalf("the checkpoint is at %q, the server at %q, after a minute", cp.GTID, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verify reads every id through a sidecar and compares it with MariaDB.
func (c *consistencyRun) verify() (checked, stale int) {
	c.t.Helper()
	truth := map[int64]string{}
	rows, err := c.root.Query("SELECT id, name, n FROM items")
	if err != nil {
		c.t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var name string
		var n int
		rows.Scan(&id, &name, &n)
		truth[id] = fmt.Sprintf(`{"id":%d,"name":%q,"n":%d}`, id, name, n)
	}
	rows.Close()
	p := c.procs[0]
	max := c.maxID.Load()
	for from := int64(1); from <= max; from += 100 {
		var ids []string
		for id := from; id < from+100 && id <= max; id++ {
			ids = append(ids, fmt.Sprintf("id=%d", id))
		}
		res, err := http.Get("http://" + p.addr + "/v1/items?" + strings.Join(ids, "&"))
		if err != nil {
			c.t.Fatal(err)
		}
		var got struct {
			Items   map[string]json.RawMessage
			Missing []string
		}
		json.NewDecoder(res.Body).Decode(&got)
		res.Body.Close()
		for id := from; id < from+100 && id <= max; id++ {
			checked++
			row, cached := got.Items[fmt.Sprint(id)]
			want, exists := truth[id]
			switch {
			case exists && !cached, !exists && cached, exists && string(row) != want:
				stale++
				if stale <= 5 && c.contrast {
					c.t.Logf("contrast run: id %d: sidecar %s, MariaDB %s", id, row, want)
				} else if stale <= 5 {
					c.t.Errorf("id %d: sidecar %s, MariaDB %s", id, row, want)
				}
			}
		}
	}
	return checked, stale
}

func (c *consistencyRun) report(mode string, writes int64, d, settle time.Duration) {
	checked, stale := c.verify()
	msg := fmt.Sprintf("consistency (%s): %d writes in %v (%.0f/s) and %d reads on %d rows; settled %v after the writes; %d ids checked, %d stale or wrongly missing",
		mode, writes, d, float64(writes)/d.Seconds(), c.reads.Load(), consistencyRows, settle.Round(time.Millisecond), checked, stale)
	c.t.Log(msg)
	fmt.Println(msg)
	if rate := float64(writes) / d.Seconds(); rate < 1000 {
		c.t.Errorf("the writers managed %.0f writes/s, below the 1000/s this test is about; statement times: %s",
			rate, c.latencySummary())
	} else {
		c.t.Logf("statement times: %s", c.latencySummary())
	}
}

// latencySummary tells how long the last load's write statements took.
func (c *consistencyRun) latencySummary() string {
	l := c.writeLatency
	if len(l) == 0 {
		return "none"
	}
	at := func(q float64) time.Duration { return l[int(q*float64(len(l)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("p50 %v, p99 %v, max %v", at(0.5), at(0.99), at(1))
}

const (
	consistencyFor      = 20 * time.Second
	consistencyRate     = 1100 // writes/s
	consistencyReadRate = 1500 // reads/s through the sidecars
)

func TestConsistencyUndisturbed(t *testing.T) {
	c := newConsistencyRun(t, "cons_plain")
	c.start()
	c.start()
	writes := c.load(consistencyFor, consistencyRate, nil)
	c.report("undisturbed, 2 sidecars", writes, consistencyFor, c.settle())
}

// TestConsistencyNearCache: both sidecars keep values in memory, kept only by Redis's
// invalidations (max_staleness 1h, so nothing else refreshes them).
func TestConsistencyNearCache(t *testing.T) {
	c := newConsistencyRunWith(t, "cons_near", "near_cache: {enabled: true, max_entries: 100000, max_staleness: 1h}\n")
	c.start()
	c.start()
	writes := c.load(consistencyFor, consistencyRate, nil)
	c.report("near cache on, 2 sidecars", writes, consistencyFor, c.settle())
	if hits := c.metricsSum("sidecache_near_cache_hits_total"); hits == 0 {
		t.Error("no read was answered from the near cache: the run did not test it")
	} else {
		t.Logf("near cache hits: %.0f", hits)
	}
}

func TestConsistencyLeaderKilled(t *testing.T) {
	c := newConsistencyRun(t, "cons_kill")
	a, b := c.start(), c.start()
	writes := c.load(consistencyFor, consistencyRate, func() {
		leader := a
		if b.isLeader() {
			leader = b
		}
		c.kill(leader)
	})
	c.report("CDC leader killed with SIGKILL midway, the other took over", writes, consistencyFor, c.settle())
}

func TestConsistencyRestartFromCheckpoint(t *testing.T) {
	c := newConsistencyRun(t, "cons_restart")
	p := c.start()
	writes := c.load(consistencyFor, consistencyRate, func() {
		c.kill(p)
		time.Sleep(time.Second) // writes go on while no sidecar runs
		c.start()
	})
	c.report("the only sidecar killed midway and restarted from its checkpoint", writes, consistencyFor, c.settle())
}
