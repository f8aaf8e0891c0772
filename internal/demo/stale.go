package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecache/sidecache/internal/keys"
)

const (
	staleRows      = 200
	staleReaders   = 100
	staleWriters   = 8
	staleFor       = 10 * time.Second
	staleTxnWork   = 2 * time.Millisecond // the application's work between its UPDATE and COMMIT
	staleSettle    = 2 * time.Second      // after the writes: past the double delete and the binlog's lag
	staleSettleMax = 15 * time.Second     // and for keys still stale then, past a chain of failed retries
	staleSidecars  = 2
)

// The write orders, in the variants' order.
const (
	deleteThenUpdate = iota
	updateThenDelete
	updateThenInvalidate
	binlog
)

var stale = &Demo{
	Name:  "stale",
	Title: "Stale data: four ways to keep the cache in step with writes",
	Explain: fmt.Sprintf("%d writers update %d rows (a version number goes up with each write, and each transaction does "+
		"%v of work between its UPDATE and its COMMIT) while %d clients read them through %d sidecars for %v. "+
		"A read is stale when it returns an older version than one whose commit had returned before the read was sent; "+
		"a key is stale after settling when, %v after the writes stop (or up to %v while stale keys are still being "+
		"fixed), the cache still holds an old version, which it then serves until its TTL ends (an hour here). Deleting the key before the update lets a reader put the old row "+
		"back while the transaction runs, and it stays. Deleting after the commit is right almost always, but a reader "+
		"that loaded the old row just before the commit can fill it just after the delete. Deleting again after a delay "+
		"(sidecache's invalidate, or its binlog tail) removes what such a reader put back. The binlog tail deletes "+
		"a few milliseconds after the commit, so reads in between still see the old row, but it sees every writer's "+
		"changes, not only this application's, and leaves nothing stale behind.",
		staleWriters, staleRows, staleTxnWork, staleReaders, staleSidecars, staleFor, staleSettle, staleSettleMax),
	Variants: []Variant{
		{Short: "delete, then update", Label: "the application deletes the key in Redis, then updates MySQL"},
		{Short: "update, then delete", Label: "the application updates MySQL, then deletes the key in Redis"},
		{Short: "update, then invalidate", Label: "the application updates MySQL, then calls sidecache's invalidate: a delete now and one 500 ms later"},
		{Short: "binlog", Label: "the application only updates MySQL; sidecache's binlog tail deletes each changed key, and again 500 ms later"},
	},
	Run: func(ctx context.Context, env *Env, order int) error {
		return runWrites(ctx, env, writes{order: order})
	},
}

// writes is a run of writers and readers on the items table.
type writes struct {
	order int
	// appDeleteFailure is the fraction of the application's own deletes that fail (and are
	// not retried).
	appDeleteFailure float64
	// config is added to the sidecars' config.
	config string
	// after adds the run's own figures once the keys have been checked.
	after func(addrs []string)
}

func runWrites(ctx context.Context, env *Env, o writes) error {
	order := o.order
	if err := env.Exec(ctx, "CREATE TABLE items (id INT NOT NULL PRIMARY KEY, version INT NOT NULL, name VARCHAR(40) NOT NULL)",
		fmt.Sprintf("INSERT INTO items SELECT seq, 0, CONCAT('item ', seq) FROM seq_1_to_%d", staleRows)); err != nil {
		return err
	}
	rest := "entities:\n  - {name: items, ttl: 1h}\n" + o.config
	if order == binlog {
		rest += fmt.Sprintf("cdc: {enabled: true, flavor: mariadb, server_id: %s, dsn: %q, leader_ttl: 1s, double_delete_delay: 500ms}\n",
			"%d", env.Stack.DSN("root", "", env.DB))
	} else {
		rest += "cdc: {double_delete_delay: 500ms}\n"
	}
	addrs, err := env.startNumbered(ctx, staleSidecars, rest)
	if err != nil {
		return err
	}
	if order == binlog {
		if err := waitCovered(ctx, addrs[0]); err != nil {
			return err
		}
	}
	// committed[id] is the newest version whose commit has returned (and, for the orders that
	// delete after, whose delete has too).
	committed := make([]atomic.Int64, staleRows+1)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: staleWriters}}
	var appFailed atomic.Int64
	del := func(ctx context.Context, key string) error {
		if o.appDeleteFailure > 0 && rand.Float64() < o.appDeleteFailure {
			appFailed.Add(1)
			return nil // failed, and an application deleting on its own rarely retries
		}
		return env.Redis.Del(ctx, key).Err()
	}
	write := func(ctx context.Context, id int, version int64) error {
		key := keys.Value(env.Prefix, "items", strconv.Itoa(id))
		if order == deleteThenUpdate {
			if err := del(ctx, key); err != nil {
				return err
			}
		}
		tx, err := env.Root.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE items SET version = ? WHERE id = ?", version, id); err != nil {
			tx.Rollback()
			return err
		}
		time.Sleep(staleTxnWork)
		if err := tx.Commit(); err != nil {
			return err
		}
		switch order {
		case updateThenDelete:
			return del(ctx, key)
		case updateThenInvalidate:
			res, err := client.Post(fmt.Sprintf("http://%s/v1/items/%d/invalidate", addrs[id%len(addrs)], id), "", nil)
			if err != nil {
				return err
			}
			res.Body.Close()
			if res.StatusCode != http.StatusNoContent {
				return fmt.Errorf("invalidate answered %s", res.Status)
			}
		}
		return nil
	}
	var writeErr error
	var once sync.Once
	err = env.Record(ctx, func(ctx context.Context, rec *Recorder) error {
		wctx, cancel := context.WithTimeout(ctx, staleFor)
		defer cancel()
		var wg sync.WaitGroup
		for w := range staleWriters {
			wg.Go(func() {
				// Writer w owns the ids ≡ w mod staleWriters, so each id's versions rise one by one.
				for v := int64(1); wctx.Err() == nil; v++ {
					for id := 1 + w; id <= staleRows && wctx.Err() == nil; id += staleWriters {
						if rand.IntN(4) != 0 {
							continue // about a quarter of its rows a pass
						}
						if err := write(wctx, id, v); err != nil {
							if wctx.Err() == nil {
								once.Do(func() { writeErr = err })
							}
							return
						}
						committed[id].Store(v)
					}
				}
			})
		}
		Readers(ctx, rec, staleReaders, staleFor, 2*time.Millisecond, func(i int) Read {
			id := 1 + rand.IntN(staleRows)
			want := committed[id].Load()
			return Read{URL: fmt.Sprintf("http://%s/v1/items/%d", addrs[i%len(addrs)], id),
				Stale: func(body []byte) bool { return versionOf(body) < want }}
		})
		wg.Wait()
		return nil
	})
	if err != nil {
		return err
	}
	if writeErr != nil {
		return writeErr
	}
	// Let what is on its way land (second deletes, the binlog tail, retries through Kafka),
	// then read every row through a sidecar. Keys still stale are looked at again until
	// staleSettleMax: a retry that failed several times in a row may take a few seconds, and
	// what is still stale then stays for its TTL.
	stopped := time.Now()
	time.Sleep(staleSettle)
	left := 0
	for {
		if left, err = countStale(client, addrs[0], committed); err != nil {
			return err
		}
		if left == 0 || time.Since(stopped) >= staleSettleMax {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	env.rec.AddExtra("stale keys left after settling", "%d of %d", left, staleRows)
	if o.appDeleteFailure > 0 {
		env.rec.AddExtra("deletes that failed", "%d, not retried", appFailed.Load())
	}
	if o.after != nil {
		o.after(addrs)
	}
	return nil
}

// countStale reads every row through the sidecar at addr and counts those older than
// committed says.
func countStale(client *http.Client, addr string, committed []atomic.Int64) (int, error) {
	n := 0
	for id := 1; id <= staleRows; id++ {
		res, err := client.Get(fmt.Sprintf("http://%s/v1/items/%d", addr, id))
		if err != nil {
			return 0, err
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return 0, err
		}
		if versionOf(body) < committed[id].Load() {
			n++
		}
	}
	return n, nil
}

// versionOf reads the version column of a row's JSON; -1 when it cannot.
func versionOf(body []byte) int64 {
	var row struct {
		Version *int64 `json:"version"`
	}
	if json.Unmarshal(body, &row) != nil || row.Version == nil {
		return -1
	}
	return *row.Version
}

// startNumbered starts n sidecars whose config may hold one %d, replaced by a server id
// unique to each (cdc.server_id).
func (e *Env) startNumbered(ctx context.Context, n int, rest string) ([]string, error) {
	var addrs []string
	for range n {
		a, err := e.StartSidecars(ctx, 1, strings.ReplaceAll(rest, "%d", strconv.Itoa(3000+len(e.sidecars))))
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, a...)
	}
	return addrs, nil
}

// waitCovered waits until a sidecar's /status says a binlog tail covers the items entity.
func waitCovered(ctx context.Context, addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		res, err := http.Get("http://" + addr + "/status")
		if err == nil {
			var st struct {
				CDC struct {
					Covered map[string]bool `json:"covered"`
				} `json:"cdc"`
			}
			json.NewDecoder(res.Body).Decode(&st)
			res.Body.Close()
			if st.CDC.Covered["items"] {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("no binlog tail covered the entity within 30s")
}
