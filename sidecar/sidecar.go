// Package sidecar wires sidecache together: it opens MySQL and Redis, checks the configured
// entities against the live schema, serves the HTTP API and stops gracefully.
package sidecar

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	mysqldrv "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/cdc"
	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/faults"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/lease"
	"github.com/sidecache/sidecache/readthrough"
)

// Options configure New. Config is required.
type Options struct {
	Config *config.Config
	// Logger; nil: slog.Default().
	Logger *slog.Logger
	// Registry receives every metric and is served at /metrics. Nil: a new registry.
	Registry *prometheus.Registry
	// Version is reported in sidecache_build_info. Default "dev".
	Version string
}

// Sidecar is a configured, connected sidecache.
type Sidecar struct {
	cfg      *config.Config
	log      *slog.Logger
	db       *sql.DB
	redis    redis.UniversalClient
	source   *mysqlsource.Source
	reader   *readthrough.Reader
	leases   *lease.Leases
	filters  *bloom.Filters // nil when no entity has a filter
	inval    *invalidation.Invalidator
	tail     *cdc.Tail           // nil unless cdc.enabled
	rebuilds *rebuilds           // Bloom filter rebuilds the binlog tail's leader runs
	kafka    *invalidation.Kafka // nil unless kafka.brokers
	faults   *faults.Faults      // nil unless configured
	cdcDB    *sql.DB
	handler  http.Handler
}

// New connects to MySQL, checks every entity against its schema, and prepares the read path.
// Redis need not be up yet: /readyz reports it and requests answer 503 until it is.
func New(ctx context.Context, opts Options) (*Sidecar, error) {
	cfg := opts.Config
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	anyBloom := false
	for _, e := range cfg.Entities {
		if e.Bloom.Enabled {
			anyBloom = true
			if !cfg.CDC.Enabled {
				log.Warn("bloom: without the binlog tail (cdc.enabled) nothing adds rows inserted after the last "+
					"`sidecache preload`; such rows are answered 404 until the next preload", "entity", e.Name)
			}
		}
	}

	db, schema, err := mysqlsource.Open(cfg.MySQL)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("mysql: cannot connect: %w", err)
	}
	source, err := mysqlsource.New(pctx, db, schema, cfg.Entities, cfg.MySQL.QueryTimeout.D())
	if err != nil {
		db.Close()
		return nil, err
	}

	rc := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:         cfg.Redis.Addrs,
		IsClusterMode: len(cfg.Redis.Addrs) > 1,
		Username:      cfg.Redis.Username,
		Password:      cfg.Redis.Password,
		DialTimeout:   cfg.Redis.Timeout.D(),
		ReadTimeout:   cfg.Redis.Timeout.D(),
		WriteTimeout:  cfg.Redis.Timeout.D(),
		PoolSize:      cfg.Redis.PoolSize,
		MaxRetries:    1,
	})
	var inject *faults.Faults
	if cfg.Faults.Enabled() {
		inject = faults.New(cfg.Faults.DeleteFailureRate, cfg.Faults.DeleteLatency.D(), reg)
		rc.AddHook(inject.Hook())
		log.Warn("fault injection is on", "delete_failure_rate", cfg.Faults.DeleteFailureRate,
			"delete_latency", cfg.Faults.DeleteLatency.D().String(), "admin_listen", cfg.Faults.AdminListen)
	}

	entities := make([]readthrough.Entity, 0, len(cfg.Entities))
	names := make([]string, 0, len(cfg.Entities))
	for _, ce := range cfg.Entities {
		se := source.Entity(ce.Name)
		params, err := bloom.Size(ce.Bloom.ExpectedItems, ce.Bloom.FPRate)
		if err != nil {
			rc.Close()
			source.Close()
			db.Close()
			return nil, fmt.Errorf("%w: entity %q: bloom: %v", config.ErrInvalid, ce.Name, err)
		}
		entities = append(entities, readthrough.Entity{
			Name: ce.Name, Key: se.Key, TTL: ce.TTL.D(), NullTTL: ce.NullTTL.D(), Jitter: *ce.TTLJitter,
			Hot: ce.Hot, StaleTTL: ce.StaleTTL.D(), Bloom: ce.Bloom.Enabled, BloomParams: params,
		})
		names = append(names, ce.Name)
		log.Info("entity ready", "entity", ce.Name, "table", se.Table, "key", se.KeyName, "columns", len(se.Columns))
		for _, c := range se.Cascades {
			log.Warn("foreign-key cascade: the server changes this table's rows through it without binlog row events, "+
				"so those changes are not invalidated; see the README on foreign keys",
				"entity", ce.Name, "table", se.Table, "constraint", c.Constraint, "parent", c.Parent,
				"on_delete", c.OnDelete, "on_update", c.OnUpdate)
		}
	}
	s := &Sidecar{cfg: cfg, log: log, db: db, redis: rc, source: source, faults: inject}
	// Preloads always warm under leases; the read path uses them unless turned off.
	s.leases = lease.New(rc, cfg.Lease.TTL.D())
	var leases *lease.Leases
	if *cfg.Lease.Enabled {
		leases = s.leases
	}
	if anyBloom {
		s.filters = bloom.New(rc, cfg.Redis.KeyPrefix)
		reg.MustRegister(&bloomCollector{filters: s.filters, cfg: cfg})
	}
	fallback := readthrough.FallbackLoad
	if cfg.Lease.Fallback == "unavailable" {
		fallback = readthrough.FallbackUnavailable
	}
	var covered func(string) bool
	if cfg.CDC.Enabled {
		// Set by startCDC below, before any request is served.
		covered = func(entity string) bool { return s.tail.Covered(entity) }
	}
	s.reader = readthrough.New(readthrough.Options{
		Cache:       readthrough.NewRedisCache(rc),
		Source:      source,
		Entities:    entities,
		KeyPrefix:   cfg.Redis.KeyPrefix,
		MaxIDs:      cfg.Limits.MaxIDs,
		MaxIDLength: cfg.Limits.MaxIDLength,
		LoadTimeout: cfg.Limits.RequestTimeout.D(),
		Filters:     s.filters,
		Leases:      leases,
		LeaseWait:   cfg.Lease.Wait.D(),
		Fallback:    fallback,

		FallbackConcurrency: cfg.Lease.FallbackConcurrency,
		Covered:             covered,
		BypassConcurrency:   cfg.MySQL.MaxOpenConns,
		Metrics:             readthrough.NewMetrics(reg),
		Logger:              log,
	})
	s.rebuilds = newRebuilds(s, reg)
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sidecache_build_info", Help: "Always 1; the version label says which build runs.",
	}, []string{"version"})
	reg.MustRegister(buildInfo)
	buildInfo.WithLabelValues(version).Set(1)

	var retrier invalidation.Retrier
	deleter := invalidation.NewRedis(rc)
	if len(cfg.Kafka.Brokers) > 0 {
		s.kafka = invalidation.NewKafka(invalidation.KafkaOptions{
			Brokers: cfg.Kafka.Brokers, Topic: cfg.Kafka.RetryTopic, DLQTopic: cfg.Kafka.DLQTopic, Group: cfg.Kafka.Group,
			MaxAttempts: cfg.Kafka.MaxAttempts, Backoff: cfg.Kafka.Backoff.D(), MaxBackoff: cfg.Kafka.MaxBackoff.D(),
			QueueSize: cfg.Kafka.QueueSize, Deleter: deleter, Registerer: reg, Logger: log,
		})
		retrier = s.kafka
	}
	io := invalidation.Options{
		Deleter: deleter, Dropper: deleter, Prefix: cfg.Redis.KeyPrefix, Retrier: retrier,
		Delay: cfg.CDC.DoubleDeleteDelay.D(), Registerer: reg, Logger: log,
	}
	if s.filters != nil {
		io.Filters, io.OnReset = s.filters, s.rebuilds.request
	}
	s.inval = invalidation.New(io)
	if cfg.CDC.Enabled {
		if err := s.startCDC(pctx, reg, schema); err != nil {
			s.Close()
			return nil, err
		}
	}
	a := &api{
		inval:   s,
		reader:  s.reader,
		log:     log,
		metrics: newHTTPMetrics(reg, names),
		ready:   s.Ready,
		status:  s.Status,
	}
	s.handler = a.routes(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return s, nil
}

// Handler returns the HTTP API.
func (s *Sidecar) Handler() http.Handler { return s.handler }

// Invalidate deletes an entity's key now and again after the double-delete delay; for an
// entity with a Bloom filter it first adds the id, so a row just inserted is not held absent.
// It returns nil only once the first delete is done, or its retry is acknowledged by Kafka:
// an application that goes on after a success must not find the old row.
func (s *Sidecar) Invalidate(ctx context.Context, entity, raw string) error {
	id, err := s.reader.ParseID(entity, raw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Limits.RequestTimeout.D())
	defer cancel()
	change := invalidation.Change{Keys: []string{keys.Value(s.cfg.Redis.KeyPrefix, entity, id)}}
	if s.cfg.Entity(entity).Bloom.Enabled {
		change.Adds = map[string][]string{entity: {id}}
	}
	first, _, err := s.inval.Submit(ctx, change)
	if err != nil {
		return fmt.Errorf("%w: %w", errDeleteFailed, err)
	}
	select {
	case <-first:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: the delete failed and its retry was not acknowledged: %w", errDeleteFailed, ctx.Err())
	}
}

// ParseID validates raw as an id of entity and returns its canonical form.
func (s *Sidecar) ParseID(entity, raw string) (string, error) { return s.reader.ParseID(entity, raw) }

// Preload warms entity's cache and rebuilds its Bloom filter; see readthrough.Reader.Preload.
// Scanner and Leases are filled in.
//
// With cdc.enabled it first waits (up to a minute) until a binlog tail covers the entity: rows
// warmed before could outlive changes no invalidation would ever delete.
func (s *Sidecar) Preload(ctx context.Context, opts readthrough.PreloadOptions) (readthrough.PreloadStats, error) {
	opts.Scanner, opts.Leases = s.source, s.leases
	if s.tail != nil {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := s.tail.WaitCovered(wctx, opts.Entity)
		cancel()
		if err != nil {
			return readthrough.PreloadStats{Entity: opts.Entity}, fmt.Errorf("%w (start `sidecache serve` with cdc.enabled first: "+
				"rows warmed while no tail covers the entity could stay stale)", err)
		}
	}
	return s.reader.Preload(ctx, opts)
}

// errRedisDown marks a readiness failure of Redis.
var errRedisDown = errors.New("redis is unavailable")

// Ready reports whether MySQL and Redis both answer.
func (s *Sidecar) Ready(ctx context.Context) error {
	if err := s.source.Ping(ctx); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	if err := s.redis.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: %w", errRedisDown, err)
	}
	return nil
}

// Run serves the API on the configured address until ctx ends, then drains in-flight requests
// for up to shutdown_timeout. A clean stop returns nil.
func (s *Sidecar) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a listener the caller opened.
func (s *Sidecar) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      s.cfg.Limits.RequestTimeout.D() + 5*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	var adminLn net.Listener
	if s.faults != nil && s.cfg.Faults.AdminListen != "" {
		var err error
		if adminLn, err = net.Listen("tcp", s.cfg.Faults.AdminListen); err != nil {
			return fmt.Errorf("faults.admin_listen: %w", err)
		}
	}
	// The invalidator's second deletes, the binlog tail, the Kafka retry path and the fault
	// admin endpoint run beside the server and stop with it.
	wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	var workers errgroup.Group
	workers.Go(func() error { return s.inval.Run(wctx) })
	if s.tail != nil {
		workers.Go(func() error { return s.tail.Run(wctx) })
		workers.Go(func() error { return s.rebuilds.run(wctx) })
	}
	workers.Go(func() error { s.checkEvictionPolicy(wctx); return nil })
	if s.kafka != nil {
		workers.Go(func() error { return s.kafka.RunProducer(wctx) })
		workers.Go(func() error { return s.kafka.RunWorker(wctx) })
	}
	if adminLn != nil {
		aln := adminLn
		admin := &http.Server{Handler: s.faults.Handler(), ReadHeaderTimeout: 5 * time.Second}
		workers.Go(func() error { admin.Serve(aln); return nil })
		workers.Go(func() error { <-wctx.Done(); return admin.Close() })
		s.log.Info("fault injection admin endpoint", "addr", aln.Addr().String())
	}
	defer func() {
		stopWorkers()
		workers.Wait()
	}()

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("serving", "addr", ln.Addr().String(), "entities", len(s.cfg.Entities))
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: draining in-flight requests", "timeout", s.cfg.ShutdownTimeout.D().String())
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout.D())
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	s.log.Info("stopped")
	return nil
}

// Close waits for background refreshes and releases connections.
func (s *Sidecar) Close() error {
	s.reader.Close()
	s.source.Close()
	var cdcErr error
	if s.cdcDB != nil {
		cdcErr = s.cdcDB.Close()
	}
	return errors.Join(s.redis.Close(), s.db.Close(), cdcErr)
}

// startCDC prepares the binlog tail: the tables of the configured entities, a connection for
// its checks, and the checks themselves.
func (s *Sidecar) startCDC(ctx context.Context, reg prometheus.Registerer, schema string) error {
	cfg := s.cfg
	dc, err := mysqldrv.ParseDSN(cfg.CDC.DSN)
	if err != nil {
		return fmt.Errorf("%w: cdc.dsn: %v", config.ErrInvalid, err)
	}
	host, portStr, err := net.SplitHostPort(dc.Addr)
	if err != nil {
		return fmt.Errorf("%w: cdc.dsn: %v", config.ErrInvalid, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return fmt.Errorf("%w: cdc.dsn: port %q", config.ErrInvalid, portStr)
	}
	if s.cdcDB, err = sql.Open("mysql", cfg.CDC.DSN); err != nil {
		return err
	}
	tables := map[string][]cdc.Target{}
	for _, ce := range cfg.Entities {
		se := s.source.Entity(ce.Name)
		tables[se.Table] = append(tables[se.Table], cdc.Target{
			Entity: ce.Name, KeyColumn: se.KeyName, KeyIndex: se.KeyOrdinal,
			Unsigned: se.Key.Kind == mysqlsource.KeyUint, Bits: se.Key.Bits, Bloom: ce.Bloom.Enabled,
		})
	}
	s.tail = cdc.New(cdc.Options{
		Flavor: cfg.CDC.Flavor, ServerID: cfg.CDC.ServerID, Host: host, Port: uint16(port),
		User: dc.User, Password: dc.Passwd, Schema: schema, Tables: tables, Prefix: cfg.Redis.KeyPrefix,
		DB: s.cdcDB, Redis: s.redis, Invalidator: s.inval,
		OnBinlogGone: cfg.CDC.OnBinlogGone, LeaderTTL: cfg.CDC.LeaderTTL.D(), Registerer: reg, Logger: s.log,
	})
	return s.tail.Check(ctx)
}
