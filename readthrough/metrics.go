package readthrough

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the read path's Prometheus metrics.
type Metrics struct {
	redisSeconds *prometheus.HistogramVec
	mysqlSeconds *prometheus.HistogramVec
	dbQueries    *prometheus.CounterVec
	fills        *prometheus.CounterVec
	nullMarkers  *prometheus.CounterVec
	fillErrors   *prometheus.CounterVec
	sharedLoads  *prometheus.CounterVec
	badEnvelopes *prometheus.CounterVec

	leases           *prometheus.CounterVec
	leaseWaits       *prometheus.CounterVec
	leaseWaitSeconds *prometheus.HistogramVec
	fallbacks        *prometheus.CounterVec
	staleServes      *prometheus.CounterVec
	refreshes        *prometheus.CounterVec
	bloomChecks      *prometheus.CounterVec
	bypasses         *prometheus.CounterVec
	degraded         *prometheus.CounterVec
}

// NewMetrics creates the read path's metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	latency := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m := &Metrics{
		redisSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sidecache_redis_duration_seconds", Help: "Latency of Redis calls on the read path.", Buckets: latency,
		}, []string{"op"}),
		mysqlSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sidecache_mysql_duration_seconds", Help: "Latency of MySQL queries on the read path.", Buckets: latency,
		}, []string{"entity", "op"}),
		dbQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_db_queries_total", Help: "Queries sent to MySQL to load rows.",
		}, []string{"entity"}),
		fills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_fills_total", Help: "Rows written to the cache after a load.",
		}, []string{"entity"}),
		nullMarkers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_null_markers_total", Help: "Null markers written to the cache for absent rows.",
		}, []string{"entity"}),
		fillErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_fill_errors_total", Help: "Cache writes after a load that failed (the row was still served).",
		}, []string{"entity"}),
		sharedLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_loads_shared_total", Help: "Requests that were answered by another request's in-process load.",
		}, []string{"entity"}),
		badEnvelopes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_cache_values_unreadable_total", Help: "Cached values in an unknown format, treated as misses.",
		}, []string{"entity"}),
		leases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_lease_total",
			Help: "Load leases by result: acquired, contended (another holds it), lost (voided or lapsed before the fill).",
		}, []string{"entity", "result"}),
		leaseWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_lease_waits_total", Help: "Misses that waited for another caller's load.",
		}, []string{"entity"}),
		leaseWaitSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sidecache_lease_wait_seconds", Help: "How long misses waited for another caller's load.", Buckets: latency,
		}, []string{"entity"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_fallbacks_total", Help: "Misses that gave up waiting for another's load, by fallback: load or unavailable.",
		}, []string{"entity", "mode"}),
		staleServes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_stale_serves_total", Help: "Hot values served past their soft deadline.",
		}, []string{"entity"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_refreshes_total",
			Help: "Background refreshes of stale hot values by result: refreshed, fresh (already done elsewhere), contended, voided (invalidated meanwhile), dropped, error.",
		}, []string{"entity", "result"}),
		bloomChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_bloom_checks_total",
			Help: "Bloom filter checks on misses by result: absent (answered 404 without a query), maybe, error (let through).",
		}, []string{"entity", "result"}),
		bypasses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_uncovered_reads_total",
			Help: "Reads answered from MySQL without the cache because no binlog tail covered the entity yet.",
		}, []string{"entity"}),
		degraded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_degraded_reads_total",
			Help: "Reads the cache could not answer (Redis unreachable or its circuit open), by result: loaded (from MySQL, behind degraded.max_db_rate) or rejected (past it: 503 with Retry-After).",
		}, []string{"entity", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.redisSeconds, m.mysqlSeconds, m.dbQueries, m.fills, m.nullMarkers,
			m.fillErrors, m.sharedLoads, m.badEnvelopes, m.leases, m.leaseWaits, m.leaseWaitSeconds,
			m.fallbacks, m.staleServes, m.refreshes, m.bloomChecks, m.bypasses, m.degraded)
	}
	return m
}

// entityMetrics holds one entity's metric children, resolved once so the hit path does no
// label lookups.
type entityMetrics struct {
	redisGet, redisGetMany, redisSet prometheus.Observer
	mysqlLoad, mysqlLoadMany         prometheus.Observer
	dbQueries, fills, nullMarkers    prometheus.Counter
	fillErrors, sharedLoads          prometheus.Counter
	badEnvelopes                     prometheus.Counter

	redisProbe                                     prometheus.Observer
	leaseAcquired, leaseContended, leaseLost       prometheus.Counter
	leaseWaits                                     prometheus.Counter
	leaseWaitSeconds                               prometheus.Observer
	fallbackLoad, fallbackUnavailable, staleServes prometheus.Counter
	refreshes                                      *prometheus.CounterVec // curried by entity
	bloomAbsent, bloomMaybe, bloomErrors           prometheus.Counter
	bypasses                                       prometheus.Counter
	degradedLoads, degradedRejected                prometheus.Counter
}

func (m *Metrics) forEntity(name string) entityMetrics {
	return entityMetrics{
		redisGet:      m.redisSeconds.WithLabelValues("get"),
		redisGetMany:  m.redisSeconds.WithLabelValues("get_many"),
		redisSet:      m.redisSeconds.WithLabelValues("set"),
		mysqlLoad:     m.mysqlSeconds.WithLabelValues(name, "load"),
		mysqlLoadMany: m.mysqlSeconds.WithLabelValues(name, "load_many"),
		dbQueries:     m.dbQueries.WithLabelValues(name),
		fills:         m.fills.WithLabelValues(name),
		nullMarkers:   m.nullMarkers.WithLabelValues(name),
		fillErrors:    m.fillErrors.WithLabelValues(name),
		sharedLoads:   m.sharedLoads.WithLabelValues(name),
		badEnvelopes:  m.badEnvelopes.WithLabelValues(name),

		redisProbe:          m.redisSeconds.WithLabelValues("probe"),
		leaseAcquired:       m.leases.WithLabelValues(name, "acquired"),
		leaseContended:      m.leases.WithLabelValues(name, "contended"),
		leaseLost:           m.leases.WithLabelValues(name, "lost"),
		leaseWaits:          m.leaseWaits.WithLabelValues(name),
		leaseWaitSeconds:    m.leaseWaitSeconds.WithLabelValues(name),
		fallbackLoad:        m.fallbacks.WithLabelValues(name, "load"),
		fallbackUnavailable: m.fallbacks.WithLabelValues(name, "unavailable"),
		staleServes:         m.staleServes.WithLabelValues(name),
		refreshes:           m.refreshes.MustCurryWith(prometheus.Labels{"entity": name}),
		bloomAbsent:         m.bloomChecks.WithLabelValues(name, "absent"),
		bloomMaybe:          m.bloomChecks.WithLabelValues(name, "maybe"),
		bloomErrors:         m.bloomChecks.WithLabelValues(name, "error"),
		bypasses:            m.bypasses.WithLabelValues(name),
		degradedLoads:       m.degraded.WithLabelValues(name, "loaded"),
		degradedRejected:    m.degraded.WithLabelValues(name, "rejected"),
	}
}
