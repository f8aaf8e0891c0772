package check_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/check"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/readthrough"
)

// stack is the package's MariaDB and Redis, or nil when they could not start outside CI.
var stack *devstack.Stack

func TestMain(m *testing.M) { devstack.Main(m, devstack.Options{}, &stack) }

// rig is a database with an integer-keyed and a string-keyed table, and a Redis key prefix of
// its own.
type rig struct {
	t      *testing.T
	db     *devstack.Database
	src    *mysqlsource.Source
	rc     *redis.Client
	prefix string
}

func newRig(t *testing.T, rows int) *rig {
	t.Helper()
	d := devstack.NewDatabase(t, stack, "", fmt.Sprintf(`
		CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL);
		INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d;
		CREATE TABLE codes (code VARCHAR(8) NOT NULL PRIMARY KEY, label VARCHAR(20)) CHARACTER SET utf8mb4;
		INSERT INTO codes VALUES ('a', 'A'), ('b', 'B'), ('É', NULL);
		CREATE TABLE pairs (a SMALLINT NOT NULL, b VARCHAR(8) NOT NULL, v INT, PRIMARY KEY (a, b)) CHARACTER SET utf8mb4;
		INSERT INTO pairs SELECT seq %% 50, CONCAT('x,', seq), seq FROM seq_1_to_%d`, rows, rows))
	g := &rig{t: t, db: d, rc: stack.Client(t), prefix: d.Name + ":"}
	db, schema, err := mysqlsource.Open(d.DSN, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	specs := []mysqlsource.Spec{{Name: "items", Table: "items"}, {Name: "codes", Table: "codes"}, {Name: "pairs", Table: "pairs"}}
	if g.src, err = mysqlsource.New(context.Background(), db, schema, specs, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.src.Close)
	return g
}

// checker returns a Checker on the rig; mod changes its options.
func (g *rig) checker(mod func(*check.Options)) *check.Checker {
	o := check.Options{
		Redis: g.rc, Source: g.src, Prefix: g.prefix, Settle: 100 * time.Millisecond, Rate: 1e6,
		Entities: []check.Entity{
			{Name: "items", Key: g.src.Entity("items").Key},
			{Name: "codes", Key: g.src.Entity("codes").Key},
		},
	}
	if mod != nil {
		mod(&o)
	}
	return check.New(o)
}

func (g *rig) exec(q string, args ...any) {
	g.t.Helper()
	if _, err := g.db.Root.Exec(q, args...); err != nil {
		g.t.Fatalf("%s: %v", q, err)
	}
}

// row is the row as the read path caches it.
func (g *rig) row(entity, id string) []byte {
	g.t.Helper()
	row, found, err := g.src.Load(context.Background(), entity, id)
	if err != nil || !found {
		g.t.Fatalf("%s %s: found %v, %v", entity, id, found, err)
	}
	return row
}

// plant writes a cached value as the read path would.
func (g *rig) plant(entity, id string, v readthrough.Cached) {
	g.plantRaw(entity, id, v.Encode())
}

func (g *rig) plantRaw(entity, id string, b []byte) {
	g.t.Helper()
	if err := g.rc.Set(context.Background(), keys.Value(g.prefix, entity, id), b, time.Minute).Err(); err != nil {
		g.t.Fatal(err)
	}
}

func (g *rig) run(c *check.Checker, r check.Round) check.Report {
	g.t.Helper()
	rep, err := c.Check(context.Background(), r)
	if err != nil {
		g.t.Fatal(err)
	}
	return rep
}

func TestCountsEachKindOfMismatch(t *testing.T) {
	g := newRig(t, 20)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute)
	for _, id := range []string{"1", "2", "3", "4", "5"} {
		g.plant("items", id, readthrough.Cached{Row: g.row("items", id)})
	}
	g.plant("items", "6", readthrough.Cached{Row: []byte(`{"id":6,"name":"old"}`)})         // stale
	g.plant("items", "100", readthrough.Cached{Row: []byte(`{"id":100,"name":"gone"}`)})    // ghost
	g.plant("items", "7", readthrough.Cached{Null: true})                                   // wrongly missing
	g.plant("items", "200", readthrough.Cached{Null: true})                                 // rightly missing
	g.plantRaw("items", "8", append([]byte{2, 'v', 0, 0, 0, 0, 0, 0, 0, 0}, `{"id":8}`...)) // a format from the future
	g.plant("items", "9", readthrough.Cached{Row: g.row("items", "9"), Deadline: past})     // hot, past its deadline, right
	g.plant("items", "10", readthrough.Cached{Row: []byte(`{"id":10,"name":"x"}`), Deadline: past})
	g.plant("codes", "a", readthrough.Cached{Row: g.row("codes", "a")})
	g.plant("codes", "b", readthrough.Cached{Row: []byte(`{"code":"b","label":"old"}`)})
	g.plant("codes", "zz", readthrough.Cached{Row: []byte(`{"code":"zz","label":"Z"}`)})
	g.plant("codes", "007", readthrough.Cached{Null: true}) // fine as a string key
	g.rc.Set(ctx, keys.Lease(keys.Value(g.prefix, "items", "3")), "owner", time.Minute)

	// The filter holds every row but 11, which it therefore calls absent.
	filters := bloom.New(g.rc, g.prefix)
	params, err := bloom.Size(100, 1e-9)
	if err != nil {
		t.Fatal(err)
	}
	build, err := filters.Begin(ctx, "items", params)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 1; i <= 20; i++ {
		if i != 11 {
			ids = append(ids, fmt.Sprint(i))
		}
	}
	if err := build.Add(ctx, ids); err != nil {
		t.Fatal(err)
	}
	if err := build.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	c := g.checker(func(o *check.Options) {
		o.Filters = filters
		o.Entities[0].Bloom = true
	})
	rep := g.run(c, check.Round{All: true})
	want := map[string]check.Counts{
		// items 1-7, 9, 10, 100 and 200 cached; 11-20 answered by the filter.
		"items": {Checked: 21, Stale: 2, Ghost: 1, WronglyMissing: 2, Unreadable: 1, PastSoftDeadline: 2},
		"codes": {Checked: 4, Stale: 1, Ghost: 1, NotCached: 1},
	}
	wantLasting := map[string][]check.Mismatch{
		"items": {{ID: "6", Kind: check.Stale}, {ID: "7", Kind: check.WronglyMissing}, {ID: "10", Kind: check.Stale},
			{ID: "11", Kind: check.WronglyMissing}, {ID: "100", Kind: check.Ghost}},
		"codes": {{ID: "b", Kind: check.Stale}, {ID: "zz", Kind: check.Ghost}},
	}
	for _, er := range rep.Entities {
		if er.Counts != want[er.Entity] {
			t.Errorf("%s: got %+v, want %+v", er.Entity, er.Counts, want[er.Entity])
		}
		if fmt.Sprint(sorted(er.Lasting)) != fmt.Sprint(wantLasting[er.Entity]) {
			t.Errorf("%s: lasting %v, want %v", er.Entity, sorted(er.Lasting), wantLasting[er.Entity])
		}
	}
	if got := rep.Total.Mismatches(); got != 7 {
		t.Errorf("total mismatches %d, want 7", got)
	}
	if rep.Settle != 100*time.Millisecond || rep.Elapsed < rep.Settle {
		t.Errorf("settle %v, elapsed %v: the re-check did not wait for the settle window", rep.Settle, rep.Elapsed)
	}

	// One entity alone.
	rep = g.run(c, check.Round{All: true, Entities: []string{"codes"}})
	if len(rep.Entities) != 1 || rep.Total != want["codes"] {
		t.Errorf("codes alone: %+v", rep)
	}
}

// TestCompositeKeys checks an entity keyed by two columns: ids are the canonical joined form,
// a cache key in another spelling is not one the read path writes, and sampling spreads over
// the first column.
func TestCompositeKeys(t *testing.T) {
	g := newRig(t, 400)
	for _, id := range []string{"1,x%2C1", "2,x%2C2", "3,x%2C3"} {
		g.plant("pairs", id, readthrough.Cached{Row: g.row("pairs", id)})
	}
	g.plant("pairs", "4,x%2C4", readthrough.Cached{Row: []byte(`{"a":4,"b":"x,4","v":0}`)})  // stale
	g.plant("pairs", "5,x%2C5", readthrough.Cached{Null: true})                              // wrongly missing
	g.plant("pairs", "7,nope", readthrough.Cached{Row: []byte(`{"a":7,"b":"nope","v":1}`)})  // ghost
	g.plant("pairs", "06,x%2C6", readthrough.Cached{Row: []byte(`{"a":6,"b":"x,6","v":0}`)}) // not canonical: not the read path's
	c := g.checker(func(o *check.Options) {
		o.Entities = []check.Entity{{Name: "pairs", Key: g.src.Entity("pairs").Key}}
	})
	rep := g.run(c, check.Round{All: true})
	if want := (check.Counts{Checked: 6, Stale: 1, Ghost: 1, WronglyMissing: 1, NotCached: 395}); rep.Total != want {
		t.Errorf("all: got %+v, want %+v", rep.Total, want)
	}
	if got := fmt.Sprint(sorted(rep.Entities[0].Lasting)); got != "[{7,nope ghost} {4,x%2C4 stale} {5,x%2C5 wrongly missing}]" {
		t.Errorf("lasting %s", got)
	}
	// A sample takes the six cached keys and fills up from the table, by random starts in its
	// first column (50 values, 8 rows each), each reading the next 16 ids: at least the 8 rows
	// of its value. Fewer than the 84 ids needed means its 24 uniform starts fell on at most 10
	// of the 50 values: probability below C(50,10)·(10/50)^24 < 2e-7.
	rep = g.run(c, check.Round{Sample: 100})
	if n := rep.Total.Checked + rep.Total.NotCached; rep.Total.Checked != 6 || n < 90 || n > 100 {
		t.Errorf("a sample of 100: %+v", rep.Total)
	}
}

// TestChecksLookups checks a lookup's keys, named by the values of a unique key, as an
// entity's: a stale row, a null marker for a value that exists and a ghost are each counted.
// Unique keys may hold NULLs, which no lookup value names: those rows are passed over, also
// when the last row in key order has one.
func TestChecksLookups(t *testing.T) {
	ctx := context.Background()
	// 30 users: email NULL for every 5th (24 values); org NULL for every 7th and handle for
	// every 4th (20 (org, handle) pairs). User 30's email is NULL and sorts last by handle.
	d := devstack.NewDatabase(t, stack, "", `
		CREATE TABLE users (id INT NOT NULL PRIMARY KEY, email VARCHAR(40), org INT, handle VARCHAR(20),
			UNIQUE KEY (email), UNIQUE KEY (org, handle)) CHARACTER SET utf8mb4;
		INSERT INTO users SELECT seq, IF(seq % 5 = 0, NULL, CONCAT('u', seq, '@example.com')),
			IF(seq % 7 = 0, NULL, seq % 3), IF(seq % 4 = 0, NULL, CONCAT('h', seq)) FROM seq_1_to_30;
		INSERT INTO users VALUES (31, 'zz@example.com', 99, NULL)`)
	db, schema, err := mysqlsource.Open(d.DSN, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	byEmail, byHandle := keys.Lookup("users", "by-email"), keys.Lookup("users", "by-handle")
	specs := []mysqlsource.Spec{{Name: "users", Table: "users", Lookups: []mysqlsource.LookupSpec{
		{Name: "by-email", Columns: []string{"email"}}, {Name: "by-handle", Columns: []string{"org", "handle"}}}}}
	src, err := mysqlsource.New(ctx, db, schema, specs, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	g := &rig{t: t, db: d, src: src, rc: stack.Client(t), prefix: d.Name + ":"}

	g.plant(byEmail, "u1@example.com", readthrough.Cached{Row: g.row(byEmail, "u1@example.com")})
	g.plant(byEmail, "u2@example.com", readthrough.Cached{Row: g.row(byEmail, "u3@example.com")})   // stale
	g.plant(byEmail, "u6@example.com", readthrough.Cached{Null: true})                              // wrongly missing
	g.plant(byEmail, "none@example.com", readthrough.Cached{Null: true})                            // rightly missing
	g.plant(byEmail, "gone@example.com", readthrough.Cached{Row: g.row(byEmail, "u9@example.com")}) // ghost
	g.plant(byHandle, keys.JoinID([]string{"1", "h1"}), readthrough.Cached{Row: g.row(byHandle, "1,h1")})
	g.plant(byHandle, keys.JoinID([]string{"2", "h2"}), readthrough.Cached{Row: g.row(byHandle, "1,h1")}) // stale
	g.plant(byHandle, keys.JoinID([]string{"9", "h1"}), readthrough.Cached{Row: g.row(byHandle, "1,h1")}) // ghost

	c := check.New(check.Options{Redis: g.rc, Source: src, Prefix: g.prefix, Settle: 100 * time.Millisecond, Rate: 1e6,
		Entities: []check.Entity{{Name: "users", Key: src.Entity("users").Key},
			{Name: byEmail, Key: src.Entity(byEmail).Key}, {Name: byHandle, Key: src.Entity(byHandle).Key}}})
	want := map[string]check.Counts{
		"users":  {NotCached: 31},
		byEmail:  {Checked: 5, Stale: 1, Ghost: 1, WronglyMissing: 1, NotCached: 22},
		byHandle: {Checked: 3, Stale: 1, Ghost: 1, NotCached: 18},
	}
	wantLasting := map[string]string{
		"users":  "[]",
		byEmail:  "[{u2@example.com stale} {u6@example.com wrongly missing} {gone@example.com ghost}]",
		byHandle: "[{2,h2 stale} {9,h1 ghost}]",
	}
	// The tables are smaller than the sample: it reads them whole, as --all does.
	for _, r := range []check.Round{{All: true}, {Sample: 100}} {
		rep := g.run(c, r)
		if len(rep.Entities) != 3 {
			t.Fatalf("%+v: %d entities reported, want 3", r, len(rep.Entities))
		}
		for _, er := range rep.Entities {
			if er.Counts != want[er.Entity] {
				t.Errorf("%+v: %s: got %+v, want %+v", r, er.Entity, er.Counts, want[er.Entity])
			}
			if got := fmt.Sprint(sorted(er.Lasting)); got != wantLasting[er.Entity] {
				t.Errorf("%+v: %s: lasting %s, want %s", r, er.Entity, got, wantLasting[er.Entity])
			}
		}
	}
}

// sorted orders mismatches by id, shorter ids first: numerically for the test's integers.
func sorted(ms []check.Mismatch) []check.Mismatch {
	out := append([]check.Mismatch(nil), ms...)
	less := func(a, b string) bool {
		if len(a) != len(b) {
			return len(a) < len(b)
		}
		return a < b
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if less(out[j].ID, out[i].ID) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestSampleFindsGhostsOnlyTheCacheHolds(t *testing.T) {
	g := newRig(t, 2000)
	for i := 5001; i <= 5030; i++ {
		g.plant("items", fmt.Sprint(i), readthrough.Cached{Row: []byte(fmt.Sprintf(`{"id":%d,"name":"gone"}`, i))})
	}
	rep := g.run(g.checker(nil), check.Round{Entities: []string{"items"}, Sample: 100})
	// Half the sample may come from the cache, which holds only the 30 ghosts; the table gives
	// the rest, none of them cached.
	want := check.Counts{Checked: 30, Ghost: 30, NotCached: 70}
	if rep.Total != want {
		t.Errorf("got %+v, want %+v", rep.Total, want)
	}
}

func TestSampleSize(t *testing.T) {
	tests := []struct {
		rows, sample int
		want         int64 // ids looked at: none is cached
	}{
		{rows: 10000, sample: 300, want: 300}, // random ranges
		{rows: 10000, sample: 1, want: 1},
		{rows: 20, sample: 100, want: 20}, // the whole table, once
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d of %d", tt.sample, tt.rows), func(t *testing.T) {
			g := newRig(t, tt.rows)
			rep := g.run(g.checker(nil), check.Round{Entities: []string{"items"}, Sample: tt.sample})
			if rep.Total.NotCached != tt.want || rep.Total.Checked != 0 {
				t.Errorf("got %+v, want %d ids looked at, each once", rep.Total, tt.want)
			}
		})
	}
}

// TestOnlyLastingMismatchesCount changes a row while its cached copy is held, and lets the
// invalidation (or nothing) happen between the first look and the re-check.
func TestOnlyLastingMismatchesCount(t *testing.T) {
	g := newRig(t, 10)
	set := func(key string, v readthrough.Cached) { g.rc.Set(context.Background(), key, v.Encode(), time.Minute) }
	row := func(id, name string) []byte { return []byte(fmt.Sprintf(`{"id":%s,"name":%q}`, id, name)) }
	tests := []struct {
		name string
		// meanwhile runs after the first look found the mismatch of id, cached at key, and
		// before the re-check.
		meanwhile func(key, id string)
		lagKnown  bool
		want      check.Counts
	}{
		{"invalidated", func(key, _ string) { g.rc.Del(context.Background(), key) }, true,
			check.Counts{Checked: 1, InFlight: 1}},
		{"invalidated and filled again", func(key, id string) { set(key, readthrough.Cached{Row: row(id, "new")}) }, true,
			check.Counts{Checked: 1, InFlight: 1}},
		{"never invalidated", func(string, string) {}, true, check.Counts{Checked: 1, Stale: 1}},
		// A value written after the first look is another value: the next round judges it.
		{"filled again with another wrong row", func(key, id string) { set(key, readthrough.Cached{Row: row(id, "other")}) }, true,
			check.Counts{Checked: 1, InFlight: 1}},
		{"refreshed with the same stale row", func(key, id string) {
			set(key, readthrough.Cached{Row: row(id, "item "+id), Deadline: time.Now().Add(time.Hour)})
		}, true, check.Counts{Checked: 1, Stale: 1}},
		{"lag unknown", func(key, _ string) { g.rc.Del(context.Background(), key) }, false,
			check.Counts{Checked: 1, InFlight: 1}},
	}
	const delay = 100 * time.Millisecond
	for i, tt := range tests {
		id := fmt.Sprint(i + 1)
		key := keys.Value(g.prefix+id+":", "items", id)
		set(key, readthrough.Cached{Row: g.row("items", id)})
		g.exec("UPDATE items SET name = 'new' WHERE id = ?", id) // the change whose invalidation is on its way
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var lags atomic.Int32
			c := check.New(check.Options{
				Redis: g.rc, Source: g.src, Prefix: g.prefix + id + ":", Rate: 1e6,
				Entities:          []check.Entity{{Name: "items", Key: g.src.Entity("items").Key}},
				DoubleDeleteDelay: delay,
				Lag: func(context.Context) (time.Duration, bool, error) {
					if lags.Add(1) == 1 {
						tt.meanwhile(key, id)
					}
					return 0, tt.lagKnown, nil
				},
			})
			rep, err := c.Check(context.Background(), check.Round{All: true})
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			want.NotCached = 9
			if rep.Total != want {
				t.Errorf("got %+v, want %+v", rep.Total, want)
			}
			settle := delay + check.SettleMargin
			if !tt.lagKnown {
				settle = delay + check.UnknownLag
			}
			if rep.Settle != settle || rep.LagUnknown == tt.lagKnown || rep.Elapsed < settle {
				t.Errorf("settle %v (lag unknown: %v), elapsed %v; want a re-check after %v", rep.Settle, rep.LagUnknown, rep.Elapsed, settle)
			}
		})
	}
}

func TestRateBoundsReads(t *testing.T) {
	g := newRig(t, 300)
	c := g.checker(func(o *check.Options) { o.Rate = 200 })
	start := time.Now()
	rep := g.run(c, check.Round{All: true, Entities: []string{"items"}})
	// 300 ids at 200 a second, the first 100 at once (a batch fits in the bucket).
	if d := time.Since(start); rep.Total.NotCached != 300 || d < 900*time.Millisecond {
		t.Errorf("read %d ids in %v, want 300 in no less than a second", rep.Total.NotCached, d)
	}
}

func TestErrors(t *testing.T) {
	g := newRig(t, 1)
	_, err := g.checker(nil).Check(context.Background(), check.Round{Entities: []string{"nope"}})
	if !errors.Is(err, check.ErrUnknownEntity) || !strings.Contains(err.Error(), "items, codes") {
		t.Errorf("unknown entity: %v, want ErrUnknownEntity naming the configured ones", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	down := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer down.Close()
	_, err = g.checker(func(o *check.Options) { o.Redis = down }).Check(context.Background(), check.Round{})
	if !errors.Is(err, check.ErrCacheUnavailable) || strings.Contains(err.Error(), addr) {
		t.Errorf("Redis down: %v, want ErrCacheUnavailable without the address", err)
	}
}
