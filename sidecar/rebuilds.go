package sidecar

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/retry"
	"github.com/sidecache/sidecache/readthrough"
)

// rebuilds rebuilds Bloom filters on the binlog tail's leader: when the tail reset one (DDL on
// the table, an entity it did not cover before) and when one is found missing (never built, or
// lost from Redis). A rebuild scans the table's ids; it does not warm the cache.
type rebuilds struct {
	s        *Sidecar
	wake     chan struct{}
	mu       sync.Mutex
	pending  map[string]bool
	lastLog  map[string]time.Time
	failedAt map[string]time.Time // the last failed rebuild: the next waits rebuildBackoff
	results  *prometheus.CounterVec
	scanned  *prometheus.GaugeVec
}

func newRebuilds(s *Sidecar, reg prometheus.Registerer) *rebuilds {
	r := &rebuilds{s: s, wake: make(chan struct{}, 1), pending: map[string]bool{}, lastLog: map[string]time.Time{},
		failedAt: map[string]time.Time{},
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_bloom_rebuilds_total",
			Help: "Bloom filter rebuilds run by the binlog tail's leader, by result: done, superseded (reset or taken over meanwhile), error.",
		}, []string{"entity", "result"}),
		scanned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidecache_bloom_rebuild_ids",
			Help: "Ids the running Bloom filter rebuild has scanned so far; 0 when none runs.",
		}, []string{"entity"})}
	reg.MustRegister(r.results, r.scanned)
	return r
}

// request asks for a rebuild of entity's filter; requests for one entity coalesce.
func (r *rebuilds) request(entity string) {
	r.mu.Lock()
	r.pending[entity] = true
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run rebuilds what is requested and, every two seconds while this process leads the binlog
// tail, whatever filter it finds missing (Redis lost it), until ctx ends.
func (r *rebuilds) run(ctx context.Context) {
	if r.s.filters == nil {
		return
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
			// Resets come in bursts (a table swap is several statements): wait for the burst to
			// end, so that one rebuild serves it.
			if retry.Sleep(ctx, time.Second) != nil {
				return
			}
		case <-tick.C:
			if r.s.tail.Leading() {
				r.findMissing(ctx)
			}
		}
		for {
			entity, ok := r.next()
			if !ok {
				break
			}
			r.rebuild(ctx, entity)
		}
	}
}

func (r *rebuilds) next() (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for e := range r.pending {
		delete(r.pending, e)
		return e, true
	}
	return "", false
}

// rebuildBackoff is how long after a failed rebuild of a filter the next begins: a scan that
// fails late should not rescan the table every tick.
const rebuildBackoff = 10 * time.Second

func (r *rebuilds) findMissing(ctx context.Context) {
	for _, e := range r.s.cfg.Entities {
		if !e.Bloom.Enabled {
			continue
		}
		r.mu.Lock()
		backingOff := time.Since(r.failedAt[e.Name]) < rebuildBackoff
		r.mu.Unlock()
		if backingOff {
			continue
		}
		st, err := r.s.filters.State(ctx, e.Name)
		if err == nil && st == bloom.Missing {
			r.s.log.Warn("bloom: the filter is missing (never built, or lost from Redis): rebuilding it; until then every id passes", "entity", e.Name)
			r.request(e.Name)
		}
	}
}

func (r *rebuilds) rebuild(ctx context.Context, entity string) {
	start := time.Now()
	r.s.log.Info("bloom: rebuilding the filter from a scan of the table; every id passes until it is done", "entity", entity)
	lastLog := start
	progress := func(st readthrough.PreloadStats) {
		r.scanned.WithLabelValues(entity).Set(float64(st.Rows))
		if time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			r.s.log.Info("bloom: rebuilding", "entity", entity, "ids", st.Rows, "of_about", st.Total,
				"ids_per_second", int(st.RowsPerSecond()))
		}
	}
	st, err := r.s.reader.Preload(ctx, readthrough.PreloadOptions{Entity: entity, Scanner: r.s.scanner(), FilterOnly: true, Progress: progress})
	r.scanned.WithLabelValues(entity).Set(0)
	switch {
	case ctx.Err() != nil:
		return
	case errors.Is(err, bloom.ErrTakenOver), errors.Is(err, bloom.ErrBuildLost):
		r.results.WithLabelValues(entity, "superseded").Inc()
		r.s.log.Info("bloom: a filter rebuild was superseded (reset, or another rebuild began)", "entity", entity)
	case err != nil:
		r.results.WithLabelValues(entity, "error").Inc()
		r.mu.Lock()
		r.failedAt[entity] = time.Now()
		logIt := time.Since(r.lastLog[entity]) > time.Minute
		if logIt {
			r.lastLog[entity] = time.Now()
		}
		r.mu.Unlock()
		if logIt {
			r.s.log.Warn("bloom: rebuilding the filter failed; every id passes until a rebuild succeeds (retried every 10s)", "entity", entity, "err", err)
		}
	default:
		r.results.WithLabelValues(entity, "done").Inc()
		r.s.log.Info("bloom: filter rebuilt", "entity", entity, "ids", st.Rows, "took", time.Since(start).Round(time.Millisecond).String())
	}
}
