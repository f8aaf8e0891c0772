package demo

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Recorder collects what one run of a scenario did, in buckets of time: the requests the
// demo's clients sent and what came back, and the SELECTs MySQL itself counted (Com_select),
// never the sidecars' own counters.
type Recorder struct {
	label  string
	every  time.Duration
	db     *sql.DB
	live   io.Writer
	start  time.Time
	mu     sync.Mutex
	spans  []*span
	extras []Extra
}

// span is one bucket of time.
type span struct {
	requests, hits, errors, stale int
	latencies                     []time.Duration
	queries                       float64
}

// Extra is a figure a scenario adds to the report's summary, such as stale rows left after
// the writes settled.
type Extra struct {
	Name  string
	Value string
}

func newRecorder(label string, every time.Duration, db *sql.DB, live io.Writer) *Recorder {
	return &Recorder{label: label, every: every, db: db, live: live}
}

// at returns the bucket of now, growing the list; r.mu is held.
func (r *Recorder) at(now time.Time) *span {
	i := max(int(now.Sub(r.start)/r.every), 0)
	for len(r.spans) <= i {
		r.spans = append(r.spans, &span{})
	}
	return r.spans[i]
}

// Outcome is what one request got.
type Outcome struct {
	Latency time.Duration
	Hit     bool // answered from the cache (X-Cache: hit or stale)
	Err     bool // a failure or a 5xx
	Stale   bool // a value older than one the writers had committed before the request
}

// Observe records one request.
func (r *Recorder) Observe(o Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.at(time.Now())
	s.requests++
	if o.Hit {
		s.hits++
	}
	if o.Err {
		s.errors++
	}
	if o.Stale {
		s.stale++
	}
	s.latencies = append(s.latencies, o.Latency)
}

// AddExtra adds a figure to the run's summary.
func (r *Recorder) AddExtra(name, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.extras = append(r.extras, Extra{Name: name, Value: fmt.Sprintf(format, args...)})
}

// run starts the clock, polls MySQL's Com_select and prints the live view every bucket until
// ctx ends; the returned function stops it and waits.
func (r *Recorder) run(ctx context.Context) (stop func()) {
	last, _ := comSelect(ctx, r.db) // before the load starts, so that its first query counts
	r.start = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				// What MySQL counted since the last poll belongs to the last bucket.
				if n, err := comSelect(context.Background(), r.db); err == nil {
					r.mu.Lock()
					r.at(time.Now().Add(-time.Millisecond)).queries += n - last
					r.mu.Unlock()
				}
				return
			case now := <-t.C:
				n, err := comSelect(ctx, r.db)
				if err != nil {
					continue
				}
				r.mu.Lock()
				// The queries counted since the last poll happened in the bucket that just ended.
				r.at(now.Add(-r.every / 2)).queries += n - last
				r.mu.Unlock()
				last = n
				r.printLive(now)
			}
		}
	}()
	return func() { cancel(); <-done }
}

func comSelect(ctx context.Context, db *sql.DB) (float64, error) {
	var name string
	var n float64
	err := db.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Com_select'").Scan(&name, &n)
	return n, err
}

// printLive writes one line for the bucket that just ended.
func (r *Recorder) printLive(now time.Time) {
	if r.live == nil {
		return
	}
	r.mu.Lock()
	i := int(now.Add(-r.every/2).Sub(r.start) / r.every)
	var s span
	if i >= 0 && i < len(r.spans) {
		s = *r.spans[i]
		s.latencies = slices.Clone(s.latencies)
	}
	r.mu.Unlock()
	sec := r.every.Seconds()
	fmt.Fprintf(r.live, "  %-22s %5.1fs  %7.0f req/s  hit %5.1f%%  p50 %8s  p99 %8s  MySQL %6.0f SELECT/s  errors %4d  stale %4d\n",
		r.label, now.Sub(r.start).Seconds(), float64(s.requests)/sec, pct(s.hits, s.requests),
		quantile(s.latencies, 0.5).Round(10*time.Microsecond), quantile(s.latencies, 0.99).Round(10*time.Microsecond),
		s.queries/sec, s.errors, s.stale)
}

func pct(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// quantile sorts ds in place and returns its q-quantile, 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(int(q*float64(len(ds))), len(ds)-1)]
}

// Series is a run's figures over time, one point per bucket, and its totals.
type Series struct {
	Label                               string
	Seconds                             []float64 // each bucket's end, from the start
	QueriesPerSec, HitPct, P50ms, P99ms []float64
	ErrorsPerSec, StalePerSec           []float64
	Requests, Hits, Errors, Stale       int
	Queries                             float64
	P50, P99                            time.Duration
	Extras                              []Extra
}

// series summarises what was recorded.
func (r *Recorder) series() Series {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := Series{Label: r.label, Extras: r.extras}
	sec := r.every.Seconds()
	var all []time.Duration
	for i, s := range r.spans {
		out.Seconds = append(out.Seconds, float64(i+1)*sec)
		out.QueriesPerSec = append(out.QueriesPerSec, s.queries/sec)
		out.HitPct = append(out.HitPct, pct(s.hits, s.requests))
		out.P50ms = append(out.P50ms, ms(quantile(s.latencies, 0.5)))
		out.P99ms = append(out.P99ms, ms(quantile(s.latencies, 0.99)))
		out.ErrorsPerSec = append(out.ErrorsPerSec, float64(s.errors)/sec)
		out.StalePerSec = append(out.StalePerSec, float64(s.stale)/sec)
		out.Requests += s.requests
		out.Hits += s.hits
		out.Errors += s.errors
		out.Stale += s.stale
		out.Queries += s.queries
		all = append(all, s.latencies...)
	}
	out.P50, out.P99 = quantile(all, 0.5), quantile(all, 0.99)
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
