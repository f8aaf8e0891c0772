package readthrough_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/lease"
	"github.com/sidecache/sidecache/readthrough"
)

// TestPreloadWorkers: batches are warmed on several workers at once while the scan goes on,
// and the preload's guarantees hold all the same: a row invalidated between its load and its
// fill is not put back, the stats add up, --rate still caps the rows read, and an interrupted
// preload stops after the batches under way, holds no lease and leaves the filter as it was.
func TestPreloadWorkers(t *testing.T) {
	const rows, batch = 3000, 100
	g := newRig(t, false)
	g.exec("DELETE FROM items")
	g.exec(fmt.Sprintf("INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d", rows))
	params, err := bloom.Size(rows, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	g.entity.Bloom, g.entity.BloomParams = true, params
	ctx := context.Background()
	leases := lease.New(g.rc, 3*time.Second)
	filters := bloom.New(g.rc, g.prefix)
	inval := invalidation.NewRedis(g.rc)

	// The first batch to finish its load waits until another has finished its own: they can
	// only meet if batches overlap. Every id ending in 7 is invalidated between load and fill.
	var mu sync.Mutex
	loaded := 0
	met := make(chan struct{})
	afterLoad := func(ids []string) {
		for _, id := range ids {
			if strings.HasSuffix(id, "7") {
				if _, err := inval.Invalidate(ctx, g.key(id)); err != nil {
					t.Error(err)
				}
			}
		}
		mu.Lock()
		loaded++
		first := loaded == 1
		if loaded == 2 {
			close(met)
		}
		mu.Unlock()
		if first {
			select {
			case <-met:
			case <-time.After(10 * time.Second):
				t.Error("no second batch was loaded while the first waited: batches do not overlap")
			}
		}
	}
	r := g.reader(3*time.Second, func(o *readthrough.Options) { o.Filters = filters; o.AfterLoad = afterLoad })

	const rate = 20_000.0
	var progressErr error
	st, err := r.Preload(ctx, readthrough.PreloadOptions{Entity: "items", Scanner: g.src, Leases: leases, Batch: batch, Workers: 4, Rate: rate,
		Progress: func(p readthrough.PreloadStats) {
			// A batch is read only once the rate allows it: by now at most rate·elapsed rows, and
			// the first batch, which goes at once.
			if limit := rate*p.Elapsed.Seconds() + batch; float64(p.Rows) > limit && progressErr == nil {
				progressErr = fmt.Errorf("%d rows after %v, over the rate's %.0f", p.Rows, p.Elapsed, limit)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if progressErr != nil {
		t.Error(progressErr)
	}
	if min := time.Duration((rows - batch) / rate * float64(time.Second)); st.Elapsed < min {
		t.Errorf("%d rows in %v at a rate of %.0f/s, want at least %v", rows, st.Elapsed, rate, min)
	}
	invalidated := rows / 10
	if st.Rows != rows || st.Warmed != rows-int64(invalidated) || st.AlreadyCached != 0 || st.NullMarkers != 0 {
		t.Errorf("stats %+v, want %d rows, %d warmed (the %d invalidated were not put back)", st, rows, rows-invalidated, invalidated)
	}
	for i := 1; i <= rows; i++ {
		id := strconv.Itoa(i)
		n := g.rc.Exists(ctx, g.key(id)).Val()
		if want := int64(1); strings.HasSuffix(id, "7") {
			want = 0
			if n != want {
				t.Fatalf("id %s was invalidated after its load, yet its row was put back", id)
			}
		} else if n != want {
			t.Fatalf("id %s was not warmed", id)
		}
	}
	if st.Filter == nil || st.Filter.Items < rows*0.9 {
		t.Fatalf("filter after the preload: %+v, want about %d items", st.Filter, rows)
	}

	// Interrupted after a few batches: it returns ctx's error, has seen some rows and not all,
	// holds no lease, and the filter is the one the first preload built.
	r2 := g.reader(3*time.Second, func(o *readthrough.Options) { o.Filters = filters })
	before, err := filters.Stats(ctx, "items")
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var calls int
	st, err = r2.Preload(cctx, readthrough.PreloadOptions{Entity: "items", Scanner: g.src, Leases: leases, Batch: batch, Workers: 4,
		Rate: rate, Progress: func(readthrough.PreloadStats) {
			if calls++; calls == 3 {
				cancel()
			}
		}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted preload: %v, want context.Canceled", err)
	}
	if st.Rows < 3*batch || st.Rows >= rows {
		t.Errorf("interrupted preload saw %d rows, want some and not all", st.Rows)
	}
	if lk := g.rc.Keys(ctx, g.prefix+"*:lease").Val(); len(lk) != 0 {
		t.Errorf("leases left after the interrupt: %v", lk)
	}
	after, err := filters.Stats(ctx, "items")
	if err != nil {
		t.Fatal(err)
	}
	if after.BitsSet != before.BitsSet || after.Params != before.Params {
		t.Errorf("filter before the interrupted rebuild %+v, after it %+v", before, after)
	}
	if s, err := filters.State(ctx, "items"); err != nil || s != bloom.Ready {
		t.Errorf("filter state after the interrupt: %v %v, want ready", s, err)
	}
}
