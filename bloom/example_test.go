package bloom_test

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/bloom"
)

// A filter for a million ids at a 1% false-positive rate takes about 1.2 MB of Redis and seven
// bit lookups per check.
func ExampleSize() {
	p, err := bloom.Size(1_000_000, 0.01)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d bits (%.1f MB), %d hashes\n", p.M, float64(p.M)/8/1e6, p.K)
	// Output: 9585059 bits (1.2 MB), 7 hashes
}

// A rebuild fills a second bitmap from a scan of the table while the current filter keeps
// answering, then switches atomically; ids added meanwhile reach both.
func ExampleFilters_Begin() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	filters := bloom.New(rdb, "sc:")
	params, _ := bloom.Size(1_000_000, 0.01)
	build, err := filters.Begin(ctx, "items", params)
	if err != nil {
		panic(err)
	}
	defer build.Abort(ctx)                                         // a no-op once committed
	for _, page := range [][]string{{"1", "2", "3"}, {"5", "8"}} { // the table's ids, scanned in pages
		if err := build.Add(ctx, page); err != nil {
			panic(err)
		}
	}
	if err := build.Commit(ctx); err != nil {
		panic(err)
	}
	may, _ := filters.MayContainMany(ctx, "items", []string{"3", "4"})
	fmt.Println(may) // [true false], or [true true] for a false positive
}
