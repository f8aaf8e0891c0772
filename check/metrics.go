package check

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the checker's Prometheus metrics, added to after every round.
type metrics struct {
	checked, unreadable, inFlight, pastDeadline *prometheus.CounterVec // by entity
	mismatches                                  *prometheus.CounterVec // by entity, kind
	nines                                       *prometheus.GaugeVec   // by entity
	rounds                                      *prometheus.CounterVec // by result
	settle, lastRound                           prometheus.Gauge

	since map[string]*Counts // by entity, since the checker started: the nines gauge
}

// kindLabels are the values of the kind label.
var kindLabels = map[Kind]string{Stale: "stale", Ghost: "ghost", WronglyMissing: "wrongly_missing"}

func newMetrics(reg prometheus.Registerer, entities []string) *metrics {
	perEntity := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"entity"})
	}
	m := &metrics{
		checked: perEntity("sidecache_check_checked_total",
			"Ids whose cache entry (a row, a null marker, or the Bloom filter's answer) was compared with MySQL."),
		unreadable: perEntity("sidecache_check_unreadable_total", "Cached values in a format this build does not know: not compared."),
		inFlight: perEntity("sidecache_check_in_flight_total",
			"Mismatches gone or changed when looked at again after the settle window: changes in flight, not counted."),
		pastDeadline: perEntity("sidecache_check_past_soft_deadline_total", "Hot values seen past their soft deadline (served stale by design)."),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_check_mismatches_total",
			Help: "Mismatches that lasted past the settle window, by kind: stale, ghost, wrongly_missing.",
		}, []string{"entity", "kind"}),
		nines: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidecache_check_nines",
			Help: "Consistency since the checker started, as -log10(lasting mismatches / checked); with none, log10(checked), what the number checked can show.",
		}, []string{"entity"}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecache_check_rounds_total", Help: "Rounds of checks, by result: consistent, mismatch, error.",
		}, []string{"result"}),
		settle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecache_check_settle_seconds", Help: "How long the last round's mismatches waited before they were looked at again.",
		}),
		lastRound: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecache_check_last_round_timestamp_seconds", Help: "When the last round that completed ended, Unix time.",
		}),
		since: make(map[string]*Counts),
	}
	// Every series exists from the start, so that rates over them are right from the first round.
	for _, e := range entities {
		for _, v := range []*prometheus.CounterVec{m.checked, m.unreadable, m.inFlight, m.pastDeadline} {
			v.WithLabelValues(e)
		}
		for _, k := range kindLabels {
			m.mismatches.WithLabelValues(e, k)
		}
	}
	for _, r := range []string{"consistent", "mismatch", "error"} {
		m.rounds.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.checked, m.unreadable, m.inFlight, m.pastDeadline, m.mismatches, m.nines, m.rounds, m.settle, m.lastRound)
	}
	return m
}

// observe records a round's report, or its failure.
func (m *metrics) observe(rep Report, err error) {
	if err != nil {
		m.rounds.WithLabelValues("error").Inc()
		return
	}
	for _, er := range rep.Entities {
		e := er.Entity
		m.checked.WithLabelValues(e).Add(float64(er.Checked))
		m.unreadable.WithLabelValues(e).Add(float64(er.Unreadable))
		m.inFlight.WithLabelValues(e).Add(float64(er.InFlight))
		m.pastDeadline.WithLabelValues(e).Add(float64(er.PastSoftDeadline))
		m.mismatches.WithLabelValues(e, kindLabels[Stale]).Add(float64(er.Stale))
		m.mismatches.WithLabelValues(e, kindLabels[Ghost]).Add(float64(er.Ghost))
		m.mismatches.WithLabelValues(e, kindLabels[WronglyMissing]).Add(float64(er.WronglyMissing))
		since := m.since[e]
		if since == nil {
			since = &Counts{}
			m.since[e] = since
		}
		since.Add(er.Counts)
		if since.Checked > 0 {
			m.nines.WithLabelValues(e).Set(since.Nines())
		}
	}
	result := "consistent"
	if rep.Total.Mismatches() > 0 {
		result = "mismatch"
	}
	m.rounds.WithLabelValues(result).Inc()
	m.settle.Set(rep.Settle.Seconds())
	m.lastRound.Set(float64(time.Now().Unix()))
}
