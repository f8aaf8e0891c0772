package sidecar_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/readthrough"
)

// replicaEnv is a test database on a stack with a MariaDB replica, and a sidecar whose loads
// read the replica (with extra lines in its mysql section).
func replicaEnv(t *testing.T, rs *devstack.Stack, mysqlExtra string, logTo io.Writer) *env {
	t.Helper()
	d := devstack.NewDatabase(t, rs, "", `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')`)
	e := &env{t: t, name: d.Name, dsn: d.DSN, root: d.Root, redis: stack.Client(t), logTo: logTo}
	e.prefix = e.name + ":"
	if err := rs.WaitReplica(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf("mysql:\n  dsn: %q\n  replica_dsn: %q\n%sredis:\n  addrs: [%q]\n  key_prefix: %q\n"+
		"entities:\n  - name: items\n    bloom: {enabled: true, expected_items: 1000}\n",
		e.dsn, rs.ReplicaDSN(e.name, e.name, e.name), mysqlExtra, stack.RedisAddr, e.prefix)
	cfg, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return e.serve(cfg)
}

func startReplicaStack(t *testing.T) *devstack.Stack {
	t.Helper()
	devstack.Require(t, stack) // skipped or failed as the package is
	rs, err := devstack.Start(context.Background(), devstack.Options{Replica: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	return rs
}

// TestReplicaReadsAndFilters checks what must read the primary although loads read a lagging
// replica: a preload's filter has every row the primary had when it began (the scan waits for
// the replica to catch up), and an invalidated id whose row only the primary has yet joins the
// filter. /status reports the replica.
func TestReplicaReadsAndFilters(t *testing.T) {
	rs := startReplicaStack(t)
	e := replicaEnv(t, rs, "", nil)
	ctx := context.Background()

	e.get("/v1/items/1").want(t, 200, "miss") // loads read the replica

	if err := rs.StopReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	e.exec("INSERT INTO items VALUES (4, 'four')")
	go func() {
		time.Sleep(300 * time.Millisecond)
		rs.StartReplicaSQL(ctx)
	}()
	st, err := e.sc.Preload(ctx, readthrough.PreloadOptions{Entity: "items"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != 4 {
		t.Errorf("the preload warmed %d rows, want 4: it scanned a replica that had not applied the insert", st.Rows)
	}
	e.get("/v1/items/4").want(t, 200, "hit")

	if err := rs.StopReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	e.exec("INSERT INTO items VALUES (5, 'five')")
	if err := e.sc.Invalidate(ctx, "items", "5"); err != nil {
		t.Fatal(err)
	}
	// The filter has 5: the replica, not having the row yet, is asked (a miss), not skipped
	// as absent (negative).
	e.get("/v1/items/5").want(t, 404, "miss")

	status := string(e.get("/status").want(t, 200, "").body)
	for _, want := range []string{`"mysql_replica":{"ok":true`, `"wait":"5s"`} {
		if !strings.Contains(status, want) {
			t.Errorf("/status %s lacks %s", status, want)
		}
	}
	if err := rs.StartReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestReplicaWaitTimesOut checks that second deletes whose changes the replica does not apply
// within replica_wait_timeout run anyway, counted as timeouts, with one warning for the whole
// episode however many waits time out, and one more for the next episode; and that the lag
// metric grows while the replica's SQL thread is stopped.
func TestReplicaWaitTimesOut(t *testing.T) {
	rs := startReplicaStack(t)
	log := &syncBuffer{}
	e := replicaEnv(t, rs, "  replica_wait_timeout: 200ms\n", log)
	ctx := context.Background()
	metric := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(string(e.get("/metrics").body))
		if m == nil {
			return 0
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	timeouts := func() float64 { return metric(`sidecache_replica_waits_total{result="timeout"}`) }
	warnings := func() int {
		return strings.Count(log.String(), "did not apply changes within mysql.replica_wait_timeout")
	}
	// invalidate changes a row and invalidates it, and waits until its second delete is done.
	invalidate := func(id int) {
		t.Helper()
		e.exec("UPDATE items SET name = CONCAT(name, '+') WHERE id = ?", id)
		if err := e.sc.Invalidate(ctx, "items", strconv.Itoa(id)); err != nil {
			t.Fatal(err)
		}
		devstack.Eventually(t, 10*time.Second, "the second delete was not done", func() bool {
			return metric("sidecache_second_deletes_pending") == 0
		})
	}

	if err := rs.StopReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	for id := 1; id <= 3; id++ {
		invalidate(id)
	}
	if got := timeouts(); got != 3 {
		t.Errorf("%v waits timed out, want 3", got)
	}
	devstack.Eventually(t, 10*time.Second, "the lag did not reach 1s while the SQL thread was stopped", func() bool {
		return metric("sidecache_replica_lag_seconds") >= 1
	})
	if err := rs.StartReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	invalidate(1)
	if got := metric(`sidecache_replica_waits_total{result="applied"}`); got != 1 {
		t.Errorf("%v waits applied once the replica ran again, want 1", got)
	}
	if got := warnings(); got != 1 {
		t.Errorf("%d warnings for one episode of 3 timeouts, want 1:\n%s", got, log.String())
	}

	if err := rs.StopReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	defer rs.StartReplicaSQL(ctx)
	invalidate(2)
	if got := warnings(); got != 2 {
		t.Errorf("%d warnings after a second episode, want 2", got)
	}
}

// syncBuffer is a bytes.Buffer for one writer and one reader at a time.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
