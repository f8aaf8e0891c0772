package bloom_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/devstack"
)

// newFilters returns two Filters on one Redis, standing in for two sidecars, under a prefix no
// other test uses.
func newFilters(t *testing.T) (a, b *bloom.Filters, rc *redis.Client, prefix string) {
	t.Helper()
	s := devstack.Require(t, stack)
	rc = s.Client(t)
	prefix = fmt.Sprintf("bt%d:", time.Now().UnixNano())
	return bloom.New(rc, prefix), bloom.New(rc, prefix), rc, prefix
}

func ids(from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

func mustSize(t *testing.T, n uint, p float64) bloom.Params {
	t.Helper()
	params, err := bloom.Size(n, p)
	if err != nil {
		t.Fatal(err)
	}
	return params
}

// absentCount returns how many of ids the filter says are absent.
func absentCount(t *testing.T, f *bloom.Filters, ids []string) int {
	t.Helper()
	may, err := f.MayContainMany(context.Background(), "items", ids)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range may {
		if !m {
			n++
		}
	}
	return n
}

func TestNoFilterIsOpen(t *testing.T) {
	f, _, _, _ := newFilters(t)
	if n := absentCount(t, f, ids(0, 100)); n != 0 {
		t.Fatalf("with no filter built, %d ids were called absent", n)
	}
	if err := f.Add(context.Background(), "items", "1"); err != nil {
		t.Fatalf("Add with no filter: %v", err)
	}
}

func TestBuildThenCheck(t *testing.T) {
	f, other, _, _ := newFilters(t)
	ctx := context.Background()
	params := mustSize(t, 10000, 0.01)
	b, err := f.Begin(ctx, "items", params)
	if err != nil {
		t.Fatal(err)
	}
	// While the build runs the old state (no filter) answers: nothing is absent.
	if err := b.Add(ctx, ids(0, 10000)); err != nil {
		t.Fatal(err)
	}
	if n := absentCount(t, other, ids(20000, 21000)); n != 0 {
		t.Fatalf("a filter answered before its build committed (%d absent)", n)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := absentCount(t, other, ids(0, 10000)); n != 0 {
		t.Fatalf("%d false negatives among the built ids", n)
	}
	fp := 10000 - absentCount(t, other, ids(100000, 110000))
	if rate := float64(fp) / 10000; rate > 0.02 {
		t.Errorf("false-positive rate %.4f, want about 0.01", rate)
	}
	st, err := f.Stats(ctx, "items")
	if err != nil || !st.Exists || st.Items < 9500 || st.Items > 10500 {
		t.Errorf("stats %+v %v, want about 10000 items", st, err)
	}
}

// TestAddDuringRebuildLandsInBoth: ids added while a rebuild scans are in the new filter even
// though the scan never saw them, and in the old one until the switch.
func TestAddDuringRebuildLandsInBoth(t *testing.T) {
	f, other, _, _ := newFilters(t)
	ctx := context.Background()
	params := mustSize(t, 20000, 0.01)
	first, _ := f.Begin(ctx, "items", params)
	first.Add(ctx, ids(0, 1000))
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	rebuild, err := f.Begin(ctx, "items", params)
	if err != nil {
		t.Fatal(err)
	}
	rebuild.Add(ctx, ids(0, 1000))
	// Another sidecar (its meta cached before the rebuild began) adds new ids.
	if err := other.Add(ctx, "items", ids(5000, 5100)...); err != nil {
		t.Fatal(err)
	}
	if n := absentCount(t, f, ids(5000, 5100)); n != 0 {
		t.Fatalf("ids added during the rebuild are absent from the current filter: %d", n)
	}
	if err := rebuild.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := absentCount(t, other, append(ids(0, 1000), ids(5000, 5100)...)); n != 0 {
		t.Fatalf("%d false negatives after the switch", n)
	}
}

func TestAbortKeepsCurrentFilter(t *testing.T) {
	f, _, rc, prefix := newFilters(t)
	ctx := context.Background()
	params := mustSize(t, 1000, 0.01)
	b, _ := f.Begin(ctx, "items", params)
	b.Add(ctx, ids(0, 500))
	b.Commit(ctx)
	half, _ := f.Begin(ctx, "items", params)
	half.Add(ctx, ids(0, 10)) // an interrupted scan
	if err := half.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if n := absentCount(t, f, ids(0, 500)); n != 0 {
		t.Fatalf("after an abort %d ids of the current filter are absent", n)
	}
	if keys := rc.Keys(ctx, prefix+"*").Val(); len(keys) != 2 {
		t.Errorf("keys after abort: %v, want the meta and one bitmap", keys)
	}
}

func TestLaterBuildTakesOver(t *testing.T) {
	f, _, rc, prefix := newFilters(t)
	ctx := context.Background()
	params := mustSize(t, 1000, 0.01)
	stale, _ := f.Begin(ctx, "items", params)
	fresh, _ := f.Begin(ctx, "items", params) // e.g. the first preload crashed and another started
	fresh.Add(ctx, ids(0, 100))
	stale.Add(ctx, ids(500, 600))
	if err := stale.Commit(ctx); !errors.Is(err, bloom.ErrTakenOver) {
		t.Fatalf("the superseded build committed: %v", err)
	}
	if err := fresh.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := absentCount(t, f, ids(0, 100)); n != 0 {
		t.Fatalf("%d false negatives", n)
	}
	// The superseded build's scan bits reached neither bitmap, and no commit left them behind.
	if n := absentCount(t, f, ids(500, 600)); n < 90 {
		t.Errorf("only %d of 100 ids of the superseded build are absent: its bits reached the filter", n)
	}
	if keys := rc.Keys(ctx, prefix+"*").Val(); len(keys) != 2 {
		t.Errorf("keys after the commits: %v, want the meta and one bitmap", keys)
	}
}

// TestStaleCacheNeverAnswersAbsent: a sidecar whose cached view predates a rebuild with other
// parameters (the old bitmap is gone) must reload rather than read the wrong bitmap.
func TestStaleCacheNeverAnswersAbsent(t *testing.T) {
	f, other, _, _ := newFilters(t)
	ctx := context.Background()
	small := mustSize(t, 1000, 0.05)
	b, _ := f.Begin(ctx, "items", small)
	b.Add(ctx, ids(0, 1000))
	b.Commit(ctx)
	absentCount(t, other, ids(0, 10)) // other caches the small filter
	big := mustSize(t, 50000, 0.001)
	b2, _ := f.Begin(ctx, "items", big)
	b2.Add(ctx, ids(0, 3000))
	b2.Commit(ctx)
	if n := absentCount(t, other, ids(0, 3000)); n != 0 {
		t.Fatalf("a stale cached view answered %d false negatives", n)
	}
}

func TestSizeLimits(t *testing.T) {
	if _, err := bloom.Size(1<<40, 0.0001); err == nil {
		t.Error("a filter larger than Redis can hold was accepted")
	}
	p, err := bloom.Size(1_000_000, 0.01)
	if err != nil || p.M < 9_000_000 || p.M > 10_000_000 || p.K != 7 {
		t.Errorf("Size(1e6, 0.01) = %+v %v, want about 9.6M bits and 7 hashes", p, err)
	}
}

// loseScanBits is a go-redis hook that, just before a commit script runs, does to the scan's
// bits what Redis may do to any key: evict it, or keep only a part of it.
type loseScanBits struct {
	other   *redis.Client
	partial bool
}

func (h loseScanBits) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h loseScanBits) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h loseScanBits) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.HasPrefix(cmd.Name(), "eval") {
			for _, a := range cmd.Args() {
				if k, ok := a.(string); ok && strings.Contains(k, ":scan:") {
					if h.partial {
						h.other.Set(ctx, k, "\xff", 0)
					} else {
						h.other.Del(ctx, k)
					}
				}
			}
		}
		return next(ctx, cmd)
	}
}

// TestCommitRefusesLostScanBits: a rebuild whose scan bits Redis lost before the commit fails
// and leaves the filter as it was, rather than switch to a bitmap without the scan's ids.
func TestCommitRefusesLostScanBits(t *testing.T) {
	ctx := context.Background()
	for _, partial := range []bool{false, true} {
		_, _, rc, prefix := newFilters(t)
		hooked := redis.NewClient(&redis.Options{Addr: rc.Options().Addr})
		defer hooked.Close()
		hooked.AddHook(loseScanBits{other: rc, partial: partial})
		f := bloom.New(hooked, prefix)
		b, err := f.Begin(ctx, "e", mustSize(t, 10_000, 0.01))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Add(ctx, ids(0, 1000)); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(ctx); !errors.Is(err, bloom.ErrBuildLost) {
			t.Fatalf("partial %v: commit with the scan's bits lost: %v, want ErrBuildLost", partial, err)
		}
		if n := absentCount(t, bloom.New(rc, prefix), ids(0, 1000)); n != 0 {
			t.Errorf("partial %v: the filter says %d scanned ids are absent", partial, n)
		}
	}
}
