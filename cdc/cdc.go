// Package cdc tails the MySQL/MariaDB binlog and invalidates the cache keys of changed rows.
//
// It reads row events with go-mysql's replication.BinlogSyncer rather than canal: canal maps
// row values through the table's current schema, so catching up across an ALTER TABLE that
// moved columns would read the key from the wrong column. With binlog_row_metadata=FULL every
// event carries its own column names and primary key, and the key is taken from those.
//
// One sidecar per database tails at a time (a Redis leader lease). The checkpoint (GTID set,
// or file/position, and the entities it covers) advances only past changes whose deletes, both
// of them, are done. What the binlog cannot say row by row (DDL, statement-logged writes, a key
// that cannot be read, the changes made while no tail covered an entity) drops the entity's
// whole cache instead, so no change is ever skipped.
package cdc

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/retry"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/lease"
)

// Target is one entity served from a tailed table.
type Target struct {
	Entity string
	Key    []KeyColumn // the primary key's columns, in order
	Bloom  bool        // add inserted ids to the entity's Bloom filter
	// Lookup: the key is a unique key whose columns may be NULL. A row image with a NULL in
	// it has no value to look up, so nothing to invalidate; every other image is invalidated
	// whether the key changed or not, since the cached value is the whole row.
	Lookup bool
}

// KeyColumn is one column of a target's key.
type KeyColumn struct {
	Name     string
	Index    int // its position in the schema read at start: used only without row metadata
	Unsigned bool
	Bits     int // integer width; 0 for string columns
}

// keyNames returns the key's column names, joined by ','.
func (tg Target) keyNames() string {
	names := make([]string, len(tg.Key))
	for i, k := range tg.Key {
		names[i] = k.Name
	}
	return strings.Join(names, ",")
}

// OnBinlogGone says what a tail does when the binlog it must resume from has been purged.
const (
	// Reset drops the cached keys (and filters) of every configured entity and starts again
	// from the server's current position: nothing stale survives, at the cost of a cold cache.
	Reset = "reset"
	// Stall keeps retrying and reports the tail stalled until an operator acts.
	Stall = "stall"
)

// Defaults of Options.
const (
	DefaultFlavor    = "mysql"
	DefaultServerID  = 1001
	DefaultLeaderTTL = 5 * time.Second
)

// Options configure a Tail. The server's address and account, Schema, Tables, DB, Redis and
// Invalidator are required.
type Options struct {
	Flavor   string // "mysql" or "mariadb"; default DefaultFlavor
	ServerID uint32 // the replica server id, unique among the server's replicas; default DefaultServerID
	Host     string
	Port     uint16
	User     string
	Password string
	Schema   string              // the database tailed
	Tables   map[string][]Target // by table name
	Prefix   string              // Redis key prefix

	DB    *sql.DB // the same server, for checks and the current position
	Redis redis.UniversalClient
	// Invalidator deletes the keys of changed rows; it also adds inserted ids to the Bloom
	// filters of targets with Bloom set, and resets those filters when it drops their entity.
	Invalidator *invalidation.Invalidator
	// OnBinlogGone is Reset (the default) or Stall.
	OnBinlogGone string
	// LeaderTTL is the leader lease period; a dead leader is replaced within it. Default
	// DefaultLeaderTTL.
	LeaderTTL  time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// replayWindow is how far back before losing Redis's data a leader resumes: a failover can lose
// the writes (deletes among them) of the last moments before it, up to the replica's lag.
const replayWindow = 10 * time.Second

// Tail is the binlog tail of one database.
type Tail struct {
	o   Options
	log *slog.Logger
	m   *metrics
	id  string // names this process in the status

	// Set by Check from the server.
	lowerCaseNames bool
	charsets       map[uint64]string // collation id → character set

	tables       map[string][]Target // by normalized table name
	fingerprints map[string]string   // entity → what its coverage depends on
	filtered     map[string]bool     // entities with a Bloom filter

	leading   atomic.Bool
	gated     atomic.Bool                     // the cache waits for the tail to catch up after Redis failed
	processed atomic.Pointer[Checkpoint]      // the last commit point the leader's session processed
	coverage  atomic.Pointer[map[string]bool] // entity → covered by the checkpoint in Redis

	mu         sync.Mutex
	oldest     []time.Time  // binlog times of changes queued and not yet checkpointed
	history    []saved      // checkpoints this process saved, oldest first
	lostAt     time.Time    // when this process last stopped leading
	forceReset bool         // the binlog needed is gone: start over from the current position
	identity   string       // the Redis Cluster ids this leadership's checkpoint records, once known
	status     Status       // this process's own view
	seen       Status       // the leader's status as last read from Redis
	heads      []headSample // the server's binlog head, sampled every second, not yet reached
	checkpoint string       // the saved checkpoint as last read
	resets     int
	lastErr    string
	lastErrLog time.Time
	started    time.Time

	lastUnreadable map[string]time.Time

	lostRedisAt time.Time // refresh could not read Redis since then; zero while it can
	recoveredAt time.Time // Redis answered again then: the cache waits for a tail caught up past it
}

// saved is a checkpoint this process saved, for resuming after Redis lost it.
type saved struct {
	at time.Time
	cp Checkpoint
}

// init fills the defaults.
func (o *Options) init() {
	o.Flavor = cmp.Or(o.Flavor, DefaultFlavor)
	o.ServerID = cmp.Or(o.ServerID, DefaultServerID)
	o.LeaderTTL = cmp.Or(max(o.LeaderTTL, 0), DefaultLeaderTTL)
	o.OnBinlogGone = cmp.Or(o.OnBinlogGone, Reset)
	o.Logger = cmp.Or(o.Logger, slog.Default())
}

// New returns a Tail.
func New(o Options) *Tail {
	o.init()
	host, _ := os.Hostname()
	t := &Tail{o: o, log: o.Logger.With("component", "cdc", "schema", o.Schema),
		id: fmt.Sprintf("%s/%d", host, os.Getpid()), started: time.Now()}
	t.status = Status{State: StateStandby}
	t.setTables(false)
	t.m = newMetrics(o.Registerer, t)
	return t
}

// setTables indexes the targets by table name, folded to lower case when the server compares
// table names that way (lower_case_table_names ≠ 0).
func (t *Tail) setTables(lower bool) {
	t.lowerCaseNames = lower
	t.tables = map[string][]Target{}
	t.fingerprints = map[string]string{}
	t.filtered = map[string]bool{}
	for table, targets := range t.o.Tables {
		t.tables[t.fold(table)] = append(t.tables[t.fold(table)], targets...)
		for _, tg := range targets {
			t.fingerprints[tg.Entity] = "v2:" + strings.ToLower(table) + "." + strings.ToLower(tg.keyNames())
			t.filtered[tg.Entity] = tg.Bloom
		}
	}
}

func (t *Tail) fold(name string) string {
	if t.lowerCaseNames {
		return strings.ToLower(name)
	}
	return name
}

func (t *Tail) entities() []string {
	return slices.Sorted(maps.Keys(t.fingerprints))
}

func (t *Tail) leaderKey() string     { return keys.CDC(t.o.Prefix, t.o.Schema, "leader") }
func (t *Tail) checkpointKey() string { return keys.CDC(t.o.Prefix, t.o.Schema, "checkpoint") }
func (t *Tail) statusKey() string     { return keys.CDC(t.o.Prefix, t.o.Schema, "status") }

// Checkpoint is where a tail resumes.
type Checkpoint struct {
	Flavor string `json:"flavor"`
	GTID   string `json:"gtid,omitempty"` // GTID set; resumes by GTID when set
	File   string `json:"file,omitempty"`
	Pos    uint32 `json:"pos,omitempty"`
	// EventTime is the binlog time of the last change it covers.
	EventTime int64 `json:"event_time"`
	// Entities are the entities whose every change up to the position is invalidated, each with
	// the fingerprint of its table and key. Readers cache an entity only while it is here; a
	// leader drops the cache of an entity it finds missing before it adds it. Nil in checkpoints
	// of earlier versions, which are taken to cover every entity.
	Entities map[string]string `json:"entities,omitempty"`
	// Prepared are the XA transactions prepared before the position and not yet committed or
	// rolled back, each with the entities it changed (xid → entities).
	Prepared map[string][]string `json:"xa_prepared,omitempty"`
	// XAComplete says Prepared lists every XA transaction prepared before the position. When it
	// is false, an XA COMMIT of an unknown xid drops every entity.
	XAComplete bool `json:"xa_complete,omitempty"`
	// Redis names the Redis Cluster's data set when the leader that wrote it started (each
	// master's run and replication ids; empty on a single server, whose checkpoint lives in the
	// data set it describes). A master restarted or failed over while no leader watched has
	// another: what it lost cannot be told, so the next leader starts over.
	Redis string `json:"redis,omitempty"`
}

// String names the position, for retry messages and logs.
func (cp Checkpoint) String() string {
	if cp.GTID != "" {
		return cp.GTID
	}
	return fmt.Sprintf("%s:%d", cp.File, cp.Pos)
}

// covers reports whether cp covers entity with fingerprint fp.
func (cp Checkpoint) covers(entity, fp string) bool {
	if cp.Entities == nil {
		return true // written by a version that did not record coverage
	}
	return cp.Entities[entity] == fp
}

// LoadCheckpoint reads the saved checkpoint; ok is false when there is none.
func (t *Tail) LoadCheckpoint(ctx context.Context) (cp Checkpoint, ok bool, err error) {
	cp, raw, err := t.loadCheckpoint(ctx)
	return cp, raw != nil, err
}

// loadCheckpoint reads the saved checkpoint and its bytes (nil when there is none).
func (t *Tail) loadCheckpoint(ctx context.Context) (Checkpoint, []byte, error) {
	b, err := t.o.Redis.Get(ctx, t.checkpointKey()).Bytes()
	if errors.Is(err, redis.Nil) {
		return Checkpoint{}, nil, nil
	}
	if err != nil {
		return Checkpoint{}, nil, err
	}
	var cp Checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return Checkpoint{}, nil, fmt.Errorf("cdc: checkpoint %s is not readable: %w", t.checkpointKey(), err)
	}
	return cp, b, nil
}

// saveScript: KEYS checkpoint; ARGV the value this leader last saw there (” for none), the new
// value → 1 saved, 0 the stored value is another.
const saveScript = `
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1`

// errCheckpointChanged: the checkpoint in Redis is not the one this leader saved last.
var errCheckpointChanged = errors.New("the checkpoint in Redis is not the one this leader saved last")

// saveCheckpoint replaces the checkpoint, but only if Redis still holds the one this leader saw
// last (expect, nil for none). Anything else means Redis lost or rolled back data (a restart, a
// failover, a restore from a snapshot, eviction) or another leader wrote: then the stored one is
// left alone, since replaying from it invalidates everything Redis may have lost.
func (t *Tail) saveCheckpoint(ctx context.Context, cp Checkpoint, expect []byte) ([]byte, error) {
	b, _ := json.Marshal(cp)
	n, err := t.o.Redis.Eval(ctx, saveScript, []string{t.checkpointKey()}, expect, b).Int64()
	switch {
	case err != nil:
		return expect, err
	case n != 1:
		return expect, errCheckpointChanged
	}
	return b, nil
}

// Run tails while this process holds the leader lease and stands by otherwise, until ctx ends.
// The lease is a lease.Lease on the leader key: an owner token, renewed every ttl/3.
// Beside it, every process follows the checkpoint and the leader's status, for Covered and
// Status.
func (t *Tail) Run(ctx context.Context) {
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		t.watch(ctx)
	}()
	defer func() { <-watchDone }()

	leases := lease.New(t.o.Redis, t.o.LeaderTTL)
	backoff := retry.Backoff{Min: time.Second, Max: 30 * time.Second}
	for ctx.Err() == nil {
		held, err := leases.Acquire(ctx, t.leaderKey())
		if err != nil || held == nil {
			t.m.leader.Set(0)
			if err != nil && ctx.Err() == nil {
				t.fail(ctx, fmt.Errorf("cdc: cannot reach Redis for the leader lease: %w", err), false)
			} else {
				t.setState(StateStandby, "", "")
			}
			retry.Sleep(ctx, t.o.LeaderTTL/3)
			continue
		}
		t.m.leader.Set(1)
		t.leading.Store(true)
		t.setState(StateStarting, "", "")
		t.log.Info("leading: tailing the binlog")
		err = t.lead(ctx, leases, held)
		t.m.leader.Set(0)
		t.leading.Store(false)
		t.mu.Lock()
		t.lostAt = time.Now()
		t.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, errRedisChanged), errors.Is(err, errLeaseLost), errors.Is(err, errCheckpointChanged):
			t.log.Warn("stopped leading", "err", err)
			t.setState(StateStandby, "", "")
			backoff.Reset()
		case isBinlogGone(err) && t.o.OnBinlogGone == Reset:
			// The checkpoint names a position that is gone: it covers nothing any more. Readers
			// bypass the cache until the reset has dropped every entity and saved a new one.
			t.mu.Lock()
			t.forceReset = true
			t.resets++
			t.history = nil
			t.mu.Unlock()
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := t.o.Redis.Del(dctx, t.checkpointKey()).Err(); err != nil {
				t.log.Warn("cannot remove the checkpoint that names a purged position", "err", err)
			}
			t.refresh(dctx)
			cancel()
			t.m.resets.Inc()
			t.fail(ctx, fmt.Errorf("%w; resetting: every configured entity's cache is dropped and the tail starts again at the server's current position", err), true)
			backoff.Reset()
		default:
			t.fail(ctx, err, true)
		}
		retry.Sleep(ctx, backoff.Next())
	}
}

// errLeaseLost stops a tail whose leader lease could not be renewed.
var errLeaseLost = errors.New("leader lease lost")

// errRedisChanged stops a tail whose Redis restarted or failed over: what it wrote lately may
// be gone, so it resumes from before.
var errRedisChanged = errors.New("Redis restarted or failed over")

// lead tails while the lease is kept. The first renewal that fails stops the tail: the lease
// can only pass to another sidecar a whole period after the last renewal, so this one has
// stopped before another starts.
func (t *Tail) lead(ctx context.Context, leases *lease.Leases, held *lease.Lease) error {
	// Nothing of an earlier leadership counts as processed now: its last batches may never have
	// been deleted, and the monitor, which starts next, must not report caught up on them.
	t.processed.Store(nil)
	t.mu.Lock()
	t.heads, t.status.CaughtUpAt = nil, time.Time{}
	t.identity = ""
	t.mu.Unlock()
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	keeper := leases.Keep([]*lease.Lease{held})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-keeper.Lost():
			cancel(errLeaseLost)
		case <-lctx.Done():
		}
	}()
	go func() {
		defer wg.Done()
		t.monitor(lctx, cancel)
	}()
	err := t.tail(lctx, cancel)
	cancel(nil)
	wg.Wait()
	keeper.Stop()
	leases.Release([]*lease.Lease{held})
	if cause := context.Cause(lctx); errors.Is(cause, errLeaseLost) || errors.Is(cause, errRedisChanged) || errors.Is(cause, errCheckpointChanged) {
		return cause
	}
	return err
}

// demoted logs go-mysql's records one level lower. The errors that matter reach the tail as
// returned errors, which it reports with their remedy; go-mysql's own would say the same again,
// or report as errors what is routine (the KILL of its connection when the tail stops).
type demoted struct{ slog.Handler }

func (d demoted) Enabled(ctx context.Context, l slog.Level) bool {
	return d.Handler.Enabled(ctx, l-4)
}

func (d demoted) Handle(ctx context.Context, r slog.Record) error {
	r.Level -= 4 // ERROR → WARN → INFO → DEBUG
	return d.Handler.Handle(ctx, r)
}

func (d demoted) WithAttrs(as []slog.Attr) slog.Handler { return demoted{d.Handler.WithAttrs(as)} }
func (d demoted) WithGroup(name string) slog.Handler    { return demoted{d.Handler.WithGroup(name)} }

// start finds where to resume and what must be dropped first:
//   - the oldest of the checkpoint in Redis and, when this process led until a moment ago, its
//     own checkpoint from replayWindow before it stopped (Redis may have lost what came after);
//   - with neither (Redis lost the checkpoint and no process remembers it), or when the binlog
//     needed is gone: the server's current position, after dropping every entity's cache;
//   - entities the checkpoint does not cover (added to the config, or covered by a leader with
//     another config) are dropped before the checkpoint covers them.
func (t *Tail) start(ctx context.Context, syncer *replication.BinlogSyncer) (*replication.BinlogStreamer, *session, error) {
	stored, raw, err := t.loadCheckpoint(ctx)
	if err != nil {
		return nil, nil, err
	}
	ok := raw != nil
	t.mu.Lock()
	reset := t.forceReset
	remembered, haveMemory := t.replayPoint()
	t.mu.Unlock()

	var cp Checkpoint
	switch {
	case reset:
		t.log.Warn("starting over at the server's current position: every configured entity's cache is dropped first")
	case ok && haveMemory:
		cp = stored
		if before(t.o.Flavor, remembered, stored) {
			cp = remembered
		}
		t.log.Info("resuming from the checkpoint", "position", cp.String(), "stored", stored.String(), "remembered", remembered.String())
	case ok:
		cp = stored
		t.log.Info("resuming from the checkpoint", "position", cp.String())
	case haveMemory:
		cp = remembered
		t.log.Warn("the checkpoint is gone from Redis (restart, failover or eviction): resuming from this process's own, from before the loss",
			"position", cp.String())
	default:
		reset = true
		t.log.Warn("no checkpoint: starting at the server's current position; every configured entity's cache is dropped first, " +
			"since rows cached before may have changed unseen")
	}
	// On a Redis Cluster the checkpoint lives on one master and the rows on all. A master that
	// restarted from a snapshot, or failed over, while no leader watched may hold rows whose
	// deletes it lost, and the checkpoint on another master cannot tell which.
	var identity string
	if _, cluster := t.o.Redis.(*redis.ClusterClient); cluster {
		if identity, err = t.redisIdentity(ctx); err != nil {
			return nil, nil, fmt.Errorf("reading the Redis Cluster masters' ids: %w", err)
		}
		if !reset && cp.Redis != identity {
			reset = true
			t.log.Warn("a Redis Cluster master restarted or failed over since the checkpoint was written (or the checkpoint "+
				"predates this check): what it lost cannot be told, so every entity's cache is dropped and the tail starts "+
				"at the current position", "checkpoint", cp.String())
		}
	}
	if reset {
		if cp, err = t.currentPosition(ctx); err != nil {
			return nil, nil, err
		}
		cp.Entities = map[string]string{}
		cp.XAComplete = t.recoverPrepared(ctx, &cp)
	}
	cp.Redis = identity
	set, pos, err := resumePoint(t.o.Flavor, cp)
	if err != nil {
		return nil, nil, err
	}
	var stream *replication.BinlogStreamer
	if set != nil {
		stream, err = syncer.StartSyncGTID(set)
	} else {
		stream, err = syncer.StartSync(pos)
	}
	if err != nil {
		return nil, nil, err
	}
	t.mu.Lock()
	t.forceReset = false
	t.identity = identity
	t.mu.Unlock()

	s := newSession(t, cp)
	s.stored = raw
	for _, e := range t.entities() {
		if !cp.covers(e, t.fingerprints[e]) {
			t.log.Info("the checkpoint does not cover this entity: dropping its cache before covering it", "entity", e)
			s.w.drop(e, "uncovered")
		}
	}
	if cp.Entities == nil {
		// Written by an earlier version, which kept no list of prepared XA transactions.
		s.cp.XAComplete = false
	}
	s.cp.Entities = maps.Clone(t.fingerprints)
	return stream, s, nil
}

// replayPoint is where this process would resume from its own memory: the newest checkpoint it
// saved at least replayWindow before it stopped leading, or its oldest. Only a process that
// stopped leading within the last two minutes remembers. Call with t.mu held.
func (t *Tail) replayPoint() (Checkpoint, bool) {
	if len(t.history) == 0 || t.lostAt.IsZero() || time.Since(t.lostAt) > 2*time.Minute {
		return Checkpoint{}, false
	}
	cp := t.history[0].cp
	for _, h := range t.history {
		if h.at.After(t.lostAt.Add(-replayWindow)) {
			break
		}
		cp = h.cp
	}
	return cp, true
}

// before reports whether a is an earlier position than b. Positions that cannot be ordered
// (GTID sets of different domains) compare by their binlog times.
func before(flavor string, a, b Checkpoint) bool {
	if a.GTID != "" && b.GTID != "" {
		sa, errA := mysql.ParseGTIDSet(flavor, a.GTID)
		sb, errB := mysql.ParseGTIDSet(flavor, b.GTID)
		if errA == nil && errB == nil {
			switch {
			case sa.Equal(sb):
				return false
			case sb.Contain(sa):
				return true
			case sa.Contain(sb):
				return false
			}
		}
		return a.EventTime < b.EventTime
	}
	if c := compareFiles(a.File, b.File); c != 0 {
		return c < 0
	}
	return a.Pos < b.Pos
}

// compareFiles orders binlog file names by their number (binlog.999999 comes before
// binlog.1000000), and by name where they have none.
func compareFiles(a, b string) int {
	ab, an, aok := strings.Cut(a, ".")
	bb, bn, bok := strings.Cut(b, ".")
	if aok && bok && ab == bb {
		x, errX := strconv.ParseUint(an, 10, 64)
		y, errY := strconv.ParseUint(bn, 10, 64)
		if errX == nil && errY == nil {
			return cmp.Compare(x, y)
		}
	}
	return strings.Compare(a, b)
}

// resumePoint is where a checkpoint resumes: by GTID set when it has one (MariaDB, or MySQL
// with gtid_mode on), else by binlog file and position.
func resumePoint(flavor string, cp Checkpoint) (mysql.GTIDSet, mysql.Position, error) {
	if cp.Flavor != "" && cp.Flavor != flavor {
		return nil, mysql.Position{}, fmt.Errorf("cdc: the checkpoint was written for flavor %q, but cdc.flavor is %q", cp.Flavor, flavor)
	}
	if cp.GTID != "" {
		set, err := mysql.ParseGTIDSet(flavor, cp.GTID)
		if err != nil {
			return nil, mysql.Position{}, fmt.Errorf("cdc: checkpoint GTID set %q: %w", cp.GTID, err)
		}
		return set, mysql.Position{}, nil
	}
	if cp.File == "" {
		return nil, mysql.Position{}, errors.New("cdc: the checkpoint has neither a GTID set nor a binlog file")
	}
	return nil, mysql.Position{Name: cp.File, Pos: cp.Pos}, nil
}

// tail streams the binlog until ctx ends or the stream fails. stop ends the leadership with a
// cause, for the saver.
func (t *Tail) tail(ctx context.Context, stop context.CancelCauseFunc) error {
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: t.o.ServerID, Flavor: t.o.Flavor, Host: t.o.Host, Port: t.o.Port,
		User: t.o.User, Password: t.o.Password,
		Logger:          slog.New(demoted{t.log.Handler()}).With("component", "binlog"),
		HeartbeatPeriod: time.Second, ReadTimeout: 5 * time.Second,
		// A dropped connection ends the stream and the tail resumes from its own checkpoint;
		// go-mysql's own retry would resume mid-transaction by file and position.
		DisableRetrySync: true,
		// Parsed events waiting to be processed: a bounded buffer keeps a huge transaction's
		// memory bounded too.
		EventCacheCount:     64,
		RowsEventDecodeFunc: t.decodeRows,
	})
	defer syncer.Close()
	stream, s, err := t.start(ctx, syncer)
	if err != nil {
		return fmt.Errorf("cdc: start: %w", err)
	}
	t.mu.Lock()
	t.oldest = nil // this session's changes only
	t.heads = nil
	t.mu.Unlock()
	t.setState(StateTailing, "", "")

	// The saver advances the checkpoint in binlog order, each step only once that change's
	// second delete is done.
	queue := make(chan pending, 4096)
	saverDone := make(chan error, 1)
	go func() { saverDone <- t.saver(ctx, queue, s.stored, stop) }()
	defer func() {
		close(queue)
		<-saverDone
	}()
	// The flusher submits the batches the loop cuts, in binlog order, and queues them for the
	// saver. A submit that fails ends the loop with its error.
	lctx, cancel := context.WithCancelCause(ctx)
	f := newFlusher()
	flushDone := make(chan struct{})
	go func() {
		defer close(flushDone)
		if err := t.flush(lctx, f, queue); err != nil {
			cancel(err)
		}
	}()
	defer func() {
		cancel(nil)
		<-flushDone
	}()
	// The drops of uncovered entities, and the first checkpoint (it says which entities this
	// leader covers), go first: no checkpoint covering them is saved before they are done.
	s.mark()
	if err := f.hand(lctx, s.cut()); err != nil {
		return t.loopErr(ctx, lctx, err)
	}

	// Events the syncer has parsed and the loop has not: while there are some, the loop adds
	// them to the batch; once there are none and the batch holds a change, it is handed to the
	// flusher at once, so a commit's deletes do not wait for more events that may not come.
	var parsed []*replication.BinlogEvent
	for {
		if len(parsed) == 0 {
			parsed = stream.DumpEvents()
		}
		if len(parsed) == 0 && s.dirty() {
			if err := f.hand(lctx, s.cut()); err != nil {
				return t.loopErr(ctx, lctx, err)
			}
		}
		var ev *replication.BinlogEvent
		if len(parsed) > 0 {
			ev, parsed = parsed[0], parsed[1:]
		} else if ev, err = stream.GetEvent(lctx); err != nil {
			return t.loopErr(ctx, lctx, fmt.Errorf("cdc: binlog stream: %w", err))
		}
		s.event(ev)
		if s.full() {
			if err := f.hand(lctx, s.cut()); err != nil {
				return t.loopErr(ctx, lctx, err)
			}
		}
	}
}

// loopErr is what ends the event loop: nothing when ctx ended, the flusher's error when it
// failed (and so ended lctx), err otherwise.
func (t *Tail) loopErr(ctx, lctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return nil
	case lctx.Err() != nil:
		return context.Cause(lctx)
	}
	return err
}
