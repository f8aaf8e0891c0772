package demo

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/sidecache/sidecache/internal/keys"
)

// createItems creates the table items with rows rows, ids 1 to rows.
func (e *Env) createItems(ctx context.Context, rows int) error {
	return e.Exec(ctx, "CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL)",
		fmt.Sprintf("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d", rows))
}

// Preload runs `sidecache preload --entity entity` on a config of Env.Config plus rest.
func (e *Env) Preload(ctx context.Context, entity, rest string) error {
	cfg := filepath.Join(e.Stack.Dir, e.DB+"-preload.yaml")
	if err := os.WriteFile(cfg, []byte(e.Config("127.0.0.1:0")+rest), 0o600); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, e.Bin, "preload", "--config", cfg, "--entity", entity).CombinedOutput()
	if err != nil {
		return fmt.Errorf("preload: %w: %s", err, out)
	}
	return nil
}

const (
	breakdownSidecars = 3
	breakdownReaders  = 300
	breakdownEvery    = time.Second
	breakdownSlow     = 100 * time.Millisecond
	breakdownFor      = 10 * time.Second
)

var breakdown = &Demo{
	Name:  "breakdown",
	Title: "Cache breakdown: a hot key expiring under 300 concurrent readers on 3 sidecars",
	Explain: fmt.Sprintf("%d clients read one hot row through %d sidecars for %v. Every %v the row's cached value goes "+
		"(the demo deletes it, as an expiry would) while MySQL is slow to answer: a table lock held for %v, as a long "+
		"write or a busy server would hold it. Every expiry finds hundreds of readers waiting on a miss at once. "+
		"Without the lease each sidecar's in-process singleflight still folds its own readers into one load, but the "+
		"sidecars do not know of each other, so each expiry costs MySQL one SELECT per sidecar. With the cluster-wide "+
		"Redis lease one sidecar loads and fills while the others wait for its value: one SELECT per expiry, whatever "+
		"the number of sidecars. Watch the SELECTs per second.",
		breakdownReaders, breakdownSidecars, breakdownFor, breakdownEvery, breakdownSlow),
	Variants: offOn("in-process singleflight only (lease.enabled: false)", "singleflight and the cluster-wide Redis lease"),
	Run: func(ctx context.Context, env *Env, v int) error {
		on := v == 1
		if err := env.createItems(ctx, 10); err != nil {
			return err
		}
		addrs, err := env.StartSidecars(ctx, breakdownSidecars, fmt.Sprintf(
			"lease: {enabled: %t, wait: 3s}\nentities:\n  - {name: items, ttl: 1h}\n", on))
		if err != nil {
			return err
		}
		conn, err := env.Root.Conn(ctx) // LOCK TABLES holds for its session
		if err != nil {
			return err
		}
		defer conn.Close()
		expiries := 0
		err = env.Record(ctx, func(ctx context.Context, rec *Recorder) error {
			var wg sync.WaitGroup
			wg.Go(func() {
				Readers(ctx, rec, breakdownReaders, breakdownFor, 100*time.Millisecond, func(i int) Read {
					return Read{URL: fmt.Sprintf("http://%s/v1/items/1", addrs[i%len(addrs)])}
				})
			})
			defer wg.Wait()
			t := time.NewTicker(breakdownEvery)
			defer t.Stop()
			for end := time.Now().Add(breakdownFor - breakdownEvery/2); ; {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-t.C:
				}
				if time.Now().After(end) {
					return nil // the readers stop: an expiry now would find none
				}
				if err := expireSlowly(ctx, conn, env); err != nil {
					return err
				}
				expiries++
			}
		})
		s := env.rec.series()
		env.rec.AddExtra("expiries of the hot key", "%d", expiries)
		// The first read loads the row too.
		env.rec.AddExtra("MySQL SELECTs per load (the first read and each expiry)", "%.1f", s.Queries/float64(expiries+1))
		return err
	},
}

// expireSlowly deletes the hot key while a table lock keeps MySQL from answering for
// breakdownSlow.
func expireSlowly(ctx context.Context, conn *sql.Conn, env *Env) error {
	if _, err := conn.ExecContext(ctx, "LOCK TABLES items WRITE"); err != nil {
		return err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "UNLOCK TABLES")
	if err := env.Redis.Del(ctx, keys.Value(env.Prefix, "items", "1")).Err(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(breakdownSlow):
		return nil
	}
}

const (
	penetrationRows    = 10_000
	penetrationReaders = 100
	penetrationFor     = 10 * time.Second
)

var penetration = &Demo{
	Name:  "penetration",
	Title: "Cache penetration: random ids that do not exist",
	Explain: fmt.Sprintf("%d clients ask for random ids that no row has (the table holds ids 1 to %d) for %v. "+
		"A cache holds rows, so without a guard every such read misses and becomes a SELECT, and an attacker "+
		"who varies the id passes straight through to MySQL; null markers alone do not help when ids never repeat. "+
		"With the Bloom filter (built by sidecache preload from a scan of the ids, then kept by the binlog tail) "+
		"an absent id is answered 404 from Redis without a query, and the filter never says absent for a row that "+
		"exists. Watch MySQL's SELECTs fall to the filter's false-positive rate.",
		penetrationReaders, penetrationRows, penetrationFor),
	Variants: offOn("no Bloom filter, null markers that expire after 1 ms", "a Bloom filter (1% false positives) and null markers for 1 minute"),
	Run: func(ctx context.Context, env *Env, v int) error {
		on := v == 1
		if err := env.createItems(ctx, penetrationRows); err != nil {
			return err
		}
		entity := "entities:\n  - {name: items, null_ttl: 1ms}\n"
		if on {
			entity = fmt.Sprintf("entities:\n  - {name: items, null_ttl: 1m, bloom: {enabled: true, expected_items: %d, fp_rate: 0.01}}\n", 2*penetrationRows)
			if err := env.Preload(ctx, "items", entity); err != nil {
				return err
			}
		}
		addrs, err := env.StartSidecars(ctx, 2, entity)
		if err != nil {
			return err
		}
		return env.Record(ctx, func(ctx context.Context, rec *Recorder) error {
			Readers(ctx, rec, penetrationReaders, penetrationFor, 10*time.Millisecond, func(i int) Read {
				id := penetrationRows + 1 + rand.IntN(1<<30)
				return Read{URL: fmt.Sprintf("http://%s/v1/items/%d", addrs[i%len(addrs)], id)}
			})
			return nil
		})
	},
}
