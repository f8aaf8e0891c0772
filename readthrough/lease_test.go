package readthrough_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/lease"
	"github.com/sidecache/sidecache/readthrough"
	"github.com/sidecache/sidecache/singleflight"
)

// rig is a real MariaDB table and a real Redis, with readers on them standing in for sidecar
// processes: each Reader has its own in-process flights, and they share Redis and its leases.
type rig struct {
	t      *testing.T
	db     string
	root   *sql.DB
	src    *mysqlsource.Source
	rc     *redis.Client
	prefix string
	entity readthrough.Entity
}

func newRig(t *testing.T, hot bool) *rig {
	t.Helper()
	d := devstack.NewDatabase(t, stack, "", `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL);
		INSERT INTO items VALUES (1, 'old'), (2, 'two')`)
	g := &rig{t: t, db: d.Name, root: d.Root}
	g.prefix = g.db + ":"
	ctx := context.Background()
	db, schema, err := mysqlsource.Open(d.DSN, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if g.src, err = mysqlsource.New(ctx, db, schema, []mysqlsource.Spec{{Name: "items", Table: "items"}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.src.Close)
	g.rc = stack.Client(t)
	key := g.src.Entity("items").Key
	parse := func(raw string) (string, error) { return key.Parse(raw, 255) }
	g.entity = readthrough.Entity{Name: "items", ParseID: parse, TTL: time.Minute, NullTTL: time.Minute, Hot: hot}
	return g
}

func (g *rig) exec(q string, args ...any) {
	g.t.Helper()
	if _, err := g.root.Exec(q, args...); err != nil {
		g.t.Fatalf("%s: %v", q, err)
	}
}

// reader returns a new Reader ("a process") with a lease of leaseTTL (0: no lease).
func (g *rig) reader(leaseTTL time.Duration, mod func(*readthrough.Options)) *readthrough.Reader {
	opts := readthrough.Options{
		Cache: readthrough.NewRedisCache(g.rc), Source: g.src, Entities: []readthrough.Entity{g.entity},
		KeyPrefix: g.prefix, LeaseWait: 5 * time.Second,
	}
	if leaseTTL > 0 {
		opts.Leases = lease.New(g.rc, leaseTTL)
	}
	if mod != nil {
		mod(&opts)
	}
	r := readthrough.New(opts)
	g.t.Cleanup(r.Close)
	return r
}

func (g *rig) key(id string) string { return keys.Value(g.prefix, "items", id) }

// queries counts the loads MariaDB executed for this rig's table, from its general log.
func (g *rig) queries() int {
	g.t.Helper()
	var n int
	if err := g.root.QueryRow("SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Execute'"+
		" AND argument LIKE ? AND argument NOT LIKE '%general_log%'", "%FROM `"+g.db+"`.`items`%").Scan(&n); err != nil {
		g.t.Fatal(err)
	}
	return n
}

// pausedLoad is an AfterLoad hook that holds the first load after its read until released.
type pausedLoad struct {
	once    sync.Once
	loaded  chan struct{}
	proceed chan struct{}
}

func newPausedLoad() *pausedLoad {
	return &pausedLoad{loaded: make(chan struct{}), proceed: make(chan struct{})}
}

func (p *pausedLoad) hook(ids []string) {
	p.once.Do(func() {
		close(p.loaded)
		<-p.proceed
	})
}

// TestStaleSetRace reproduces the race leases close: a loader reads the row, the row is
// updated and its key invalidated, then the loader fills. The old value must not land.
func TestStaleSetRace(t *testing.T) {
	for _, tc := range []struct {
		name      string
		leaseTTL  time.Duration
		wantStale bool
	}{
		{"with lease", 2 * time.Second, false},
		// Without the lease the race is real: this shows the test can see it.
		{"without lease", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newRig(t, false)
			pause := newPausedLoad()
			r := g.reader(tc.leaseTTL, func(o *readthrough.Options) { o.AfterLoad = pause.hook })
			deleter := invalidation.NewRedis(g.rc) // the invalidation's handle
			done := make(chan readthrough.Result)
			go func() {
				res, err := r.Get(context.Background(), "items", "1")
				if err != nil {
					t.Error(err)
				}
				done <- res
			}()
			<-pause.loaded // the loader has read 'old' and not yet filled
			g.exec("UPDATE items SET name = 'new' WHERE id = 1")
			if _, err := deleter.Invalidate(context.Background(), g.key("1")); err != nil {
				t.Fatal(err)
			}
			close(pause.proceed)
			paused := <-done

			cached, err := g.rc.Get(context.Background(), g.key("1")).Bytes()
			stale := err == nil && len(cached) > 0 && string(cached[10:]) == `{"id":1,"name":"old"}`
			if stale != tc.wantStale {
				t.Fatalf("old value in the cache after the write's invalidation: %v, want %v (cache: %q, %v)", stale, tc.wantStale, cached, err)
			}
			if !tc.wantStale {
				// The voided loader probed again and loaded the row as written, so neither it nor
				// anyone who joined its flight is handed the row from before the write.
				if string(paused.Body) != `{"id":1,"name":"new"}` || paused.Status != readthrough.Miss {
					t.Errorf("the paused loader answered %s (%s), want the new row", paused.Body, paused.Status)
				}
				res, err := r.Get(context.Background(), "items", "1")
				if err != nil || string(res.Body) != `{"id":1,"name":"new"}` || res.Status != readthrough.Hit {
					t.Fatalf("next read: %s %s %v, want the new row from the cache", res.Body, res.Status, err)
				}
				if n := g.queries(); n != 2 {
					t.Errorf("%d queries, want 2: the voided load and its one retry", n)
				}
			}
		})
	}
}

func TestMySQLDownWhileHoldingLease(t *testing.T) {
	g := newRig(t, false)
	r := g.reader(2*time.Second, nil)
	g.exec("RENAME TABLE items TO items_away")
	_, err := r.Get(context.Background(), "items", "1")
	if !errors.Is(err, readthrough.ErrDBUnavailable) {
		t.Fatalf("got %v, want ErrDBUnavailable", err)
	}
	ctx := context.Background()
	if n := g.rc.Exists(ctx, g.key("1"), keys.Lease(g.key("1"))).Val(); n != 0 {
		t.Fatalf("after a failed load %d of the value and its lease remain; want the lease released and nothing cached", n)
	}
	g.exec("RENAME TABLE items_away TO items")
	if res, err := r.Get(ctx, "items", "1"); err != nil || res.Status != readthrough.Miss {
		t.Fatalf("after MySQL returns: %+v %v", res, err)
	}
}

// holdLease makes reader a hold the lease on id 1 with its load paused, and returns the pause.
func holdLease(t *testing.T, a *readthrough.Reader, pause *pausedLoad) chan error {
	done := make(chan error, 1)
	go func() {
		_, err := a.Get(context.Background(), "items", "1")
		done <- err
	}()
	<-pause.loaded
	return done
}

func TestWaiterCancellation(t *testing.T) {
	g := newRig(t, false)
	pause := newPausedLoad()
	holder := g.reader(2*time.Second, func(o *readthrough.Options) { o.AfterLoad = pause.hook })
	waiter := g.reader(2*time.Second, nil) // another process
	held := holdLease(t, holder, pause)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := waiter.Get(ctx, "items", "1")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the waiter's own deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the cancelled waiter returned after %v", d)
	}
	close(pause.proceed)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if n := g.queries(); n != 1 {
		t.Errorf("%d queries, want 1", n)
	}
}

func TestFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fallback readthrough.Fallback
	}{{"load", readthrough.FallbackLoad}, {"unavailable", readthrough.FallbackUnavailable}} {
		t.Run(tc.name, func(t *testing.T) {
			g := newRig(t, false)
			pause := newPausedLoad()
			holder := g.reader(5*time.Second, func(o *readthrough.Options) { o.AfterLoad = pause.hook })
			waiter := g.reader(5*time.Second, func(o *readthrough.Options) {
				o.LeaseWait = 50 * time.Millisecond
				o.Fallback = tc.fallback
			})
			held := holdLease(t, holder, pause)
			res, err := waiter.Get(context.Background(), "items", "1")
			switch tc.fallback {
			case readthrough.FallbackLoad:
				if err != nil || res.Status != readthrough.Bypass || string(res.Body) != `{"id":1,"name":"old"}` {
					t.Fatalf("got %+v %v, want the row loaded directly (bypass)", res, err)
				}
				if n := g.rc.Exists(context.Background(), g.key("1")).Val(); n != 0 {
					t.Fatal("the fallback filled the cache without the lease")
				}
			case readthrough.FallbackUnavailable:
				if !errors.Is(err, readthrough.ErrWaitTimeout) {
					t.Fatalf("got %+v %v, want ErrWaitTimeout", res, err)
				}
			}
			close(pause.proceed)
			if err := <-held; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSlowLoadKeepsItsLease(t *testing.T) {
	g := newRig(t, false)
	const ttl = 150 * time.Millisecond
	pause := newPausedLoad()
	r := g.reader(ttl, func(o *readthrough.Options) { o.AfterLoad = pause.hook })
	held := holdLease(t, r, pause)
	// Keep the load paused across several lease periods, watching the lease get renewed.
	lk := keys.Lease(g.key("1"))
	renewals, last := 0, g.rc.PTTL(context.Background(), lk).Val()
	for renewals < 4 {
		cur := g.rc.PTTL(context.Background(), lk).Val()
		if cur <= 0 {
			t.Fatalf("the lease lapsed while its load was still running (after %d renewals)", renewals)
		}
		if cur > last {
			renewals++
		}
		last = cur
		time.Sleep(5 * time.Millisecond)
	}
	close(pause.proceed)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if b, err := g.rc.Get(context.Background(), g.key("1")).Bytes(); err != nil || string(b[10:]) != `{"id":1,"name":"old"}` {
		t.Fatalf("the slow load's fill did not land: %q %v", b, err)
	}
}

func TestConcurrentReadersAcrossProcessesLoadOnce(t *testing.T) {
	g := newRig(t, false)
	readers := []*readthrough.Reader{g.reader(2*time.Second, nil), g.reader(2*time.Second, nil), g.reader(2*time.Second, nil)}
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := readers[i%3].Get(context.Background(), "items", "2")
			if err != nil || string(res.Body) != `{"id":2,"name":"two"}` {
				t.Errorf("got %+v %v", res, err)
				return
			}
		}()
	}
	wg.Wait()
	if n := g.queries(); n != 1 {
		t.Errorf("%d queries reached MariaDB for one key from 3 readers, want 1", n)
	}
}

// TestHotKeyUnderLoad reads a hot entity continuously from three readers across several soft
// deadlines: no read waits on MySQL after the first fill, and each soft deadline costs exactly
// one refresh query cluster-wide.
func TestHotKeyUnderLoad(t *testing.T) {
	g := newRig(t, true)
	const soft = 200 * time.Millisecond
	g.entity.TTL, g.entity.StaleTTL = soft, time.Minute
	readers := []*readthrough.Reader{g.reader(2*time.Second, nil), g.reader(2*time.Second, nil), g.reader(2*time.Second, nil)}
	ctx := context.Background()
	if res, err := readers[0].Get(ctx, "items", "2"); err != nil || res.Status != readthrough.Miss {
		t.Fatalf("first read: %+v %v", res, err)
	}
	stop := time.Now().Add(6 * soft)
	var wg sync.WaitGroup
	var stale, hits atomic.Int32
	var slowest atomic.Int64
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				start := time.Now()
				res, err := readers[i%3].Get(ctx, "items", "2")
				if d := time.Since(start); int64(d) > slowest.Load() {
					slowest.Store(int64(d))
				}
				if err != nil || string(res.Body) != `{"id":2,"name":"two"}` {
					t.Errorf("got %+v %v", res, err)
					return
				}
				switch res.Status {
				case readthrough.Stale:
					stale.Add(1)
				case readthrough.Hit:
					hits.Add(1)
				default:
					t.Errorf("a read of a hot key was a %s: it waited on MySQL", res.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, r := range readers {
		r.Close() // let refreshes in flight finish before counting
	}
	// Every refresh query is one soft deadline: they are at least a soft TTL apart.
	rows, err := g.root.Query("SELECT event_time FROM mysql.general_log WHERE command_type = 'Execute'"+
		" AND argument LIKE ? AND argument NOT LIKE '%general_log%' ORDER BY event_time", "%FROM `"+g.db+"`.`items`%")
	if err != nil {
		t.Fatal(err)
	}
	var times []time.Time
	for rows.Next() {
		var s string
		rows.Scan(&s)
		ts, err := time.Parse("2006-01-02 15:04:05.999999", s)
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, ts)
	}
	rows.Close()
	t.Logf("%d hits, %d stale serves, %d queries (first fill + refreshes), slowest read %v",
		hits.Load(), stale.Load(), len(times), time.Duration(slowest.Load()))
	if len(times) < 3 {
		t.Fatalf("%d queries over %v with a %v soft TTL: the value was not refreshed", len(times), 6*soft, soft)
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < soft-20*time.Millisecond {
			t.Errorf("queries %d and %d are %v apart, less than the soft TTL %v: two refreshes for one deadline", i-1, i, gap, soft)
		}
	}
}

func TestPanickingLoadReleasesItsLease(t *testing.T) {
	g := newRig(t, false)
	r := g.reader(time.Second, func(o *readthrough.Options) {
		o.AfterLoad = func([]string) { panic("loader bug") }
	})
	_, err := r.Get(context.Background(), "items", "1")
	var pe *singleflight.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want the panic as an error", err)
	}
	if n := g.rc.Exists(context.Background(), keys.Lease(g.key("1"))).Val(); n != 0 {
		t.Fatal("the panicking loader left its lease behind")
	}
}

func TestClientHangUpAfterLoadStillFills(t *testing.T) {
	g := newRig(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	r := g.reader(time.Second, func(o *readthrough.Options) {
		o.AfterLoad = func([]string) { cancel() } // the client goes away between load and fill
	})
	if _, err := r.GetMany(ctx, "items", []string{"1", "2"}); err != nil {
		t.Logf("GetMany after the hang-up: %v", err)
	}
	bg := context.Background()
	for _, id := range []string{"1", "2"} {
		if n := g.rc.Exists(bg, keys.Lease(g.key(id))).Val(); n != 0 {
			t.Errorf("id %s: the lease outlived its load", id)
		}
		if n := g.rc.Exists(bg, g.key(id)).Val(); n != 1 {
			t.Errorf("id %s: the loaded row was not cached", id)
		}
	}
}
