// Package demo runs the fault-injection demos behind `sidecache demo`: each starts a throwaway
// MariaDB and Redis, runs its scenario twice, with a protection off and then on, shows a live
// view while it runs, and writes a self-contained HTML report whose charts put the two runs
// side by side.
package demo

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

// Demo is one scenario, run once per variant: the protection off and on, or, for the write
// orders of the stale-data demo, each order in turn.
type Demo struct {
	Name    string // the command line's NAME and the report's file name
	Title   string
	Explain string // one paragraph: what the reader sees in the charts
	// Variants names each run, in order; the report's charts sit side by side in this order.
	Variants []Variant
	// Run runs the scenario once, as variant v. It starts its sidecars with env.StartSidecars
	// and records with env.Record.
	Run func(ctx context.Context, env *Env, v int) error
}

// Variant is one run of a demo.
type Variant struct {
	Short string // in the live view, the database's name and the chart's title: "off", "on"
	Label string // what the run does
}

// offOn is the variants of a demo that turns one protection off and on.
func offOn(off, on string) []Variant {
	return []Variant{{Short: "off", Label: off}, {Short: "on", Label: on}}
}

// All lists the demos in the order `all` runs them.
var All = []*Demo{breakdown, penetration, avalanche, redisOutage, stale, failedDeletes}

// Find returns the demo called name.
func Find(name string) *Demo {
	for _, d := range All {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Names lists the demos' names.
func Names() []string {
	var out []string
	for _, d := range All {
		out = append(out, d.Name)
	}
	return out
}

// Options configures Run.
type Options struct {
	Demos   []*Demo
	OutDir  string
	Bin     string    // the sidecache binary the sidecars run
	Version string    // printed in the reports
	Live    io.Writer // the live view and progress; nil: silent
	// Bucket is the charts' resolution. Default 500ms.
	Bucket time.Duration
}

// Report is what one demo wrote and measured.
type Report struct {
	Demo *Demo
	Path string   // the HTML report
	Runs []Series // one per variant
}

// Extra returns the figure a run added under name, "" when it added none.
func (s Series) Extra(name string) string {
	for _, e := range s.Extras {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// Run runs each demo's variants, on a MariaDB and Redis started for each demo, and writes
// OutDir/NAME.html for each.
func Run(ctx context.Context, o Options) ([]Report, error) {
	if o.Bucket <= 0 {
		o.Bucket = 500 * time.Millisecond
	}
	if o.Live == nil {
		o.Live = io.Discard
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(o.Live, format+"\n", args...) }
	var reports []Report
	for _, d := range o.Demos {
		logf("\n%s: %s", d.Name, d.Title)
		runs, err := runDemo(ctx, o, d, logf)
		if err != nil {
			return reports, err
		}
		path := filepath.Join(o.OutDir, d.Name+".html")
		f, err := os.Create(path)
		if err != nil {
			return reports, err
		}
		err = writeReport(f, d, runs, time.Now().UTC().Format(time.RFC3339), o.Version)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return reports, err
		}
		for v, s := range runs {
			logf("%s %s: %d requests, %.0f MySQL SELECTs, %d errors, %d stale reads%s",
				d.Name, d.Variants[v].Short, s.Requests, s.Queries, s.Errors, s.Stale, extras(s.Extras))
		}
		logf("wrote %s", path)
		reports = append(reports, Report{Demo: d, Path: path, Runs: runs})
	}
	return reports, nil
}

// runDemo runs each of d's variants on a MariaDB and Redis of the demo's own.
func runDemo(ctx context.Context, o Options, d *Demo, logf func(string, ...any)) ([]Series, error) {
	logf("starting MariaDB and Redis ...")
	stack, err := devstack.Start(ctx, devstack.Options{})
	if err != nil {
		return nil, err
	}
	defer stack.Stop()
	runs := make([]Series, len(d.Variants))
	for v := range d.Variants {
		if runs[v], err = runOnce(ctx, stack, o, d, v, logf); err != nil {
			return nil, fmt.Errorf("demo %s (%s): %w", d.Name, d.Variants[v].Short, err)
		}
	}
	return runs, nil
}

// slug makes s a database name and key prefix: lower-case letters, digits and single '_'.
func slug(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case !strings.HasSuffix(b.String(), "_"):
			b.WriteByte('_')
		}
	}
	return strings.TrimSuffix(b.String(), "_")
}

func extras(es []Extra) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "; %s: %s", e.Name, e.Value)
	}
	return b.String()
}

func runOnce(ctx context.Context, stack *devstack.Stack, o Options, d *Demo, v int, logf func(string, ...any)) (Series, error) {
	short := d.Variants[v].Short
	label := d.Name + " " + short
	db := slug("demo_" + d.Name + "_" + short)
	dsn, err := stack.CreateDatabase(ctx, db)
	if err != nil {
		return Series{}, err
	}
	root, err := stack.Root(db)
	if err != nil {
		return Series{}, err
	}
	defer root.Close()
	// Writers and pollers share it: keep their connections, rather than open one a statement
	// and leave thousands of sockets in TIME_WAIT.
	root.SetMaxIdleConns(64)
	rc := redis.NewClient(&redis.Options{Addr: stack.RedisAddr})
	defer rc.Close()
	if err := rc.FlushAll(ctx).Err(); err != nil {
		return Series{}, err
	}
	env := &Env{Stack: stack, Bin: o.Bin, DB: db, DSN: dsn, Root: root, Redis: rc, Prefix: db + ":",
		rec: newRecorder(label, o.Bucket, root, o.Live)}
	defer env.stopSidecars()
	logf("%s: %s", label, d.Variants[v].Label)
	if err := d.Run(ctx, env, v); err != nil {
		return Series{}, err
	}
	if !env.recorded {
		return Series{}, errors.New("the scenario recorded nothing")
	}
	return env.rec.series(), nil
}

// Env is what a scenario runs on: its own database and key prefix on the shared servers.
type Env struct {
	Stack  *devstack.Stack
	Bin    string
	DB     string // the database, also the name and password of its user
	DSN    string // that user's DSN
	Root   *sql.DB
	Redis  *redis.Client
	Prefix string // the sidecars' redis.key_prefix

	rec      *Recorder
	recorded bool
	sidecars []*devstack.Sidecar
}

// Exec runs statements as root on the run's database.
func (e *Env) Exec(ctx context.Context, stmts ...string) error {
	for _, q := range stmts {
		if _, err := e.Root.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// Config is the start of a sidecar's config for the run: listen, MySQL, Redis and quiet logs.
// A scenario appends its own sections.
func (e *Env) Config(listen string) string {
	return fmt.Sprintf("listen: %q\nlog: {level: warn}\nmysql: {dsn: %q}\nredis: {addrs: [%q], key_prefix: %q}\n",
		listen, e.DSN, e.Stack.RedisAddr, e.Prefix)
}

// StartSidecars starts n `sidecache serve` processes on rest, the config after Env.Config's
// part, and returns their addresses.
func (e *Env) StartSidecars(ctx context.Context, n int, rest string) ([]string, error) {
	var addrs []string
	for i := range n {
		sc, err := e.Stack.StartSidecar(ctx, e.Bin, fmt.Sprintf("%s-%d", e.DB, i), func(listen string) string {
			return e.Config(listen) + rest
		})
		if err != nil {
			return nil, err
		}
		e.sidecars = append(e.sidecars, sc)
		addrs = append(addrs, sc.Addr)
	}
	return addrs, nil
}

func (e *Env) stopSidecars() {
	for _, sc := range e.sidecars {
		sc.Stop()
	}
}

// Record runs load with the recorder's clock running: what the charts show.
func (e *Env) Record(ctx context.Context, load func(ctx context.Context, rec *Recorder) error) error {
	stop := e.rec.run(ctx)
	err := load(ctx, e.rec)
	stop()
	e.recorded = true
	return err
}

// Read is one request a reader sends: a URL, and, when the scenario knows what is current,
// a check that says whether the body is stale.
type Read struct {
	URL   string
	Stale func(body []byte) bool
}

// Readers runs n clients for d, each sending next's requests one after another with pause
// between them, and records every answer.
func Readers(ctx context.Context, rec *Recorder, n int, d, pause time.Duration, next func(client int) Read) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				rec.Observe(get(ctx, client, next(i)))
				if pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(pause):
					}
				}
			}
		})
	}
	wg.Wait()
}

func get(ctx context.Context, client *http.Client, r Read) Outcome {
	start := time.Now()
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, r.URL, nil)
	if err != nil {
		return Outcome{Err: true}
	}
	res, err := client.Do(req)
	if err != nil {
		return Outcome{Latency: time.Since(start), Err: true}
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	o := Outcome{Latency: time.Since(start), Err: err != nil || res.StatusCode >= 500}
	switch res.Header.Get("X-Cache") {
	case "hit", "stale", "negative":
		o.Hit = true
	}
	if !o.Err && res.StatusCode == http.StatusOK && r.Stale != nil {
		o.Stale = r.Stale(body)
	}
	return o
}
