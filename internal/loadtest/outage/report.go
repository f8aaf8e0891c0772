package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// report turns the samples into the figures the run is about.
type report struct {
	o                 options
	mode              string
	ev                events
	samples           []sample
	comSelect         []point // Com_select's value, about once a second
	writes, writeErrs int64

	// Set by traffic.
	p50, p99        time.Duration // of every answer during the outage
	outageServed    float64       // percentage of answers served during the outage
	maxSelect       int64         // Com_select per second, the highest during the outage
	overSeconds     int           // seconds of the outage over selectLimit
	recovered       time.Duration // from Redis back to the first second of 99% served
	recoveredAtAll  bool
	lastUnserved    time.Duration // from Redis back to the last answer not served; -1: none
	selectLimit     int64
	selectLimitText string
}

type phase struct {
	name     string
	from, to time.Duration
}

func (r *report) phases() []phase {
	down := "outage"
	if r.o.scenario == "sentinel" {
		down = "failover"
	}
	return []phase{{"before", 0, r.ev.down}, {down, r.ev.down, r.ev.back}, {"after", r.ev.back, r.ev.end}}
}

// in returns the samples sent in [from, to).
func (r *report) in(from, to time.Duration) []sample {
	i, _ := slices.BinarySearchFunc(r.samples, from, func(s sample, t time.Duration) int { return int(s.at - t) })
	j, _ := slices.BinarySearchFunc(r.samples, to, func(s sample, t time.Duration) int { return int(s.at - t) })
	return r.samples[i:j]
}

// statuses lists every status seen, in order; 0 (no answer) last.
func (r *report) statuses() []int16 {
	var st []int16
	for _, s := range r.samples {
		if !slices.Contains(st, s.status) {
			st = append(st, s.status)
		}
	}
	slices.SortFunc(st, func(a, b int16) int {
		if a == 0 || b == 0 {
			return int(b - a)
		}
		return int(a - b)
	})
	return st
}

func statusName(s int16) string {
	if s == 0 {
		return "noanswer"
	}
	return fmt.Sprint(s)
}

// traffic prints the run second by second, then by phase, and the outage's figures.
func (r *report) traffic() {
	o := r.o
	// Each sidecar's limiter lets max_db_rate through a second, and a tenth more in a burst.
	r.selectLimit = int64(o.sidecars * (o.maxDBRate + max(1, o.maxDBRate/10)))
	r.selectLimitText = fmt.Sprintf("%d/s, %d sidecars x 1.1 max_db_rate %d", r.selectLimit, o.sidecars, o.maxDBRate)
	if r.mode == "unavailable" {
		r.selectLimit, r.selectLimitText = 5, "5/s, next to none"
	}
	degraded := fmt.Sprintf("degraded.mode %s, max_db_rate %d", r.mode, o.maxDBRate)
	if o.noDegraded {
		degraded = "no degraded section (the sidecars' defaults)"
	}
	fmt.Printf("\nscenario %s: %d sidecars, %s; %d rows; %d readers at %d req/s (%.0f%% multi-gets of %d ids); %d writes/s\n",
		o.scenario, o.sidecars, degraded, o.rows, o.readers, o.rate, o.multi*100, multiIDs, o.writeRate)
	ph := r.phases()
	back := map[string]string{"sentinel": "the sentinels promoted the replica", "hang": "continued with its data"}[o.scenario]
	if back == "" {
		back = "restarted empty"
	}
	fmt.Printf("Redis away at %.1fs, back at %.1fs (%s), load ends at %.1fs; %d writes (%d failed)\n\n",
		r.ev.down.Seconds(), r.ev.back.Seconds(), back,
		r.ev.end.Seconds(), r.writes, r.writeErrs)

	statuses := r.statuses()
	rates := perSecond(r.comSelect)
	fmt.Printf("%-5s %7s", "sec", "req")
	for _, s := range statuses {
		fmt.Printf(" %8s", statusName(s))
	}
	fmt.Printf(" %7s %7s %10s\n", "bypass", "p99", "Com_sel/s")
	for sec := time.Duration(0); sec < r.ev.end; sec += time.Second {
		w := r.in(sec, sec+time.Second)
		fmt.Printf("%-5d %7d", int(sec.Seconds()), len(w))
		for _, s := range statuses {
			fmt.Printf(" %8d", count(w, func(x sample) bool { return x.status == s }))
		}
		_, p99 := percentiles(w)
		fmt.Printf(" %7d %7s %10s", count(w, func(x sample) bool { return cacheNames[x.cache] == "bypass" }), ms(p99), rateAt(rates, sec))
		if r.ev.down >= sec && r.ev.down < sec+time.Second {
			fmt.Print("  <- Redis away")
		}
		if r.ev.back >= sec && r.ev.back < sec+time.Second {
			fmt.Print("  <- Redis back")
		}
		fmt.Println()
	}

	fmt.Printf("\n%-9s %6s %8s", "phase", "secs", "req/s")
	for _, s := range statuses {
		fmt.Printf(" %10s", statusName(s)+"/s")
	}
	fmt.Printf(" %7s %7s %8s %12s\n", "p50", "p99", "bypass", "Com_sel/s max")
	for _, p := range ph {
		w := r.in(p.from, p.to)
		secs := (p.to - p.from).Seconds()
		fmt.Printf("%-9s %6.1f %8.0f", p.name, secs, float64(len(w))/secs)
		for _, s := range statuses {
			fmt.Printf(" %10.0f", float64(count(w, func(x sample) bool { return x.status == s }))/secs)
		}
		p50, p99 := percentiles(w)
		fmt.Printf(" %7s %7s %7.1f%% %12d\n", ms(p50), ms(p99), pct(count(w, func(x sample) bool { return cacheNames[x.cache] == "bypass" }), len(w)), maxRate(rates, p.from, p.to))
	}

	out := r.in(r.ev.down, r.ev.back)
	r.p50, r.p99 = percentiles(out)
	r.outageServed = pct(count(out, served), len(out))
	var slowest time.Duration
	for _, s := range out {
		slowest = max(slowest, s.lat)
	}
	fmt.Printf("\nduring the %s: %.1f%% of %d answers were served (200, or 404 for an id not inserted yet), %.1f%% 503; latency p50 %s, p99 %s (goal <= %s: %s), max %s\n",
		ph[1].name, r.outageServed, len(out), pct(count(out, func(x sample) bool { return x.status == 503 }), len(out)),
		ms(r.p50), ms(r.p99), ms(o.latency), met(r.p99 <= o.latency), ms(slowest))

	var during []string
	for _, p := range rates {
		if p.at >= r.ev.down && p.at < r.ev.back {
			during = append(during, fmt.Sprint(p.value))
			r.maxSelect = max(r.maxSelect, p.value)
			if p.value > r.selectLimit {
				r.overSeconds++
			}
		}
	}
	if len(during) == 0 {
		during = []string{"(no whole second)"}
	}
	fmt.Printf("MySQL Com_select per second during the %s: %s; max %d (goal <= %s: %s, %d second(s) over)\n",
		ph[1].name, strings.Join(during, " "), r.maxSelect, r.selectLimitText, met(r.overSeconds == 0), r.overSeconds)

	r.recovery()
	if r.recoveredAtAll {
		last := "none after it"
		if r.lastUnserved >= 0 {
			last = "the last was sent " + ms(r.lastUnserved) + " after it"
		}
		fmt.Printf("99%% of answers (over 1 s) were served again %s after Redis was back; of those not served, %s\n",
			ms(r.recovered), last)
	} else {
		fmt.Printf("99%% of answers (over 1 s) were never served in the %s after Redis was back\n", ms(r.ev.end-r.ev.back))
	}
}

// served is an answer an application can use: a row, or not_found for an id the writer had not
// inserted yet (the readers ask for a few of those on purpose).
func served(s sample) bool { return s.status == 200 || s.status == 404 }

// recovery finds, over windows of one second that start at Redis's return and later (in
// 10 ms steps), the first with at least 99% served, and the last answer not served.
func (r *report) recovery() {
	const step, window = 10 * time.Millisecond, time.Second
	for t := r.ev.back; t+window <= r.ev.end && !r.recoveredAtAll; t += step {
		w := r.in(t, t+window)
		if len(w) > 0 && pct(count(w, served), len(w)) >= 99 {
			r.recovered, r.recoveredAtAll = t-r.ev.back, true
		}
	}
	r.lastUnserved = -1
	for _, s := range r.in(r.ev.back, r.ev.end) {
		if !served(s) {
			r.lastUnserved = s.at - r.ev.back
		}
	}
}

// summary prints the one line a run ends with and reports whether it passed: the binlog tail
// caught up, no stale, ghost or wrongly missing row, and every id answered.
func (r *report) summary(settled time.Duration, caughtUp bool, v verdict) bool {
	ok := caughtUp && v.stale == 0 && v.missing == 0 && v.ghost == 0 && v.unanswered == 0
	settledText := "settled " + ms(settled) + " after the load"
	if !caughtUp {
		settledText = "the binlog tail did NOT catch up in " + ms(settled)
	}
	recovered := "never 99% served after Redis was back"
	if r.recoveredAtAll {
		recovered = fmt.Sprintf("99%% served %s after Redis was back", ms(r.recovered))
	}
	fmt.Printf("\noutage %s: %s; checked %d ids through each of %d sidecars (%s): %d stale, %d wrongly missing, %d ghosts, %d unanswered; %s: %.1f%% served, p99 %s (goal <= %s: %s), Com_select max %d/s (goal <= %s: %s); %s\n",
		r.o.scenario, map[bool]string{true: "PASS", false: "FAIL"}[ok], v.checked, v.sidecars, settledText,
		v.stale, v.missing, v.ghost, v.unanswered, r.phases()[1].name, r.outageServed, ms(r.p99), ms(r.o.latency), met(r.p99 <= r.o.latency),
		r.maxSelect, r.selectLimitText, met(r.overSeconds == 0), recovered)
	return ok
}

func count(w []sample, f func(sample) bool) int {
	n := 0
	for _, s := range w {
		if f(s) {
			n++
		}
	}
	return n
}

func pct(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

func percentiles(w []sample) (p50, p99 time.Duration) {
	if len(w) == 0 {
		return 0, 0
	}
	lat := make([]time.Duration, len(w))
	for i, s := range w {
		lat[i] = s.lat
	}
	slices.Sort(lat)
	return lat[len(lat)*50/100], lat[min(len(lat)*99/100, len(lat)-1)]
}

func rateAt(rates []point, sec time.Duration) string {
	for _, p := range rates {
		if p.at >= sec && p.at < sec+time.Second {
			return fmt.Sprint(p.value)
		}
	}
	return "-"
}

func maxRate(rates []point, from, to time.Duration) int64 {
	var m int64
	for _, p := range rates {
		if p.at >= from && p.at < to {
			m = max(m, p.value)
		}
	}
	return m
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}
