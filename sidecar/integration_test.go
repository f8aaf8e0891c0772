package sidecar_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/sidecar"
)

// serverIDs numbers the binlog tails of the package's sidecars: two connections to one server
// with the same replica id would end each other.
var serverIDs atomic.Int32

// tailConfig is the cdc: block that turns the binlog tail on for e's database.
func (e *env) tailConfig() string {
	return fmt.Sprintf("cdc:\n  enabled: true\n  flavor: mariadb\n  server_id: %d\n  dsn: %q\n  leader_ttl: 1s\n",
		3000+serverIDs.Add(1), stack.DSN("root", "", e.name))
}

// env is one test's database, Redis key prefix and sidecar.
type env struct {
	t      *testing.T
	name   string // database name, also the key prefix
	dsn    string
	root   *sql.DB // root on the test's database
	redis  *redis.Client
	sc     *sidecar.Sidecar
	url    string
	prefix string
	logTo  io.Writer // if set, the sidecar's log (text) goes here
}

// newDB creates a fresh database with schema (statements separated by ';').
func newDB(t *testing.T, schema string) *env {
	t.Helper()
	d := devstack.NewDatabase(t, stack, "", schema)
	e := &env{t: t, name: d.Name, dsn: d.DSN, root: d.Root}
	e.prefix = e.name + ":"
	e.redis = stack.Client(t)
	return e
}

func (e *env) exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.root.Exec(q, args...); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
}

// config returns a parsed configuration for entitiesYAML on the test's database.
func (e *env) config(entitiesYAML string) (*config.Config, error) {
	doc := fmt.Sprintf("mysql:\n  dsn: %q\nredis:\n  addrs: [%q]\n  key_prefix: %q\nlimits:\n  max_ids: 20\n%s",
		e.dsn, stack.RedisAddr, e.prefix, entitiesYAML)
	return config.Parse([]byte(doc))
}

// start starts a sidecar for entitiesYAML behind an httptest server.
func (e *env) start(entitiesYAML string) *env {
	e.t.Helper()
	cfg, err := e.config(entitiesYAML)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.serve(cfg)
}

// serve starts a sidecar with cfg and serves it until the test ends.
func (e *env) serve(cfg *config.Config) *env {
	e.t.Helper()
	sc, err := newSidecarLogging(cfg, e.logTo)
	if err != nil {
		e.t.Fatal(err)
	}
	e.sc = sc
	// Serve on a real listener, so the server's own limits and timeouts are what is tested.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Serve(ctx, ln) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Serve: %v", err)
		}
		sc.Close()
	})
	return e
}

func newSidecar(cfg *config.Config) (*sidecar.Sidecar, error) { return newSidecarLogging(cfg, nil) }

// newSidecarLogging is newSidecar logging to w (nil: nowhere, or stderr with -v).
func newSidecarLogging(cfg *config.Config, w io.Writer) (*sidecar.Sidecar, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if w != nil {
		log = slog.New(slog.NewTextHandler(w, nil))
	}
	return sidecar.New(context.Background(), sidecar.Options{Config: cfg, Logger: log, Registry: prometheus.NewRegistry()})
}

type response struct {
	status int
	cache  string
	body   []byte
	header http.Header
}

func (e *env) get(path string) response {
	e.t.Helper()
	res, err := http.Get(e.url + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{res.StatusCode, res.Header.Get("X-Cache"), b, res.Header}
}

// want checks a response's status and X-Cache header.
func (r response) want(t *testing.T, status int, cache string) response {
	t.Helper()
	if r.status != status || r.cache != cache {
		t.Fatalf("got %d X-Cache=%q %s; want %d X-Cache=%q", r.status, r.cache, r.body, status, cache)
	}
	return r
}

// errorCode returns the "error" field of a JSON error body.
func (r response) errorCode(t *testing.T) string {
	t.Helper()
	var body struct{ Error, Message string }
	if err := json.Unmarshal(r.body, &body); err != nil || body.Error == "" || body.Message == "" {
		t.Fatalf("error body %s is not {\"error\":..., \"message\":...}: %v", r.body, err)
	}
	return body.Error
}

// queries counts the row loads MariaDB executed against table, from its general log.
func (e *env) queries(table string) int {
	e.t.Helper()
	var n int
	err := e.root.QueryRow("SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Execute' AND argument LIKE ?"+
		" AND argument NOT LIKE '%general_log%'", // not this query itself
		"%FROM `"+e.name+"`.`"+table+"`%").Scan(&n)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// keys returns the Redis keys under the test's prefix.
func (e *env) keys() []string {
	e.t.Helper()
	keys, err := e.redis.Keys(context.Background(), e.prefix+"*").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}
