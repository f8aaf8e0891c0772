package invalidation_test

import (
	"context"
	"slices"
	"strconv"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/faults"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/invalidation"
)

// TestInvalidateDeletesValuesAndLeases: every value key and its lease go, however many keys
// there are (several DELs of many keys each on one server), and no other key does.
func TestInvalidateDeletesValuesAndLeases(t *testing.T) {
	for _, n := range []int{1, 127, 128, 129, 1000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			mr := miniredis.RunT(t)
			rc := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			defer rc.Close()
			values := make([]string, n)
			for i := range values {
				values[i] = keys.Value("p:", "items", strconv.Itoa(i))
				mr.Set(values[i], "row")
				mr.Set(keys.Lease(values[i]), "owner")
			}
			other := keys.Value("p:", "items", "kept")
			mr.Set(other, "row")
			failed, err := invalidation.NewRedis(rc).Invalidate(context.Background(), values...)
			if err != nil || len(failed) != 0 {
				t.Fatalf("Invalidate: failed %d, err %v", len(failed), err)
			}
			if got := mr.Keys(); !slices.Equal(got, []string{other}) {
				t.Errorf("left %d keys (%.3v), want only %s", len(got), got, other)
			}
		})
	}
}

// TestInvalidateReportsTheFailedKeys: a DEL that fails reports every key it held as failed,
// and only those; the others are deleted.
func TestInvalidateReportsTheFailedKeys(t *testing.T) {
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rc.Close()
	f := faults.New(0.5, 0, nil)
	rc.AddHook(f.Hook())
	values := make([]string, 1000)
	for i := range values {
		values[i] = keys.Value("p:", "items", strconv.Itoa(i))
		mr.Set(values[i], "row")
	}
	var failed []string
	var err error
	for range 20 { // each DEL fails with one chance in two: some of them fail
		if failed, err = invalidation.NewRedis(rc).Invalidate(context.Background(), values...); len(failed) > 0 {
			break
		}
	}
	if len(failed) == 0 || err == nil {
		t.Fatalf("no delete failed in 20 tries at a 50%% failure rate (err %v)", err)
	}
	for _, k := range values {
		if want := slices.Contains(failed, k); mr.Exists(k) != want {
			t.Errorf("%s: exists %v, reported failed %v", k, mr.Exists(k), want)
		}
	}
}
