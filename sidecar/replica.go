package sidecar

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/internal/retry"
	"github.com/sidecache/sidecache/readthrough"
)

// errReplicaDown marks a readiness failure of the replica loads read.
var errReplicaDown = errors.New("the mysql replica is unavailable")

// replica is the read replica loads read (mysql.replica_dsn): its pool, the wait for it to
// apply a change before a second delete, and its lag.
type replica struct {
	db, primary *sql.DB
	source      *mysqlsource.Source // the entities' loads and scans, on db
	flavor      string              // "mariadb" or "mysql", as the replica reports itself
	timeout     time.Duration       // bound of a wait; 0: no wait
	log         *slog.Logger

	lag      prometheus.Gauge
	waitTime prometheus.Histogram
	waits    *prometheus.CounterVec

	mu     sync.Mutex
	behind bool    // the last wait gave up: warned once for this episode
	lagNow float64 // seconds, NaN while unknown
	heads  []head  // the primary's positions sampled and not yet applied by the replica
}

// head is the primary's GTID position when it was sampled.
type head struct {
	at  time.Time
	pos gomysql.GTIDSet
}

// openReplica opens the replica's pool and a source whose loads and scans read it, with the
// entities checked already checked against the primary's schema, which the binlog tail reads
// too; the cleanup closes both.
func openReplica(ctx context.Context, cfg *config.Config, checked *mysqlsource.Source, primary *sql.DB,
	reg prometheus.Registerer, log *slog.Logger) (*replica, func() error, error) {
	db, _, err := mysqlsource.Open(cfg.MySQL.ReplicaDSN, cfg.MySQL.MaxOpenConns)
	if err != nil {
		return nil, nil, fmt.Errorf("mysql.replica_dsn: %w", err)
	}
	var version string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("mysql: cannot connect to the replica (mysql.replica_dsn): %w", err)
	}
	source, err := checked.Reading(ctx, db)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	r := &replica{db: db, primary: primary, source: source, flavor: gomysql.MySQLFlavor, timeout: cfg.MySQL.ReplicaWaitTimeout.D(),
		log: log.With("component", "replica"), lagNow: math.NaN()}
	if strings.Contains(strings.ToLower(version), "mariadb") {
		r.flavor = gomysql.MariaDBFlavor
	}
	r.lag = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sidecache_replica_lag_seconds",
		Help: "How long ago the primary wrote the oldest change the replica loads read has not applied (sampled every second; 0 when caught up).",
	})
	r.waitTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sidecache_replica_wait_seconds",
		Help:    "How long second deletes waited, after double_delete_delay, for the replica to apply their changes.",
		Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	r.waits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecache_replica_waits_total",
		Help: "Waits for the replica before second deletes: applied, timeout (deleted anyway) or error (deleted anyway).",
	}, []string{"result"})
	reg.MustRegister(r.lag, r.waitTime, r.waits)
	wait := "off"
	if r.timeout > 0 {
		wait = r.timeout.String()
	}
	r.log.Info("loads read the replica; second deletes wait for it to apply each change", "flavor", r.flavor, "wait", wait)
	return r, func() error { source.Close(); return db.Close() }, nil
}

// waitFor blocks until the replica has applied the GTID set gtid, or bound passes, and reports
// which. The server's function bounds the wait: MASTER_GTID_WAIT (MariaDB) answers 0 once
// applied and -1 past the timeout, WAIT_FOR_EXECUTED_GTID_SET (MySQL) 0 and 1; the context, a
// server that does not answer at all.
func (r *replica) waitFor(ctx context.Context, gtid string, bound time.Duration) (applied bool, err error) {
	q := "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
	if r.flavor == gomysql.MariaDBFlavor {
		q = "SELECT MASTER_GTID_WAIT(?, ?)"
	}
	ctx, cancel := context.WithTimeout(ctx, bound+2*time.Second)
	defer cancel()
	var res sql.NullInt64
	if err := r.db.QueryRowContext(ctx, q, gtid, bound.Seconds()).Scan(&res); err != nil {
		return false, err
	}
	return res.Valid && res.Int64 == 0, nil
}

// wait blocks until the replica has applied every GTID set in gtids, or replica_wait_timeout
// passes: the invalidation's WaitReplica hook. One query waits for them all. A wait that gives
// up is counted, and warned of once until a wait succeeds again; the second deletes run then
// anyway, the fixed delay having been their only wait.
func (r *replica) wait(ctx context.Context, gtids []string) {
	target, err := mergeGTIDs(r.flavor, gtids)
	if err != nil {
		r.waited(ctx, time.Time{}, "error", err)
		return
	}
	start := time.Now()
	applied, err := r.waitFor(ctx, target, r.timeout)
	switch {
	case ctx.Err() != nil:
		return // stopping: the second deletes do not run either
	case err != nil:
		r.waited(ctx, start, "error", err)
	case !applied:
		r.waited(ctx, start, "timeout", nil)
	default:
		r.waited(ctx, start, "applied", nil)
	}
}

// waited records a wait's result, and logs the start and the end of an episode of waits that
// gave up: once each, however many keys and batches it lasts.
func (r *replica) waited(ctx context.Context, start time.Time, result string, err error) {
	if !start.IsZero() {
		r.waitTime.Observe(time.Since(start).Seconds())
	}
	r.waits.WithLabelValues(result).Inc()
	r.mu.Lock()
	was := r.behind
	r.behind = result != "applied"
	r.mu.Unlock()
	switch {
	case r.behind && !was:
		attrs := []any{"result", result, "wait", r.timeout.String()}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		r.log.WarnContext(ctx, "the replica did not apply changes within mysql.replica_wait_timeout: their second deletes run "+
			"anyway, and a load from the replica until it catches up may cache a row as it was until its TTL", attrs...)
	case !r.behind && was:
		r.log.InfoContext(ctx, "the replica applies changes within the wait again")
	}
}

// mergeGTIDs is one GTID set that contains every one of sets: for MariaDB the newest sequence
// number of each domain, for MySQL their union.
func mergeGTIDs(flavor string, sets []string) (string, error) {
	if flavor == gomysql.MySQLFlavor {
		all, err := gomysql.ParseGTIDSet(flavor, "")
		if err != nil {
			return "", err
		}
		for _, s := range sets {
			if err := all.Update(s); err != nil {
				return "", err
			}
		}
		return all.String(), nil
	}
	newest := map[uint32]*gomysql.MariadbGTID{}
	for _, s := range sets {
		set, err := gomysql.ParseMariadbGTIDSet(s)
		if err != nil {
			return "", err
		}
		for d, g := range set.(*gomysql.MariadbGTIDSet).Sets {
			if n, ok := newest[d]; !ok || g.SequenceNumber > n.SequenceNumber {
				newest[d] = g
			}
		}
	}
	parts := make([]string, 0, len(newest))
	for _, g := range newest {
		parts = append(parts, g.String())
	}
	return strings.Join(parts, ","), nil
}

// position is a server's GTID position: for MariaDB the primary's binlog or the replica's
// applied position, for MySQL the executed set (empty without gtid_mode).
func (r *replica) position(ctx context.Context, db *sql.DB, primary bool) (string, error) {
	q := "SELECT @@GLOBAL.gtid_executed"
	if r.flavor == gomysql.MariaDBFlavor {
		q = "SELECT @@gtid_slave_pos"
		if primary {
			q = "SELECT @@gtid_binlog_pos"
		}
	}
	var pos string
	err := db.QueryRowContext(ctx, q).Scan(&pos)
	return strings.ReplaceAll(pos, "\n", ""), err
}

// run samples the replica's lag every second until ctx ends.
func (r *replica) run(ctx context.Context) {
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r.sample(sctx)
		cancel()
		retry.Sleep(ctx, time.Second)
	}
}

// sample reads the primary's position and the replica's, and sets the lag: how long ago the
// oldest position the replica has not reached was first seen on the primary. Unlike the
// replica's own Seconds_Behind_Master it needs no privilege and goes on growing while the
// replica's SQL thread is stopped.
func (r *replica) sample(ctx context.Context) {
	now := time.Now()
	p, errP := r.position(ctx, r.primary, true)
	q, errQ := r.position(ctx, r.db, false)
	var ps, qs gomysql.GTIDSet
	if errP == nil && errQ == nil && p != "" {
		ps, errP = gomysql.ParseGTIDSet(r.flavor, p)
		qs, errQ = gomysql.ParseGTIDSet(r.flavor, q)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if errP != nil || errQ != nil || ps == nil {
		r.lagNow, r.heads = math.NaN(), nil // unknown
		r.lag.Set(math.NaN())
		return
	}
	if n := len(r.heads); n == 0 || !r.heads[n-1].pos.Equal(ps) {
		r.heads = append(r.heads, head{at: now, pos: ps})
	}
	for len(r.heads) > 0 && qs.Contain(r.heads[0].pos) {
		r.heads = r.heads[1:]
	}
	r.lagNow = 0
	if len(r.heads) > 0 {
		r.lagNow = now.Sub(r.heads[0].at).Seconds()
	}
	r.lag.Set(r.lagNow)
}

// ReplicaStatus is the replica's part of /status.
type ReplicaStatus struct {
	PartStatus
	// LagSeconds is the last sampled lag (see sidecache_replica_lag_seconds); absent while
	// unknown.
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	// Wait is replica_wait_timeout, or "off".
	Wait string `json:"wait"`
	// Behind says the last wait gave up: second deletes run without the replica having
	// applied their changes.
	Behind bool `json:"behind"`
}

func (r *replica) status(ctx context.Context) *ReplicaStatus {
	st := &ReplicaStatus{Wait: "off"}
	if r.timeout > 0 {
		st.Wait = r.timeout.String()
	}
	if err := r.db.PingContext(ctx); err != nil {
		st.Error = "unavailable"
	} else {
		st.OK = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !math.IsNaN(r.lagNow) {
		lag := r.lagNow
		st.LagSeconds = &lag
	}
	st.Behind = r.behind
	return st
}

// scanCatchUp bounds how long a scan waits for the replica to catch up before it begins. It
// does not depend on replica_wait_timeout: a filter rebuilt from a replica that misses rows
// would answer "absent" for rows that exist, which no setting may allow.
const scanCatchUp = 30 * time.Second

// scanner is the replica's source for preloads and filter rebuilds.
func (r *replica) scanner() readthrough.Scanner { return caughtUpScanner{r} }

// caughtUpScanner scans the replica once it has applied everything the primary had when the
// scan began. A rebuild begins its new filter before the scan, so that ids inserted later are
// added to it; ids inserted before must be in the scan, and on a lagging replica they may not
// be yet.
type caughtUpScanner struct{ r *replica }

// LastID is the first call of a scan (after the new filter has begun).
func (c caughtUpScanner) LastID(ctx context.Context, entity string) (string, bool, error) {
	if err := c.r.catchUp(ctx); err != nil {
		return "", false, err
	}
	return c.r.source.LastID(ctx, entity)
}

func (c caughtUpScanner) ScanIDs(ctx context.Context, entity string, after, last *string, limit int) ([]string, error) {
	return c.r.source.ScanIDs(ctx, entity, after, last, limit)
}

func (c caughtUpScanner) EstimateRows(ctx context.Context, entity string) (int64, error) {
	return c.r.source.EstimateRows(ctx, entity)
}

// errNotCaughtUp reports a replica that did not reach the primary's position within scanCatchUp.
var errNotCaughtUp = errors.New("the replica did not catch up with the primary in time")

// catchUp waits until the replica has applied everything the primary has written now.
func (r *replica) catchUp(ctx context.Context) error {
	pos, err := r.position(ctx, r.primary, true)
	if err != nil || pos == "" {
		return err // "": no GTIDs, nothing to wait for
	}
	applied, err := r.waitFor(ctx, pos, scanCatchUp)
	if err == nil && !applied {
		err = fmt.Errorf("%w (%v)", errNotCaughtUp, scanCatchUp)
	}
	return err
}
