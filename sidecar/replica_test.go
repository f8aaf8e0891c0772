package sidecar_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/readthrough"
)

// replicaEnv is a test database on a stack with a MariaDB replica, and a sidecar whose loads
// read the replica (with extra lines in its mysql section).
func replicaEnv(t *testing.T, rs *devstack.Stack, mysqlExtra string) *env {
	t.Helper()
	d := devstack.NewDatabase(t, rs, "", `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')`)
	e := &env{t: t, name: d.Name, dsn: d.DSN, root: d.Root, redis: stack.Client(t)}
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
	e := replicaEnv(t, rs, "")
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

// TestReplicaWaitTimesOut checks that a second delete whose change the replica does not apply
// within replica_wait_timeout runs anyway, counted as a timeout.
func TestReplicaWaitTimesOut(t *testing.T) {
	rs := startReplicaStack(t)
	e := replicaEnv(t, rs, "  replica_wait_timeout: 200ms\n")
	ctx := context.Background()
	if err := rs.StopReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	defer rs.StartReplicaSQL(ctx)
	e.exec("UPDATE items SET name = 'uno' WHERE id = 1")
	if err := e.sc.Invalidate(ctx, "items", "1"); err != nil {
		t.Fatal(err)
	}
	timeouts := regexp.MustCompile(`(?m)^sidecache_replica_waits_total\{result="timeout"\} 1$`)
	pending := regexp.MustCompile(`(?m)^sidecache_second_deletes_pending 0$`)
	devstack.EventuallyState(t, 10*time.Second, func() (bool, string) {
		body := string(e.get("/metrics").body)
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "sidecache_replica_waits") || strings.HasPrefix(l, "sidecache_second_deletes") {
				lines = append(lines, l)
			}
		}
		return timeouts.MatchString(body) && pending.MatchString(body),
			"no timeout counted, or the second delete not done: " + strings.Join(lines, "; ")
	})
}
