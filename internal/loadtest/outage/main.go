// Command outage measures what applications see while Redis is away, and checks that no
// answer is stale once it is back. It starts MariaDB and Redis (devstack), a 10,000-row table
// and two `sidecache serve` processes with the binlog tail on; paced readers (single gets and
// multi-gets, spread over both sidecars) and a writer (updates and inserts) run throughout.
// Scenarios:
//
//   - kill (default): after the warm-up Redis is killed with SIGKILL, kept down, and started
//     again empty; the sidecars run with degraded.mode "load".
//   - unavailable: the same with degraded.mode "unavailable": answers during the outage are
//     503s that must be fast, and MySQL must see next to no queries.
//   - sentinel: Redis is a master, a replica and three Sentinels; the master is killed and
//     the Sentinels promote the replica, which the sidecars must follow.
//   - hang: Redis is stopped with SIGSTOP instead: connections are accepted and never
//     answered, so every call runs into its timeout; SIGCONT brings it back with its data.
//
// It prints requests per second by status before, during and after the outage, latency during
// it, MySQL's own count of SELECTs per second (Com_select), how long after Redis was back 99%
// of answers were served again (200, or 404 for an id not inserted yet), and then, once the writes stop and the binlog tail has caught up, compares every
// id as both sidecars answer it with MySQL. Stale or wrongly missing rows exit non-zero; the
// latency and rate goals are printed as met or not met. `make outage` runs it.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

type options struct {
	bin        string
	scenario   string
	dir        string
	rows       int
	sidecars   int
	readers    int
	rate       int
	multi      float64
	writeRate  int
	maxDBRate  int
	noDegraded bool
	near       bool
	warmup     time.Duration
	outage     time.Duration
	after      time.Duration
	latency    time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/sidecache", "the sidecache binary")
	flag.StringVar(&o.scenario, "scenario", "kill", "kill, unavailable, sentinel or hang")
	flag.StringVar(&o.dir, "dir", "", "keep the servers' data, configs and logs here (default: a temporary directory, removed)")
	flag.IntVar(&o.rows, "rows", 10_000, "rows in the table at the start")
	flag.IntVar(&o.sidecars, "sidecars", 2, "sidecache processes")
	flag.IntVar(&o.readers, "readers", 32, "concurrent HTTP clients, spread over the sidecars")
	flag.IntVar(&o.rate, "rate", 2000, "requests per second of all readers together (0: as fast as they can)")
	flag.Float64Var(&o.multi, "multi", 0.1, "fraction of requests that are multi-gets of 10 ids")
	flag.IntVar(&o.writeRate, "write-rate", 200, "updates and inserts per second")
	flag.IntVar(&o.maxDBRate, "max-db-rate", 100, "degraded.max_db_rate of each sidecar")
	flag.BoolVar(&o.noDegraded, "no-degraded", false, "leave degraded out of the config (for a sidecache that does not know it)")
	flag.BoolVar(&o.near, "near", false, "turn the sidecars' near cache on (near_cache.enabled; not with -scenario sentinel)")
	flag.DurationVar(&o.warmup, "warmup", 10*time.Second, "load before Redis goes away")
	flag.DurationVar(&o.outage, "outage", 8*time.Second, "how long Redis stays down (kill, unavailable, hang)")
	flag.DurationVar(&o.after, "after", 12*time.Second, "load after Redis is back")
	flag.DurationVar(&o.latency, "latency-goal", 50*time.Millisecond, "p99 latency goal during the outage")
	flag.Parse()
	switch o.scenario {
	case "kill", "unavailable", "sentinel", "hang":
	default:
		fmt.Fprintf(os.Stderr, "outage: unknown scenario %q (kill, unavailable, sentinel or hang)\n", o.scenario)
		os.Exit(2)
	}
	ok, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outage:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// The table: its rows are compared field by field with what the sidecars answer.
const (
	database = "outage"
	schema   = `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL, n INT NOT NULL);
INSERT INTO items SELECT seq, CONCAT('item ', seq), 0 FROM seq_1_to_%d`
	multiIDs = 10 // ids in one multi-get
)

func run(o options) (ok bool, err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "outage: "+format+"\n", args...) }
	stack, err := devstack.Start(ctx, devstack.Options{Dir: o.dir, Sentinel: o.scenario == "sentinel", Logf: logf})
	if err != nil {
		return false, err
	}
	defer stack.Stop()
	dsn, err := stack.CreateDatabase(ctx, database)
	if err != nil {
		return false, err
	}
	root, err := stack.Root(database)
	if err != nil {
		return false, err
	}
	defer root.Close()
	if _, err := root.ExecContext(ctx, fmt.Sprintf(schema, o.rows)); err != nil {
		return false, err
	}

	mode := "load"
	if o.scenario == "unavailable" {
		mode = "unavailable"
	}
	var sidecars []*devstack.Sidecar
	for i := range o.sidecars {
		sc, err := stack.StartSidecar(ctx, o.bin, fmt.Sprintf("sidecache-%d", i+1), func(listen string) string {
			return config(o, stack, mode, dsn, listen, 3001+i)
		})
		if err != nil {
			if strings.Contains(err.Error(), "unknown field") {
				err = fmt.Errorf("%w\n(this sidecache does not know the outage settings yet; -no-degraded leaves degraded out)", err)
			}
			return false, err
		}
		defer sc.Stop()
		sidecars = append(sidecars, sc)
	}
	if err := waitCovered(ctx, sidecars); err != nil {
		return false, err
	}

	r := &recorder{start: time.Now()}
	l := newLoad(o, sidecars, root, r)
	loadCtx, endLoad := context.WithCancel(ctx)
	defer endLoad()
	var wg sync.WaitGroup
	l.run(loadCtx, &wg)
	comSelect := &sampler{db: root, start: r.start}
	wg.Add(1)
	go func() { defer wg.Done(); comSelect.run(loadCtx) }()

	sleep(ctx, o.warmup)
	var ev events
	switch o.scenario {
	case "kill", "unavailable":
		ev.down = r.since()
		stack.KillRedis()
		logf("killed redis; it stays down %v", o.outage)
		sleep(ctx, o.outage)
		if err := stack.StartRedis(ctx); err != nil {
			return false, err
		}
		ev.back = r.since()
		logf("redis is back, empty")
	case "hang":
		ev.down = r.since()
		if err := stack.PauseRedis(); err != nil {
			return false, err
		}
		logf("stopped redis with SIGSTOP; it hangs %v", o.outage)
		sleep(ctx, o.outage)
		if err := stack.ResumeRedis(); err != nil {
			return false, err
		}
		ev.back = r.since()
		logf("redis continues, with its data")
	case "sentinel":
		ev.down = r.since()
		if _, err := stack.KillRedisMaster(ctx); err != nil {
			return false, err
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		master, err := stack.WaitFailover(wctx)
		cancel()
		if err != nil {
			return false, err
		}
		ev.back = r.since()
		logf("the sentinels promoted %s", master)
	}
	sleep(ctx, o.after)
	ev.end = r.since()
	endLoad()
	wg.Wait()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}

	rep := report{o: o, mode: mode, ev: ev, samples: r.all(), comSelect: comSelect.points, writes: l.writes.Load(), writeErrs: l.writeErrs.Load()}
	rep.traffic()
	// A tail that never catches up is reported, and the comparison still runs: it shows what
	// the sidecars answer then.
	settled, settleErr := settle(ctx, root, sidecars)
	if settleErr != nil {
		fmt.Printf("\nthe binlog tail did not settle: %v\n", settleErr)
	}
	v, err := verify(ctx, root, sidecars, l.maxID.Load())
	if err != nil {
		return false, err
	}
	return rep.summary(settled, settleErr == nil, v), nil
}

// config is one sidecar's configuration.
func config(o options, stack *devstack.Stack, mode, dsn, listen string, serverID int) string {
	redisConf := fmt.Sprintf("addrs: [%q]", stack.RedisAddr)
	if o.scenario == "sentinel" {
		redisConf = fmt.Sprintf("addrs: [%s], master_name: %q", quoteAll(stack.SentinelAddrs), stack.MasterName)
	}
	degraded := fmt.Sprintf("degraded: {mode: %s, max_db_rate: %d}\n", mode, o.maxDBRate)
	if o.noDegraded {
		degraded = ""
	}
	if o.near {
		degraded += "near_cache: {enabled: true}\n"
	}
	return fmt.Sprintf(`listen: %q
log: {level: warn, format: text}
mysql: {dsn: %q}
redis: {%s, key_prefix: "outage:"}
cdc: {enabled: true, flavor: mariadb, server_id: %d, dsn: %q, leader_ttl: 1s, double_delete_delay: 200ms}
%sentities:
  - name: items
    ttl: 10m
`, listen, dsn, redisConf, serverID, stack.DSN("root", "", database), degraded)
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// status is the part of GET /status this program reads.
type status struct {
	CDC *struct {
		Checkpoint string          `json:"checkpoint"`
		Covered    map[string]bool `json:"covered"`
	} `json:"cdc"`
}

func getStatus(ctx context.Context, sc *devstack.Sidecar) (status, error) {
	var st status
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+sc.Addr+"/status", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("/status of %s: %w", sc.Addr, err)
	}
	if st.CDC == nil {
		return st, fmt.Errorf("/status of %s has no cdc part", sc.Addr)
	}
	return st, nil
}

// waitCovered waits until every sidecar reads items through the cache: a binlog tail leads and
// its checkpoint covers the entity.
func waitCovered(ctx context.Context, sidecars []*devstack.Sidecar) error {
	return poll(ctx, 60*time.Second, "the binlog tail to cover items", func() (bool, error) {
		for _, sc := range sidecars {
			st, err := getStatus(ctx, sc)
			if err != nil || !st.CDC.Covered["items"] {
				return false, err
			}
		}
		return true, nil
	})
}

// settle waits until every sidecar sees a checkpoint at MySQL's binlog position: then both
// deletes of every change are done.
func settle(ctx context.Context, root *sql.DB, sidecars []*devstack.Sidecar) (time.Duration, error) {
	var want string
	if err := root.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&want); err != nil {
		return 0, err
	}
	start := time.Now()
	err := poll(ctx, 60*time.Second, "the checkpoint to reach "+want, func() (bool, error) {
		for _, sc := range sidecars {
			st, err := getStatus(ctx, sc)
			if err != nil || st.CDC.Checkpoint != want {
				return false, err
			}
		}
		return true, nil
	})
	return time.Since(start), err
}

// poll calls cond every 50 ms until it holds, for at most timeout.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %v for %s (last error: %v)", timeout, what, last)
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// sleep waits d, or less when ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// events are the moments of the run, since its start.
type events struct {
	down, back, end time.Duration
}

// load is the readers and the writer.
type load struct {
	o         options
	sidecars  []*devstack.Sidecar
	root      *sql.DB
	rec       *recorder
	client    *http.Client
	maxID     atomic.Int64 // the highest id inserted
	writes    atomic.Int64
	writeErrs atomic.Int64
}

func newLoad(o options, sidecars []*devstack.Sidecar, root *sql.DB, rec *recorder) *load {
	l := &load{o: o, sidecars: sidecars, root: root, rec: rec, client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: o.readers, DisableCompression: true},
	}}
	l.maxID.Store(int64(o.rows))
	return l
}

func (l *load) run(ctx context.Context, wg *sync.WaitGroup) {
	for i := range l.o.readers {
		wg.Add(1)
		go func() { defer wg.Done(); l.read(ctx, i) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); l.write(ctx) }()
}

// read sends requests at its share of the rate, to the sidecars in turn: mostly single gets,
// some multi-gets, and a few for ids the writer is about to insert (their null markers must
// go when the rows come).
func (l *load) read(ctx context.Context, n int) {
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	var interval time.Duration
	if l.o.rate > 0 {
		interval = time.Duration(l.o.readers) * time.Second / time.Duration(l.o.rate)
	}
	// Readers start spread over one interval, so their requests do not come in bursts.
	next := time.Now().Add(time.Duration(rng.Int64N(int64(interval) + 1)))
	id := func() int64 {
		max := l.maxID.Load()
		if rng.IntN(50) == 0 {
			return max + 1 + rng.Int64N(3)
		}
		return 1 + rng.Int64N(max)
	}
	for i := n; ; i++ {
		if interval > 0 {
			if !sleep(ctx, time.Until(next)) {
				return
			}
			next = next.Add(interval)
			if behind := time.Since(next); behind > time.Second {
				next = time.Now() // a reader that fell far behind does not burst to catch up
			}
		} else if ctx.Err() != nil {
			return
		}
		sc := l.sidecars[i%len(l.sidecars)]
		url, multi := fmt.Sprintf("http://%s/v1/items/%d", sc.Addr, id()), rng.Float64() < l.o.multi
		if multi {
			var q []string
			for range multiIDs {
				q = append(q, fmt.Sprintf("id=%d", id()))
			}
			url = fmt.Sprintf("http://%s/v1/items?%s", sc.Addr, strings.Join(q, "&"))
		}
		at := l.rec.since()
		s := sample{at: at, multi: multi}
		res, err := l.client.Get(url)
		if err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			s.status = int16(res.StatusCode)
			s.cache = cacheIndex(res.Header.Get("X-Cache"))
		} else if ctx.Err() != nil {
			return // the run ended under the request
		}
		s.lat = l.rec.since() - at
		l.rec.add(n, s)
	}
}

// write updates rows (80%) and inserts new ones (20%) at writeRate, as an application would,
// straight to MySQL.
func (l *load) write(ctx context.Context) {
	rng := rand.New(rand.NewPCG(99, 1))
	interval := time.Second / time.Duration(max(l.o.writeRate, 1))
	next := time.Now()
	for sleep(ctx, time.Until(next)) {
		next = next.Add(interval)
		var err error
		if rng.IntN(5) == 0 {
			id := l.maxID.Load() + 1
			if _, err = l.root.ExecContext(ctx, "INSERT INTO items VALUES (?, ?, 0)", id, fmt.Sprintf("new %d", id)); err == nil {
				l.maxID.Store(id)
			}
		} else {
			_, err = l.root.ExecContext(ctx, "UPDATE items SET name = ?, n = n + 1 WHERE id = ?",
				fmt.Sprintf("v%d", rng.Uint32()), 1+rng.Int64N(l.maxID.Load()))
		}
		if err != nil && ctx.Err() == nil {
			l.writeErrs.Add(1)
			continue
		}
		l.writes.Add(1)
	}
}

// sample is one request as a reader saw it.
type sample struct {
	at, lat time.Duration // sent, since the run's start; how long the answer took
	status  int16         // 0: no answer (a transport error or timeout)
	cache   uint8         // index into cacheNames
	multi   bool
}

var cacheNames = []string{"", "hit", "miss", "negative", "stale", "bypass"}

func cacheIndex(h string) uint8 {
	if i := slices.Index(cacheNames, h); i > 0 {
		return uint8(i)
	}
	return 0
}

// recorder keeps every reader's samples, each in a list of its own.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	lists map[int][]sample
}

func (r *recorder) since() time.Duration { return time.Since(r.start) }

func (r *recorder) add(reader int, s sample) {
	r.mu.Lock()
	if r.lists == nil {
		r.lists = map[int][]sample{}
	}
	r.lists[reader] = append(r.lists[reader], s)
	r.mu.Unlock()
}

// all returns every sample in the order they were sent.
func (r *recorder) all() []sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []sample
	for _, l := range r.lists {
		all = append(all, l...)
	}
	slices.SortFunc(all, func(a, b sample) int { return int(a.at - b.at) })
	return all
}

// sampler reads MySQL's count of SELECT statements once a second.
type sampler struct {
	db     *sql.DB
	start  time.Time
	points []point
}

type point struct {
	at    time.Duration
	value int64
}

func (s *sampler) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var name string
		var v int64
		// A context of its own: the last sample is taken as the load ends.
		qctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.db.QueryRowContext(qctx, "SHOW GLOBAL STATUS LIKE 'Com_select'").Scan(&name, &v)
		cancel()
		if err == nil {
			s.points = append(s.points, point{time.Since(s.start), v})
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// perSecond turns counter samples into rates: per second between two samples, each at the
// middle of its interval.
func perSecond(points []point) []point {
	var out []point
	for i := 1; i < len(points); i++ {
		d := points[i].at - points[i-1].at
		out = append(out, point{points[i-1].at + d/2, int64(float64(points[i].value-points[i-1].value) / d.Seconds())})
	}
	return out
}
