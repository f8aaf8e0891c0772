package cdc

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	events         *prometheus.CounterVec
	unmapped       prometheus.Counter
	lag            prometheus.Histogram
	leader         prometheus.Gauge
	checkpointTime prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, age func() float64) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_cdc_events_total", Help: "Row changes (insert, update, delete) and DDL statements seen in the binlog for tailed tables.",
		}, []string{"type"}),
		unmapped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecache_cdc_unmapped_rows_total", Help: "Row images whose key could not be read; their keys were not invalidated.",
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
	}
	ageGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidecache_cdc_checkpoint_age_seconds", Help: "Age of the oldest change not yet checkpointed (0 when all are).",
	}, age)
	if reg != nil {
		reg.MustRegister(m.events, m.unmapped, m.lag, m.leader, m.checkpointTime, ageGauge)
	}
	return m
}
