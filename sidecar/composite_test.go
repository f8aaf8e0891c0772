package sidecar_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// A join table keyed by two columns, and one keyed by a string and an integer whose strings
// hold the two characters an id must percent-encode.
const compositeSchema = `
CREATE TABLE film_actor (actor_id SMALLINT UNSIGNED NOT NULL, film_id SMALLINT UNSIGNED NOT NULL, role VARCHAR(20),
  PRIMARY KEY (actor_id, film_id));
INSERT INTO film_actor VALUES (1, 23, 'lead'), (1, 5, 'cameo'), (2, 5, 'villain'), (10, 1, 'extra');
CREATE TABLE tags (tag VARCHAR(12) NOT NULL, n TINYINT NOT NULL, label VARCHAR(10), PRIMARY KEY (tag, n));
INSERT INTO tags VALUES ('a,b', 1, 'comma'), ('50%', -1, 'percent'), ('', 0, 'empty'), ('A', 1, 'upper'), ('plain', 7, 'plain')`

const compositeEntities = `entities:
  - name: film-actor
    table: film_actor
    key: ["actor_id", "film_id"]
  - name: tags
    ttl: 60s
`

func TestCompositeKeys(t *testing.T) {
	e := newDB(t, compositeSchema).start(compositeEntities)
	first := e.get("/v1/film-actor/1,23").want(t, 200, "miss")
	if want := `{"actor_id":1,"film_id":23,"role":"lead"}`; string(first.body) != want {
		t.Errorf("body %s, want %s", first.body, want)
	}
	e.get("/v1/film-actor/1,23").want(t, 200, "hit")
	e.get("/v1/film-actor/001,023").want(t, 200, "hit") // the same id, spelled otherwise
	e.get("/v1/film-actor/23,1").want(t, 404, "miss")   // the order of the key's columns matters
	if n := e.queries("film_actor"); n != 2 {
		t.Errorf("MariaDB executed %d loads, want 2", n)
	}
	for path, want := range map[string]string{
		"/v1/tags/a%252Cb,1":  `{"tag":"a,b","n":1,"label":"comma"}`, // the id a%2Cb,1, URL-encoded
		"/v1/tags/50%2525,-1": `{"tag":"50%","n":-1,"label":"percent"}`,
		"/v1/tags/,0":         `{"tag":"","n":0,"label":"empty"}`,
		"/v1/tags/%2541,1":    `{"tag":"A","n":1,"label":"upper"}`, // %41 is A
	} {
		if r := e.get(path).want(t, 200, "miss"); string(r.body) != want {
			t.Errorf("GET %s: %s, want %s", path, r.body, want)
		}
	}
	// The collation is case-insensitive; ids, like cache keys and invalidations, are exact.
	e.get("/v1/tags/a,1").want(t, 404, "miss")
	if keys := e.keys(); !slices.Contains(keys, e.prefix+"{tags:a%2Cb,1}") || !slices.Contains(keys, e.prefix+"{tags:A,1}") {
		t.Errorf("cache keys %v: want the canonical ids a%%2Cb,1 and A,1", keys)
	}

	// A multi-get of composite ids is one query; each id is one ?id=.
	before := e.queries("film_actor")
	r := e.get("/v1/film-actor?id=1,5&id=2,5&id=1,23&id=9,9&id=10,1").want(t, 200, "miss")
	var got struct {
		Items   map[string]map[string]any `json:"items"`
		Missing []string                  `json:"missing"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("%s: %v", r.body, err)
	}
	if len(got.Items) != 4 || got.Items["1,5"]["role"] != "cameo" || got.Items["2,5"]["role"] != "villain" ||
		got.Items["10,1"]["role"] != "extra" || strings.Join(got.Missing, " ") != "9,9" {
		t.Errorf("multi-get: %s", r.body)
	}
	if n := e.queries("film_actor") - before; n != 1 {
		t.Errorf("the multi-get made %d MariaDB queries, want 1", n)
	}

	for _, path := range []string{
		"/v1/film-actor/1",          // one value of two
		"/v1/film-actor/1,2,3",      // three
		"/v1/film-actor/1,",         // an empty integer
		"/v1/film-actor/1,x",        // not an integer
		"/v1/film-actor/1,65536",    // past SMALLINT UNSIGNED
		"/v1/film-actor/-1,2",       // unsigned
		"/v1/tags/50%25,1",          // the id 50%,1: a bare '%'
		"/v1/tags/a%250A,1",         // a control character, percent-encoded in the id
		"/v1/tags/toolongtoolong,1", // past VARCHAR(12)
		"/v1/film-actor?id=1,5&id=7",
	} {
		if r := e.get(path); r.status != 400 || r.errorCode(t) != "invalid_id" {
			t.Errorf("GET %s: %d %s, want 400 invalid_id", path, r.status, r.body)
		}
	}

	// POST invalidate takes the same ids.
	e.exec("UPDATE film_actor SET role = 'star' WHERE actor_id = 1 AND film_id = 23")
	res, err := http.Post(e.url+"/v1/film-actor/01,23/invalidate", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 {
		t.Fatalf("POST invalidate: %d, want 204", res.StatusCode)
	}
	if r := e.get("/v1/film-actor/1,23").want(t, 200, "miss"); !strings.Contains(string(r.body), `"star"`) {
		t.Errorf("after invalidate: %s", r.body)
	}
}

func TestLookups(t *testing.T) {
	e := newDB(t, `CREATE TABLE users (id INT NOT NULL PRIMARY KEY, email VARCHAR(80) NULL, slug VARCHAR(20) NOT NULL, city VARCHAR(20),
  UNIQUE KEY (email), UNIQUE KEY (slug));
INSERT INTO users VALUES (1, 'ann@example.com', 'ann', 'Oslo'), (2, NULL, 'invalidate', 'Rome')`)
	// Lookups need the binlog tail: only it sees a lookup value change.
	tail := e.tailConfig()
	cfg, err := e.config(tail + "entities:\n  - name: users\n    lookups: [{name: by-city, columns: [city]}]\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newSidecar(cfg); err == nil || !strings.Contains(err.Error(), "lookups[0]") || !strings.Contains(err.Error(), "UNIQUE index") {
		t.Errorf("a lookup on a column without a unique index: %v, want a schema error naming lookups[0]", err)
	}
	e.start(tail + "entities:\n  - name: users\n    bloom: {enabled: true}\n    lookups: [{name: by-email, columns: [email]}, {name: by-slug, columns: [slug]}]\n")
	var r response
	devstack.EventuallyState(t, 20*time.Second, func() (bool, string) {
		r = e.get("/v1/users/by-email/ann@example.com")
		return r.cache != "bypass", "the lookup is read past the cache: the binlog tail does not cover it yet"
	})
	r.want(t, 200, "miss")
	if want := `{"id":1,"email":"ann@example.com","slug":"ann","city":"Oslo"}`; string(r.body) != want {
		t.Errorf("body %s, want %s", r.body, want)
	}
	e.get("/v1/users/by-email/ann@example.com").want(t, 200, "hit")
	e.get("/v1/users/by-email/ANN@example.com").want(t, 404, "miss") // exact, like every id
	e.get("/v1/users/by-email/nobody@example.com").want(t, 404, "miss")
	e.get("/v1/users/by-email/nobody@example.com").want(t, 404, "negative")
	// A lookup value that is also the invalidate route's last segment is still a lookup.
	if r := e.get("/v1/users/by-slug/invalidate").want(t, 200, "miss"); !strings.Contains(string(r.body), `"id":2`) {
		t.Errorf("by-slug/invalidate: %s", r.body)
	}
	if r := e.get("/v1/users/by-phone/1"); r.status != 404 || r.errorCode(t) != "unknown_lookup" {
		t.Errorf("an unknown lookup: %d %s, want 404 unknown_lookup", r.status, r.body)
	}
	if r := e.get("/v1/users/by-slug/" + strings.Repeat("x", 21)); r.status != 400 || r.errorCode(t) != "invalid_id" {
		t.Errorf("a value longer than the column: %d %s, want 400 invalid_id", r.status, r.body)
	}
	if r := e.get("/v1/users/1/invalidate"); r.status != 405 {
		t.Errorf("GET invalidate: %d, want 405", r.status)
	}
	// A lookup's name is no entity: not through the entity routes, and not to invalidate (the
	// entity has a Bloom filter, which an invalidate of a name that is not an entity would look up).
	for _, path := range []string{"/v1/users%2Fby-email/ann@example.com", "/v1/users%2Fby-email?id=ann@example.com"} {
		if r := e.get(path); r.status != 404 || r.errorCode(t) != "unknown_entity" {
			t.Errorf("GET %s: %d %s, want 404 unknown_entity", path, r.status, r.body)
		}
	}
	res, err := http.Post(e.url+"/v1/users%2Fby-email/ann@example.com/invalidate", "", nil)
	if err != nil {
		t.Fatalf("POST invalidate of a lookup's name: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 404 {
		t.Errorf("POST invalidate of a lookup's name: %d, want 404", res.StatusCode)
	}
	if !slices.Contains(e.keys(), e.prefix+"{users/by-email:ann@example.com}") {
		t.Errorf("cache keys %v: want the lookup's own key", e.keys())
	}
}
