package cdc_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/sidecache/sidecache/internal/loadtest/result"
)

// The figures below are read against an anchor measured in the same run: a bare go-mysql
// BinlogSyncer in this process, with its default settings and nothing of sidecache's on top,
// reading the same row events. What the tail adds is the difference.

// bareSyncer returns a bare BinlogSyncer on the rig's server, started at the GTID set from.
func (g *rig) bareSyncer(from string) (*replication.BinlogSyncer, *replication.BinlogStreamer) {
	g.t.Helper()
	host, port, _ := net.SplitHostPort(stack.MySQLAddr)
	p, _ := strconv.Atoi(port)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: uint32(1000 + seq.Add(1)), Flavor: "mariadb", Host: host, Port: uint16(p), User: "root",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	set, err := mysql.ParseGTIDSet("mariadb", from)
	if err != nil {
		g.t.Fatal(err)
	}
	stream, err := syncer.StartSyncGTID(set)
	if err != nil {
		syncer.Close()
		g.t.Fatal(err)
	}
	return syncer, stream
}

// itemRows returns ev when it is a rows event of the rig's items table, and how many rows it
// changed (an UPDATE holds two images per row).
func (g *rig) itemRows(ev *replication.BinlogEvent) (*replication.RowsEvent, int) {
	e, ok := ev.Event.(*replication.RowsEvent)
	if !ok || string(e.Table.Schema) != g.db || string(e.Table.Table) != "items" {
		return nil, 0
	}
	if e.Type() == replication.EnumRowsEventTypeUpdate {
		return e, len(e.Rows) / 2
	}
	return e, len(e.Rows)
}

func (g *rig) gtidPos() string {
	g.t.Helper()
	var pos string
	if err := g.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		g.t.Fatal(err)
	}
	return pos
}

func percentile(d []time.Duration, p int) time.Duration { return d[len(d)*p/100] }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestInvalidationLag measures commit-to-delete lag at two write rates: each write updates a
// distinct row whose key is cached; the commit time is taken when the UPDATE returns, the
// delete time when Redis announces the key's deletion (keyspace notifications). Side by side,
// a bare BinlogSyncer reads the same writes: its lag (commit to the row event received) is the
// anchor, what the binlog stream alone takes.
func TestInvalidationLag(t *testing.T) {
	g := newRig(t)
	ctx := context.Background()
	const rows = 40_000
	g.exec("DELETE FROM items")
	g.exec(fmt.Sprintf("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d", rows))
	if err := g.rc.ConfigSet(ctx, "notify-keyspace-events", "Kg").Err(); err != nil {
		t.Fatal(err)
	}
	defer g.rc.ConfigSet(ctx, "notify-keyspace-events", "")
	tl := g.tail(2 * time.Second)
	g.run(tl)
	g.waitCheckpoint(tl)

	var mu sync.Mutex
	committed := map[int]time.Time{}
	deleted := map[int]time.Time{}
	received := map[int]time.Time{} // by the bare syncer
	sub := g.rc.PSubscribe(ctx, "__keyspace@0__:"+g.prefix+"*")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		for msg := range sub.Channel() {
			if msg.Payload != "del" {
				continue
			}
			at := time.Now()
			k := strings.TrimSuffix(msg.Channel[strings.LastIndexByte(msg.Channel, ':')+1:], "}")
			id, err := strconv.Atoi(k)
			if err != nil {
				continue
			}
			mu.Lock()
			if _, seen := deleted[id]; !seen {
				deleted[id] = at
			}
			mu.Unlock()
		}
	}()

	syncer, stream := g.bareSyncer(g.gtidPos())
	defer syncer.Close()
	bctx, stopBare := context.WithCancel(ctx)
	bareDone := make(chan struct{})
	defer func() { stopBare(); <-bareDone }()
	go func() {
		defer close(bareDone)
		for {
			ev, err := stream.GetEvent(bctx)
			if err != nil {
				return
			}
			e, _ := g.itemRows(ev)
			if e == nil {
				continue
			}
			at := time.Now()
			mu.Lock()
			for _, row := range e.Rows {
				if id, ok := intValue(row[0]); ok {
					if _, seen := received[id]; !seen {
						received[id] = at
					}
				}
			}
			mu.Unlock()
		}
	}()

	next := 1
	// measure returns each write's lag to its first delete (tail), to its event at the bare
	// syncer (bare), and between the two (own: what the tail adds to the stream).
	measure := func(rate int, d time.Duration) (tail, bare []time.Duration, ok bool) {
		n := int(float64(rate) * d.Seconds())
		ids := make([]int, n)
		for i := range ids {
			ids[i] = next
			next++
		}
		pipe := g.rc.Pipeline()
		for _, id := range ids {
			pipe.Set(ctx, g.key(id), "cached", time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		writers := max(4, rate/125)
		// Every writer keeps its connection: with the default two idle ones, most writes at 5k/s
		// opened a connection of their own, which loaded the machine more than the tail did.
		g.root.SetMaxIdleConns(writers)
		var wg sync.WaitGroup
		var idx atomic.Int64
		start := time.Now()
		interval := time.Duration(writers) * time.Second / time.Duration(rate)
		for range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				due := time.Now()
				for i := idx.Add(1) - 1; i < int64(n); i = idx.Add(1) - 1 {
					id := ids[i]
					// The id in the text: a placeholder costs a prepare and a close per write.
					if _, err := g.root.Exec(fmt.Sprintf("UPDATE items SET name = 'changed' WHERE id = %d", id)); err != nil {
						t.Error(err)
						return
					}
					now := time.Now()
					mu.Lock()
					committed[id] = now
					mu.Unlock()
					due = due.Add(interval)
					if w := time.Until(due); w > 0 {
						time.Sleep(w)
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		g.waitGone(ids[len(ids)-1])
		deadline := time.Now().Add(10 * time.Second)
		var own []time.Duration
		for {
			tail, bare, own = tail[:0], bare[:0], own[:0]
			mu.Lock()
			for _, id := range ids {
				del, okDel := deleted[id]
				got, okGot := received[id]
				if okDel {
					tail = append(tail, max(del.Sub(committed[id]), 0))
				}
				if okGot {
					bare = append(bare, max(got.Sub(committed[id]), 0))
				}
				if okDel && okGot {
					own = append(own, del.Sub(got))
				}
			}
			mu.Unlock()
			if len(tail) == n && len(bare) == n || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(tail) < n || len(bare) < n {
			t.Errorf("at %d writes/s: %d of %d deletes were seen, and the bare stream received %d", rate, len(tail), n, len(bare))
			return nil, nil, false
		}
		slices.Sort(tail)
		slices.Sort(bare)
		slices.Sort(own)
		msg := fmt.Sprintf("invalidation lag at %.0f writes/s (target %d/s, %d writes): commit to first delete p50 %v, p99 %v, max %v; "+
			"bare binlog stream p50 %v, p99 %v, max %v; bare stream's event to the tail's delete p50 %v, p99 %v",
			float64(n)/elapsed.Seconds(), rate, n,
			percentile(tail, 50).Round(10*time.Microsecond), percentile(tail, 99).Round(10*time.Microsecond), tail[n-1].Round(10*time.Microsecond),
			percentile(bare, 50).Round(10*time.Microsecond), percentile(bare, 99).Round(10*time.Microsecond), bare[n-1].Round(10*time.Microsecond),
			percentile(own, 50).Round(10*time.Microsecond), percentile(own, 99).Round(10*time.Microsecond))
		t.Log(msg)
		return tail, bare, true
	}
	if tail, bare, ok := measure(1000, 5*time.Second); ok {
		for _, p := range []int{50, 99} {
			f := result.Figure{Name: fmt.Sprintf("commit to first DEL p%d at 1k writes/s", p), Unit: "ms",
				Values: []float64{ms(percentile(tail, p))}, Anchor: fmt.Sprintf("bare binlog stream p%d", p),
				AnchorValues: []float64{ms(percentile(bare, p))}}
			if p == 99 {
				f.Goal = "<= 3 ms"
			}
			f.Print(os.Stdout)
		}
	}
	if tail, bare, ok := measure(5000, 3*time.Second); ok {
		result.Figure{Name: "commit to first DEL p99 at 5k writes/s", Unit: "ms",
			Values: []float64{ms(percentile(tail, 99))}, Anchor: "bare binlog stream p99",
			AnchorValues: []float64{ms(percentile(bare, 99))}}.Print(os.Stdout)
	}
}

// intValue reads an integer column as go-mysql hands it over.
func intValue(v any) (int, bool) {
	switch v := v.(type) {
	case int32:
		return int(uint32(v)), true // items.id is INT UNSIGNED
	case uint32:
		return int(v), true
	case int64:
		return int(v), true
	case uint64:
		return int(v), true
	}
	return 0, false
}

// TestCatchUpThroughput stops the tail, changes 100k rows, and times how fast a restarted tail
// works through them to a checkpoint at the server's position, both deletes of every row done.
// Before it, a bare BinlogSyncer reads and parses the same 100k row changes from the same
// position: the anchor.
func TestCatchUpThroughput(t *testing.T) {
	g := newRig(t)
	const rows = 100_000
	g.exec("DELETE FROM items")
	g.exec(fmt.Sprintf("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d", rows))
	tl := g.tail(2 * time.Second)
	stop := g.run(tl)
	g.waitCheckpoint(tl)
	stop()
	from, ok, err := tl.LoadCheckpoint(context.Background())
	if err != nil || !ok {
		t.Fatalf("no checkpoint after the tail stopped (%v)", err)
	}
	for from := 1; from <= rows; from += 1000 { // 100 transactions of 1000 row changes
		g.exec("UPDATE items SET name = 'caught up' WHERE id BETWEEN ? AND ?", from, from+999)
	}
	want := g.gtidPos()

	bare := g.bareCatchUp(from.GTID, rows)

	start := time.Now()
	g.run(g.tail(2 * time.Second))
	for {
		cp, _, err := tl.LoadCheckpoint(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if cp.GTID == want {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("not caught up after a minute: at %s, want %s", cp.GTID, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d := time.Since(start)
	t.Logf("catch-up: %d row changes (both deletes each) in %v after a restart: %.0f rows/s; the bare binlog stream read and parsed them in %v: %.0f rows/s",
		rows, d.Round(time.Millisecond), rows/d.Seconds(), bare.Round(time.Millisecond), rows/bare.Seconds())
	result.Figure{Name: "binlog catch-up", Unit: "rows/s", Values: []float64{rows / d.Seconds()},
		Anchor: "bare binlog stream", AnchorValues: []float64{rows / bare.Seconds()}, Ratio: true,
		Goal: ">= 300000 rows/s"}.Print(os.Stdout)
}

// bareCatchUp times a bare BinlogSyncer from connecting at the GTID set from until it has read
// and parsed n row changes of items and the commit of the last.
func (g *rig) bareCatchUp(from string, n int) time.Duration {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	syncer, stream := g.bareSyncer(from)
	defer syncer.Close()
	seen := 0
	for {
		ev, err := stream.GetEvent(ctx)
		if err != nil {
			g.t.Fatalf("the bare binlog stream read %d of %d row changes: %v", seen, n, err)
		}
		if _, k := g.itemRows(ev); k > 0 {
			seen += k
		}
		if _, commit := ev.Event.(*replication.XIDEvent); commit && seen >= n {
			return time.Since(start)
		}
	}
}
