package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
)

// TestChaosConsistency is the randomized, seeded consistency test: fifteen tables, one per key
// type and three with composite keys (whose key moves change one column or several), three
// of them with a lookup on a unique column whose values move between rows, written
// by several goroutines (single statements, bulk transactions, multi-row
// statements, TRUNCATE, table swaps) and read through three sidecars, while the CDC leader is
// killed, Redis restarts empty and 20% of cache deletes fail. Once the writes stop and the
// binlog tail and the retries have caught up, every sidecar must answer exactly what MariaDB
// holds for every id the run wrote or read. SIDECACHE_SEED replays a run's operation streams;
// SIDECACHE_SOAK (a Go duration) makes it a long run.
func TestChaosConsistency(t *testing.T) { chaosRun(t, false) }

// TestChaosConsistencyNearCache is the same run with every sidecar's near cache on, values
// served from memory for as long as no invalidation arrives (max_staleness 1h): every copy must
// follow the deletes, Redis's restart and the leader's death through invalidations and dropped
// connections alone.
func TestChaosConsistencyNearCache(t *testing.T) { chaosRun(t, true) }

// chaosRun runs the randomized consistency test, with the near cache on or off.
func chaosRun(t *testing.T, near bool) {
	extra := ""
	if near {
		extra = "near_cache: {enabled: true, max_entries: 100000, max_staleness: 1h}\n"
	}
	seed := chaosSeed(t)
	chaosSay(t, "chaos: seed %d (replay with SIDECACHE_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			chaosSay(t, "chaos: replay with SIDECACHE_SEED=%d", seed)
		}
	})
	loadFor := chaosDuration
	if s := os.Getenv("SIDECACHE_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("SIDECACHE_SOAK=%q: not a positive Go duration", s)
		}
		loadFor = d
	}

	tables := chaosNewTables(rand.New(rand.NewPCG(seed, chaosStreamDomain)))
	root := devstack.NewDatabase(t, stack, chaosDB, chaosSchema(tables)).Root
	root.SetMaxOpenConns(64)
	chaosInitialRows(t, root, tables, rand.New(rand.NewPCG(seed, chaosStreamInitial)))
	rc := stack.Client(t)
	chaosClearRedis(t, rc)

	k := newKfake(t)
	c := &consistencyRun{t: t, db: chaosDB, root: root, rc: rc}
	c.cfg = `listen: %s
log: {format: text}
mysql: {dsn: "` + stack.DSN(chaosDB, chaosDB, chaosDB) + `"}
redis: {addrs: ["` + stack.RedisAddr + `"], key_prefix: "` + chaosPrefix + `"}
cdc: {enabled: true, flavor: mariadb, server_id: SERVERID, dsn: "` + stack.DSN("root", "", chaosDB) + `", leader_ttl: 1s, double_delete_delay: 200ms}
` + extra + kafkaConfig(k, 10000) + chaosEntities(tables)

	// The Bloom filters (and a warm cache) before any sidecar serves.
	preloadCfg := filepath.Join(t.TempDir(), "preload.yaml")
	if err := os.WriteFile(preloadCfg, []byte(`log: {level: error}
mysql: {dsn: "`+stack.DSN(chaosDB, chaosDB, chaosDB)+`"}
redis: {addrs: ["`+stack.RedisAddr+`"], key_prefix: "`+chaosPrefix+`"}
`+chaosEntities(tables)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := chaosPreload(preloadCfg, tables); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		c.start()
	}
	chaosWaitTailing(t, c)

	w := &chaosWorkload{t: t, c: c, tables: tables, seed: seed}
	ctx, stop := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	t.Cleanup(func() { stop(); workers.Wait() }) // also when a Fatal ends the test early
	loadStart := time.Now()
	for i := range chaosWriters {
		workers.Add(1)
		go func() { defer workers.Done(); w.write(ctx, i) }()
	}
	for i := range chaosReaders {
		workers.Add(1)
		go func() { defer workers.Done(); w.read(ctx, i) }()
	}

	// The faults, at seeded times, from this goroutine (startServe and StartRedis may Fatal).
	plan := chaosPlan(rand.New(rand.NewPCG(seed, chaosStreamPlan)), loadFor, len(tables))
	done := map[string]int{}
	for i, ev := range plan {
		time.Sleep(time.Until(loadStart.Add(ev.at)))
		at := time.Since(loadStart).Round(100 * time.Millisecond)
		what := w.inject(ev, rand.New(rand.NewPCG(seed, chaosStreamEvent+uint64(i))))
		if what != "" {
			done[ev.kind]++
			chaosSay(t, "chaos: %v: %s", at, what)
		}
	}
	time.Sleep(time.Until(loadStart.Add(loadFor)))
	stop()
	workers.Wait()
	loadTook := time.Since(loadStart)
	for _, kind := range chaosKinds {
		if done[kind] == 0 {
			t.Errorf("the fault %q never happened", kind)
		}
	}
	chaosSay(t, "chaos: %s", w.summary(loadTook))
	for _, e := range w.errs() {
		t.Errorf("write: %v", e)
	}
	if n := w.badRequests.Load(); n > 0 {
		t.Errorf("%d reads were answered 400: the test generated ids the sidecar rejects", n)
	}

	took, state := chaosSettle(c, k, chaosSettleWithin)
	chaosSay(t, "chaos: settle: %v: %s", took.Round(time.Millisecond), state)
	if took < 0 {
		t.Errorf("the sidecars did not settle within %v: %s", chaosSettleWithin, state)
	}
	// The filters reset by the truncates and swaps, and lost with Redis, are rebuilt by the
	// leader on its own; the wrongly-missing count below is then a test of the rebuilt filters.
	chaosFiltersReady(t, c, tables)

	results := append(chaosVerify(t, c, tables), chaosVerifyLookups(t, c, tables)...)
	if near {
		hits := c.metricsSum("sidecache_near_cache_hits_total")
		chaosSay(t, "chaos: near cache: %.0f hits on the sidecars alive", hits)
		if hits == 0 {
			t.Error("no read was answered from the near cache: the run did not test it")
		}
	}
	var stale, missing, ghost, checked int
	for _, r := range results {
		r.lookInRedis(rc)
		chaosSay(t, "chaos: %s", r.line())
		for _, m := range r.firstMismatches(chaosShowMismatches) {
			chaosSay(t, "chaos:   %s", m)
		}
		stale += len(r.stale)
		missing += len(r.missing)
		ghost += len(r.ghost)
		checked += r.checked
	}
	chaosSay(t, "chaos: total: %d ids checked on %d sidecars after %v of load: %d stale, %d wrongly missing, %d ghost",
		checked, len(c.procs), loadTook.Round(time.Second), stale, missing, ghost)
	if stale+missing+ghost > 0 {
		t.Errorf("the sidecars gave wrong answers once settled: %d stale, %d wrongly missing, %d ghost", stale, missing, ghost)
	}
}

const (
	chaosDB     = "chaos"
	chaosPrefix = "chaos:"
	// chaosDuration is the load of the short version, which runs under `make test`.
	chaosDuration       = 25 * time.Second
	chaosWriters        = 6
	chaosReaders        = 4
	chaosWriteRate      = 300 // statements per second, all writers together
	chaosSettleWithin   = 4 * time.Minute
	chaosShowMismatches = 5
	chaosUpcomingSize   = 16
)

// Seed streams: each random choice has a source of its own, derived from the seed, so that one
// stream does not shift another.
const (
	chaosStreamDomain uint64 = iota + 1
	chaosStreamInitial
	chaosStreamPlan
	chaosStreamWriter = 100  // + the writer's number
	chaosStreamReader = 200  // + the reader's number
	chaosStreamEvent  = 1000 // + the fault's place in the plan
)

func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("SIDECACHE_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SIDECACHE_SEED=%q: not an unsigned integer", s)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// chaosSay prints a line to the test log and to stdout.
func chaosSay(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	t.Log(msg)
	fmt.Println(msg)
}

// chaosKind is the family of a table's key type.
type chaosKind int

const (
	chaosSigned chaosKind = iota
	chaosUnsigned
	chaosString
	chaosComposite // a key of several columns, each of one of the kinds above
)

// chaosTable is one table (and entity) with its key type, its id domain, and the ids the run
// touched.
type chaosTable struct {
	name, sqlType string
	kind          chaosKind
	bits          int // integer keys
	whole         bool
	// cols are the key's columns, and parts their kinds and bits (one for a one-column key).
	cols  []string
	parts []chaosPart
	ddl   string // a composite key's column definitions and PRIMARY KEY clause
	// lookup, when set, are the values of the nullable unique column u, read through the
	// lookup by-u: writers set rows' u to them (or NULL), taking them from one another.
	lookup []string
	// dense ids collide often; extremes are the type's edges, drawn more often than their share.
	dense, extremes []string

	mu       sync.Mutex
	seen     map[string]bool // every id written or read
	upcoming []string        // ids a writer is about to insert or move to
	next     int
}

func chaosNewTables(rng *rand.Rand) []*chaosTable {
	type spec struct {
		name, sqlType string
		kind          chaosKind
		bits          int
	}
	specs := []spec{
		{"t_tinyint", "TINYINT", chaosSigned, 8},
		{"t_tinyint_u", "TINYINT UNSIGNED", chaosUnsigned, 8},
		{"t_smallint", "SMALLINT", chaosSigned, 16},
		{"t_smallint_u", "SMALLINT UNSIGNED", chaosUnsigned, 16},
		{"t_mediumint", "MEDIUMINT", chaosSigned, 24},
		{"t_mediumint_u", "MEDIUMINT UNSIGNED", chaosUnsigned, 24},
		{"t_int", "INT", chaosSigned, 32},
		{"t_int_u", "INT UNSIGNED", chaosUnsigned, 32},
		{"t_bigint", "BIGINT", chaosSigned, 64},
		{"t_bigint_u", "BIGINT UNSIGNED", chaosUnsigned, 64},
		{"t_char", "CHAR(12)", chaosString, 12},
		{"t_varchar", "VARCHAR(40)", chaosString, 40},
	}
	var tables []*chaosTable
	for _, s := range specs {
		tb := &chaosTable{name: s.name, sqlType: s.sqlType, kind: s.kind, bits: s.bits, whole: s.bits <= 16,
			cols: []string{"id"}, parts: []chaosPart{{s.kind, s.bits}}, seen: map[string]bool{}}
		switch s.kind {
		case chaosSigned, chaosUnsigned:
			tb.dense, tb.extremes = chaosIntDomain(s.kind == chaosSigned, s.bits)
		case chaosString:
			tb.cols, tb.whole = []string{"k"}, false
			tb.dense, tb.extremes = chaosStringDomain(rng, s.bits)
		}
		tables = append(tables, tb)
	}
	// Composite keys: a join table's pair of integers, a string whose values hold ',' and '%'
	// (which ids percent-encode) next to an integer, and three columns of three kinds. Key moves
	// change one column or several.
	composites := []struct {
		name  string
		cols  []string
		types []string
		parts []chaosPart
	}{
		{"t_pair", []string{"actor_id", "film_id"}, []string{"SMALLINT UNSIGNED", "SMALLINT UNSIGNED"}, []chaosPart{{chaosUnsigned, 16}, {chaosUnsigned, 16}}},
		{"t_tag", []string{"tag", "seq"}, []string{"VARCHAR(10)", "TINYINT"}, []chaosPart{{chaosString, 10}, {chaosSigned, 8}}},
		{"t_triple", []string{"a", "b", "c"}, []string{"TINYINT UNSIGNED", "BIGINT", "CHAR(3)"}, []chaosPart{{chaosUnsigned, 8}, {chaosSigned, 64}, {chaosString, 3}}},
	}
	for _, cs := range composites {
		var defs []string
		for i, c := range cs.cols {
			defs = append(defs, c+" "+cs.types[i]+" NOT NULL")
		}
		tb := &chaosTable{name: cs.name, kind: chaosComposite, cols: cs.cols, parts: cs.parts, seen: map[string]bool{},
			sqlType: "(" + strings.Join(cs.types, ", ") + ")", ddl: strings.Join(defs, ", ") + ", PRIMARY KEY (" + strings.Join(cs.cols, ", ") + ")"}
		tb.dense, tb.extremes = chaosCompositeDomain(rng, cs.parts)
		tables = append(tables, tb)
	}
	// Lookups on one integer, one string and one composite table.
	for _, tb := range tables {
		if tb.name == "t_int" || tb.name == "t_varchar" || tb.name == "t_pair" {
			tb.lookup = chaosLookupValues
		}
	}
	return tables
}

// chaosLookupValues are few, so that rows take them from one another: case and accent variants
// a case-insensitive collation takes for one another, and values holding ',' and '%'.
var chaosLookupValues = []string{"u1", "U1", "u2", "a,b", "a%2Cb", "50%", "é", "e", "x y", "🔑", "ß", "ss"}

// chaosPart is the kind of one key column.
type chaosPart struct {
	kind chaosKind
	bits int // integer width, or a string's length in characters
}

// chaosCompositeDomain returns ids of a composite key: few values per column, so that rows
// collide and keys move onto each other, and extremes made of each column's extremes.
func chaosCompositeDomain(rng *rand.Rand, parts []chaosPart) (dense, extremes []string) {
	values := make([][]string, len(parts))
	edges := make([][]string, len(parts))
	for i, p := range parts {
		switch p.kind {
		case chaosSigned, chaosUnsigned:
			d, e := chaosIntDomain(p.kind == chaosSigned, p.bits)
			values[i], edges[i] = d[:min(len(d), 12)], e
			if p.kind == chaosSigned {
				values[i] = []string{"-2", "-1", "0", "1", "2", "3", "7", "100"}
			}
		case chaosString:
			values[i] = []string{"", "a,b", "50%", "%2C", "k", "K", "é,ü", "a b", "x,", ",", "%"}
			edges[i] = []string{strings.Repeat("é", p.bits), strings.Repeat("🔑", p.bits), "%25"}
		}
	}
	seen := map[string]bool{}
	draw := func(from [][]string) string {
		id := make([]string, len(parts))
		for i := range parts {
			id[i] = from[i][rng.IntN(len(from[i]))]
			if parts[i].kind == chaosString {
				id[i] = string([]rune(id[i])[:min(len([]rune(id[i])), parts[i].bits)])
			}
		}
		return keys.JoinID(id)
	}
	for tries := 0; len(dense) < 400 && tries < 100000; tries++ {
		if id := draw(values); !seen[id] {
			seen[id] = true
			dense = append(dense, id)
		}
	}
	for range 12 {
		if id := draw(edges); !seen[id] {
			seen[id] = true
			extremes = append(extremes, id)
		}
	}
	return dense, extremes
}

// chaosIntDomain returns the ids of an integer key: all of an 8-bit type; otherwise a dense
// range around 0, one at each end of the type and, for unsigned types, one around 2^(bits-1),
// where a value read as signed turns negative.
func chaosIntDomain(signed bool, bits int) (dense, extremes []string) {
	seen := map[string]bool{}
	add := func(list *[]string, s string) {
		if !seen[s] {
			seen[s] = true
			*list = append(*list, s)
		}
	}
	if signed {
		lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
		if bits < 64 {
			lo, hi = -(1 << (bits - 1)), 1<<(bits-1)-1
		}
		span := func(from, n int64) {
			for i := range n {
				add(&dense, strconv.FormatInt(from+i, 10))
			}
		}
		if bits == 8 {
			span(lo, 256)
		} else {
			span(lo, 50)
			span(-300, 600)
			span(hi-49, 50)
		}
		for _, v := range []int64{lo, lo + 1, -1, 0, 1, hi - 1, hi} {
			extremes = append(extremes, strconv.FormatInt(v, 10))
		}
		return dense, extremes
	}
	hi := uint64(math.MaxUint64)
	if bits < 64 {
		hi = 1<<bits - 1
	}
	mid := uint64(1) << (bits - 1)
	span := func(from, n uint64) {
		for i := range n {
			add(&dense, strconv.FormatUint(from+i, 10))
		}
	}
	if bits == 8 {
		span(0, 256)
	} else {
		span(0, 600)
		span(mid-25, 50)
		span(hi-49, 50)
	}
	for _, v := range []uint64{0, 1, mid - 1, mid, mid + 1, hi - 1, hi} {
		extremes = append(extremes, strconv.FormatUint(v, 10))
	}
	return dense, extremes
}

// chaosStringDomain returns the ids of a string key of at most maxChars characters: multi-byte
// UTF-8 (2, 3 and 4 bytes), inner spaces, case and accent variants that a case-insensitive
// collation takes for one another, and ids of exactly the column's length. None has a leading or
// trailing space (a CHAR column drops trailing spaces, so such an id is not a value of the key).
func chaosStringDomain(rng *rand.Rand, maxChars int) (dense, extremes []string) {
	words := []string{"k", "K", "key", "KEY", "ключ", "キー", "clé", "CLÉ", "Ñandú", "日本 語", "a b", "x  y", "ÄÖÜ", "🔑", "🍎", "ß", "ǅ", "İ"}
	seen := map[string]bool{}
	add := func(list *[]string, s string) {
		r := []rune(s)
		if len(r) > maxChars {
			s = strings.TrimRight(string(r[:maxChars]), " ")
		}
		if s != "" && !seen[s] {
			seen[s] = true
			*list = append(*list, s)
		}
	}
	for i := 0; len(dense) < 700; i++ {
		w := words[rng.IntN(len(words))]
		s := fmt.Sprintf("%s %d", w, rng.IntN(400))
		if maxChars > 12 && rng.IntN(4) == 0 {
			s += " tail " + w + " " + strconv.Itoa(rng.IntN(1000))
		}
		add(&dense, s)
	}
	for _, s := range []string{"a", "A", "é", "É", "0", "-1", "a b", "ǅ ǆ",
		strings.Repeat("é", maxChars), strings.Repeat("🔑", maxChars), strings.Repeat("z", maxChars-1) + "ÿ"} {
		add(&extremes, s)
	}
	return dense, extremes
}

// pick draws an id of the domain.
func (tb *chaosTable) pick(rng *rand.Rand) string {
	if rng.IntN(10) == 0 {
		return tb.extremes[rng.IntN(len(tb.extremes))]
	}
	return tb.dense[rng.IntN(len(tb.dense))]
}

// target draws an id a writer is about to insert or move a row to, and shows it to the readers.
func (tb *chaosTable) target(rng *rand.Rand) string {
	id := tb.pick(rng)
	tb.mu.Lock()
	if len(tb.upcoming) < chaosUpcomingSize {
		tb.upcoming = append(tb.upcoming, id)
	} else {
		tb.upcoming[tb.next] = id
		tb.next = (tb.next + 1) % chaosUpcomingSize
	}
	tb.mu.Unlock()
	return id
}

// soon returns an id a writer is about to insert, or any id when there is none yet.
func (tb *chaosTable) soon(rng *rand.Rand) string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.upcoming) == 0 {
		return tb.dense[rng.IntN(len(tb.dense))]
	}
	return tb.upcoming[rng.IntN(len(tb.upcoming))]
}

func (tb *chaosTable) record(ids ...string) {
	tb.mu.Lock()
	for _, id := range ids {
		tb.seen[id] = true
	}
	tb.mu.Unlock()
}

// args are id's values as typed query arguments: a string would make MariaDB compare an
// integer key as a double, which cannot tell 2^64-1 from 2^64-2.
func (tb *chaosTable) args(id string) []any {
	values, ok := keys.SplitID(id, len(tb.parts))
	if !ok {
		panic("not an id of " + tb.name + ": " + id)
	}
	args := make([]any, len(values))
	for i, v := range values {
		var err error
		switch tb.parts[i].kind {
		case chaosSigned:
			args[i], err = strconv.ParseInt(v, 10, 64)
		case chaosUnsigned:
			args[i], err = strconv.ParseUint(v, 10, 64)
		default:
			args[i] = v
		}
		if err != nil {
			panic(err)
		}
	}
	return args
}

// keyList is the key's columns, for column lists and ORDER BY.
func (tb *chaosTable) keyList() string { return strings.Join(tb.cols, ", ") }

// eq is the condition that the key is an id's values, and ph the placeholders of its values in
// a VALUES list.
func (tb *chaosTable) eq(op string) string {
	if len(tb.cols) == 1 {
		return tb.cols[0] + " " + op + " ?"
	}
	return "(" + tb.keyList() + ") " + op + " (" + tb.ph() + ")"
}

func (tb *chaosTable) ph() string {
	return strings.TrimSuffix(strings.Repeat("?, ", len(tb.cols)), ", ")
}

// set assigns an id's values to the key's columns.
func (tb *chaosTable) set() string { return strings.Join(tb.cols, " = ?, ") + " = ?" }

// scanID reads a row's key columns, the first of dest, as an id.
func (tb *chaosTable) scanID(rows *sql.Rows, dest ...any) (string, error) {
	values := make([]string, len(tb.cols))
	all := make([]any, 0, len(values)+len(dest))
	for i := range values {
		all = append(all, &values[i])
	}
	if err := rows.Scan(append(all, dest...)...); err != nil {
		return "", err
	}
	return keys.JoinID(values), nil
}

// less orders ids as the key type does (strings by bytes, which is enough for sorting output).
func (tb *chaosTable) less(a, b string) int {
	switch tb.kind {
	case chaosSigned:
		x, _ := strconv.ParseInt(a, 10, 64)
		y, _ := strconv.ParseInt(b, 10, 64)
		return chaosCmp(x, y)
	case chaosUnsigned:
		x, _ := strconv.ParseUint(a, 10, 64)
		y, _ := strconv.ParseUint(b, 10, 64)
		return chaosCmp(x, y)
	case chaosComposite: // by the first column, enough to order a range's ends most of the time
		x, _ := keys.SplitID(a, len(tb.parts))
		y, _ := keys.SplitID(b, len(tb.parts))
		first := &chaosTable{kind: tb.parts[0].kind}
		return first.less(x[0], y[0])
	}
	return strings.Compare(a, b)
}

func chaosCmp[T int64 | uint64](x, y T) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// wholeDomain lists every value of an 8- or 16-bit key.
func (tb *chaosTable) wholeDomain() []string {
	var ids []string
	if tb.kind == chaosSigned {
		for v := -(1 << (tb.bits - 1)); v < 1<<(tb.bits-1); v++ {
			ids = append(ids, strconv.Itoa(v))
		}
	} else {
		for v := 0; v < 1<<tb.bits; v++ {
			ids = append(ids, strconv.Itoa(v))
		}
	}
	return ids
}

func chaosSchema(tables []*chaosTable) string {
	var b strings.Builder
	b.WriteString("DROP TABLE IF EXISTS chaos_marker;\nCREATE TABLE chaos_marker (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL);\n")
	for _, tb := range tables {
		fmt.Fprintf(&b, "DROP TABLE IF EXISTS %[1]s, %[1]s__new, %[1]s__old;\n", tb.name)
		key := tb.ddl
		if len(tb.cols) == 1 {
			key = tb.cols[0] + " " + tb.sqlType + " NOT NULL PRIMARY KEY"
		}
		if tb.lookup != nil {
			key += ", u VARCHAR(12) NULL, UNIQUE KEY (u)"
		}
		fmt.Fprintf(&b, "CREATE TABLE %s (%s, v VARCHAR(64) NULL, n INT NOT NULL DEFAULT 0) DEFAULT CHARSET=utf8mb4;\n", tb.name, key)
	}
	return b.String()
}

func chaosEntities(tables []*chaosTable) string {
	var b strings.Builder
	b.WriteString("entities:\n")
	for _, tb := range tables {
		fmt.Fprintf(&b, "  - name: %s\n    key: [%s]\n    ttl: 1h\n    null_ttl: 1h\n    bloom: {enabled: true, expected_items: 20000, fp_rate: 0.01}\n", tb.name, tb.keyList())
		if tb.lookup != nil {
			// u is not returned, so rows compare as the other tables' do.
			fmt.Fprintf(&b, "    columns: [%s, v, n]\n    lookups: [{name: by-u, columns: [u]}]\n", tb.keyList())
		}
	}
	return b.String()
}

// chaosInitialRows gives each table a few hundred rows of its dense range, and some extremes.
func chaosInitialRows(t *testing.T, root *sql.DB, tables []*chaosTable, rng *rand.Rand) {
	t.Helper()
	for _, tb := range tables {
		ids := slices.Clone(tb.dense)
		rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
		ids = ids[:min(300, len(ids)*2/5)]
		for _, e := range tb.extremes {
			if rng.IntN(2) == 0 {
				ids = append(ids, e)
			}
		}
		var args []any
		for _, id := range ids {
			args = append(append(args, tb.args(id)...), chaosValue(rng))
		}
		q := fmt.Sprintf("INSERT IGNORE INTO %s (%s, v, n) VALUES %s", tb.name, tb.keyList(),
			strings.TrimSuffix(strings.Repeat("("+tb.ph()+", ?, 0), ", len(ids)), ", "))
		if _, err := root.Exec(q, args...); err != nil {
			t.Fatalf("%s: initial rows: %v", tb.name, err)
		}
		tb.record(ids...)
		for i, u := range tb.lookup {
			if _, err := root.Exec("UPDATE IGNORE "+tb.name+" SET u = ? WHERE "+tb.eq("="), append([]any{u}, tb.args(ids[i])...)...); err != nil {
				t.Fatalf("%s: initial lookup values: %v", tb.name, err)
			}
		}
	}
}

var chaosValueWords = []string{"val", "wért", `"quoted"`, `back\slash`, "日本語", "emoji 🎉", "tab\there", "a  b", "<tag>&amp;"}

// chaosValue is a value for the v column: mostly text, sometimes "" or NULL.
func chaosValue(rng *rand.Rand) any {
	switch rng.IntN(20) {
	case 0:
		return nil
	case 1:
		return ""
	}
	return fmt.Sprintf("%s %d", chaosValueWords[rng.IntN(len(chaosValueWords))], rng.IntN(1_000_000))
}

// chaosClearRedis deletes what an earlier run with the same prefix left behind.
func chaosClearRedis(t *testing.T, rc *redis.Client) {
	t.Helper()
	ctx := context.Background()
	iter := rc.Scan(ctx, 0, chaosPrefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		rc.Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
}

// chaosPreload runs `sidecache preload` for every table, four at a time: it warms the cache
// and rebuilds the Bloom filter.
func chaosPreload(cfgPath string, tables []*chaosTable) error {
	sem := make(chan struct{}, 4)
	errs := make(chan error, len(tables))
	for _, tb := range tables {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			out, err := exec.Command(bin, "preload", "--config", cfgPath, "--entity", tb.name).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("preload %s: %v\n%s", tb.name, err, out)
			}
			errs <- err
		}()
	}
	var all []error
	for range tables {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// chaosWaitTailing waits until a leader tails the binlog: a write to a table no entity uses
// moves the checkpoint to the server's position only once the tail has started before it.
func chaosWaitTailing(t *testing.T, c *consistencyRun) {
	t.Helper()
	devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
		if _, err := c.root.Exec("INSERT INTO chaos_marker (at) VALUES (NOW(6))"); err != nil {
			t.Fatal(err)
		}
		var want string
		if err := c.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&want); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if chaosCheckpoint(c) == want {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no sidecar tails the binlog (checkpoint %q, server %q)", chaosCheckpoint(c), want)
	})
}

// chaosCheckpoint is the GTID set of the saved checkpoint, or "" when there is none.
func chaosCheckpoint(c *consistencyRun) string {
	var cp struct {
		GTID string `json:"gtid"`
	}
	b, err := c.rc.Get(context.Background(), chaosPrefix+"{cdc:"+chaosDB+"}:checkpoint").Bytes()
	if err != nil {
		return ""
	}
	json.Unmarshal(b, &cp)
	return cp.GTID
}

// chaosWorkload is the writers' and readers' shared state.
type chaosWorkload struct {
	t      *testing.T
	c      *consistencyRun
	tables []*chaosTable
	seed   uint64

	stmts, dups, deadlocks, commits, rollbacks, truncates, swaps atomic.Int64
	reads, readIDs, ok200, nf404, unavailable, badRequests       atomic.Int64
	otherStatus, netErrors                                       atomic.Int64

	mu       sync.Mutex
	failures []error
}

func (w *chaosWorkload) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.failures) < 10 {
		w.failures = append(w.failures, err)
	}
}

func (w *chaosWorkload) errs() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.failures)
}

func (w *chaosWorkload) summary(d time.Duration) string {
	return fmt.Sprintf("%d statements in %v (%.0f/s): %d duplicate keys ignored, %d deadlocks (rolled back by the server, not retried), %d transactions committed, %d rolled back, %d truncates, %d swaps; %d reads (%d ids): %d 200, %d 404, %d 503, %d other, %d connection errors",
		w.stmts.Load(), d.Round(time.Millisecond), float64(w.stmts.Load())/d.Seconds(), w.dups.Load(), w.deadlocks.Load(),
		w.commits.Load(), w.rollbacks.Load(), w.truncates.Load(), w.swaps.Load(),
		w.reads.Load(), w.readIDs.Load(), w.ok200.Load(), w.nf404.Load(), w.unavailable.Load(), w.otherStatus.Load(), w.netErrors.Load())
}

// chaosStmt is one statement of the workload.
type chaosStmt struct {
	query string
	args  []any
}

// stmt draws a statement on a random table and records the ids it touches.
func (w *chaosWorkload) stmt(rng *rand.Rand) chaosStmt {
	tb := w.tables[rng.IntN(len(w.tables))]
	q := func(format string, args ...any) string { return fmt.Sprintf(format, args...) }
	with := func(args ...[]any) []any { return slices.Concat(args...) }
	one := func(v any) []any { return []any{v} }
	insert := "INSERT INTO " + tb.name + " (" + tb.keyList() + ", v, n) VALUES (" + tb.ph() + ", ?, 0)"
	if tb.lookup != nil && rng.IntN(100) < 20 { // a lookup value moves, goes or comes
		id := tb.pick(rng)
		tb.record(id)
		var u any // NULL: the row leaves every lookup
		if rng.IntN(4) > 0 {
			u = tb.lookup[rng.IntN(len(tb.lookup))]
		}
		return chaosStmt{q("UPDATE %s SET u = ?, n = n + 1 WHERE %s", tb.name, tb.eq("=")), with(one(u), tb.args(id))}
	}
	switch r := rng.IntN(100); {
	case r < 22:
		id := tb.target(rng)
		tb.record(id)
		return chaosStmt{insert, with(tb.args(id), one(chaosValue(rng)))}
	case r < 46:
		id := tb.pick(rng)
		tb.record(id)
		return chaosStmt{q("UPDATE %s SET v = ?, n = n + 1 WHERE %s", tb.name, tb.eq("=")), with(one(chaosValue(rng)), tb.args(id))}
	case r < 60: // a key move: every column of the key takes the target's value, changed or not
		from, to := tb.pick(rng), tb.target(rng)
		tb.record(from, to)
		return chaosStmt{q("UPDATE %s SET %s WHERE %s", tb.name, tb.set(), tb.eq("=")), with(tb.args(to), tb.args(from))}
	case r < 74:
		id := tb.pick(rng)
		tb.record(id)
		return chaosStmt{q("DELETE FROM %s WHERE %s", tb.name, tb.eq("=")), tb.args(id)}
	case r < 80: // several rows
		i := rng.IntN(len(tb.dense))
		j := min(i+rng.IntN(10), len(tb.dense)-1)
		lo, hi := tb.dense[i], tb.dense[j]
		if tb.less(lo, hi) > 0 {
			lo, hi = hi, lo
		}
		tb.record(tb.dense[i : j+1]...)
		if tb.kind == chaosComposite { // the rows between, by the key's order: record them all
			tb.record(tb.dense...)
		}
		return chaosStmt{q("UPDATE %s SET v = ?, n = n + 1 WHERE %s AND %s", tb.name, tb.eq(">="), tb.eq("<=")),
			with(one(chaosValue(rng)), tb.args(lo), tb.args(hi))}
	case r < 84:
		id := tb.pick(rng)
		tb.record(id)
		if tb.kind == chaosComposite {
			tb.record(tb.dense...)
		}
		return chaosStmt{q("DELETE FROM %s WHERE %s ORDER BY %s LIMIT ?", tb.name, tb.eq(">="), tb.keyList()), with(tb.args(id), one(1+rng.IntN(5)))}
	case r < 90:
		id := tb.target(rng)
		tb.record(id)
		return chaosStmt{insert + " ON DUPLICATE KEY UPDATE v = VALUES(v), n = n + 1", with(tb.args(id), one(chaosValue(rng)))}
	case r < 95:
		id := tb.target(rng)
		tb.record(id)
		return chaosStmt{"REPLACE" + strings.TrimPrefix(insert, "INSERT"), with(tb.args(id), one(chaosValue(rng)))}
	default:
		n := 2 + rng.IntN(5)
		var args []any
		for range n {
			id := tb.target(rng)
			tb.record(id)
			args = with(args, tb.args(id), one(chaosValue(rng)))
		}
		return chaosStmt{q("INSERT IGNORE INTO %s (%s, v, n) VALUES ", tb.name, tb.keyList()) +
			strings.TrimSuffix(strings.Repeat("("+tb.ph()+", ?, 0), ", n), ", "), args}
	}
}

// chaosExecer is what a statement runs on: the pool or a transaction.
type chaosExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// exec runs s. A duplicate key is what a random workload does, and is ignored; so is a deadlock,
// after which the server has rolled the whole transaction back (deadlock is true then). Anything
// else is a failure (ok is false).
func (w *chaosWorkload) exec(ctx context.Context, on chaosExecer, s chaosStmt) (deadlock bool, ok bool) {
	w.stmts.Add(1)
	_, err := on.ExecContext(ctx, s.query, s.args...)
	var me *mysql.MySQLError
	switch {
	case err == nil:
		return false, true
	case errors.As(err, &me) && me.Number == 1062: // ER_DUP_ENTRY
		w.dups.Add(1)
		return false, true
	case errors.As(err, &me) && me.Number == 1213: // ER_LOCK_DEADLOCK
		w.deadlocks.Add(1)
		return true, true
	}
	w.fail(fmt.Errorf("%s %v: %w", s.query, s.args, err))
	return false, false
}

// write is one writer: single statements and bulk transactions, paced to its share of
// chaosWriteRate. Its choices come from its own seeded stream; it stops when ctx ends, after the
// operation it is in.
func (w *chaosWorkload) write(ctx context.Context, n int) {
	rng := rand.New(rand.NewPCG(w.seed, chaosStreamWriter+uint64(n)))
	interval := time.Duration(chaosWriters) * time.Second / chaosWriteRate
	next := time.Now()
	for {
		// Draw the operation first: its new ids are visible to the readers while this writer
		// waits for its turn.
		var stmts []chaosStmt
		tx, commit := rng.IntN(100) < 4, true
		if tx {
			size := 2 + int(198*math.Pow(rng.Float64(), 3))
			for range size {
				stmts = append(stmts, w.stmt(rng))
			}
			commit = rng.IntN(100) >= 15
		} else {
			stmts = append(stmts, w.stmt(rng))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(time.Duration(len(stmts)) * interval)
		if late := time.Since(next); late > time.Second {
			next = time.Now() // behind: do not burst to catch up
		}
		// Not ctx: an operation that began runs to its end.
		octx, cancel := context.WithTimeout(context.Background(), time.Minute)
		ok := w.run(octx, tx, commit, stmts)
		cancel()
		if !ok {
			return
		}
	}
}

func (w *chaosWorkload) run(ctx context.Context, tx, commit bool, stmts []chaosStmt) bool {
	if !tx {
		_, ok := w.exec(ctx, w.c.root, stmts[0])
		return ok
	}
	conn, err := w.c.root.BeginTx(ctx, nil)
	if err != nil {
		w.fail(err)
		return false
	}
	defer conn.Rollback()
	for _, s := range stmts {
		deadlock, ok := w.exec(ctx, conn, s)
		if !ok {
			return false
		}
		if deadlock {
			return true // the server rolled it back
		}
	}
	if !commit {
		w.rollbacks.Add(1)
		if err := conn.Rollback(); err != nil {
			w.fail(err)
			return false
		}
		return true
	}
	if err := conn.Commit(); err != nil {
		w.fail(fmt.Errorf("commit: %w", err))
		return false
	}
	w.commits.Add(1)
	return true
}

// read is one reader: single and multi-gets through random sidecars, of random ids and of ids a
// writer is about to insert. Errors are expected while faults are injected.
func (w *chaosWorkload) read(ctx context.Context, n int) {
	rng := rand.New(rand.NewPCG(w.seed, chaosStreamReader+uint64(n)))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	for ctx.Err() == nil {
		tb := w.tables[rng.IntN(len(w.tables))]
		pick := func() string {
			if rng.IntN(10) < 3 {
				return tb.soon(rng)
			}
			return tb.pick(rng)
		}
		var u string
		var ids []string
		if tb.lookup != nil && rng.IntN(2) == 0 {
			u = "/v1/" + tb.name + "/by-u/" + url.PathEscape(tb.lookup[rng.IntN(len(tb.lookup))])
		} else if rng.IntN(4) == 0 {
			set := map[string]bool{}
			for range 2 + rng.IntN(30) {
				set[pick()] = true
			}
			for id := range set {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			u = "/v1/" + tb.name + "?" + url.Values{"id": ids}.Encode()
		} else {
			ids = []string{pick()}
			u = "/v1/" + tb.name + "/" + url.PathEscape(ids[0])
		}
		tb.record(ids...)
		p := w.c.anyProc(rng)
		pause := time.Duration(2+rng.IntN(8)) * time.Millisecond
		if p == nil {
			time.Sleep(pause)
			continue
		}
		w.reads.Add(1)
		w.readIDs.Add(int64(len(ids)))
		res, err := client.Get("http://" + p.addr + u)
		if err != nil {
			w.netErrors.Add(1)
		} else {
			res.Body.Close()
			switch res.StatusCode {
			case 200:
				w.ok200.Add(1)
			case 404:
				w.nf404.Add(1)
			case 503:
				w.unavailable.Add(1)
			case 400:
				w.badRequests.Add(1)
			default:
				w.otherStatus.Add(1)
			}
		}
		time.Sleep(pause)
	}
}

// The faults the plan injects.
const (
	chaosKillLeader   = "kill the CDC leader"
	chaosRestartRedis = "restart Redis empty"
	chaosTruncate     = "truncate a table"
	chaosSwap         = "swap a table"
)

var chaosKinds = []string{chaosKillLeader, chaosRestartRedis, chaosTruncate, chaosSwap}

type chaosEvent struct {
	at    time.Duration // from the start of the load
	kind  string
	table int           // the table a truncate or a swap is about
	pause time.Duration // how long Redis stays down
}

// chaosPlan spreads the faults over the load: each kind at least once, more in a long run, in a
// seeded order at seeded times, and none in the last quarter (at least 6s), so that the writes
// after the last fault show whether the sidecars recovered from it. An empty Redis forgets
// every wrong answer a TRUNCATE or a swap left in the cache, so the last truncate and the last
// swap come after the last Redis restart: otherwise a short run could not see them.
func chaosPlan(rng *rand.Rand, d time.Duration, tables int) []chaosEvent {
	var kinds []string
	every := map[string]time.Duration{chaosKillLeader: time.Minute, chaosRestartRedis: 2 * time.Minute, chaosTruncate: 45 * time.Second, chaosSwap: 45 * time.Second}
	for _, k := range chaosKinds {
		for range max(1, int(d/every[k])) {
			kinds = append(kinds, k)
		}
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for _, ddl := range []string{chaosTruncate, chaosSwap} {
		restart, last := -1, -1
		for i, k := range kinds {
			switch k {
			case chaosRestartRedis:
				restart = i
			case ddl:
				last = i
			}
		}
		if last < restart {
			kinds[last], kinds[restart] = kinds[restart], kinds[last]
		}
	}
	start, end := 2*time.Second, d-max(6*time.Second, d/4)
	slot := max(0, (end-start)/time.Duration(len(kinds)))
	var plan []chaosEvent
	for i, k := range kinds {
		at := start + time.Duration(i)*slot + time.Duration(rng.Int64N(int64(slot)*6/10+1))
		pause := 800*time.Millisecond + time.Duration(rng.Int64N(int64(700*time.Millisecond)))
		plan = append(plan, chaosEvent{at: at, kind: k, table: rng.IntN(tables), pause: pause})
	}
	return plan
}

// inject carries out ev and says what it did ("" when it could not). rng is the event's own: a
// swap draws as many numbers as the table has rows.
func (w *chaosWorkload) inject(ev chaosEvent, rng *rand.Rand) string {
	t, c := w.t, w.c
	switch ev.kind {
	case chaosKillLeader:
		var leader *sidecarProc
		for deadline := time.Now().Add(15 * time.Second); leader == nil && time.Now().Before(deadline); {
			c.mu.Lock()
			procs := slices.Clone(c.procs)
			c.mu.Unlock()
			for _, p := range procs {
				if p.isLeader() {
					leader = p
					break
				}
			}
			if leader == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if leader == nil {
			t.Errorf("no sidecar reported sidecache_cdc_leader 1 for 15s; none killed")
			return ""
		}
		c.remove(leader)
		leader.cmd.Process.Signal(syscall.SIGKILL)
		leader.cmd.Wait()
		p := c.start()
		return fmt.Sprintf("killed the CDC leader %s with SIGKILL; started %s", leader.addr, p.addr)
	case chaosRestartRedis:
		stack.StopRedis()
		time.Sleep(ev.pause)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := stack.StartRedis(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// The Bloom filters went with Redis; the CDC leader finds them missing and rebuilds
		// them, which chaosFiltersReady checks before the verification.
		return fmt.Sprintf("stopped Redis, restarted it empty %v later", ev.pause.Round(time.Millisecond))
	case chaosTruncate:
		tb := w.tables[ev.table]
		if _, err := c.root.Exec("TRUNCATE TABLE " + tb.name); err != nil {
			t.Errorf("truncate %s: %v", tb.name, err)
			return ""
		}
		w.truncates.Add(1)
		return "TRUNCATE TABLE " + tb.name
	case chaosSwap:
		tb := w.tables[ev.table]
		what, err := w.swap(tb, rng)
		// Copying a table under concurrent writes can deadlock with them; the server rolled the
		// copy back, so the swap runs again rather than go missing from the run.
		var me *mysql.MySQLError
		for try := 1; try < 5 && errors.As(err, &me) && me.Number == 1213; try++ {
			what, err = w.swap(tb, rng)
		}
		if err != nil {
			t.Errorf("swap %s: %v", tb.name, err)
			return ""
		}
		w.swaps.Add(1)
		return what
	}
	panic(ev.kind)
}

// swap replaces tb by a copy with some rows changed, some dropped and some new:
// CREATE TABLE t__new LIKE t; fill it; RENAME TABLE t TO t__old, t__new TO t; DROP TABLE t__old.
func (w *chaosWorkload) swap(tb *chaosTable, rng *rand.Rand) (string, error) {
	db := w.c.root
	n, k := tb.name+"__new", tb.keyList()
	for _, q := range []string{
		"DROP TABLE IF EXISTS " + n,
		"CREATE TABLE " + n + " LIKE " + tb.name,
		"INSERT INTO " + n + " SELECT * FROM " + tb.name,
	} {
		if _, err := db.Exec(q); err != nil {
			return "", fmt.Errorf("%s: %w", q, err)
		}
	}
	rows, err := db.Query("SELECT " + k + " FROM " + n + " ORDER BY " + k)
	if err != nil {
		return "", err
	}
	var ids []string
	for rows.Next() {
		id, err := tb.scanID(rows)
		if err != nil {
			rows.Close()
			return "", err
		}
		ids = append(ids, id)
	}
	rows.Close()
	var changed, dropped, added int
	for _, id := range ids {
		switch r := rng.IntN(100); {
		case r < 15:
			if _, err := db.Exec("DELETE FROM "+n+" WHERE "+tb.eq("="), tb.args(id)...); err != nil {
				return "", err
			}
			dropped++
		case r < 30:
			if _, err := db.Exec("UPDATE "+n+" SET v = ?, n = n + 1000 WHERE "+tb.eq("="), append([]any{chaosValue(rng)}, tb.args(id)...)...); err != nil {
				return "", err
			}
			changed++
		}
	}
	for range 20 {
		id := tb.pick(rng)
		tb.record(id)
		res, err := db.Exec("INSERT IGNORE INTO "+n+" ("+k+", v, n) VALUES ("+tb.ph()+", ?, 0)", append(tb.args(id), chaosValue(rng))...)
		if err != nil {
			return "", err
		}
		if a, _ := res.RowsAffected(); a > 0 {
			added++
		}
	}
	for _, q := range []string{
		"RENAME TABLE " + tb.name + " TO " + tb.name + "__old, " + n + " TO " + tb.name,
		"DROP TABLE " + tb.name + "__old",
	} {
		if _, err := db.Exec(q); err != nil {
			return "", fmt.Errorf("%s: %w", q, err)
		}
	}
	return fmt.Sprintf("swapped %s for a copy of its %d rows with %d changed, %d dropped, %d new", tb.name, len(ids), changed, dropped, added), nil
}

// chaosFiltersReady waits until a sidecar's /status says every entity's Bloom filter is ready.
func chaosFiltersReady(t *testing.T, c *consistencyRun, tables []*chaosTable) {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < time.Minute {
		res, err := http.Get("http://" + c.procs[0].addr + "/status")
		if err != nil {
			t.Fatal(err)
		}
		var st struct{ Bloom map[string]string }
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		json.Unmarshal(b, &st)
		ready := 0
		for _, tb := range tables {
			if st.Bloom[tb.name] == "ready" {
				ready++
			}
		}
		if ready == len(tables) {
			chaosSay(t, "chaos: every Bloom filter rebuilt and ready %v after the settle", time.Since(start).Round(time.Millisecond))
			return
		}
		last = string(b)
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("the Bloom filters were not all rebuilt a minute after the settle: %s", last)
}

// chaosSettle waits, at most within, until the checkpoint is at the server's position (both
// deletes of every change done or handed to Kafka), the retry workers have committed every
// retry message (their consumer group's offsets are at the end of the retry topic) and no
// sidecar holds a failed delete or a second delete; then one more second. Unlike
// settleRetries it compares the checkpoint with the server's GTID position itself, since a
// SIGKILLed sidecar takes its metrics with it. It returns -1 when it gave up, and the state it
// saw last.
func chaosSettle(c *consistencyRun, k *kfake.Cluster, within time.Duration) (time.Duration, string) {
	start := time.Now()
	var want string
	if err := c.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&want); err != nil {
		c.t.Fatal(err)
	}
	client := &kafka.Client{Addr: kafka.TCP(k.ListenAddrs()...), Timeout: 5 * time.Second}
	for {
		cp := chaosCheckpoint(c)
		lag, dead, kerr := retryLag(client)
		queue := c.metricsSum("sidecache_retry_queue_depth")
		pending := c.metricsSum("sidecache_second_deletes_pending")
		state := fmt.Sprintf("checkpoint %q, server at %q; %d retry messages not yet handled, %d dead letters; %v failed deletes queued for Kafka, %v second deletes pending; %v retry messages produced and %v consumed by the sidecars alive",
			cp, want, lag, dead, queue, pending, c.metricsSum("sidecache_retry_produced_total"), c.metricsSum("sidecache_retry_consumed_total"))
		if kerr != nil {
			state += "; kafka: " + kerr.Error()
		}
		if cp == want && kerr == nil && lag == 0 && queue == 0 && pending == 0 {
			time.Sleep(time.Second)
			return time.Since(start), state
		}
		if time.Since(start) > within {
			return -1, state
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// chaosRow is a row as MariaDB holds it.
type chaosRow struct {
	v sql.NullString
	n string
}

// chaosMismatch is one wrong answer of one sidecar.
type chaosMismatch struct {
	id, kind, proc, got, want string
}

type chaosResult struct {
	tb                    *chaosTable
	checked, rows, procs  int
	stale, missing, ghost map[string]bool
	disagree, unanswered  int
	mismatches            []chaosMismatch
	inRedis               map[string]string // mismatched id → what Redis holds for its key
}

// lookInRedis reads what Redis holds for the key of every mismatched id: a cached row, a null
// marker, or nothing (then a "missing" came from the Bloom filter). The envelope's first two
// bytes are its version and its kind ('v' a row, 'n' a null marker).
func (r *chaosResult) lookInRedis(rc *redis.Client) {
	r.inRedis = map[string]string{}
	for _, m := range r.mismatches {
		if _, ok := r.inRedis[m.id]; ok {
			continue
		}
		b, err := rc.Get(context.Background(), keys.Value(chaosPrefix, r.tb.name, m.id)).Bytes()
		switch {
		case errors.Is(err, redis.Nil):
			r.inRedis[m.id] = "no key"
		case err != nil:
			r.inRedis[m.id] = err.Error()
		case len(b) >= 10 && b[1] == 'v':
			r.inRedis[m.id] = "cached row"
		case len(b) >= 10 && b[1] == 'n':
			r.inRedis[m.id] = "null marker"
		default:
			r.inRedis[m.id] = fmt.Sprintf("%q", b)
		}
	}
}

// tally says where the wrong answers of ids came from, by what Redis holds for their keys.
func (r *chaosResult) tally(ids map[string]bool, missing bool) string {
	if len(ids) == 0 {
		return ""
	}
	counts := map[string]int{}
	for id := range ids {
		what := r.inRedis[id]
		if what == "no key" && missing {
			what = "no key: the Bloom filter said absent"
		}
		counts[what]++
	}
	var parts []string
	for what, n := range counts {
		parts = append(parts, fmt.Sprintf("%d %s", n, what))
	}
	slices.Sort(parts)
	return " (" + strings.Join(parts, ", ") + ")"
}

func (r *chaosResult) line() string {
	s := fmt.Sprintf("%-14s %-18s %6d ids checked on %d sidecars, %4d rows in MariaDB: %d stale%s, %d wrongly missing%s, %d ghost%s",
		r.tb.name, r.tb.sqlType, r.checked, r.procs, r.rows, len(r.stale), r.tally(r.stale, false), len(r.missing), r.tally(r.missing, true), len(r.ghost), r.tally(r.ghost, false))
	if r.disagree > 0 {
		s += fmt.Sprintf("; %d ids answered differently by different sidecars", r.disagree)
	}
	if r.unanswered > 0 {
		s += fmt.Sprintf("; %d answers missing (an error, or an id neither in items nor in missing)", r.unanswered)
	}
	return s
}

// firstMismatches describes the wrong answers of the first few ids (in key order), the
// sidecars that gave the same answer together, with what Redis holds for the key.
func (r *chaosResult) firstMismatches(ids int) []string {
	slices.SortFunc(r.mismatches, func(a, b chaosMismatch) int {
		if c := r.tb.less(a.id, b.id); c != 0 {
			return c
		}
		return strings.Compare(a.proc, b.proc)
	})
	var out []string
	for i, shown := 0, 0; i < len(r.mismatches) && shown < ids; shown++ {
		id := r.mismatches[i].id
		var order []chaosMismatch
		procs := map[chaosMismatch][]string{}
		for ; i < len(r.mismatches) && r.mismatches[i].id == id; i++ {
			m := r.mismatches[i]
			key := chaosMismatch{id: m.id, kind: m.kind, got: m.got, want: m.want}
			if procs[key] == nil {
				order = append(order, key)
			}
			procs[key] = append(procs[key], m.proc)
		}
		for _, m := range order {
			on := fmt.Sprintf("all %d sidecars", r.procs)
			if len(procs[m]) < r.procs {
				on = strings.Join(procs[m], ", ")
			}
			out = append(out, fmt.Sprintf("%s %s id %q on %s: sidecar %s, MariaDB %s; in Redis: %s",
				r.tb.name, m.kind, id, on, m.got, m.want, r.inRedis[id]))
		}
	}
	return out
}

// chaosVerify asks every running sidecar for every id the run wrote or read (and every value of
// an 8- or 16-bit key, and every row MariaDB holds), in multi-gets of 100, and compares the
// answers with MariaDB's rows.
func chaosVerify(t *testing.T, c *consistencyRun, tables []*chaosTable) []*chaosResult {
	t.Helper()
	c.mu.Lock()
	procs := slices.Clone(c.procs)
	c.mu.Unlock()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()
	var results []*chaosResult
	for _, tb := range tables {
		truth := map[string]chaosRow{}
		rows, err := c.root.Query(fmt.Sprintf("SELECT %s, v, n FROM %s", tb.keyList(), tb.name))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var row chaosRow
			id, err := tb.scanID(rows, &row.v, &row.n)
			if err != nil {
				t.Fatal(err)
			}
			truth[id] = row
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		set := map[string]bool{}
		tb.mu.Lock()
		for id := range tb.seen {
			set[id] = true
		}
		tb.mu.Unlock()
		for id := range truth {
			set[id] = true
		}
		if tb.whole {
			for _, id := range tb.wholeDomain() {
				set[id] = true
			}
		}
		ids := make([]string, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, tb.less)

		r := &chaosResult{tb: tb, checked: len(ids), rows: len(truth), procs: len(procs),
			stale: map[string]bool{}, missing: map[string]bool{}, ghost: map[string]bool{}}
		answers := make(map[string][]string, len(ids)) // id → each sidecar's answer
		var mu sync.Mutex
		type job struct {
			batch []string
			p     *sidecarProc
		}
		jobs := make(chan job)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range jobs {
					got, err := chaosMultiGet(client, j.p, tb.name, j.batch)
					mu.Lock()
					for _, id := range j.batch {
						kind, gotS, wantS := chaosClassify(tb, id, got, err, truth)
						answers[id] = append(answers[id], gotS)
						switch kind {
						case "":
							continue
						case "stale":
							r.stale[id] = true
						case "wrongly missing":
							r.missing[id] = true
						case "ghost":
							r.ghost[id] = true
						default:
							r.unanswered++
						}
						r.mismatches = append(r.mismatches, chaosMismatch{id, kind, j.p.addr, gotS, wantS})
					}
					mu.Unlock()
				}
			}()
		}
		for from := 0; from < len(ids); from += 100 {
			for _, p := range procs {
				jobs <- job{ids[from:min(from+100, len(ids))], p}
			}
		}
		close(jobs)
		wg.Wait()
		for _, a := range answers {
			for _, x := range a[1:] {
				if x != a[0] {
					r.disagree++
					break
				}
			}
		}
		results = append(results, r)
	}
	return results
}

// chaosVerifyLookups reads every lookup value of every lookup table through every sidecar and
// compares the answer with the row whose u is exactly that value in MariaDB (404 when none).
// Each lookup is reported like a table of its own, named as its cache keys are.
func chaosVerifyLookups(t *testing.T, c *consistencyRun, tables []*chaosTable) []*chaosResult {
	t.Helper()
	c.mu.Lock()
	procs := slices.Clone(c.procs)
	c.mu.Unlock()
	var results []*chaosResult
	for _, tb := range tables {
		if tb.lookup == nil {
			continue
		}
		type truthRow struct {
			id  string
			row chaosRow
		}
		truth := map[string]truthRow{}
		rows, err := c.root.Query(fmt.Sprintf("SELECT %s, u, v, n FROM %s WHERE u IS NOT NULL", tb.keyList(), tb.name))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var tr truthRow
			var u string
			if tr.id, err = tb.scanID(rows, &u, &tr.row.v, &tr.row.n); err != nil {
				t.Fatal(err)
			}
			truth[u] = tr
		}
		rows.Close()
		view := &chaosTable{name: keys.Lookup(tb.name, "by-u"), sqlType: "lookup u", kind: chaosString}
		r := &chaosResult{tb: view, checked: len(tb.lookup), rows: len(truth), procs: len(procs),
			stale: map[string]bool{}, missing: map[string]bool{}, ghost: map[string]bool{}}
		for _, u := range tb.lookup {
			tr, exists := truth[u]
			want := "no row"
			if exists {
				want = chaosRowString(tb, tr.id, tr.row)
			}
			for _, p := range procs {
				status, body, err := chaosGetRetrying("http://" + p.addr + "/v1/" + tb.name + "/by-u/" + url.PathEscape(u))
				kind, got := "", string(body)
				switch {
				case err != nil:
					kind, got = "unanswered", err.Error()
				case status == 404 && exists:
					kind = "wrongly missing"
				case status == 200 && !exists:
					kind = "ghost"
				case status == 200:
					if diff := chaosDiff(tb, tr.id, body, tr.row); diff != "" {
						kind, got = "stale", got+" ("+diff+")"
					}
				}
				switch kind {
				case "":
					continue
				case "stale":
					r.stale[u] = true
				case "wrongly missing":
					r.missing[u] = true
				case "ghost":
					r.ghost[u] = true
				default:
					r.unanswered++
				}
				r.mismatches = append(r.mismatches, chaosMismatch{u, kind, p.addr, got, want})
			}
		}
		results = append(results, r)
	}
	return results
}

// chaosGetRetrying reads u, trying again a few times on anything but a 200 or a 404.
func chaosGetRetrying(u string) (status int, body []byte, err error) {
	for attempt := range 5 {
		if attempt > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		var res *http.Response
		if res, err = hkClient.Get(u); err != nil {
			continue
		}
		body, err = io.ReadAll(res.Body)
		res.Body.Close()
		if err == nil && (res.StatusCode == 200 || res.StatusCode == 404) {
			return res.StatusCode, body, nil
		}
		if err == nil {
			err = fmt.Errorf("status %d: %s", res.StatusCode, body)
		}
	}
	return 0, nil, err
}

// chaosAnswer is a sidecar's multi-get answer.
type chaosAnswer struct {
	Items   map[string]json.RawMessage `json:"items"`
	Missing []string                   `json:"missing"`
}

// chaosMultiGet asks p for ids, trying again a few times on anything but a 200.
func chaosMultiGet(client *http.Client, p *sidecarProc, entity string, ids []string) (*chaosAnswer, error) {
	u := "http://" + p.addr + "/v1/" + entity + "?" + url.Values{"id": ids}.Encode()
	var last error
	for attempt := range 5 {
		if attempt > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		res, err := client.Get(u)
		if err != nil {
			last = err
			continue
		}
		var a chaosAnswer
		err = json.NewDecoder(res.Body).Decode(&a)
		res.Body.Close()
		if res.StatusCode != 200 {
			last = fmt.Errorf("status %d", res.StatusCode)
			continue
		}
		if err != nil {
			return nil, err
		}
		return &a, nil
	}
	return nil, last
}

// chaosClassify compares one sidecar's answer for id with MariaDB: "" when it is right, else
// the kind of mismatch, and both sides for the report.
func chaosClassify(tb *chaosTable, id string, a *chaosAnswer, err error, truth map[string]chaosRow) (kind, got, want string) {
	row, exists := truth[id]
	want = "no row"
	if exists {
		want = chaosRowString(tb, id, row)
	}
	if err != nil {
		return "unanswered", err.Error(), want
	}
	body, has := a.Items[id]
	if !has {
		if !slices.Contains(a.Missing, id) {
			return "unanswered", "neither in items nor in missing", want
		}
		if exists {
			return "wrongly missing", "missing", want
		}
		return "", "missing", want
	}
	got = string(body)
	if !exists {
		return "ghost", got, want
	}
	if diff := chaosDiff(tb, id, body, row); diff != "" {
		return "stale", got + " (" + diff + ")", want
	}
	return "", got, want
}

func chaosRowString(tb *chaosTable, id string, row chaosRow) string {
	v := "NULL"
	if row.v.Valid {
		v = strconv.Quote(row.v.String)
	}
	return fmt.Sprintf("(%s=%q, v=%s, n=%s)", tb.keyList(), id, v, row.n)
}

// chaosDiff compares a sidecar's JSON row with MariaDB's, column by column: the key byte for
// byte, v as a string or null, n as exact digits.
func chaosDiff(tb *chaosTable, id string, body []byte, row chaosRow) string {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return "not a JSON object: " + err.Error()
	}
	var diffs []string
	if len(obj) != len(tb.cols)+2 {
		diffs = append(diffs, fmt.Sprintf("%d columns, want %d", len(obj), len(tb.cols)+2))
	}
	values, _ := keys.SplitID(id, len(tb.cols))
	for i, col := range tb.cols {
		switch key := obj[col].(type) {
		case json.Number:
			if tb.parts[i].kind == chaosString || key.String() != values[i] {
				diffs = append(diffs, fmt.Sprintf("%s %v", col, key))
			}
		case string:
			if tb.parts[i].kind != chaosString || key != values[i] {
				diffs = append(diffs, fmt.Sprintf("%s %q", col, key))
			}
		default:
			diffs = append(diffs, fmt.Sprintf("%s %v", col, key))
		}
	}
	switch v := obj["v"].(type) {
	case nil:
		if row.v.Valid {
			diffs = append(diffs, "v null")
		}
	case string:
		if !row.v.Valid || v != row.v.String {
			diffs = append(diffs, fmt.Sprintf("v %q", v))
		}
	default:
		diffs = append(diffs, fmt.Sprintf("v %v", v))
	}
	if n, ok := obj["n"].(json.Number); !ok || n.String() != row.n {
		diffs = append(diffs, fmt.Sprintf("n %v", obj["n"]))
	}
	return strings.Join(diffs, ", ")
}
