package cdc

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	events         *prometheus.CounterVec
	unmapped       prometheus.Counter
	lag            prometheus.Histogram
	leader         prometheus.Gauge
	checkpointTime prometheus.Gauge
	drops          *prometheus.CounterVec
	covered        *prometheus.GaugeVec
	stalls         prometheus.Counter
	resets         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, t *Tail) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_cdc_events_total", Help: "Row changes (insert, update, delete) seen in the binlog for tailed tables, and statements that changed them without row events (statement).",
		}, []string{"type"}),
		unmapped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecache_cdc_unmapped_rows_total", Help: "Row images whose key could not be read; the entity's whole cache was dropped instead.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidecache_cdc_commit_to_delete_seconds",
			Help:    "From a change's commit (binlog time, whole seconds) to its first delete.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30},
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecache_cdc_leader", Help: "1 while this process tails the binlog, 0 while it stands by.",
		}),
		checkpointTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecache_cdc_checkpoint_event_timestamp_seconds", Help: "Binlog time of the last change the saved checkpoint covers.",
		}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_cdc_entity_drops_total", Help: "Times an entity's whole cache was dropped, by reason: statement (DDL or a statement-logged write), unreadable_key, uncovered (no checkpoint covered it), xa.",
		}, []string{"entity", "reason"}),
		covered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidecache_cdc_covered", Help: "1 while the saved checkpoint covers the entity (reads use the cache), 0 while they bypass it.",
		}, []string{"entity"}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecache_cdc_failures_total", Help: "Times this process's binlog tail stopped on an error.",
		}),
		resets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecache_cdc_resets_total", Help: "Times the binlog needed was gone and the tail started over at the current position, dropping every entity's cache.",
		}),
	}
	ageGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidecache_cdc_checkpoint_age_seconds", Help: "Age of the oldest change not yet checkpointed (0 when all are).",
	}, t.checkpointAge)
	behind := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidecache_cdc_seconds_behind", Help: "How long the binlog tail has been behind the server's binlog head; it grows while no tail runs or the tail is stalled.",
	}, func() float64 { return t.View().SecondsBehind })
	stalled := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidecache_cdc_stalled", Help: "1 while the binlog tail (this process's or the leader's) cannot go on; /status says why.",
	}, func() float64 { return b2f(t.Stalled()) })
	if reg != nil {
		reg.MustRegister(m.events, m.unmapped, m.lag, m.leader, m.checkpointTime, m.drops, m.covered, m.stalls, m.resets, ageGauge, behind, stalled)
	}
	return m
}
