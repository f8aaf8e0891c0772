package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// A schema shaped like a real application's: films and actors joined by film_actor (a composite
// key), customers looked up by a nullable unique email, films by a unique slug, and languages
// keyed by TINYINT UNSIGNED and looked up by name.
const appSchema = `
CREATE TABLE language (language_id TINYINT UNSIGNED NOT NULL PRIMARY KEY, name CHAR(20) NOT NULL, UNIQUE KEY (name));
CREATE TABLE actor (actor_id SMALLINT UNSIGNED NOT NULL PRIMARY KEY, last_name VARCHAR(45) NOT NULL);
CREATE TABLE film (film_id SMALLINT UNSIGNED NOT NULL PRIMARY KEY, slug VARCHAR(64) NOT NULL, title VARCHAR(128) NOT NULL,
  language_id TINYINT UNSIGNED NOT NULL, UNIQUE KEY film_slug (slug));
CREATE TABLE film_actor (actor_id SMALLINT UNSIGNED NOT NULL, film_id SMALLINT UNSIGNED NOT NULL, role VARCHAR(20),
  PRIMARY KEY (actor_id, film_id));
CREATE TABLE customer (customer_id INT NOT NULL PRIMARY KEY, email VARCHAR(80) NULL, active TINYINT NOT NULL,
  UNIQUE KEY customer_email (email));
CREATE TABLE ticks (n INT NOT NULL AUTO_INCREMENT PRIMARY KEY)`

// appEntities serves every table; the %[1]s are filled with the database's name.
const appEntities = `entities:
  - name: languages
    table: language
    lookups: [{name: by-name, columns: [name]}]
  - name: actors
    table: actor
  - name: films
    table: film
    lookups: [{name: by-slug, columns: [slug]}]
  - name: film-actor
    table: film_actor
    key: [actor_id, film_id]
  - name: customers
    table: customer
    lookups: [{name: by-email, columns: [email]}]
`

// appCheck is one read and the SQL that gives MariaDB's answer to it, as JSON_OBJECT (or no row).
type appCheck struct {
	path, query string
	args        []any
}

// TestApplicationSchema runs a seeded random workload on the application-shaped schema through
// two sidecars (emails changing, set to NULL and taken by other customers; slugs renamed;
// film_actor keys moved; languages renamed, deleted and added) while readers read by key and
// by lookup. Once the writes stop it waits until every read by key and by lookup value answers
// what MariaDB holds: the row, or 404 exactly when no row has that key or that exact value.
func TestApplicationSchema(t *testing.T) {
	seed := chaosSeed(t)
	t.Logf("seed %d (replay with SIDECACHE_SEED=%d)", seed, seed)
	const db = "appschema"
	root := devstack.NewDatabase(t, stack, db, appSchema).Root
	rng := rand.New(rand.NewPCG(seed, 1))
	emails := []string{"ann@example.com", "ANN@example.com", "bob@example.com", "b,o%b@example.com", "cé@example.com", "dan@example.com", "eve@example.com", "x@y.z"}
	slugs := []string{"alien", "blade-runner", "brazil", "heat", "ran", "ran-1985", "zardoz", "50%-off"}
	names := []string{"English", "english", "Deutsch", "Français", "日本語", "Español"}
	exec := func(q string, args ...any) {
		if _, err := root.Exec(q, args...); err != nil && !strings.Contains(err.Error(), "Duplicate entry") {
			t.Fatalf("%s %v: %v", q, args, err)
		}
	}
	for i, n := range names[:4] {
		if i != 1 { // "english" is "English" under the collation
			exec("INSERT INTO language VALUES (?, ?)", 250+i, n)
		}
	}
	for a := 1; a <= 6; a++ {
		exec("INSERT INTO actor VALUES (?, ?)", a, fmt.Sprintf("Actor %d", a))
	}
	for f := 1; f <= 6; f++ {
		exec("INSERT INTO film VALUES (?, ?, ?, 250)", f, slugs[f], fmt.Sprintf("Film %d", f))
	}
	for c := 1; c <= 6; c++ {
		exec("INSERT INTO customer VALUES (?, ?, 1)", c, emails[c])
	}
	for range 12 {
		exec("INSERT IGNORE INTO film_actor VALUES (?, ?, 'cast')", 1+rng.IntN(6), 1+rng.IntN(6))
	}

	cfg := fmt.Sprintf(`listen: %%s
log: {format: text}
mysql: {dsn: %q}
redis: {addrs: [%q], key_prefix: "app:"}
cdc: {enabled: true, flavor: mariadb, server_id: SERVERID, dsn: %q, leader_ttl: 1s, double_delete_delay: 200ms}
`, stack.DSN(db, db, db), stack.RedisAddr, stack.DSN("root", "", db)) + appEntities
	rc := stack.Client(t)
	rc.Del(context.Background(), "app:{cdc:"+db+"}:checkpoint")
	var procs []*sidecarProc
	for range 2 {
		procs = append(procs, startServe(t, strings.Replace(cfg, "SERVERID", fmt.Sprint(2000+serverIDs.Add(1)), 1)))
	}
	devstack.Eventually(t, 30*time.Second, "the binlog tail saved no checkpoint", func() bool {
		exec("INSERT INTO ticks VALUES ()")
		return rc.Exists(context.Background(), "app:{cdc:"+db+"}:checkpoint").Val() == 1
	})

	var checks []appCheck
	for _, e := range emails {
		checks = append(checks, appCheck{"/v1/customers/by-email/" + url.PathEscape(e),
			"SELECT JSON_OBJECT('customer_id', customer_id, 'email', email, 'active', active) FROM customer WHERE email = BINARY ?", []any{e}})
	}
	for _, s := range slugs {
		checks = append(checks, appCheck{"/v1/films/by-slug/" + url.PathEscape(s),
			"SELECT JSON_OBJECT('film_id', film_id, 'slug', slug, 'title', title, 'language_id', language_id) FROM film WHERE slug = BINARY ?", []any{s}})
	}
	for _, n := range names {
		checks = append(checks, appCheck{"/v1/languages/by-name/" + url.PathEscape(n),
			"SELECT JSON_OBJECT('language_id', language_id, 'name', name) FROM language WHERE name = BINARY ?", []any{n}})
	}
	for id := 0; id <= 7; id++ {
		checks = append(checks,
			appCheck{fmt.Sprintf("/v1/customers/%d", id), "SELECT JSON_OBJECT('customer_id', customer_id, 'email', email, 'active', active) FROM customer WHERE customer_id = ?", []any{id}},
			appCheck{fmt.Sprintf("/v1/films/%d", id), "SELECT JSON_OBJECT('film_id', film_id, 'slug', slug, 'title', title, 'language_id', language_id) FROM film WHERE film_id = ?", []any{id}})
		for f := 1; f <= 7; f++ {
			checks = append(checks, appCheck{fmt.Sprintf("/v1/film-actor/%d,%d", id, f),
				"SELECT JSON_OBJECT('actor_id', actor_id, 'film_id', film_id, 'role', role) FROM film_actor WHERE actor_id = ? AND film_id = ?", []any{id, f}})
		}
	}
	for id := 248; id <= 255; id++ {
		checks = append(checks, appCheck{fmt.Sprintf("/v1/languages/%d", id), "SELECT JSON_OBJECT('language_id', language_id, 'name', name) FROM language WHERE language_id = ?", []any{id}})
	}

	// The workload, with reads of every check in between so that the caches hold old values.
	ops := []func(){
		func() {
			exec("UPDATE customer SET email = ? WHERE customer_id = ?", emails[rng.IntN(len(emails))], rng.IntN(8))
		},
		func() { exec("UPDATE customer SET email = NULL WHERE customer_id = ?", rng.IntN(8)) },
		func() { exec("UPDATE customer SET active = 1 - active WHERE customer_id = ?", rng.IntN(8)) },
		func() { exec("DELETE FROM customer WHERE customer_id = ?", rng.IntN(8)) },
		func() {
			exec("INSERT IGNORE INTO customer VALUES (?, ?, 1)", rng.IntN(8), emails[rng.IntN(len(emails))])
		},
		func() { exec("UPDATE film SET slug = ? WHERE film_id = ?", slugs[rng.IntN(len(slugs))], rng.IntN(8)) },
		func() {
			exec("UPDATE film SET title = CONCAT('Film ', ?) WHERE film_id = ?", rng.IntN(1000), rng.IntN(8))
		},
		func() {
			exec("UPDATE IGNORE film_actor SET actor_id = ? WHERE actor_id = ? AND film_id = ?", rng.IntN(8), rng.IntN(8), 1+rng.IntN(7))
		},
		func() {
			exec("UPDATE IGNORE film_actor SET film_id = ? WHERE actor_id = ?", 1+rng.IntN(7), rng.IntN(8))
		},
		func() { exec("INSERT IGNORE INTO film_actor VALUES (?, ?, 'cast')", rng.IntN(8), 1+rng.IntN(7)) },
		func() { exec("DELETE FROM film_actor WHERE actor_id = ? AND film_id = ?", rng.IntN(8), 1+rng.IntN(7)) },
		func() {
			exec("UPDATE language SET name = ? WHERE language_id = ?", names[rng.IntN(len(names))], 248+rng.IntN(8))
		},
		func() { exec("DELETE FROM language WHERE language_id = ?", 248+rng.IntN(8)) },
		func() {
			exec("INSERT IGNORE INTO language VALUES (?, ?)", 248+rng.IntN(8), names[rng.IntN(len(names))])
		},
	}
	for i := range 600 {
		ops[rng.IntN(len(ops))]()
		if i%20 == 0 {
			for _, c := range checks {
				appGet(procs[rng.IntN(len(procs))].addr, c.path)
			}
		}
	}

	// Every answer converges on MariaDB's; a wrong one that stays past the deadline is a
	// failure. A correct build gets there within a second of the last write.
	var wrong []string
	deadline := time.Now().Add(hkDeadline)
	for {
		wrong = wrong[:0]
		for _, p := range procs {
			for _, c := range checks {
				if msg := appVerify(t, root, p.addr, c); msg != "" {
					wrong = append(wrong, msg)
				}
			}
		}
		if len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("application schema: %d reads by key and by lookup on %d sidecars after 600 writes: %d wrong", len(checks)*len(procs), len(procs), len(wrong))
	for i, w := range wrong {
		if i == 10 {
			break
		}
		t.Errorf("%s", w)
	}
}

// appGet reads path, and returns the status and body.
func appGet(addr, path string) (int, []byte) {
	res, err := hkClient.Get("http://" + addr + path)
	if err != nil {
		return 0, nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// appVerify compares a sidecar's answer with MariaDB's, and describes a difference.
func appVerify(t *testing.T, root *sql.DB, addr string, c appCheck) string {
	t.Helper()
	var want sql.NullString
	if err := root.QueryRow(c.query, c.args...).Scan(&want); err != nil && !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("%s: %v", c.query, err)
	}
	status, body := appGet(addr, c.path)
	switch {
	case !want.Valid && status == 404:
		return ""
	case !want.Valid:
		return fmt.Sprintf("%s on %s: %d %s, want 404 (no such row in MariaDB)", c.path, addr, status, body)
	case status != 200:
		return fmt.Sprintf("%s on %s: %d %s, want 200 %s", c.path, addr, status, body, want.String)
	}
	if !appSameJSON(body, []byte(want.String)) {
		return fmt.Sprintf("%s on %s: %s, want %s", c.path, addr, body, want.String)
	}
	return ""
}

// appSameJSON compares two JSON objects, numbers by their digits.
func appSameJSON(a, b []byte) bool {
	decode := func(b []byte) map[string]any {
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.UseNumber()
		var m map[string]any
		if dec.Decode(&m) != nil {
			return nil
		}
		return m
	}
	x, y := decode(a), decode(b)
	return x != nil && y != nil && fmt.Sprint(x) == fmt.Sprint(y)
}
