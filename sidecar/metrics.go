package sidecar

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unknownEntity is the entity label of requests for entities that are not configured, so that
// clients cannot grow the label set.
const unknownEntity = "_unknown"

// httpMetrics counts requests by entity and outcome. Children are resolved at start so that the
// hit path does no label lookups.
type httpMetrics struct {
	inFlight prometheus.Gauge
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	entities map[string]*entityHTTPMetrics
}

type entityHTTPMetrics struct {
	outcomes map[string]prometheus.Counter
	seconds  prometheus.Observer
}

// outcomes are the values of the outcome label: cache statuses, then error codes.
var outcomes = []string{"hit", "miss", "negative", "stale", "bypass", "not_found", "unknown_entity",
	"invalid_id", "too_many_ids", "method_not_allowed", "timeout", "canceled", "cache_unavailable",
	"db_unavailable", "wait_timeout", "internal"}

func newHTTPMetrics(reg prometheus.Registerer, entityNames []string) *httpMetrics {
	m := &httpMetrics{
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecache_requests_in_flight", Help: "Entity requests being answered now.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_requests_total", Help: "Entity requests by entity and outcome (cache status or error code).",
		}, []string{"entity", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sidecache_request_duration_seconds",
			Help:    "Time to answer an entity request.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"entity"}),
		entities: make(map[string]*entityHTTPMetrics),
	}
	reg.MustRegister(m.inFlight, m.requests, m.seconds)
	for _, name := range append(entityNames, unknownEntity) {
		em := &entityHTTPMetrics{outcomes: make(map[string]prometheus.Counter), seconds: m.seconds.WithLabelValues(name)}
		for _, o := range outcomes {
			em.outcomes[o] = m.requests.WithLabelValues(name, o)
		}
		m.entities[name] = em
	}
	return m
}

func (m *httpMetrics) observe(entity, outcome string, start time.Time) {
	em := m.entities[entity]
	if em == nil {
		em = m.entities[unknownEntity]
	}
	em.seconds.Observe(time.Since(start).Seconds())
	if c := em.outcomes[outcome]; c != nil {
		c.Inc()
	} else {
		em.outcomes["internal"].Inc()
	}
}
