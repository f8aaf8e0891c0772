package cdc_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/cdc"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/invalidation"
)

// The tests below each reproduce a way the world made the tail skip an invalidation: a purged
// binlog, Redis coming back empty, a leader whose config lacks an entity, a key column that
// changed, an XA transaction across a restart, a key move with a Bloom filter.

// purgeBinlogs purges every binlog before the current one. MariaDB keeps a file until InnoDB
// has checkpointed its transactions, so the purge is repeated until the file is gone.
func (g *rig) purgeBinlogs() {
	g.t.Helper()
	g.exec("FLUSH BINARY LOGS")
	var file string
	var pos int64
	var rest [2]any
	if err := g.root.QueryRow("SHOW MASTER STATUS").Scan(&file, &pos, &rest[0], &rest[1]); err != nil {
		g.t.Fatal(err)
	}
	devstack.Eventually(g.t, 10*time.Second, "binlogs before "+file+" are still there", func() bool {
		g.exec("PURGE BINARY LOGS TO '" + file + "'")
		var first string
		var size int64
		if err := g.root.QueryRow("SHOW BINARY LOGS").Scan(&first, &size); err != nil {
			g.t.Fatal(err)
		}
		return first == file
	})
}

func TestBinlogGoneResets(t *testing.T) {
	g := newRig(t)
	g.checkpointed()

	// While no tail runs, a row changes and the binlog that holds the change is purged.
	g.cache(1, 2)
	g.exec("UPDATE items SET name = 'unseen' WHERE id = 1")
	g.purgeBinlogs()

	reg := prometheus.NewRegistry()
	tl := g.tailWith(time.Second, func(o *cdc.Options) { o.Registerer = reg })
	g.run(tl)
	// The reset drops every key of the entity: the change was never seen, so nothing cached may stay.
	g.waitGone(1, 2)
	g.waitCaughtUp(tl)
	if n := metric(t, reg, "sidecache_cdc_resets_total"); n != 1 {
		t.Errorf("resets: %v, want 1", n)
	}
	g.cache(3)
	g.exec("UPDATE items SET name = 'after' WHERE id = 3")
	g.waitGone(3)
	if v := tl.View(); v.Self.State != cdc.StateTailing {
		t.Errorf("after the reset the tail is %q, want tailing", v.Self.State)
	}
}

func TestBinlogGoneStallsLoudly(t *testing.T) {
	g := newRig(t)
	g.checkpointed()
	g.exec("UPDATE items SET name = 'unseen' WHERE id = 1")
	g.purgeBinlogs()
	g.cache(1)

	reg := prometheus.NewRegistry()
	tl := g.tailWith(time.Second, func(o *cdc.Options) { o.OnBinlogGone = cdc.Stall; o.Registerer = reg })
	g.run(tl)
	devstack.EventuallyState(t, 10*time.Second, func() (bool, string) {
		return tl.Stalled(), fmt.Sprintf("the tail never reported itself stalled: %+v", tl.View())
	})
	v := tl.View()
	if !strings.Contains(v.Self.Error, "1236") || !strings.Contains(v.Self.Remedy, "binlog") {
		t.Errorf("stalled with error %q and remedy %q; want the purged binlog named, and what to do", v.Self.Error, v.Self.Remedy)
	}
	first := v.SecondsBehind
	time.Sleep(1100 * time.Millisecond)
	if second := tl.View().SecondsBehind; !(first > 0 && second > first) {
		t.Errorf("seconds behind %v then %v while stalled; want it above zero and growing", first, second)
	}
	if g.rc.Exists(context.Background(), g.key(1)).Val() != 1 {
		t.Error("stall mode dropped the cache, which only reset mode does")
	}
}

// TestRedisRestartedEmptyResumesFromMemory: Redis goes away while a row changes, and comes back
// empty; a reader fills the row's old value, then the row changes again. The leader lost its
// checkpoint with Redis, and must resume from before the loss, not from the server's position.
func TestRedisRestartedEmptyResumesFromMemory(t *testing.T) {
	g := newRig(t)
	tl := g.tail(600 * time.Millisecond)
	g.run(tl)
	g.waitCheckpoint(tl)
	g.waitCaughtUp(tl)

	stack.StopRedis()
	g.exec("UPDATE items SET name = 'while down' WHERE id = 5")
	if err := stack.StartRedis(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A fill of the row as it was before the next change, then the change.
	g.cache(6)
	g.exec("UPDATE items SET name = 'after restart' WHERE id = 6")
	g.waitGone(6)
	g.waitCaughtUp(tl)
}

// TestNewEntityIsDroppedBeforeCovered: a leader whose config lacks an entity does not cover it,
// so a sidecar that has it bypasses the cache for it; a leader that has it drops its cache
// before it covers it.
func TestNewEntityIsDroppedBeforeCovered(t *testing.T) {
	g := newRig(t)
	g.exec("CREATE TABLE things (id INT NOT NULL PRIMARY KEY, v INT NOT NULL)")
	g.exec("INSERT INTO things VALUES (1, 1), (2, 2)")
	both := func(o *cdc.Options) {
		o.Tables = map[string][]cdc.Target{
			"items":  {{Entity: "items", Key: []cdc.KeyColumn{{Name: "id", Unsigned: true, Bits: 32}}}},
			"things": {{Entity: "things", Key: []cdc.KeyColumn{{Name: "id", Bits: 32}}}},
		}
	}
	old := g.tailWith(time.Second, nil)
	stopOld := g.run(old)
	g.waitCheckpoint(old)
	g.waitCaughtUp(old)

	upgraded := g.tailWith(time.Second, both)
	g.run(upgraded)
	thing := func(id int) string { return g.prefix + "{things:" + strconv.Itoa(id) + "}" }
	devstack.Eventually(t, 5*time.Second, "the upgraded sidecar never saw items covered", func() bool {
		return upgraded.Covered("items")
	})
	if upgraded.Covered("things") {
		t.Fatal("things is covered by a leader that does not know it")
	}
	// A value cached for things by some earlier path, which no invalidation covered.
	g.rc.Set(context.Background(), thing(1), "stale", time.Hour)
	g.exec("UPDATE things SET v = 10 WHERE id = 1")
	stopOld()
	devstack.Eventually(t, 10*time.Second, "the upgraded leader never covered things", func() bool {
		return upgraded.Covered("things")
	})
	if g.rc.Exists(context.Background(), thing(1)).Val() != 0 {
		t.Error("things became covered with a value cached before coverage still in place")
	}
}

// TestUnreadableKeyDropsEntity: after the key column is renamed, rows arrive without it; the
// tail cannot know their keys and drops the entity's cache instead of skipping them.
func TestUnreadableKeyDropsEntity(t *testing.T) {
	g := newRig(t)
	reg := prometheus.NewRegistry()
	tl := g.tailWith(time.Second, func(o *cdc.Options) { o.Registerer = reg })
	g.run(tl)
	g.waitCheckpoint(tl)
	g.exec("ALTER TABLE items CHANGE id uid INT UNSIGNED NOT NULL")
	g.waitCaughtUp(tl)
	g.cache(8, 9)
	g.exec("UPDATE items SET name = 'x' WHERE uid = 8")
	g.waitGone(8, 9)
	if n := metric(t, reg, "sidecache_cdc_unmapped_rows_total"); n == 0 {
		t.Error("no unreadable row was counted")
	}
}

// TestXACommitAfterRestart: an XA transaction prepared before the tail stops and committed
// after it restarts; the checkpoint remembers it, and its commit drops what it touched.
func TestXACommitAfterRestart(t *testing.T) {
	g := newRig(t)
	tl := g.tail(time.Second)
	stop := g.run(tl)
	g.waitCheckpoint(tl)
	ctx := context.Background()
	conn, err := g.root.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{"XA START 'r1'", "UPDATE items SET name = 'xa' WHERE id = 7", "XA END 'r1'", "XA PREPARE 'r1'"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	g.cache(7)
	g.exec("UPDATE items SET name = 'other' WHERE id = 8") // the tail passes the prepare
	g.waitCaughtUp(tl)
	if g.rc.Exists(ctx, g.key(7)).Val() != 1 {
		t.Fatal("the prepared row's key was deleted before its commit; a read now would cache the old row for good")
	}
	stop()
	g.run(g.tail(time.Second))
	if _, err := conn.ExecContext(ctx, "XA COMMIT 'r1'"); err != nil {
		t.Fatal(err)
	}
	g.waitGone(7)
}

// TestKeyMoveAddsToFilter: an UPDATE that changes the key makes a new key exist; the filter
// learns it before its key is deleted, as for an insert.
func TestKeyMoveAddsToFilter(t *testing.T) {
	g := newRig(t)
	ctx := context.Background()
	filters := bloom.New(g.rc, g.prefix)
	params, err := bloom.Size(1000, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	b, err := filters.Begin(ctx, "items", params)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 1; i <= 100; i++ {
		ids = append(ids, strconv.Itoa(i))
	}
	if err := b.Add(ctx, ids); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// An invalidator that keeps the filter, beside the rig's.
	deleter := invalidation.NewRedis(g.rc)
	inv := invalidation.New(invalidation.Options{Deleter: deleter, Dropper: deleter, Prefix: g.prefix, Filters: filters, Delay: 50 * time.Millisecond})
	ictx, stopInv := context.WithCancel(context.Background())
	invDone := make(chan struct{})
	go func() { inv.Run(ictx); close(invDone) }()
	t.Cleanup(func() { stopInv(); <-invDone })
	tl := g.tailWith(time.Second, func(o *cdc.Options) {
		o.Invalidator = inv
		o.Tables = map[string][]cdc.Target{"items": {{Entity: "items", Key: []cdc.KeyColumn{{Name: "id", Unsigned: true, Bits: 32}}, Bloom: true}}}
	})
	g.run(tl)
	g.waitCheckpoint(tl)
	for _, moved := range []int{100_001, 100_002, 100_003} {
		g.exec("UPDATE items SET id = ? WHERE id = ?", moved, moved-100_000)
	}
	g.waitCaughtUp(tl)
	for _, moved := range []string{"100001", "100002", "100003"} {
		if may, err := bloom.New(g.rc, g.prefix).MayContainMany(ctx, "items", []string{moved}); err != nil || !may[0] {
			t.Errorf("the filter calls moved-to id %s absent (%v)", moved, err)
		}
	}
}

// metric sums a counter's samples in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestCheckpointRolledBack: Redis comes back from a snapshot taken a while ago, with the
// checkpoint and the rows of that moment: a row deleted since is cached again. The leader must
// not save its newer checkpoint over the restored one; it resumes from the restored one and
// deletes the row again.
func TestCheckpointRolledBack(t *testing.T) {
	g := newRig(t)
	tl := g.tail(time.Second)
	g.run(tl)
	g.waitCheckpoint(tl)
	g.waitCaughtUp(tl)
	ctx := context.Background()
	snapshot, err := g.rc.Get(ctx, g.prefix+"{cdc:"+g.db+"}:checkpoint").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	g.cache(4)
	g.exec("UPDATE items SET name = 'after the snapshot' WHERE id = 4")
	g.waitGone(4)
	g.waitCaughtUp(tl)

	// The restore: the snapshot's checkpoint, and the row as it was cached then.
	g.rc.Set(ctx, g.prefix+"{cdc:"+g.db+"}:checkpoint", snapshot, 0)
	g.cache(4)
	g.exec("UPDATE items SET name = 'later' WHERE id = 5") // the leader's next save
	g.waitGone(4)
	g.waitCaughtUp(tl)
}
