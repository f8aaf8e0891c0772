package sidecar_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/readthrough"
)

const itemsSchema = `
CREATE TABLE items (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(50) NOT NULL, price DECIMAL(10,2) NOT NULL);
INSERT INTO items VALUES (1, 'one', '1.10'), (2, 'two', '2.20'), (3, 'three', '3.30')`

const itemsEntity = `entities:
  - name: items
    ttl: 60s
    ttl_jitter: 0.2
    null_ttl: 20s
`

func TestMissThenHit(t *testing.T) {
	e := newDB(t, itemsSchema).start(itemsEntity)
	first := e.get("/v1/items/2").want(t, 200, "miss")
	second := e.get("/v1/items/2").want(t, 200, "hit")
	if want := `{"id":2,"name":"two","price":"2.20"}`; string(first.body) != want || string(second.body) != want {
		t.Errorf("bodies %s / %s, want %s", first.body, second.body, want)
	}
	if n := e.queries("items"); n != 1 {
		t.Errorf("MariaDB executed %d loads, want 1", n)
	}
	// A non-canonical spelling of the same id is the same key.
	e.get("/v1/items/002").want(t, 200, "hit")
}

// TestRowLargerThanConnectionBuffers: a row many times the size of a Redis connection's read
// and write buffers is filled, read back and served whole, from Redis and from the near cache.
func TestRowLargerThanConnectionBuffers(t *testing.T) {
	for _, near := range []string{"", "near_cache: {enabled: true, max_staleness: 1h}\n"} {
		e := newDB(t, `CREATE TABLE docs (id INT NOT NULL PRIMARY KEY, body MEDIUMTEXT NOT NULL);
INSERT INTO docs VALUES (1, REPEAT('abcdefgh', 40000))`).start(near + "entities:\n  - name: docs\n    ttl: 60s\n")
		want := `{"id":1,"body":"` + strings.Repeat("abcdefgh", 40000) + `"}`
		for _, cache := range []string{"miss", "hit", "hit"} {
			if r := e.get("/v1/docs/1").want(t, 200, cache); string(r.body) != want {
				t.Fatalf("near cache %t, X-Cache %s: a body of %d bytes, want the row's %d", near != "", cache, len(r.body), len(want))
			}
		}
	}
}

func TestNotFoundIsCachedAsNullMarker(t *testing.T) {
	e := newDB(t, itemsSchema).start(itemsEntity)
	r := e.get("/v1/items/404").want(t, 404, "miss")
	if code := r.errorCode(t); code != "not_found" {
		t.Errorf("error code %q, want not_found", code)
	}
	before := e.queries("items")
	e.get("/v1/items/404").want(t, 404, "negative")
	if after := e.queries("items"); after != before {
		t.Errorf("the second request for an absent id made %d MariaDB queries, want 0", after-before)
	}
	if before != 1 {
		t.Errorf("the first request made %d queries, want 1", before)
	}
	ttl := e.redis.PTTL(context.Background(), e.prefix+"{items:404}").Val()
	if ttl < 16*time.Second || ttl > 24*time.Second {
		t.Errorf("null marker PTTL %v outside null_ttl 20s ± 20%%", ttl)
	}
}

func TestMultiGet(t *testing.T) {
	e := newDB(t, itemsSchema).start(itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")  // 1: cached row
	e.get("/v1/items/50").want(t, 404, "miss") // 50: cached null marker
	before := e.queries("items")
	r := e.get("/v1/items?id=3&id=1&id=50&id=60&id=3&id=2").want(t, 200, "miss")
	var got struct {
		Items   map[string]map[string]any `json:"items"`
		Missing []string                  `json:"missing"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("%s: %v", r.body, err)
	}
	if len(got.Items) != 3 || got.Items["1"]["name"] != "one" || got.Items["2"]["name"] != "two" || got.Items["3"]["name"] != "three" {
		t.Errorf("items = %v", got.Items)
	}
	if fmt.Sprint(got.Missing) != "[50 60]" {
		t.Errorf("missing = %v, want [50 60]", got.Missing)
	}
	// The misses (2, 3, 60) went to MariaDB in one IN (...) query.
	if n := e.queries("items") - before; n != 1 {
		t.Errorf("the multi-get made %d MariaDB queries, want 1", n)
	}
	var inQuery int
	e.root.QueryRow("SELECT COUNT(*) FROM mysql.general_log WHERE command_type='Execute' AND argument LIKE ?"+
		" AND argument NOT LIKE '%general_log%'", "%`"+e.name+"`.`items` WHERE `id` IN (%").Scan(&inQuery)
	if inQuery != 1 {
		t.Errorf("found %d IN (...) queries in the general log, want 1", inQuery)
	}
	// Everything is cached now: a repeat is a hit and makes no query.
	before = e.queries("items")
	e.get("/v1/items?id=1&id=2&id=3&id=50&id=60").want(t, 200, "hit")
	if n := e.queries("items") - before; n != 0 {
		t.Errorf("an all-cached multi-get made %d queries", n)
	}

	e.get("/v1/items").want(t, 400, "")
	tooMany := "/v1/items?id=1" + strings.Repeat("&id=1", 20)
	if code := e.get(tooMany).want(t, 400, "").errorCode(t); code != "too_many_ids" {
		t.Errorf("21 ids: code %q, want too_many_ids", code)
	}
}

func TestBadRequestsTouchNothing(t *testing.T) {
	e := newDB(t, itemsSchema+`;
CREATE TABLE codes (code CHAR(3) NOT NULL PRIMARY KEY, label VARCHAR(10));
INSERT INTO codes VALUES ('abc', 'x')`).start(itemsEntity + "  - name: codes\n")
	tests := []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/items/abc", 400, "invalid_id"},
		{"/v1/items/-1", 400, "invalid_id"},
		{"/v1/items/1.0", 400, "invalid_id"},
		{"/v1/items/18446744073709551616", 400, "invalid_id"},
		{"/v1/items/" + strings.Repeat("9", 300), 400, "invalid_id"},
		{"/v1/items/%201", 400, "invalid_id"},
		{"/v1/codes/abcd", 400, "invalid_id"},                  // longer than CHAR(3)
		{"/v1/codes/a%0Ab", 400, "invalid_id"},                 // control character
		{"/v1/codes/%FF%FE", 400, "invalid_id"},                // not UTF-8
		{"/v1/items?id=1&id=x", 400, "invalid_id"},             // one bad id spoils the batch
		{"/v1/nope/1", 404, "unknown_entity"},                  // unknown entity
		{"/v1/nope?id=1", 404, "unknown_entity"},               // unknown entity, multi-get
		{"/v1/items/1/extra", 404, "no_route"},                 // no such route
		{"/v2/items/1", 404, "no_route"},                       // no such route
		{"/v1/items/" + strings.Repeat("1", 100_000), 431, ""}, // over the 64 KiB header limit
	}
	for _, tt := range tests {
		r := e.get(tt.path)
		if r.status != tt.status {
			t.Errorf("GET %.60s: status %d, want %d (%s)", tt.path, r.status, tt.status, r.body)
			continue
		}
		if tt.code != "" {
			if code := r.errorCode(t); code != tt.code {
				t.Errorf("GET %.60s: code %q, want %q", tt.path, code, tt.code)
			}
		}
	}
	req, _ := http.NewRequest(http.MethodDelete, e.url+"/v1/items/1", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 405 || res.Header.Get("Allow") != "GET" {
		t.Errorf("DELETE: %d Allow=%q, want 405 Allow=GET", res.StatusCode, res.Header.Get("Allow"))
	}
	if n := e.queries("items") + e.queries("codes"); n != 0 {
		t.Errorf("bad requests made %d MariaDB queries", n)
	}
	if keys := e.keys(); len(keys) != 0 {
		t.Errorf("bad requests wrote Redis keys %v", keys)
	}
}

func TestStringKeysAreExact(t *testing.T) {
	e := newDB(t, `CREATE TABLE codes (code VARCHAR(8) NOT NULL PRIMARY KEY, label VARCHAR(10));
INSERT INTO codes VALUES ('abc', 'x'), ('a:b}c', 'y')`).start("entities:\n  - name: codes\n")
	e.get("/v1/codes/abc").want(t, 200, "miss")
	// The column's collation is case-insensitive, but cache keys and binlog invalidations are
	// exact, so a different spelling is not the same row.
	e.get("/v1/codes/ABC").want(t, 404, "miss")
	r := e.get("/v1/codes/a:b%7Dc").want(t, 200, "miss")
	if string(r.body) != `{"code":"a:b}c","label":"y"}` {
		t.Errorf("body %s", r.body)
	}
	e.get("/v1/codes/a:b%7Dc").want(t, 200, "hit")
	r = e.get("/v1/codes?id=abc&id=ABC").want(t, 200, "hit")
	if string(r.body) != `{"items":{"abc":{"code":"abc","label":"x"}},"missing":["ABC"]}` {
		t.Errorf("multi-get body %s", r.body)
	}
}

func TestTTLJitterWithinBounds(t *testing.T) {
	e := newDB(t, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, v INT);
INSERT INTO items SELECT seq, seq FROM seq_1_to_200`).start(itemsEntity)
	ids := make([]string, 0, 20)
	for i := 1; i <= 200; i++ {
		ids = append(ids, fmt.Sprintf("id=%d", i))
		if len(ids) == 20 {
			e.get("/v1/items?"+strings.Join(ids, "&")).want(t, 200, "miss")
			ids = ids[:0]
		}
	}
	lo, hi := 48*time.Second, 72*time.Second // 60s ± 20%
	var min, max time.Duration = math.MaxInt64, 0
	for i := 1; i <= 200; i++ {
		ttl := e.redis.PTTL(context.Background(), fmt.Sprintf("%s{items:%d}", e.prefix, i)).Val()
		if ttl < lo-time.Second || ttl > hi {
			t.Fatalf("item %d PTTL %v outside [%v, %v]", i, ttl, lo, hi)
		}
		min, max = minDur(min, ttl), maxDur(max, ttl)
	}
	// 200 uniform draws over a 24s window: the spread is at least half of it.
	if spread := max - min; spread < 12*time.Second {
		t.Errorf("TTLs spread over %v only (min %v, max %v)", spread, min, max)
	}
}

func minDur(a, b time.Duration) time.Duration { return min(a, b) }
func maxDur(a, b time.Duration) time.Duration { return max(a, b) }

func TestSchemaMismatchFailsAtStart(t *testing.T) {
	e := newDB(t, itemsSchema+`;
CREATE TABLE pairs (a INT NOT NULL, b INT NOT NULL, PRIMARY KEY (a, b));
CREATE TABLE nokey (a INT);
CREATE TABLE dkey (d DATE NOT NULL PRIMARY KEY)`)
	tests := []struct {
		entities string
		want     []string
	}{
		{"  - name: items\n    table: itemz\n", []string{`entity "items"`, "table", `"itemz" does not exist`}},
		{"  - name: items\n    key: name\n", []string{`entity "items"`, "key", `"name" is not the primary key`, `"id"`}},
		{"  - name: items\n    key: nope\n", []string{`entity "items"`, "key", `"nope" does not exist`}},
		{"  - name: items\n    columns: [id, cost]\n", []string{`entity "items"`, "columns[1]", `"cost" does not exist`}},
		{"  - name: pairs\n    key: a\n", []string{`entity "pairs"`, "key", "composite primary key (a, b)", "[a, b]"}},
		{"  - name: pairs\n    key: [b, a]\n", []string{`entity "pairs"`, "key", "composite primary key (a, b)", "in that order"}},
		{"  - name: items\n    key: [id, name]\n", []string{`entity "items"`, "key", `"id, name" is not the primary key`}},
		{"  - name: nokey\n", []string{`entity "nokey"`, "key", "no primary key"}},
		{"  - name: dkey\n", []string{`entity "dkey"`, "key", "not supported as a key"}},
	}
	for _, tt := range tests {
		cfg, err := e.config("entities:\n" + tt.entities)
		if err != nil {
			t.Fatal(err)
		}
		_, err = newSidecar(cfg)
		if err == nil {
			t.Errorf("%q: started, want a schema error", tt.entities)
			continue
		}
		if !errors.Is(err, mysqlsource.ErrSchema) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %q is not one ErrSchema line", tt.entities, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not mention %q", tt.entities, err, w)
			}
		}
	}
}

func TestMySQLErrorIs503(t *testing.T) {
	e := newDB(t, itemsSchema).start(itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")
	e.exec("RENAME TABLE items TO items_gone")
	r := e.get("/v1/items/2").want(t, 503, "")
	if code := r.errorCode(t); code != "db_unavailable" {
		t.Errorf("code %q, want db_unavailable", code)
	}
	e.get("/v1/items/1").want(t, 200, "hit") // what is cached still answers
	if keys := e.keys(); len(keys) != 1 {
		t.Errorf("keys after a failed load: %v, want only the row of id 1", keys)
	}
	e.exec("RENAME TABLE items_gone TO items")
	e.get("/v1/items/2").want(t, 200, "miss")
}

func TestBloomAnswersAbsentIDsWithoutAQuery(t *testing.T) {
	e := newDB(t, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, v INT);
INSERT INTO items SELECT seq, seq FROM seq_1_to_2000`).start(`entities:
  - name: items
    bloom: {enabled: true, expected_items: 5000, fp_rate: 0.001}
`)
	// No filter yet: the guard is open, so an absent id is looked up.
	e.get("/v1/items/900001").want(t, 404, "miss")
	if _, err := e.sc.Preload(context.Background(), readthrough.PreloadOptions{Entity: "items"}); err != nil {
		t.Fatal(err)
	}
	before := e.queries("items")
	for id := 900002; id < 900052; id++ {
		e.get(fmt.Sprintf("/v1/items/%d", id)).want(t, 404, "negative")
	}
	if n := e.queries("items") - before; n > 1 { // fp 0.001 over 50 ids
		t.Errorf("%d absent ids reached MariaDB past the filter", n)
	}
	r := e.get("/v1/items?id=1999&id=900100&id=2000").want(t, 200, "hit")
	if string(r.body) != `{"items":{"1999":{"id":1999,"v":1999},"2000":{"id":2000,"v":2000}},"missing":["900100"]}` {
		t.Errorf("multi-get body %s", r.body)
	}
	metrics := e.get("/metrics").body
	for _, want := range []string{`sidecache_bloom_checks_total{entity="items",result="absent"}`, `sidecache_bloom_bits{entity="items"}`,
		`sidecache_bloom_fp_rate_estimate{entity="items"}`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}

func TestInvalidateEndpoint(t *testing.T) {
	e := newDB(t, itemsSchema).start(itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")
	e.get("/v1/items/1").want(t, 200, "hit")
	e.exec("UPDATE items SET name = 'uno' WHERE id = 1")
	post := func(path string) int {
		res, err := http.Post(e.url+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := post("/v1/items/1/invalidate"); code != 204 {
		t.Fatalf("POST invalidate: %d, want 204", code)
	}
	if r := e.get("/v1/items/1").want(t, 200, "miss"); !strings.Contains(string(r.body), `"uno"`) {
		t.Errorf("after invalidate: %s", r.body)
	}
	if code := post("/v1/items/abc/invalidate"); code != 400 {
		t.Errorf("POST invalidate of a bad id: %d, want 400", code)
	}
	if code := post("/v1/nope/1/invalidate"); code != 404 {
		t.Errorf("POST invalidate of an unknown entity: %d, want 404", code)
	}
	if r := e.get("/v1/items/1/invalidate"); r.status != 405 {
		t.Errorf("GET invalidate: %d, want 405", r.status)
	}
}

// TestInvalidateAddsOnlyExistingRowsToTheFilter: POST .../invalidate adds its id to the Bloom
// filter only when the row exists, so that calls for absent ids cannot fill the filter up.
func TestInvalidateAddsOnlyExistingRowsToTheFilter(t *testing.T) {
	e := newDB(t, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, v INT);
INSERT INTO items SELECT seq, seq FROM seq_1_to_100`).start(`entities:
  - name: items
    bloom: {enabled: true, expected_items: 5000, fp_rate: 0.001}
`)
	if _, err := e.sc.Preload(context.Background(), readthrough.PreloadOptions{Entity: "items"}); err != nil {
		t.Fatal(err)
	}
	post := func(path string) {
		t.Helper()
		res, err := http.Post(e.url+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 204 {
			t.Fatalf("POST %s: %d, want 204", path, res.StatusCode)
		}
	}
	// Absent ids stay absent for the filter (fp 0.001: a false "maybe" among 20 is rare, and
	// shows as a miss, which the count allows for).
	var maybes int
	for id := 900001; id <= 900020; id++ {
		post(fmt.Sprintf("/v1/items/%d/invalidate", id))
		if r := e.get(fmt.Sprintf("/v1/items/%d", id)); r.status != 404 {
			t.Fatalf("absent id %d: %d", id, r.status)
		} else if r.cache != "negative" {
			maybes++
		}
	}
	if maybes > 1 {
		t.Errorf("%d of 20 invalidated absent ids passed the filter: invalidate added them", maybes)
	}
	// A row inserted without the binlog tail joins the filter through its invalidate.
	e.exec("INSERT INTO items VALUES (900600, 1)")
	post("/v1/items/900600/invalidate")
	e.get("/v1/items/900600").want(t, 200, "miss")
}

// TestAdminListen: with admin_listen, probes, /status and /metrics move there and the data API
// keeps only /v1.
func TestAdminListen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	e := newDB(t, itemsSchema).start(fmt.Sprintf("admin_listen: %q\n", admin) + itemsEntity)
	e.get("/v1/items/1").want(t, 200, "miss")
	for _, path := range []string{"/metrics", "/readyz", "/healthz", "/status"} {
		if code := e.get(path).want(t, 404, "").errorCode(t); code != "no_route" {
			t.Errorf("data API %s: code %q, want no_route", path, code)
		}
		var res *http.Response
		devstack.Eventually(t, 5*time.Second, "the admin endpoints answer", func() bool {
			res, err = http.Get("http://" + admin + path)
			return err == nil
		})
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("admin %s: %d", path, res.StatusCode)
		}
	}
	if res, err := http.Get("http://" + admin + "/v1/items/1"); err != nil || res.StatusCode != 404 {
		t.Errorf("admin /v1/items/1: %v %v, want 404", res.StatusCode, err)
	}
}

// TestPaddedCharKeys: with PAD_CHAR_TO_FULL_LENGTH in the server's sql_mode, CHAR values come
// back padded to the column's length, and no id would match its row; sidecache's sessions
// leave it out.
func TestPaddedCharKeys(t *testing.T) {
	e := newDB(t, `CREATE TABLE codes (code CHAR(8) NOT NULL PRIMARY KEY, label CHAR(8));
INSERT INTO codes VALUES ('ab', 'x')`)
	var mode string
	if err := e.root.QueryRow("SELECT @@GLOBAL.sql_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	e.exec("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',PAD_CHAR_TO_FULL_LENGTH')")
	t.Cleanup(func() { e.root.Exec("SET GLOBAL sql_mode = ?", mode) })
	e.root.SetMaxIdleConns(0) // new sessions from here on
	e.start("entities:\n  - name: codes\n")
	if r := e.get("/v1/codes/ab").want(t, 200, "miss"); string(r.body) != `{"code":"ab","label":"x"}` {
		t.Errorf("body %s", r.body)
	}
}
