// Package sidecar wires sidecache together: it opens MySQL and Redis, checks the configured
// entities against the live schema, serves the HTTP API and stops gracefully.
package sidecar

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql" // the cdc checks' connection
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

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

func (o *Options) init() {
	o.Logger = cmp.Or(o.Logger, slog.Default())
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	o.Version = cmp.Or(o.Version, "dev")
}

// Sidecar is a configured, connected sidecache.
type Sidecar struct {
	cfg      *config.Config
	log      *slog.Logger
	source   *mysqlsource.Source // reads the primary: schema checks, the consistency check
	loads    *mysqlsource.Source // what loads and scans read: source, or the replica's
	replica  *replica            // nil unless mysql.replica_dsn
	redis    redis.UniversalClient
	faults   *faults.Faults // nil unless configured
	breaker  *gobreaker.CircuitBreaker[struct{}]
	leases   *lease.Leases
	filters  *bloom.Filters // nil when no entity has a filter
	reader   *readthrough.Reader
	inval    *invalidation.Invalidator
	kafka    *invalidation.Kafka      // nil unless kafka.brokers
	tail     *cdc.Tail                // nil unless cdc.enabled
	tailRef  atomic.Pointer[cdc.Tail] // tail, for the circuit breaker's callback
	rebuilds *rebuilds                // Bloom filter rebuilds the binlog tail's leader runs
	handler  http.Handler             // the data API, and the admin endpoints unless admin_listen
	admin    http.Handler             // the admin endpoints; the same as handler unless admin_listen
	cleanups []func() error           // run by Close, last first
}

// New connects to MySQL, checks every entity against its schema, and prepares the read path,
// the invalidation path and, with cdc.enabled, the binlog tail. Redis need not be up yet:
// /readyz reports it and requests answer 503 until it is.
func New(ctx context.Context, opts Options) (_ *Sidecar, err error) {
	opts.init()
	cfg, reg := opts.Config, opts.Registry
	s := &Sidecar{cfg: cfg, log: opts.Logger}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.warnBloomWithoutCDC()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second) // the start-up checks
	defer cancel()

	source, primary, schema, cleanup, err := openMySQL(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.source, s.loads = source, source
	s.cleanups = append(s.cleanups, cleanup)
	if cfg.MySQL.ReplicaDSN != "" {
		if s.replica, cleanup, err = openReplica(ctx, cfg, source, primary, reg, s.log); err != nil {
			return nil, err
		}
		s.loads = s.replica.source
		s.cleanups = append(s.cleanups, cleanup)
	}
	s.logEntities()

	s.redis, s.faults, s.breaker = openRedis(cfg, reg, s.log, s.redisReturned)
	s.cleanups = append(s.cleanups, s.redis.Close)
	s.leases = lease.New(s.redis, cfg.Lease.TTL.D())
	if cfg.AnyBloom() {
		s.filters = bloom.New(s.redis, cfg.Redis.KeyPrefix)
		reg.MustRegister(&bloomCollector{filters: s.filters, cfg: cfg})
	}
	s.rebuilds = newRebuilds(s, reg)
	s.reader = s.newReader(reg)
	s.cleanups = append(s.cleanups, func() error { s.reader.Close(); return nil })
	s.inval, s.kafka = s.newInvalidation(reg)
	if cfg.CDC.Enabled {
		if s.tail, cleanup, err = s.newTail(ctx, reg, schema); err != nil {
			return nil, err
		}
		s.tailRef.Store(s.tail)
		s.cleanups = append(s.cleanups, cleanup)
	}

	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sidecache_build_info", Help: "Always 1; the version label says which build runs.",
	}, []string{"version"})
	reg.MustRegister(buildInfo)
	buildInfo.WithLabelValues(opts.Version).Set(1)
	lookups := map[string]bool{}
	names := cfg.EntityNames()
	for _, e := range cfg.Entities {
		for _, l := range e.Lookups {
			lookups[keys.Lookup(e.Name, l.Name)], lookups[e.Name] = true, true
			names = append(names, keys.Lookup(e.Name, l.Name))
		}
	}
	a := &api{
		inval:   s,
		reader:  s.reader,
		log:     s.log,
		lookups: lookups,
		metrics: newHTTPMetrics(reg, names),
		ready:   s.Ready,
		status:  s.Status,

		separateAdmin: cfg.AdminListen != "",
	}
	s.handler, s.admin = a.routes(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return s, nil
}

// redisReturned runs when the circuit around Redis closes: Redis may have kept rows from before
// changes whose invalidation failed meanwhile, so the binlog tail holds reads off the cache until
// it has caught up.
func (s *Sidecar) redisReturned() {
	if t := s.tailRef.Load(); t != nil {
		t.RedisReturned()
	}
}

// warnBloomWithoutCDC warns of filters that nothing but a preload fills.
func (s *Sidecar) warnBloomWithoutCDC() {
	if s.cfg.CDC.Enabled {
		return
	}
	for _, e := range s.cfg.Entities {
		if e.Bloom.Enabled {
			s.log.Warn("bloom: without the binlog tail (cdc.enabled) nothing adds rows inserted after the last "+
				"`sidecache preload`; such rows are answered 404 until the next preload", "entity", e.Name)
		}
	}
}

// openMySQL opens the read path's connections and checks every entity against the schema. It
// returns the source, the primary's pool, the database the DSN names, and the cleanup that
// closes them.
func openMySQL(ctx context.Context, cfg *config.Config) (*mysqlsource.Source, *sql.DB, string, func() error, error) {
	db, schema, err := mysqlsource.Open(cfg.MySQL.DSN, cfg.MySQL.MaxOpenConns)
	if err != nil {
		return nil, nil, "", nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, nil, "", nil, fmt.Errorf("mysql: cannot connect: %w", err)
	}
	source, err := mysqlsource.New(ctx, db, schema, sourceSpecs(cfg), cfg.MySQL.QueryTimeout.D())
	if err != nil {
		db.Close()
		return nil, nil, "", nil, err
	}
	return source, db, schema, func() error { source.Close(); return db.Close() }, nil
}

// sourceSpecs are the configured entities as the source checks them.
func sourceSpecs(cfg *config.Config) []mysqlsource.Spec {
	specs := make([]mysqlsource.Spec, len(cfg.Entities))
	for i, e := range cfg.Entities {
		specs[i] = mysqlsource.Spec{Name: e.Name, Table: e.Table, Key: e.Key, Columns: e.Columns}
		for _, l := range e.Lookups {
			specs[i].Lookups = append(specs[i].Lookups, mysqlsource.LookupSpec{Name: l.Name, Columns: l.Columns})
		}
	}
	return specs
}

// scanner is what preloads and filter rebuilds scan: the loads' source, which, on a replica,
// first waits for the replica to have every row the primary had when the scan began.
func (s *Sidecar) scanner() readthrough.Scanner {
	if s.replica != nil {
		return s.replica.scanner()
	}
	return s.loads
}

// logEntities logs each entity as the schema has it, and warns of foreign-key cascades.
func (s *Sidecar) logEntities() {
	for _, ce := range s.cfg.Entities {
		se := s.source.Entity(ce.Name)
		s.log.Info("entity ready", "entity", ce.Name, "table", se.Table, "key", strings.Join(se.Key.Names(), ","), "columns", len(se.Columns))
		for _, c := range se.Cascades {
			s.log.Warn("foreign-key cascade: the server changes this table's rows through it without binlog row events, "+
				"so those changes are not invalidated; see the README on foreign keys",
				"entity", ce.Name, "table", se.Table, "constraint", c.Constraint, "parent", c.Parent,
				"on_delete", c.OnDelete, "on_update", c.OnUpdate)
		}
	}
}

// newReader is the read path over the source and Redis.
func (s *Sidecar) newReader(reg prometheus.Registerer) *readthrough.Reader {
	cfg := s.cfg
	var entities []readthrough.Entity
	for _, ce := range cfg.Entities {
		key, maxLen := s.source.Entity(ce.Name).Key, cfg.Limits.MaxIDLength
		e := readthrough.Entity{
			Name: ce.Name, ParseID: func(raw string) (string, error) { return key.Parse(raw, maxLen) },
			TTL: ce.TTL.D(), NullTTL: ce.NullTTL.D(), Jitter: *ce.TTLJitter,
			Hot: ce.Hot, StaleTTL: ce.StaleTTL.D(), Bloom: ce.Bloom.Enabled, BloomParams: ce.Bloom.Params,
		}
		entities = append(entities, e)
		// A lookup is cached like an entity of its own, with the entity's TTLs and no Bloom
		// filter: the filter holds primary keys only.
		for _, l := range ce.Lookups {
			key := s.source.Entity(keys.Lookup(ce.Name, l.Name)).Key
			le := e
			le.Name, le.Bloom = keys.Lookup(ce.Name, l.Name), false
			le.ParseID = func(raw string) (string, error) { return key.Parse(raw, maxLen) }
			entities = append(entities, le)
		}
	}
	o := readthrough.Options{
		Cache:               readthrough.NewRedisCache(s.redis),
		Source:              s.loads,
		Entities:            entities,
		KeyPrefix:           cfg.Redis.KeyPrefix,
		MaxIDs:              cfg.Limits.MaxIDs,
		LoadTimeout:         cfg.Limits.RequestTimeout.D(),
		Filters:             s.filters,
		LeaseWait:           cfg.Lease.Wait.D(),
		FallbackConcurrency: cfg.Lease.FallbackConcurrency,
		BypassConcurrency:   cfg.MySQL.MaxOpenConns,
		Degraded:            degradedLimiter(cfg.Degraded),
		Metrics:             readthrough.NewMetrics(reg),
		Logger:              s.log,
	}
	if *cfg.Lease.Enabled {
		o.Leases = s.leases // preloads warm under leases either way
	}
	if cfg.Lease.Fallback == "unavailable" {
		o.Fallback = readthrough.FallbackUnavailable
	}
	if cfg.CDC.Enabled {
		// s.tail is set before any request is served.
		o.Covered = func(entity string) bool { return s.tail.Covered(entity) }
	}
	return readthrough.New(o)
}

// degradedLimiter is the token bucket of MySQL loads while Redis is unreachable: max_db_rate a
// second, with room for a tenth of a second's worth at once, so that no second sees more than
// 1.1 times the rate. A bucket of one refused most reads that came close together: requests
// arrive in bursts, and at 750 reads a second a limit of 500 let about 100 through. Nil with
// mode unavailable.
func degradedLimiter(d config.Degraded) *rate.Limiter {
	if d.Mode != "load" {
		return nil
	}
	return rate.NewLimiter(rate.Limit(d.MaxDBRate), max(1, int(d.MaxDBRate/10)))
}

// newInvalidation is the invalidation path: deletes on Redis, failed ones retried through
// Kafka when brokers are configured (kafka is nil otherwise).
func (s *Sidecar) newInvalidation(reg prometheus.Registerer) (*invalidation.Invalidator, *invalidation.Kafka) {
	cfg := s.cfg
	deleter := invalidation.NewRedis(s.redis)
	o := invalidation.Options{
		Deleter: deleter, Dropper: deleter, Prefix: cfg.Redis.KeyPrefix,
		Delay: cfg.CDC.DoubleDeleteDelay.D(), Registerer: reg, Logger: s.log,
	}
	if s.filters != nil {
		o.Filters, o.OnReset = s.filters, s.rebuilds.request
	}
	if s.replica != nil && s.replica.timeout > 0 {
		o.WaitReplica = s.replica.wait
	}
	var k *invalidation.Kafka
	if len(cfg.Kafka.Brokers) > 0 {
		k = invalidation.NewKafka(invalidation.KafkaOptions{
			Brokers: cfg.Kafka.Brokers, Topic: cfg.Kafka.RetryTopic, DLQTopic: cfg.Kafka.DLQTopic, Group: cfg.Kafka.Group,
			MaxAttempts: cfg.Kafka.MaxAttempts, Backoff: cfg.Kafka.Backoff.D(), MaxBackoff: cfg.Kafka.MaxBackoff.D(),
			QueueSize: cfg.Kafka.QueueSize, Deleter: deleter, Registerer: reg, Logger: s.log,
		})
		o.Retrier = k
	}
	return invalidation.New(o), k
}

// keyColumns describes a key for the binlog tail.
func keyColumns(key mysqlsource.Key) []cdc.KeyColumn {
	var cols []cdc.KeyColumn
	for _, p := range key {
		cols = append(cols, cdc.KeyColumn{Name: p.Name, Index: p.Ordinal, Unsigned: p.Kind == mysqlsource.KeyUint, Bits: p.Bits})
	}
	return cols
}

// newTail prepares the binlog tail of the entities' tables, with a connection of its own for
// its checks, and runs the checks. The cleanup closes the connection.
func (s *Sidecar) newTail(ctx context.Context, reg prometheus.Registerer, schema string) (*cdc.Tail, func() error, error) {
	cfg := s.cfg
	db, err := sql.Open("mysql", cfg.CDC.DSN)
	if err != nil {
		return nil, nil, err
	}
	tables := map[string][]cdc.Target{}
	for _, ce := range cfg.Entities {
		se := s.source.Entity(ce.Name)
		tables[se.Table] = append(tables[se.Table], cdc.Target{Entity: ce.Name, Bloom: ce.Bloom.Enabled, Key: keyColumns(se.Key)})
		for _, l := range ce.Lookups {
			name := keys.Lookup(ce.Name, l.Name)
			tables[se.Table] = append(tables[se.Table], cdc.Target{Entity: name, Lookup: true, Key: keyColumns(s.source.Entity(name).Key)})
		}
	}
	conn := cfg.CDC.Conn
	tail := cdc.New(cdc.Options{
		Flavor: cfg.CDC.Flavor, ServerID: cfg.CDC.ServerID, Host: conn.Host, Port: conn.Port,
		User: conn.User, Password: conn.Password, Schema: schema, Tables: tables, Prefix: cfg.Redis.KeyPrefix,
		DB: db, Redis: s.redis, Invalidator: s.inval,
		OnBinlogGone: cfg.CDC.OnBinlogGone, LeaderTTL: cfg.CDC.LeaderTTL.D(), Registerer: reg, Logger: s.log,
	})
	if err := tail.Check(ctx); err != nil {
		db.Close()
		return nil, nil, err
	}
	return tail, db.Close, nil
}

// Handler returns the HTTP API: the data API, and the admin endpoints unless admin_listen.
func (s *Sidecar) Handler() http.Handler { return s.handler }

// Invalidate deletes an entity's key now and again after the double-delete delay; for an
// entity with a Bloom filter it first adds the id when its row exists (rowMayExist), so a row
// just inserted is not held absent.
// It returns nil only once the first delete is done, or its retry is acknowledged by Kafka:
// an application that goes on after a success must not find the old row.
func (s *Sidecar) Invalidate(ctx context.Context, entity, raw string) error {
	if s.cfg.Entity(entity) == nil { // a lookup's name (users/by-email) too: it is not an entity
		return fmt.Errorf("%w: %q", readthrough.ErrUnknownEntity, entity)
	}
	id, err := s.reader.ParseID(entity, raw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Limits.RequestTimeout.D())
	defer cancel()
	change := invalidation.Change{Keys: []string{keys.Value(s.cfg.Redis.KeyPrefix, entity, id)}}
	if s.replica != nil && s.replica.timeout > 0 {
		// The application wrote before it called: the primary's position now has the write, and
		// the second delete waits for the replica to reach it. Without one it waits the delay alone.
		change.GTID, _ = s.replica.position(ctx, s.replica.primary, true)
	}
	if s.filters != nil && s.cfg.Entity(entity).Bloom.Enabled && s.rowMayExist(ctx, entity, id) {
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

// rowMayExist reports whether an invalidated id's row exists, so that only such ids join the
// Bloom filter: ids that are not there would fill it up, and enough of them would make it
// answer "maybe" for everything. When MySQL cannot say, the id joins: a filter that says
// "absent" for a row that exists is the one thing it must never do.
// It reads the primary: a lagging replica may not have the row the application just wrote.
func (s *Sidecar) rowMayExist(ctx context.Context, entity, id string) bool {
	_, found, err := s.source.Load(ctx, entity, id)
	return found || err != nil
}

// ParseID validates raw as an id of entity and returns its canonical form.
func (s *Sidecar) ParseID(entity, raw string) (string, error) { return s.reader.ParseID(entity, raw) }

// Preload warms entity's cache and rebuilds its Bloom filter; see readthrough.Reader.Preload.
// Scanner and Leases are filled in.
//
// With cdc.enabled it first waits (up to a minute) until a binlog tail covers the entity: rows
// warmed before could outlive changes no invalidation would ever delete.
func (s *Sidecar) Preload(ctx context.Context, opts readthrough.PreloadOptions) (readthrough.PreloadStats, error) {
	opts.Scanner, opts.Leases = s.scanner(), s.leases
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

// Ready reports whether this sidecar can answer reads: MySQL (and the replica loads read, if
// any) must answer, and Redis too with
// degraded.mode unavailable. With mode load a Redis outage leaves it ready, since reads are
// then served from MySQL: a cache outage must not take every application pod out of service.
func (s *Sidecar) Ready(ctx context.Context) error {
	if err := s.source.Ping(ctx); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	if s.replica != nil {
		if err := s.replica.db.PingContext(ctx); err != nil {
			return fmt.Errorf("%w: %w", errReplicaDown, err)
		}
	}
	if !s.servesWithoutRedis() {
		if err := s.redis.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("%w: %w", errRedisDown, err)
		}
	}
	return nil
}

// servesWithoutRedis reports whether reads are answered while Redis is unreachable
// (degraded.mode load): then a Redis outage does not make the sidecar unready.
func (s *Sidecar) servesWithoutRedis() bool { return s.cfg.Degraded.Mode == "load" }

// Run serves the API on the configured address until ctx ends, then drains in-flight requests
// for up to shutdown_timeout. A clean stop returns nil.
func (s *Sidecar) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a listener the caller opened. The background workers (second deletes, the
// binlog tail, filter rebuilds, the Kafka retry path, the fault admin endpoint) run under one
// errgroup beside the server: they outlive ctx until in-flight requests are drained, since a
// request may wait on them, and the first of them to fail stops everything with its error.
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
	var adminLn, faultsLn net.Listener
	if s.cfg.AdminListen != "" {
		var err error
		if adminLn, err = net.Listen("tcp", s.cfg.AdminListen); err != nil {
			ln.Close()
			return fmt.Errorf("admin_listen: %w", err)
		}
	}
	if s.faults != nil && s.cfg.Faults.AdminListen != "" {
		var err error
		if faultsLn, err = net.Listen("tcp", s.cfg.Faults.AdminListen); err != nil {
			ln.Close()
			if adminLn != nil {
				adminLn.Close()
			}
			return fmt.Errorf("faults.admin_listen: %w", err)
		}
	}
	wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWorkers()
	g, gctx := errgroup.WithContext(wctx)
	g.Go(func() error { s.inval.Run(gctx); return nil })
	g.Go(func() error { s.checkEvictionPolicy(gctx); return nil })
	if s.replica != nil {
		g.Go(func() error { s.replica.run(gctx); return nil })
	}
	if s.tail != nil {
		g.Go(func() error { s.tail.Run(gctx); return nil })
		g.Go(func() error { s.rebuilds.run(gctx); return nil })
	}
	if s.kafka != nil {
		g.Go(func() error { s.kafka.Run(gctx); return nil })
	}
	if s.cfg.PprofListen != "" {
		// Off by default and loopback only (checked by config): profiles show the process's
		// internals, and a CPU profile costs while it runs.
		pprofLn, err := net.Listen("tcp", s.cfg.PprofListen)
		if err != nil {
			s.log.Warn("pprof_listen: not serving the profiler", "err", err)
		} else {
			mux := http.NewServeMux()
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			g.Go(func() error {
				return serveUntil(gctx, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, pprofLn, 0)
			})
			s.log.Info("profiler", "addr", pprofLn.Addr().String())
		}
	}
	if faultsLn != nil {
		g.Go(func() error {
			return serveUntil(gctx, &http.Server{Handler: s.faults.Handler(), ReadHeaderTimeout: 5 * time.Second}, faultsLn, 0)
		})
		s.log.Info("fault injection admin endpoint", "addr", faultsLn.Addr().String())
	}
	if adminLn != nil {
		// Probes, /status and /metrics, up until the data API has drained.
		admin := &http.Server{Handler: s.admin, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second}
		g.Go(func() error { return serveUntil(gctx, admin, adminLn, time.Second) })
		s.log.Info("admin endpoints (probes, /status, /metrics)", "addr", adminLn.Addr().String())
	}
	g.Go(func() error {
		defer stopWorkers() // the workers stop once requests are drained
		s.log.Info("serving", "addr", ln.Addr().String(), "entities", len(s.cfg.Entities))
		stop, cancel := context.WithCancel(gctx)
		defer cancel()
		defer context.AfterFunc(ctx, func() {
			s.log.Info("shutting down: draining in-flight requests", "timeout", s.cfg.ShutdownTimeout.D().String())
			cancel()
		})()
		return serveUntil(stop, srv, ln, s.cfg.ShutdownTimeout.D())
	})
	if err := g.Wait(); err != nil {
		return err
	}
	s.log.Info("stopped")
	return nil
}

// serveUntil serves srv on ln until ctx ends, then shuts it down, draining in-flight requests
// for up to drain (0: closing at once). It returns the server's failure, or the drain's.
func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener, drain time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	var err error
	if drain > 0 {
		sctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		err = srv.Shutdown(sctx)
	} else {
		err = srv.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// Close waits for background refreshes and releases every connection New opened.
func (s *Sidecar) Close() error {
	var errs []error
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, s.cleanups[i]())
	}
	s.cleanups = nil
	return errors.Join(errs...)
}
