package demo

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

var failedDeletes = &Demo{
	Name:  "failed-deletes",
	Title: "Failed deletes: 20% of cache deletes failing, with and without retries through Kafka",
	Explain: fmt.Sprintf("The stale-data demo's %d writers and %d readers again, but one cache DEL command in five fails, "+
		"as one does when Redis times out, fails over or is restarted (the binlog tail's DELs carry up to 128 keys each). An application that deletes the key after its "+
		"update and moves on leaves every key whose delete failed stale, to be served until its TTL ends (an hour "+
		"here). sidecache's binlog tail hands each failed delete to Kafka (here an in-process Kafka, kfake), and its "+
		"retry workers delete the key again with backoff until Redis takes it; the checkpoint never passes a change "+
		"whose delete has not succeeded or reached Kafka. Compare the stale keys left after settling.",
		staleWriters, staleReaders),
	Variants: offOn("the application updates, then deletes; 20% of its deletes fail and are not retried",
		"sidecache's binlog tail deletes; 20% of its deletes fail and are retried through Kafka"),
	Run: func(ctx context.Context, env *Env, v int) error {
		if v == 0 {
			return runWrites(ctx, env, writes{order: updateThenDelete, appDeleteFailure: 0.2})
		}
		k, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
			kfake.SeedTopics(4, "sidecache.invalidate.retry", "sidecache.invalidate.dlq"))
		if err != nil {
			return err
		}
		defer k.Close()
		return runWrites(ctx, env, writes{order: binlog,
			config: fmt.Sprintf("kafka: {brokers: [%q], backoff: 50ms, max_backoff: 1s, max_attempts: 20}\nfaults: {delete_failure_rate: 0.2}\n", k.ListenAddrs()[0]),
			after: func(addrs []string) {
				env.rec.AddExtra("deletes that failed", "%.0f, each retried through Kafka", metricSum(addrs, "sidecache_faults_injected_total"))
				env.rec.AddExtra("retried deletes that succeeded", "%.0f", metricSum(addrs, "sidecache_retry_succeeded_total"))
			}})
	},
}

// metricSum adds up a metric's samples across the sidecars' /metrics; NaN when one cannot
// be read.
func metricSum(addrs []string, name string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(?:\{[^}]*\})? (\S+)$`)
	total := 0.0
	for _, a := range addrs {
		res, err := http.Get("http://" + a + "/metrics")
		if err != nil {
			return math.NaN()
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, m := range re.FindAllSubmatch(b, -1) {
			v, _ := strconv.ParseFloat(string(m[1]), 64)
			total += v
		}
	}
	return total
}

const (
	avalancheRows = 2_000
	avalancheTTL  = 5 * time.Second
	avalancheFor  = 16 * time.Second
)

var avalanche = &Demo{
	Name:  "avalanche",
	Title: "Cache avalanche: a mass preload expiring together",
	Explain: fmt.Sprintf("sidecache preload warms all %d rows of a table at once, with a TTL of %v, and clients "+
		"then read random rows through 2 sidecars for %v. Without jitter every preloaded key expires in the same "+
		"instant, and the next reads of all of them miss together; the keys loaded again then expire close together "+
		"once more. With ttl_jitter 0.5 each key's TTL is drawn from %v ± 50%%, so the same expiries spread "+
		"over seconds and the peak of SELECTs a second is a fraction of it. Watch the peak, not the total.",
		avalancheRows, avalancheTTL, avalancheFor, avalancheTTL),
	Variants: offOn("ttl_jitter: 0", "ttl_jitter: 0.5"),
	Run: func(ctx context.Context, env *Env, v int) error {
		if err := env.createItems(ctx, avalancheRows); err != nil {
			return err
		}
		entity := fmt.Sprintf("entities:\n  - {name: items, ttl: %q, ttl_jitter: %v}\n", avalancheTTL, []float64{0, 0.5}[v])
		addrs, err := env.StartSidecars(ctx, 2, entity)
		if err != nil {
			return err
		}
		err = env.Record(ctx, func(ctx context.Context, rec *Recorder) error {
			if err := env.Preload(ctx, "items", entity); err != nil {
				return err
			}
			Readers(ctx, rec, 50, avalancheFor, 10*time.Millisecond, func(i int) Read {
				return Read{URL: fmt.Sprintf("http://%s/v1/items/%d", addrs[i%len(addrs)], 1+rand.IntN(avalancheRows))}
			})
			return nil
		})
		s := env.rec.series()
		env.rec.AddExtra("peak MySQL SELECTs a second", "%.0f", slices.Max(append(s.QueriesPerSec, 0)))
		return err
	},
}

const (
	outageRows = 20_000
	outageFor  = 16 * time.Second
	outageAt   = 4 * time.Second
	outageLong = 6 * time.Second
)

var redisOutage = &Demo{
	Name:  "redis-outage",
	Title: "Avalanche by outage: Redis killed mid-load and back empty",
	Explain: fmt.Sprintf("Clients read random rows of a preloaded %d-row table through 2 sidecars. At %v Redis is killed "+
		"(SIGKILL), and %v later it comes back empty. The circuit breaker around Redis opens within a few failed "+
		"calls either way. With degraded.mode unavailable the sidecars answer 503 at once while Redis is away, and the "+
		"application sees errors. With degraded.mode load they read MySQL directly, without lease, filter or fill, "+
		"behind a limiter (max_db_rate, 500 SELECTs a second per sidecar here), so MySQL gets a bounded load rather "+
		"than every read, and the application keeps its answers. When Redis is back, the cache fills again.",
		outageRows, outageAt, outageLong),
	Variants: offOn("degraded.mode: unavailable", "degraded.mode: load, max_db_rate: 500 per sidecar"),
	Run: func(ctx context.Context, env *Env, v int) error {
		if err := env.createItems(ctx, outageRows); err != nil {
			return err
		}
		entity := "entities:\n  - {name: items, ttl: 1h}\n"
		if err := env.Preload(ctx, "items", entity); err != nil {
			return err
		}
		addrs, err := env.StartSidecars(ctx, 2, entity+"degraded: "+[]string{"{mode: unavailable}", "{mode: load, max_db_rate: 500}"}[v]+"\n")
		if err != nil {
			return err
		}
		var outageErr error
		err = env.Record(ctx, func(ctx context.Context, rec *Recorder) error {
			var wg sync.WaitGroup
			wg.Go(func() {
				select {
				case <-ctx.Done():
					return
				case <-time.After(outageAt):
				}
				env.Stack.KillRedis()
				time.Sleep(outageLong)
				outageErr = env.Stack.StartRedis(context.WithoutCancel(ctx))
			})
			Readers(ctx, rec, 30, outageFor, 20*time.Millisecond, func(i int) Read {
				return Read{URL: fmt.Sprintf("http://%s/v1/items/%d", addrs[i%len(addrs)], 1+rand.IntN(outageRows))}
			})
			wg.Wait()
			return outageErr
		})
		s := env.rec.series()
		env.rec.AddExtra("peak MySQL SELECTs a second", "%.0f", slices.Max(append(s.QueriesPerSec, 0)))
		return err
	},
}
