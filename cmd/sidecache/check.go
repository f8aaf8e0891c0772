package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/sidecache/sidecache/check"
	"github.com/sidecache/sidecache/internal/cli"
	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/sidecar"
)

// defaultMetricsListen is where `check --every` serves /metrics: loopback, next to the
// sidecar's own ports.
const defaultMetricsListen = "127.0.0.1:9465"

// checkedNames returns what --entity name checks: an entity and its lookups, or one lookup
// (keys.Lookup's ENTITY/LOOKUP); nil if it names neither. An empty name names everything.
func checkedNames(cfg *config.Config, name string) []string {
	var names []string
	for _, e := range cfg.Entities {
		if name == "" || name == e.Name {
			names = append(names, e.Name)
		}
		for _, l := range e.Lookups {
			if l := keys.Lookup(e.Name, l.Name); name == "" || name == e.Name || name == l {
				names = append(names, l)
			}
		}
	}
	return names
}

// runCheck is `sidecache check`: the cache against MySQL, once or every so often.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	entity := fs.String("entity", "", "entity to check with its lookups, or one lookup as `ENTITY/LOOKUP` (default: every configured entity and lookup)")
	sample := fs.Int("sample", check.DefaultSample, "ids to check per entity and round: up to half from the cache's keys, the rest from random ranges of the table's")
	all := fs.Bool("all", false, "check every row of each table and every key of each entity in the cache instead of a sample")
	rate := fs.Float64("rate", check.DefaultRate, "most ids read per second, each one Redis GET and one row from MySQL")
	every := fs.Duration("every", 0, "run until stopped, a round every `D`, and serve Prometheus metrics (default: one round, then exit)")
	settle := fs.Duration("settle", 0, "look at a mismatch again after `D` (default: cdc.double_delete_delay, plus the binlog tail's lag and 1s, or 2s when no tail reports it)")
	metricsListen := fs.String("metrics-listen", defaultMetricsListen, "with --every, the `address` of /metrics")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var bad string
	switch {
	case *path == "" || fs.NArg() > 0:
		bad = "check takes --config FILE [--entity E] [--sample N | --all] [--rate R] [--every D]"
	case set["sample"] && *all:
		bad = "--sample and --all exclude each other"
	case *sample < 1 || *rate <= 0:
		bad = "--sample and --rate must be positive"
	case *every < 0 || *settle < 0:
		bad = "--every and --settle may not be negative"
	case set["metrics-listen"] && *every == 0:
		bad = "--metrics-listen goes with --every"
	}
	if bad != "" {
		fs.Usage()
		return fmt.Errorf("%w: %s", cli.ErrUsage, bad)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	round := check.Round{Sample: *sample, All: *all}
	if *entity != "" {
		if round.Entities = checkedNames(cfg, *entity); round.Entities == nil {
			return fmt.Errorf("%s: %w %q (configured: %s)", *path, check.ErrUnknownEntity, *entity, strings.Join(checkedNames(cfg, ""), ", "))
		}
	}
	log := newLogger(cfg.Log, stderr)
	redis.SetLogger(redisLogger{log}) // as in serve: an outage is reported once, by the round that fails
	sc, err := sidecar.New(ctx, sidecar.Options{Config: cfg, Logger: log, Registry: prometheus.NewRegistry(), Version: version})
	if err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	defer sc.Close()
	reg := prometheus.NewRegistry()
	ck := sc.Checker(check.Options{Settle: *settle, Rate: *rate, Registerer: reg})
	explain := func(err error) error {
		if errors.Is(err, check.ErrCacheUnavailable) {
			return fmt.Errorf("%s: redis.addrs %s: %w", *path, strings.Join(cfg.Redis.Addrs, ","), err)
		}
		return fmt.Errorf("%s: %w", *path, err)
	}
	if *every == 0 {
		rep, err := ck.Check(ctx, round)
		if err != nil {
			if ctx.Err() != nil {
				return errors.New("interrupted before the round ended")
			}
			return explain(err)
		}
		if err := rep.WriteTable(stdout); err != nil {
			return err
		}
		if n := rep.Total.Mismatches(); n > 0 {
			return fmt.Errorf("lasting mismatches between the cache and MySQL: %d", n)
		}
		return nil
	}
	return checkEvery(ctx, ck, round, *every, *metricsListen, reg, stdout, func(n int, err error) {
		fmt.Fprintf(stderr, "%s round %d: %v\n", time.Now().Format(time.RFC3339), n, explain(err))
	})
}

// checkEvery runs a round every `every` until ctx ends, writing a line per round, and serves
// the checker's metrics on listen meanwhile. A round that fails is reported to failed and the
// next one runs as planned: a monitor outlives an outage.
func checkEvery(ctx context.Context, ck *check.Checker, round check.Round, every time.Duration, listen string,
	reg *prometheus.Registry, stdout io.Writer, failed func(n int, err error)) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			srv.Shutdown(sctx)
			cancel()
		}()
		tick := time.NewTicker(every)
		defer tick.Stop()
		var since check.Counts
		for n := 1; ; n++ {
			rep, err := ck.Check(ctx, round)
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				failed(n, err)
			default:
				since.Add(rep.Total)
				line := fmt.Sprintf("%s round %d: %s; since start: %d checked, %s",
					time.Now().Format(time.RFC3339), n, rep.Summary(), since.Checked, since.Figure())
				if ex := rep.Examples(); ex != "" {
					line += "; lasting mismatches: " + ex
				}
				fmt.Fprintln(stdout, line)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
	})
	return g.Wait()
}
