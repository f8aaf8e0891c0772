package cdc_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestInvalidationLag measures commit-to-delete lag at two write rates: each write updates a
// distinct row whose key is cached; the commit time is taken when the UPDATE returns, the
// delete time when Redis announces the key's deletion (keyspace notifications).
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

	next := 1
	measure := func(rate int, d time.Duration) {
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
					if _, err := g.root.Exec("UPDATE items SET name = 'changed' WHERE id = ?", id); err != nil {
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
		var lags []time.Duration
		for {
			lags = lags[:0]
			mu.Lock()
			for _, id := range ids {
				if del, ok := deleted[id]; ok {
					lags = append(lags, max(del.Sub(committed[id]), 0))
				}
			}
			mu.Unlock()
			if len(lags) == n || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(lags) < n {
			t.Errorf("%d of %d deletes were seen", len(lags), n)
			return
		}
		slices.Sort(lags)
		msg := fmt.Sprintf("invalidation lag at %.0f writes/s (target %d/s, %d writes): commit to first delete p50 %v, p99 %v, max %v",
			float64(n)/elapsed.Seconds(), rate, n, lags[n/2].Round(10*time.Microsecond), lags[n*99/100].Round(10*time.Microsecond), lags[n-1].Round(10*time.Microsecond))
		t.Log(msg)
		fmt.Println(msg)
	}
	measure(1000, 5*time.Second)
	measure(5000, 4*time.Second)
}

// TestCatchUpThroughput stops the tail, changes 100k rows, and times how fast a restarted tail
// works through them to a checkpoint at the server's position.
func TestCatchUpThroughput(t *testing.T) {
	g := newRig(t)
	const rows = 100_000
	g.exec("DELETE FROM items")
	g.exec(fmt.Sprintf("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d", rows))
	tl := g.tail(2 * time.Second)
	stop := g.run(tl)
	g.waitCheckpoint(tl)
	stop()
	for from := 1; from <= rows; from += 1000 { // 100 transactions of 1000 row changes
		g.exec("UPDATE items SET name = 'caught up' WHERE id BETWEEN ? AND ?", from, from+999)
	}
	var want string
	g.root.QueryRow("SELECT @@gtid_binlog_pos").Scan(&want)
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
	msg := fmt.Sprintf("catch-up: %d row changes (both deletes each) in %v after a restart: %.0f rows/s", rows, d.Round(time.Millisecond), rows/d.Seconds())
	t.Log(msg)
	fmt.Println(msg)
}
