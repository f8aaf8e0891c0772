package sidecar

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/config"
)

// bloomCollector reports each filter's size and fill. The fill is a BITCOUNT of the whole
// bitmap in Redis, so it is read at most every bloomStatsEvery, not on every scrape.
type bloomCollector struct {
	filters *bloom.Filters
	cfg     *config.Config

	mu     sync.Mutex
	readAt time.Time
	last   []prometheus.Metric
}

const bloomStatsEvery = 5 * time.Second

var (
	bloomBitsDesc = prometheus.NewDesc("sidecache_bloom_bits", "Size of the entity's Bloom filter in bits.", []string{"entity"}, nil)
	bloomHashDesc = prometheus.NewDesc("sidecache_bloom_hashes", "Hash locations per item.", []string{"entity"}, nil)
	bloomItemDesc = prometheus.NewDesc("sidecache_bloom_items_estimate", "Distinct ids in the filter, estimated from the bits set.", []string{"entity"}, nil)
	bloomFPDesc   = prometheus.NewDesc("sidecache_bloom_fp_rate_estimate", "False-positive rate at the filter's fill, estimated from the bits set.", []string{"entity"}, nil)
)

func (c *bloomCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bloomBitsDesc
	ch <- bloomHashDesc
	ch <- bloomItemDesc
	ch <- bloomFPDesc
}

func (c *bloomCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.readAt) >= bloomStatsEvery {
		c.last, c.readAt = c.read(), time.Now()
	}
	for _, m := range c.last {
		ch <- m
	}
}

// read reads every filter's stats from Redis.
func (c *bloomCollector) read() []prometheus.Metric {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var out []prometheus.Metric
	for _, e := range c.cfg.Entities {
		if !e.Bloom.Enabled {
			continue
		}
		st, err := c.filters.Stats(ctx, e.Name)
		if err != nil || !st.Exists {
			continue // no filter yet, or Redis unreachable: no sample rather than a wrong one
		}
		out = append(out,
			prometheus.MustNewConstMetric(bloomBitsDesc, prometheus.GaugeValue, float64(st.Params.M), e.Name),
			prometheus.MustNewConstMetric(bloomHashDesc, prometheus.GaugeValue, float64(st.Params.K), e.Name),
			prometheus.MustNewConstMetric(bloomItemDesc, prometheus.GaugeValue, st.Items, e.Name),
			prometheus.MustNewConstMetric(bloomFPDesc, prometheus.GaugeValue, st.FPRate, e.Name))
	}
	return out
}
