package devstack_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// TestReplica starts a stack with a replica and checks that a row written on the primary
// reaches the replica, that it does not while the SQL thread is stopped, and that it does
// once the thread runs again.
func TestReplica(t *testing.T) {
	devstack.Require(t, stack) // the same servers; skipped or failed as the package is
	ctx := context.Background()
	s, err := devstack.Start(ctx, devstack.Options{Replica: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	dsn, err := s.CreateDatabase(ctx, "repl")
	if err != nil {
		t.Fatal(err)
	}
	primary, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close()
	replica, err := sql.Open("mysql", s.ReplicaDSN("repl", "repl", "repl"))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	root, _ := s.Root("repl")
	defer root.Close()
	if _, err := root.Exec("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1)"); err != nil {
		t.Fatal(err)
	}
	read := func() int {
		t.Helper()
		var v int
		if err := replica.QueryRow("SELECT v FROM t WHERE id = 1").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := s.WaitReplica(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != 1 {
		t.Fatalf("replica: got v=%d, want 1", got)
	}
	if _, err := replica.Exec("UPDATE t SET v = 9"); err == nil {
		t.Error("the replica took a write from an application user; want read_only")
	}

	if err := s.StopReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := primary.Exec("UPDATE t SET v = 2 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	// The replica cannot apply the change while its SQL thread is stopped, whatever the wait.
	if err := s.WaitReplica(ctx, 300*time.Millisecond); !errors.Is(err, devstack.ErrReplicaBehind) {
		t.Fatalf("WaitReplica with the SQL thread stopped: %v, want ErrReplicaBehind", err)
	}
	if got := read(); got != 1 {
		t.Fatalf("replica with its SQL thread stopped: got v=%d, want the old 1", got)
	}
	if err := s.StartReplicaSQL(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReplica(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != 2 {
		t.Fatalf("replica after the SQL thread ran again: got v=%d, want 2", got)
	}
}
