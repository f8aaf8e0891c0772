package main

// Holes where sidecache answers wrong data that outlives the writes: key moves past a Bloom
// filter, every key type, table swaps and TRUNCATE, statement-format and XA writes, a lost
// filter bitmap, and a filter rebuilt after Redis came back empty.
//
// These tests use only the public contract (HTTP API, CLI, config YAML, the Redis key names the
// README documents, MariaDB), because the implementation behind it is being rewritten. Each one
// waits, up to hkDeadline, for the state a correct build reaches once the writes are done: the
// body of GET /v1/{entity}/{id} equal to the row as MariaDB has it, and 404 exactly when MariaDB
// has no row with that key. X-Cache is never asserted (a correct build may bypass the cache).

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

// hkDeadline bounds every wait for a correct answer. Generous: other heavy work shares the
// machine, and a correct build gets there in well under a second.
const hkDeadline = 20 * time.Second

var hkClient = &http.Client{Timeout: 10 * time.Second}

// hkEntity is one configured entity.
type hkEntity struct {
	name, table   string
	expectedItems int // bloom.expected_items; 0: 10000
}

// hkEnv is a database of its own, served by one sidecar with the binlog tail on.
type hkEnv struct {
	t    *testing.T
	db   string
	root *sql.DB
	rc   *redis.Client
	proc *sidecarProc
	base string // http://addr
	cfg  string // the serve config with a dummy listen address, for preload
}

// hkConfig is a config document for db's entities; listen is the listen address, or "%s" for
// startServe to fill in.
func hkConfig(db, listen string, entities []hkEntity) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {format: text}\n")
	fmt.Fprintf(&b, "mysql: {dsn: %q}\n", stack.DSN(db, db, db))
	fmt.Fprintf(&b, "redis: {addrs: [%q], key_prefix: %q}\n", stack.RedisAddr, db+":")
	fmt.Fprintf(&b, "cdc: {enabled: true, flavor: mariadb, server_id: %d, dsn: %q, leader_ttl: 1s, double_delete_delay: 200ms}\n",
		2000+serverIDs.Add(1), stack.DSN("root", "", db))
	b.WriteString("entities:\n")
	for _, e := range entities {
		n := e.expectedItems
		if n == 0 {
			n = 10000
		}
		fmt.Fprintf(&b, "  - name: %q\n    table: %q\n    ttl: 10m\n    bloom: {enabled: true, expected_items: %d, fp_rate: 0.01}\n", e.name, e.table, n)
	}
	// startServe formats the document with the listen address: keep any other % literal.
	return "listen: " + listen + "\n" + strings.ReplaceAll(b.String(), "%", "%%")
}

// hkWriteConfig writes a config document for preload (its listen address is never used).
func hkWriteConfig(t *testing.T, db string, entities []hkEntity) string {
	t.Helper()
	doc := fmt.Sprintf(hkConfig(db, "%s", entities), `"127.0.0.1:1"`)
	path := filepath.Join(t.TempDir(), "preload.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// hkStart creates database db with schema (and a ticks table to move the binlog position),
// starts a sidecar serving entities, and waits until its binlog tail runs.
func hkStart(t *testing.T, db, schema string, entities []hkEntity) *hkEnv {
	t.Helper()
	root := devstack.NewDatabase(t, stack, db, schema+";\nCREATE TABLE ticks (n INT NOT NULL AUTO_INCREMENT PRIMARY KEY)").Root
	e := &hkEnv{t: t, db: db, root: root}
	e.rc = stack.Client(t)
	e.proc = startServe(t, hkConfig(db, "%s", entities))
	e.base = "http://" + e.proc.addr
	e.cfg = hkWriteConfig(t, db, entities)
	e.waitTail()
	return e
}

// waitTail waits until the binlog tail has saved a checkpoint, writing to ticks so that the
// position moves.
func (e *hkEnv) waitTail() {
	e.t.Helper()
	key := e.db + ":{cdc:" + e.db + "}:checkpoint"
	devstack.Eventually(e.t, 30*time.Second, "no checkpoint "+key+": the binlog tail is not running", func() bool {
		e.exec("INSERT INTO ticks VALUES ()")
		return e.rc.Exists(context.Background(), key).Val() == 1
	})
}

func (e *hkEnv) exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.root.Exec(q, args...); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
}

// preload runs `sidecache preload` for entity with config file cfg (default: the serve
// config), which rebuilds the entity's Bloom filter, and checks that a filter is there.
func (e *hkEnv) preload(entity, cfg string) {
	e.t.Helper()
	if cfg == "" {
		cfg = e.cfg
	}
	stdout, stderr, code := runBin(e.t, "preload", "--config", cfg, "--entity", entity)
	if code != 0 {
		e.t.Fatalf("preload %s: exit %d\nstdout: %s\nstderr: %s", entity, code, stdout, stderr)
	}
	if cur := e.rc.HGet(context.Background(), e.bloomKey(entity, "meta"), "cur").Val(); cur == "" {
		e.t.Fatalf("preload %s exited 0 but %s has no cur: no filter was built", entity, e.bloomKey(entity, "meta"))
	}
}

func (e *hkEnv) bloomKey(entity, suffix string) string {
	return e.db + ":{bloom:" + entity + "}:" + suffix
}

// evict deletes the cache entries of ids, as Redis may do at any time.
func (e *hkEnv) evict(entity string, ids ...string) {
	e.t.Helper()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = e.db + ":{" + entity + ":" + id + "}"
	}
	if err := e.rc.Del(context.Background(), keys...).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// hkCheck is one expectation about GET /v1/{entity}/{id}.
type hkCheck struct {
	what   string // names the case in a failure
	entity string
	table  string // where MariaDB has the row, for the failure message
	id     string
	row    map[string]any // the row as written; nil: no such row
	// gone: the table itself is gone; 404 and 503 are both right.
	gone bool
}

func hkRow(id any, v string) map[string]any { return map[string]any{"id": id, "v": v} }

func (c hkCheck) want() string {
	switch {
	case c.row != nil:
		b, _ := json.Marshal(c.row)
		return "200 " + string(b)
	case c.gone:
		return "404 or 503, not the old row"
	}
	return `404 {"error":"not_found"}`
}

// hkGet reads one entity id through the sidecar.
func hkGet(base, entity, id string) (status int, body []byte, err error) {
	res, err := hkClient.Get(base + "/v1/" + entity + "/" + url.PathEscape(id))
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	body, err = io.ReadAll(res.Body)
	return res.StatusCode, body, err
}

// hkSameJSON reports whether body is the JSON object want, numbers compared digit for digit.
func hkSameJSON(body []byte, want map[string]any) bool {
	wb, err := json.Marshal(want)
	if err != nil {
		return false
	}
	decode := func(b []byte) (map[string]any, error) {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var m map[string]any
		err := d.Decode(&m)
		return m, err
	}
	got, err1 := decode(body)
	exp, err2 := decode(wb)
	return err1 == nil && err2 == nil && reflect.DeepEqual(got, exp)
}

// ok reports whether an answer meets c.
func (c hkCheck) ok(status int, body []byte) bool {
	switch {
	case c.row != nil:
		return status == http.StatusOK && hkSameJSON(body, c.row)
	case c.gone:
		return status == http.StatusNotFound || status == http.StatusServiceUnavailable
	}
	var e struct{ Error string }
	return status == http.StatusNotFound && json.Unmarshal(body, &e) == nil && e.Error == "not_found"
}

// hkMySQLRow describes what MariaDB has now under table's key id, byte for byte.
func hkMySQLRow(root *sql.DB, table, id string) string {
	rows, err := root.Query("SELECT * FROM `"+table+"` WHERE CAST(id AS BINARY) = CAST(? AS BINARY)", id)
	if err != nil {
		return "error: " + err.Error()
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return "error: " + err.Error()
		}
		var parts []string
		for i, c := range cols {
			parts = append(parts, fmt.Sprintf("%s=%q", c, vals[i].String))
		}
		out = append(out, "("+strings.Join(parts, ", ")+")")
	}
	if len(out) == 0 {
		return "no row"
	}
	return "row " + strings.Join(out, ", ")
}

// poll reads every check through the sidecar until all hold or hkDeadline passes, and returns
// a description of each that still did not: what the sidecar answered and what MariaDB has.
func (e *hkEnv) poll(checks []hkCheck) (wrong []string) {
	type answer struct {
		status int
		body   string
	}
	last := make([]answer, len(checks))
	done := make([]bool, len(checks))
	left := len(checks)
	start := time.Now()
	for left > 0 && time.Since(start) < hkDeadline {
		for i, c := range checks {
			if done[i] {
				continue
			}
			status, body, err := hkGet(e.base, c.entity, c.id)
			if err != nil {
				last[i] = answer{0, "error: " + err.Error()}
				continue
			}
			last[i] = answer{status, strings.TrimSpace(string(body))}
			if c.ok(status, body) {
				done[i] = true
				left--
			}
		}
		if left > 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for i, c := range checks {
		if !done[i] {
			wrong = append(wrong, fmt.Sprintf("%s: GET /v1/%s/%s still answered %d %s after %v; want %s (MariaDB has %s)",
				c.what, c.entity, c.id, last[i].status, last[i].body, hkDeadline, c.want(), hkMySQLRow(e.root, c.table, c.id)))
		}
	}
	return wrong
}

// hkShown is how many wrong answers a wait lists one by one; the rest are counted.
const hkShown = 12

// waitAll waits until every check holds, and fails the test with the ones that did not.
func (e *hkEnv) waitAll(checks []hkCheck) {
	e.t.Helper()
	wrong := e.poll(checks)
	for i, w := range wrong {
		if i == hkShown {
			e.t.Errorf("... and %d more of these %d checks still wrong", len(wrong)-hkShown, len(checks))
			break
		}
		e.t.Error(w)
	}
}

// prime reads checks through the sidecar to cache the state before a step, waiting as
// waitAll does; an answer still wrong is logged, not failed: it is an earlier step's hole,
// already reported there.
func (e *hkEnv) prime(checks []hkCheck) {
	e.t.Helper()
	for _, w := range e.poll(checks) {
		e.t.Logf("setup, not asserted here (an earlier step's hole): %s", w)
	}
}

// waitSecondDeletes waits until the sidecar has no second delete pending
// (sidecache_second_deletes_pending), so that no delayed delete of an earlier change can still
// remove what is cached now.
func (e *hkEnv) waitSecondDeletes() {
	e.t.Helper()
	re := regexp.MustCompile(`(?m)^sidecache_second_deletes_pending (\S+)$`)
	devstack.EventuallyState(e.t, hkDeadline, func() (bool, string) {
		res, err := hkClient.Get(e.base + "/metrics")
		if err != nil {
			e.t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		m := re.FindSubmatch(b)
		if m == nil {
			e.t.Fatal("no sidecache_second_deletes_pending metric: cannot tell when the second deletes are done")
		}
		return string(m[1]) == "0", "sidecache_second_deletes_pending still " + string(m[1])
	})
}

// hkIntChecks returns checks of table/entity for ids with the value "<prefix> <id>", or 404
// when prefix is "".
func hkIntChecks(what, entity, prefix string, ids ...int64) []hkCheck {
	var cs []hkCheck
	for _, id := range ids {
		c := hkCheck{what: what, entity: entity, table: entity, id: fmt.Sprint(id)}
		if prefix != "" {
			c.row = hkRow(id, fmt.Sprintf("%s %d", prefix, id))
		}
		cs = append(cs, c)
	}
	return cs
}

// TestKeyMoveReachesBloomFilter: a primary key update moves a row to an id that the Bloom
// filter built by preload never saw. The new id must be found, the old one must be gone.
func TestKeyMoveReachesBloomFilter(t *testing.T) {
	e := hkStart(t, "hk_keymove", `CREATE TABLE num (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO num SELECT seq, CONCAT('num ', seq) FROM seq_1_to_100;
		CREATE TABLE str (id VARCHAR(64) NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO str VALUES ('abc', 'str abc'), ('def', 'str def')`,
		[]hkEntity{{name: "num", table: "num"}, {name: "str", table: "str"}})
	e.preload("num", "")
	e.preload("str", "")
	tests := []struct {
		name, entity string
		update       string
		arg          any
		oldID, newID string
		oldRow       map[string]any
		newRow       map[string]any
	}{
		{"INT", "num", "UPDATE num SET id = id + 100000 WHERE id = ?", 7, "7", "100007", hkRow(7, "num 7"), hkRow(100007, "num 7")},
		{"VARCHAR", "str", "UPDATE str SET id = 'abc-moved' WHERE id = ?", "abc", "abc", "abc-moved", hkRow("abc", "str abc"), hkRow("abc-moved", "str abc")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := *e
			e.t = t
			// Cache the row under its old id, and the new id's absence.
			e.waitAll([]hkCheck{
				{what: "before the key move: old id", entity: tt.entity, table: tt.entity, id: tt.oldID, row: tt.oldRow},
				{what: "before the key move: new id", entity: tt.entity, table: tt.entity, id: tt.newID},
			})
			e.exec(tt.update, tt.arg)
			e.waitAll([]hkCheck{
				{what: "after the key move: new id", entity: tt.entity, table: tt.entity, id: tt.newID, row: tt.newRow},
				{what: "after the key move: old id", entity: tt.entity, table: tt.entity, id: tt.oldID},
			})
		})
	}
}

// hkKeyType is a key column type with rows at its extremes.
type hkKeyType struct {
	name     string // for messages
	entity   string // also the table
	sqlType  string
	rows     []any // initial keys: int64, uint64 or string
	ins      any   // inserted in step b
	from, to any   // moved in step c
}

func hkSigned(entity, sqlType string, bits int) hkKeyType {
	lo, hi := int64(math.MinInt64)>>(64-bits), int64(math.MaxInt64)>>(64-bits)
	return hkKeyType{name: sqlType, entity: entity, sqlType: sqlType,
		rows: []any{lo, int64(-1), int64(0), hi}, ins: lo + 1, from: hi, to: lo + 2}
}

func hkUnsigned(entity, sqlType string, bits int) hkKeyType {
	hi := uint64(math.MaxUint64) >> (64 - bits)
	return hkKeyType{name: sqlType, entity: entity, sqlType: sqlType,
		rows: []any{uint64(0), uint64(1), uint64(1) << (bits - 1), hi}, ins: hi - 1, from: hi, to: hi - 2}
}

// TestEveryKeyTypeIsInvalidated: for every key type sidecache accepts, rows at the type's
// extremes are invalidated on a non-key UPDATE, found after an INSERT past a Bloom filter,
// found under their new id after a key move (and gone under the old), and gone after DELETE.
// Each step runs on every type at once and then waits for all of them.
func TestEveryKeyTypeIsInvalidated(t *testing.T) {
	types := []hkKeyType{
		hkSigned("k_tinyint", "TINYINT", 8),
		hkUnsigned("k_tinyint_u", "TINYINT UNSIGNED", 8),
		hkSigned("k_smallint", "SMALLINT", 16),
		hkUnsigned("k_smallint_u", "SMALLINT UNSIGNED", 16),
		hkSigned("k_mediumint", "MEDIUMINT", 24),
		hkUnsigned("k_mediumint_u", "MEDIUMINT UNSIGNED", 24),
		hkSigned("k_int", "INT", 32),
		hkUnsigned("k_int_u", "INT UNSIGNED", 32),
		hkSigned("k_bigint", "BIGINT", 64),
		hkUnsigned("k_bigint_u", "BIGINT UNSIGNED", 64),
		{name: "CHAR(8)", entity: "k_char", sqlType: "CHAR(8)",
			rows: []any{"0", "a", "né☃", "a b", "zzzzzzzz", strings.Repeat("☃", 8)},
			ins:  "ins ☃", from: "né☃", to: "mv né☃"},
		{name: "VARCHAR(64)", entity: "k_varchar", sqlType: "VARCHAR(64)",
			rows: []any{"0", "a", "né☃", "a b", strings.Repeat("z", 64), strings.Repeat("☃", 64)},
			ins:  "ins ☃ x", from: "né☃", to: "moved né☃"},
	}
	var schema []string
	var entities []hkEntity
	for _, kt := range types {
		schema = append(schema, fmt.Sprintf("CREATE TABLE %s (id %s NOT NULL PRIMARY KEY, v VARCHAR(80) NOT NULL)", kt.entity, kt.sqlType))
		entities = append(entities, hkEntity{name: kt.entity, table: kt.entity})
	}
	e := hkStart(t, "hk_keytypes", strings.Join(schema, ";\n"), entities)

	// model: what each table holds, by id as the URL writes it.
	model := make([]map[string]map[string]any, len(types))
	for i, kt := range types {
		model[i] = map[string]map[string]any{}
		for j, id := range kt.rows {
			v := fmt.Sprintf("row %d", j)
			e.exec("INSERT INTO "+kt.entity+" (id, v) VALUES (?, ?)", id, v)
			model[i][fmt.Sprint(id)] = hkRow(id, v)
		}
	}
	check := func(i int, step string, id any) hkCheck {
		kt := types[i]
		return hkCheck{what: fmt.Sprintf("[%s] %s", kt.name, step), entity: kt.entity, table: kt.entity,
			id: fmt.Sprint(id), row: model[i][fmt.Sprint(id)]}
	}
	// reset evicts every key of every type, as Redis may at any time, and caches the state
	// before a step again, so that a step's result does not depend on an earlier step's hole
	// (the Bloom filter aside).
	reset := func(t *testing.T, checks []hkCheck) {
		e := *e
		e.t = t
		e.waitSecondDeletes() // an earlier step's delayed delete must not undo this
		for _, kt := range types {
			var ids []string
			for _, id := range append(append([]any{}, kt.rows...), kt.ins, kt.from, kt.to) {
				ids = append(ids, fmt.Sprint(id))
			}
			e.evict(kt.entity, ids...)
		}
		e.prime(checks)
	}
	all := func(step string) []hkCheck {
		var cs []hkCheck
		for i, kt := range types {
			for _, id := range append(append([]any{}, kt.rows...), kt.ins, kt.to) {
				cs = append(cs, check(i, step, id))
			}
		}
		return cs
	}

	t.Run("cache", func(t *testing.T) {
		e := *e
		e.t = t
		e.waitAll(all("cached by GET"))
	})
	t.Run("a_update_nonkey", func(t *testing.T) {
		e := *e
		e.t = t
		reset(t, all("before the UPDATE"))
		for i, kt := range types {
			e.exec("UPDATE " + kt.entity + " SET v = CONCAT('upd ', v)")
			for _, r := range model[i] {
				r["v"] = "upd " + r["v"].(string)
			}
		}
		e.waitAll(all("after UPDATE of a non-key column"))
	})
	// The filter is built now, from the rows as they are.
	for _, kt := range types {
		e.preload(kt.entity, "")
	}
	t.Run("b_insert", func(t *testing.T) {
		e := *e
		e.t = t
		reset(t, all("before the INSERT"))
		var after []hkCheck
		for i, kt := range types {
			e.exec("INSERT INTO "+kt.entity+" (id, v) VALUES (?, 'inserted')", kt.ins)
			model[i][fmt.Sprint(kt.ins)] = hkRow(kt.ins, "inserted")
			after = append(after, check(i, "after INSERT with a filter built", kt.ins))
		}
		e.waitAll(after)
	})
	t.Run("c_key_move", func(t *testing.T) {
		e := *e
		e.t = t
		reset(t, all("before the key move"))
		var after []hkCheck
		for i, kt := range types {
			e.exec("UPDATE "+kt.entity+" SET id = ? WHERE id = ?", kt.to, kt.from)
			r := model[i][fmt.Sprint(kt.from)]
			delete(model[i], fmt.Sprint(kt.from))
			model[i][fmt.Sprint(kt.to)] = hkRow(kt.to, r["v"].(string))
			after = append(after,
				check(i, fmt.Sprintf("key moved from %v: new id", kt.from), kt.to),
				check(i, fmt.Sprintf("key moved to %v: old id", kt.to), kt.from))
		}
		e.waitAll(after)
	})
	t.Run("d_delete", func(t *testing.T) {
		e := *e
		e.t = t
		reset(t, all("before the DELETE"))
		for i, kt := range types {
			e.exec("DELETE FROM " + kt.entity)
			clear(model[i])
		}
		e.waitAll(all("after DELETE"))
	})
}

// TestTruncateAndTableSwap: DDL that replaces a table's rows without row events for it.
func TestTruncateAndTableSwap(t *testing.T) {
	const schema = `CREATE TABLE t (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO t SELECT seq, CONCAT('old ', seq) FROM seq_1_to_5`
	ents := []hkEntity{{name: "t", table: "t"}}
	old := func(what string) []hkCheck { return hkIntChecks(what, "t", "old", 1, 2, 3, 4, 5) }

	t.Run("truncate", func(t *testing.T) {
		e := hkStart(t, "hk_truncate", schema, ents)
		e.waitAll(old("cached before TRUNCATE"))
		e.exec("TRUNCATE TABLE t")
		e.waitAll(hkIntChecks("after TRUNCATE", "t", "", 1, 2, 3, 4, 5))
	})

	t.Run("swap", func(t *testing.T) {
		e := hkStart(t, "hk_swap", schema, ents)
		e.preload("t", "")
		e.waitAll(append(old("cached before the swap"), hkIntChecks("absent before the swap", "t", "", 100, 101)...))
		e.exec("CREATE TABLE t_new LIKE t")
		e.exec("INSERT INTO t_new VALUES (1, 'new 1'), (2, 'new 2'), (100, 'new 100'), (101, 'new 101')")
		e.exec("RENAME TABLE t TO t_old, t_new TO t")
		e.exec("DROP TABLE t_old")
		after := hkIntChecks("after the swap: changed", "t", "new", 1, 2)
		after = append(after, hkIntChecks("after the swap: only in the new table", "t", "new", 100, 101)...)
		after = append(after, hkIntChecks("after the swap: not in the new table", "t", "", 3, 4, 5)...)
		e.waitAll(after)
	})

	t.Run("drop_create", func(t *testing.T) {
		e := hkStart(t, "hk_recreate", schema, ents)
		e.preload("t", "")
		e.waitAll(append(old("cached before DROP"), hkIntChecks("absent before DROP", "t", "", 200)...))
		e.exec("DROP TABLE t")
		e.exec("CREATE TABLE t (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL)")
		e.exec("INSERT INTO t VALUES (1, 're 1'), (2, 're 2'), (200, 're 200')")
		after := hkIntChecks("recreated with a new value", "t", "re", 1, 2, 200)
		after = append(after, hkIntChecks("not in the recreated table", "t", "", 3, 4, 5)...)
		e.waitAll(after)
	})

	t.Run("rename_away", func(t *testing.T) {
		e := hkStart(t, "hk_gone", schema, ents)
		e.waitAll(old("cached before RENAME"))
		e.exec("RENAME TABLE t TO t_gone")
		after := hkIntChecks("after RENAME TABLE t TO t_gone", "t", "", 1, 2, 3, 4, 5)
		for i := range after {
			after[i].gone = true
		}
		e.waitAll(after)
	})
}

// TestStatementFormatWrites: a session that logs its writes as statements, not row images.
// Once with no filter built (the guard open) and once with a filter built by preload.
func TestStatementFormatWrites(t *testing.T) {
	e := hkStart(t, "hk_stmt", `CREATE TABLE plain (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO plain SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5;
		CREATE TABLE filtered (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO filtered SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5`,
		[]hkEntity{{name: "plain", table: "plain"}, {name: "filtered", table: "filtered"}})
	e.preload("filtered", "")
	for _, table := range []string{"plain", "filtered"} {
		t.Run(table, func(t *testing.T) {
			e := *e
			e.t = t
			ctx := context.Background()
			conn, err := e.root.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.ExecContext(ctx, "SET SESSION binlog_format = 'STATEMENT'"); err != nil {
				t.Fatal(err)
			}
			var format string
			if err := conn.QueryRowContext(ctx, "SELECT @@SESSION.binlog_format").Scan(&format); err != nil || format != "STATEMENT" {
				t.Fatalf("session binlog_format %q, %v; want STATEMENT", format, err)
			}
			e.waitAll(append(hkIntChecks("cached", table, "row", 1, 2, 3, 4, 5), hkIntChecks("absent", table, "", 10, 20)...))
			for _, q := range []string{
				"UPDATE " + table + " SET v = CONCAT('stmt ', v) WHERE id <= 2",
				"DELETE FROM " + table + " WHERE id = 3",
				"INSERT INTO " + table + " VALUES (10, 'row 10')",
				"UPDATE " + table + " SET id = 20, v = 'row 20' WHERE id = 4",
			} {
				if _, err := conn.ExecContext(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			after := hkIntChecks("statement-format UPDATE", table, "stmt row", 1, 2)
			after = append(after, hkIntChecks("statement-format DELETE", table, "", 3)...)
			after = append(after, hkIntChecks("statement-format INSERT", table, "row", 10)...)
			after = append(after, hkIntChecks("statement-format key move: new id", table, "row", 20)...)
			after = append(after, hkIntChecks("statement-format key move: old id", table, "", 4)...)
			after = append(after, hkIntChecks("untouched", table, "row", 5)...)
			e.waitAll(after)
		})
	}
}

// TestXATransactionInvalidatedAtCommit: an XA transaction's rows are logged at XA PREPARE and
// become visible only at XA COMMIT; a row cached in between must not outlive the commit.
func TestXATransactionInvalidatedAtCommit(t *testing.T) {
	e := hkStart(t, "hk_xa", `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO items SELECT seq, CONCAT('old ', seq) FROM seq_1_to_10`,
		[]hkEntity{{name: "items", table: "items"}})
	ctx := context.Background()
	xid := func(name string) string { return "'" + e.db + "-" + name + "'" }
	// A prepared XA transaction outlives its connection: never leave one behind.
	t.Cleanup(func() {
		for _, n := range []string{"x", "y", "z"} {
			e.root.Exec("XA ROLLBACK " + xid(n))
		}
	})
	row := func(what string, id int64, v string) hkCheck {
		c := hkIntChecks(what, "items", "", id)[0]
		c.row = hkRow(id, v)
		return c
	}
	xa := func(t *testing.T, stmts ...string) *sql.Conn {
		t.Helper()
		conn, err := e.root.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		for _, q := range stmts {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		return conn
	}

	t.Run("prepare_then_commit", func(t *testing.T) {
		e := *e
		e.t = t
		e.waitAll([]hkCheck{row("cached", 2, "old 2")})
		conn := xa(t, "XA START "+xid("x"), "UPDATE items SET v = 'new 1' WHERE id = 1", "XA END "+xid("x"), "XA PREPARE "+xid("x"))
		// An ordinary transaction after the prepare: once its change is seen, the tail is past
		// the prepare.
		e.exec("UPDATE items SET v = 'other 2' WHERE id = 2")
		e.waitAll([]hkCheck{row("a change committed after the XA PREPARE", 2, "other 2")})
		// Whatever deletes the tail made so far are done, the delayed ones too: nothing but the
		// XA COMMIT can now remove what is cached next.
		e.waitSecondDeletes()
		// Not committed yet: the old row is right, and now cached.
		e.waitAll([]hkCheck{row("between XA PREPARE and XA COMMIT", 1, "old 1")})
		if _, err := conn.ExecContext(ctx, "XA COMMIT "+xid("x")); err != nil {
			t.Fatal(err)
		}
		e.waitAll([]hkCheck{row("after XA COMMIT", 1, "new 1")})
	})

	t.Run("one_phase_commit", func(t *testing.T) {
		e := *e
		e.t = t
		e.waitAll([]hkCheck{row("cached", 3, "old 3")})
		xa(t, "XA START "+xid("y"), "UPDATE items SET v = 'new 3' WHERE id = 3", "XA END "+xid("y"), "XA COMMIT "+xid("y")+" ONE PHASE")
		e.waitAll([]hkCheck{row("after XA COMMIT ONE PHASE", 3, "new 3")})
	})

	t.Run("rollback", func(t *testing.T) {
		e := *e
		e.t = t
		e.waitAll([]hkCheck{row("cached", 4, "old 4"), row("cached", 5, "old 5")})
		conn := xa(t, "XA START "+xid("z"), "UPDATE items SET v = 'never 4' WHERE id = 4", "XA END "+xid("z"), "XA PREPARE "+xid("z"))
		e.exec("UPDATE items SET v = 'other 5' WHERE id = 5")
		e.waitAll([]hkCheck{row("a change committed after the XA PREPARE", 5, "other 5")})
		if _, err := conn.ExecContext(ctx, "XA ROLLBACK "+xid("z")); err != nil {
			t.Fatal(err)
		}
		// A change after the rollback: once it is seen, the tail is past the rollback.
		e.exec("UPDATE items SET v = 'again 5' WHERE id = 5")
		e.waitAll([]hkCheck{row("a change committed after the XA ROLLBACK", 5, "again 5")})
		e.waitAll([]hkCheck{row("after XA ROLLBACK", 4, "old 4")})
	})
}

// TestMissingBloomBitmapReadsMaybe: Redis lost the filter's bitmap (eviction, a failover) but
// not its meta hash. A filter that is not there cannot say "absent".
func TestMissingBloomBitmapReadsMaybe(t *testing.T) {
	e := hkStart(t, "hk_nobitmap", `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO items SELECT seq, CONCAT('row ', seq) FROM seq_1_to_50`,
		[]hkEntity{{name: "items", table: "items"}})
	e.preload("items", "")
	// The sidecar has used the filter.
	e.waitAll(hkIntChecks("absent", "items", "", 999999))
	ctx := context.Background()
	cur := e.rc.HGet(ctx, e.bloomKey("items", "meta"), "cur").Val()
	if n := e.rc.Del(ctx, e.bloomKey("items", cur)).Val(); n != 1 {
		t.Fatalf("the bitmap %s was not there to delete", e.bloomKey("items", cur))
	}
	ids := e.evictFirst("items", 50)
	e.waitAll(hkIntChecks("uncached, its filter bitmap gone", "items", "row", ids...))
}

// evictFirst deletes the cached rows of ids 1 to n from Redis, as an eviction would, and returns
// those ids.
func (e *hkEnv) evictFirst(entity string, n int) []int64 {
	ids := make([]int64, n)
	keys := make([]string, n)
	for i := range ids {
		ids[i] = int64(i + 1)
		keys[i] = fmt.Sprint(i + 1)
	}
	e.evict(entity, keys...)
	return ids
}

// TestBloomFilterAfterFlushAll: Redis comes back empty and the filter is rebuilt with other
// sizes; a sidecar that read the old filter must check the new one with the new sizes.
func TestBloomFilterAfterFlushAll(t *testing.T) {
	const n = 500
	small := []hkEntity{{name: "items", table: "items", expectedItems: 1000}}
	e := hkStart(t, "hk_flushall", fmt.Sprintf(`CREATE TABLE items (id INT NOT NULL PRIMARY KEY, v VARCHAR(40) NOT NULL);
		INSERT INTO items SELECT seq, CONCAT('row ', seq) FROM seq_1_to_%d`, n), small)
	e.preload("items", "")
	// The sidecar checks the filter at least once.
	e.waitAll(hkIntChecks("absent", "items", "", 999999))
	ctx := context.Background()
	if err := e.rc.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	big := hkWriteConfig(t, e.db, []hkEntity{{name: "items", table: "items", expectedItems: 1000000}})
	e.preload("items", big)
	ids := e.evictFirst("items", n)
	e.waitAll(hkIntChecks("uncached, after FLUSHALL and a rebuild with other sizes", "items", "row", ids...))
}
