// Command sidecache is a cache-aside sidecar for MySQL: it serves entity reads over HTTP from
// Redis and loads misses from MySQL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/cli"
	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/sidecar"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { cli.Main("sidecache", run) }

const usage = `sidecache: a cache-aside sidecar for MySQL

Usage:
  sidecache serve --config FILE     serve entity reads over HTTP
  sidecache preload --config FILE --entity NAME [--ids FILE] [--rate N] [--batch N]
                                    warm the cache; with no --ids, the whole table and the Bloom filter
  sidecache check --config FILE [--entity E] [--sample N | --all] [--rate R] [--every D]
                                    compare the cache with MySQL and report consistency in nines
  sidecache demo NAME [--out DIR]   run a fault-injection demo (NAME or all) on its own MariaDB and
                                    Redis, the protection off and on, and write DIR/NAME.html
  sidecache version                 print the version
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", cli.ErrUsage)
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "preload":
		return preload(ctx, args[1:], stdout, stderr)
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(args[1:])
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "sidecache %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", cli.ErrUsage, args[0])
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	if *path == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: serve takes --config FILE and nothing else", cli.ErrUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if err := cfg.CheckServe(); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	log := newLogger(cfg.Log, stderr)
	// go-redis logs pool dial failures through a process-wide logger; during an outage our own
	// rate-limited warnings say it once a second, so its lines go to debug.
	redis.SetLogger(redisLogger{log})
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sc, err := sidecar.New(ctx, sidecar.Options{Config: cfg, Logger: log, Registry: reg, Version: version})
	if err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	defer sc.Close()
	return sc.Run(ctx)
}

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, args ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, args...), "component", "go-redis")
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
