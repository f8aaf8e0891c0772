package cdc_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/cdc"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/invalidation"
)

var seq atomic.Int32

type rig struct {
	t      *testing.T
	db     string
	root   *sql.DB
	rc     *redis.Client
	prefix string
	inv    *invalidation.Invalidator
}

func newRig(t *testing.T) *rig {
	t.Helper()
	d := devstack.NewDatabase(t, stack, "", `CREATE TABLE items (id INT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL);
		INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_100;
		CREATE TABLE ticks (n INT NOT NULL AUTO_INCREMENT PRIMARY KEY)`)
	g := &rig{t: t, db: d.Name, root: d.Root}
	g.prefix = g.db + ":"
	g.rc = stack.Client(t)
	deleter := invalidation.NewRedis(g.rc)
	g.inv = invalidation.New(invalidation.Options{Deleter: deleter, Dropper: deleter, Prefix: g.prefix, Delay: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.inv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

func (g *rig) exec(q string, args ...any) {
	g.t.Helper()
	if _, err := g.root.Exec(q, args...); err != nil {
		g.t.Fatalf("%s: %v", q, err)
	}
}

func (g *rig) tail(ttl time.Duration) *cdc.Tail {
	return g.newTail(ttl, nil, false)
}

// tailWith returns a checked tail of the rig's items table, with options changed by opt.
func (g *rig) tailWith(ttl time.Duration, opt func(*cdc.Options)) *cdc.Tail {
	return g.newTail(ttl, opt, true)
}

func (g *rig) newTail(ttl time.Duration, opt func(*cdc.Options), check bool) *cdc.Tail {
	host, port, _ := net.SplitHostPort(stack.MySQLAddr)
	p, _ := strconv.Atoi(port)
	o := cdc.Options{
		Flavor: "mariadb", ServerID: uint32(1000 + seq.Add(1)), Host: host, Port: uint16(p), User: "root",
		Schema: g.db, Prefix: g.prefix, DB: g.root, Redis: g.rc, Invalidator: g.inv, LeaderTTL: ttl,
		Tables: map[string][]cdc.Target{"items": {{Entity: "items", Key: []cdc.KeyColumn{{Name: "id", Index: 0, Unsigned: true, Bits: 32}}}}},
		Logger: testLogger(),
	}
	if opt != nil {
		opt(&o)
	}
	tl := cdc.New(o)
	if check {
		if err := tl.Check(context.Background()); err != nil {
			g.t.Fatal(err)
		}
	}
	return tl
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// run runs a tail until the returned stop is called.
func (g *rig) run(tl *cdc.Tail) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tl.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	g.t.Cleanup(stop)
	return stop
}

func (g *rig) key(id int) string { return keys.Value(g.prefix, "items", strconv.Itoa(id)) }

// cache puts a value at the keys of ids, as a fill would.
func (g *rig) cache(ids ...int) {
	for _, id := range ids {
		g.rc.Set(context.Background(), g.key(id), "cached", time.Hour)
	}
}

// waitGone waits until none of the keys of ids exists.
func (g *rig) waitGone(ids ...int) {
	g.t.Helper()
	devstack.EventuallyState(g.t, 10*time.Second, func() (bool, string) {
		left := 0
		for _, id := range ids {
			left += int(g.rc.Exists(context.Background(), g.key(id)).Val())
		}
		return left == 0, fmt.Sprintf("%d of the keys of %v are still cached", left, ids)
	})
}

// waitLeading waits until the tail has started streaming (its checkpoint exists).
func (g *rig) waitCheckpoint(tl *cdc.Tail) cdc.Checkpoint {
	g.t.Helper()
	var cp cdc.Checkpoint
	devstack.Eventually(g.t, 10*time.Second, "the tail saved no checkpoint", func() bool {
		// A write to another table moves the position, so a checkpoint gets saved.
		g.exec("INSERT INTO ticks VALUES ()")
		got, ok, err := tl.LoadCheckpoint(context.Background())
		if err != nil {
			g.t.Fatal(err)
		}
		cp = got
		return ok
	})
	return cp
}

// checkpointed runs a tail until it has saved a checkpoint, and stops it: the changes that
// follow are made while no tail runs.
func (g *rig) checkpointed() {
	g.t.Helper()
	tl := g.tail(time.Second)
	stop := g.run(tl)
	g.waitCheckpoint(tl)
	stop()
}

// waitCaughtUp waits until the saved checkpoint is the server's position: every change so far
// is invalidated, second passes included.
func (g *rig) waitCaughtUp(tl *cdc.Tail) {
	g.t.Helper()
	devstack.EventuallyState(g.t, 10*time.Second, func() (bool, string) {
		var pos string
		if err := g.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
			g.t.Fatal(err)
		}
		cp, ok, err := tl.LoadCheckpoint(context.Background())
		if err != nil {
			g.t.Fatal(err)
		}
		return ok && cp.GTID == pos, fmt.Sprintf("the checkpoint is at %q, the server at %q", cp.GTID, pos)
	})
}

func TestChangesInvalidateKeys(t *testing.T) {
	g := newRig(t)
	tl := g.tail(time.Second)
	if err := tl.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	g.run(tl)
	g.waitCheckpoint(tl)
	g.cache(1, 2, 3, 4, 5, 101)
	g.exec("UPDATE items SET name = 'x' WHERE id = 1")
	g.exec("DELETE FROM items WHERE id = 2")
	g.exec("UPDATE items SET id = 4000000000 WHERE id = 3") // a key change, and an unsigned value past int32
	g.cache(4000000000)
	g.exec("INSERT INTO items VALUES (101, 'new')") // removes a null marker
	g.waitGone(1, 2, 3, 101)
	g.exec("UPDATE items SET name = 'y' WHERE id = 4000000000")
	g.waitGone(4000000000)
	if n := g.rc.Exists(context.Background(), g.key(4), g.key(5)).Val(); n != 2 {
		t.Errorf("keys of untouched rows were deleted (%d of 2 left)", n)
	}
}

// TestAlterTableWhileTailing: an ALTER that puts a column before the key, while the tail runs.
// The ALTER drops the entity's cache; rows changed after it are read by their column names, not
// by the key's position when the tail started.
func TestAlterTableWhileTailing(t *testing.T) {
	g := newRig(t)
	tl := g.tail(time.Second)
	g.run(tl)
	g.waitCheckpoint(tl)
	g.cache(60, 70, 5)
	g.exec("ALTER TABLE items ADD COLUMN extra INT NOT NULL DEFAULT 5 FIRST")
	g.waitGone(60, 70, 5) // DDL on the table drops every key of the entity
	g.waitCaughtUp(tl)
	g.cache(60, 5)
	g.exec("UPDATE items SET name = 'x' WHERE id = 60")
	g.waitGone(60)
	if n := g.rc.Exists(context.Background(), g.key(5)).Val(); n != 1 {
		t.Error("the tail deleted the key made of the added column's value")
	}
	g.exec("ALTER TABLE items DROP COLUMN extra")
	g.waitGone(5)
	g.waitCaughtUp(tl)
	g.cache(70)
	g.exec("DELETE FROM items WHERE id = 70")
	g.waitGone(70)
}

// TestCatchUpAcrossAlterTable: changes made while no tail ran, then an ALTER that puts a column
// before the key, then more changes; the tail catches up from its checkpoint and invalidates
// every key, reading each event through its own column metadata.
func TestCatchUpAcrossAlterTable(t *testing.T) {
	g := newRig(t)
	g.checkpointed()

	g.cache(10, 20, 30, 140)
	g.exec("UPDATE items SET name = 'before' WHERE id = 10")
	g.exec("DELETE FROM items WHERE id = 20")
	g.exec("ALTER TABLE items ADD COLUMN extra INT NOT NULL DEFAULT 7 FIRST")
	g.exec("UPDATE items SET name = 'after' WHERE id = 30")
	g.exec("INSERT INTO items (extra, id, name) VALUES (99, 140, 'new')")
	tl := g.tail(time.Second)
	g.run(tl)
	g.waitGone(10, 20, 30, 140)
	g.waitCaughtUp(tl)

	// Caught up: 7 and 99 are values of the new first column, which a tail that read the key
	// from its position at start would take for keys.
	g.cache(30, 7, 99)
	g.exec("UPDATE items SET name = 'later' WHERE id = 30")
	g.exec("INSERT INTO items (extra, id, name) VALUES (7, 141, 'newer')")
	g.waitGone(30)
	if n := g.rc.Exists(context.Background(), g.key(7), g.key(99)).Val(); n != 2 {
		t.Errorf("the tail deleted keys made of the wrong column (%d of 2 left)", n)
	}
}

func TestCheckNamesMissingSetting(t *testing.T) {
	g := newRig(t)
	root, _ := stack.Root("")
	defer root.Close()
	if _, err := root.Exec("SET GLOBAL binlog_row_metadata = 'MINIMAL'"); err != nil {
		t.Fatal(err)
	}
	defer root.Exec("SET GLOBAL binlog_row_metadata = 'FULL'")
	err := g.tail(time.Second).Check(context.Background())
	if !errors.Is(err, cdc.ErrServer) || !strings.Contains(err.Error(), "binlog_row_metadata=MINIMAL") {
		t.Fatalf("Check: %v, want one that names binlog_row_metadata", err)
	}
}

func TestOneLeaderAndTakeover(t *testing.T) {
	g := newRig(t)
	const ttl = 600 * time.Millisecond
	a, b := g.tail(ttl), g.tail(ttl)
	stopA := g.run(a)
	g.waitCheckpoint(a)
	g.run(b)
	leader := func() string {
		return g.rc.Get(context.Background(), keys.Lease(keys.CDC(g.prefix, g.db, "leader"))).Val()
	}
	first := leader()
	if first == "" {
		t.Fatal("no leader")
	}
	stopA() // A stops (and releases); B must take over
	start := time.Now()
	for leader() == "" || leader() == first {
		if time.Since(start) > 5*ttl {
			t.Fatalf("no takeover after %v", time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.cache(50)
	g.exec("UPDATE items SET name = 'b' WHERE id = 50")
	g.waitGone(50)
}
