package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// metricsSum adds up a metric (without labels) over the running sidecars.
func (c *consistencyRun) metricsSum(name string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`)
	var sum float64
	c.mu.Lock()
	procs := append([]*sidecarProc(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		res, err := http.Get("http://" + p.addr + "/metrics")
		if err != nil {
			c.t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if m := re.FindSubmatch(b); m != nil {
			v, _ := strconv.ParseFloat(string(m[1]), 64)
			sum += v
		}
	}
	return sum
}

// retryDelays reads the retry delay histogram of the sidecars, as "≤bound: count" lines.
func (c *consistencyRun) retryDelays() string {
	re := regexp.MustCompile(`(?m)^sidecache_retry_delay_seconds_bucket\{le="([^"]+)"\} (\S+)$`)
	counts := map[string]float64{}
	var order []string
	for _, p := range c.procs {
		res, err := http.Get("http://" + p.addr + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, m := range re.FindAllSubmatch(b, -1) {
			le := string(m[1])
			if _, ok := counts[le]; !ok {
				order = append(order, le)
			}
			v, _ := strconv.ParseFloat(string(m[2]), 64)
			counts[le] += v
		}
	}
	var parts []string
	for _, le := range order {
		parts = append(parts, fmt.Sprintf("≤%ss: %.0f", le, counts[le]))
	}
	return strings.Join(parts, ", ")
}

// settleRetries waits until the checkpoint covers every write and every retry message produced
// has been handled, and returns how long that took. A worker fetches messages long before it
// is done with them (they wait for their not-before time), so it counts the handled ones. It
// reads the second deletes pending before the queue they feed, and the queue before the
// counters; and the handled count before the produced one: a message handled by the time it is
// read was produced by then, and so was the next attempt it produced, so handled ≥ produced
// means nothing produced was left to do.
func (c *consistencyRun) settleRetries() time.Duration {
	c.t.Helper()
	start := time.Now()
	c.settle()
	for {
		pending := c.metricsSum("sidecache_second_deletes_pending")
		queued := c.metricsSum("sidecache_retry_queue_depth")
		handled := c.metricsSum("sidecache_retry_handled_total")
		produced := c.metricsSum("sidecache_retry_produced_total")
		if pending == 0 && queued == 0 && handled >= produced {
			return time.Since(start)
		}
		if time.Since(start) > 3*time.Minute {
			c.t.Fatalf("retries did not settle: %v produced, %v handled", produced, handled)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const retryTopics = "sidecache.invalidate.retry"

func kafkaConfig(c *kfake.Cluster, queue int) string {
	return fmt.Sprintf(`kafka:
  brokers: [%q]
  max_attempts: 20
  backoff: 50ms
  max_backoff: 1s
  queue_size: %d
faults:
  delete_failure_rate: 0.2
`, c.ListenAddrs()[0], queue)
}

func newKfake(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.SeedTopics(4, retryTopics, "sidecache.invalidate.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (c *consistencyRun) reportRetries(mode string, writes int64, settle time.Duration) {
	injected := c.metricsSum("sidecache_faults_injected_total")
	produced := c.metricsSum("sidecache_retry_produced_total")
	dead := c.metricsSum("sidecache_retry_dead_lettered_total")
	succeeded := c.metricsSum("sidecache_retry_succeeded_total")
	c.report(mode, writes, consistencyFor, settle)
	msg := fmt.Sprintf("retries (%s): %.0f deletes failed on purpose; %.0f retry messages produced, %.0f retried deletes succeeded, %.0f dead-lettered; retry delays %s",
		mode, injected, produced, succeeded, dead, c.retryDelays())
	c.t.Log(msg)
	fmt.Println(msg)
	if injected == 0 {
		c.t.Error("no delete failed: the fault injection did not work")
	}
	if injected != produced+dead {
		c.t.Errorf("%.0f injected failures, but %.0f retries produced and %.0f dead-lettered: the counters do not account for every failure", injected, produced, dead)
	}
	if dead != 0 {
		c.t.Errorf("%.0f deletes were dead-lettered at a 20%% failure rate with 20 attempts", dead)
	}
}

func TestConsistencyWithFailingDeletes(t *testing.T) {
	k := newKfake(t)
	c := newConsistencyRunWith(t, "cons_faults", kafkaConfig(k, 10000))
	c.start()
	c.start()
	writes := c.load(consistencyFor, consistencyRate, nil)
	c.reportRetries("20% of deletes failing, 2 sidecars, Kafka retries", writes, c.settleRetries())
}

func TestConsistencyWithKafkaOutage(t *testing.T) {
	k := newKfake(t)
	// A small queue, so the outage fills it and the tail has to pause.
	c := newConsistencyRunWith(t, "cons_kafka_down", kafkaConfig(k, 200))
	c.start()
	var down atomic.Bool
	refuse := func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.KeepControl()
		if down.Load() {
			return nil, errors.New("kafka is down"), true
		}
		return nil, nil, false
	}
	k.ControlKey(kmsg.Produce.Int16(), refuse)
	k.ControlKey(kmsg.Fetch.Int16(), refuse)
	var sawPause atomic.Bool
	writes := c.load(consistencyFor, consistencyRate, func() {
		down.Store(true)
		// While Kafka refuses everything, the failed deletes pile up in the bounded queue.
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			if c.metricsSum("sidecache_retry_queue_depth") >= 200 {
				sawPause.Store(true)
			}
			time.Sleep(100 * time.Millisecond)
		}
		down.Store(false)
	})
	if !sawPause.Load() {
		t.Error("the retry queue never filled during the outage; the pause was not exercised")
	}
	c.reportRetries("Kafka refusing produce and fetch for 8s midway, queue of 200", writes, c.settleRetries())
}
