// Package cdc tails the MySQL/MariaDB binlog and invalidates the cache keys of changed rows.
//
// It reads row events with go-mysql's replication.BinlogSyncer rather than canal: canal maps
// row values through the table's current schema, so catching up across an ALTER TABLE that
// moved columns would read the key from the wrong column. With binlog_row_metadata=FULL every
// event carries its own column names and primary key, and the key is taken from those.
//
// One sidecar per database tails at a time (a Redis leader lease); the checkpoint (GTID set,
// and file/position) advances only past changes whose deletes, both of them, are done.
package cdc

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/singleflight"
)

// Target is one entity served from a tailed table.
type Target struct {
	Entity    string
	KeyColumn string // the primary key column's name
	KeyIndex  int    // its position in the schema read at start: used only without row metadata
	Unsigned  bool
	Bits      int  // integer width; 0 for string keys
	Bloom     bool // add inserted ids to the entity's Bloom filter
}

// Options configure a Tail. Everything but Registerer, Logger and Filters is required.
type Options struct {
	Flavor   string // "mysql" or "mariadb"
	ServerID uint32
	Host     string
	Port     uint16
	User     string
	Password string
	Schema   string              // the database tailed
	Tables   map[string][]Target // by table name
	Prefix   string              // Redis key prefix

	DB          *sql.DB // the same server, for checks and the current position
	Redis       redis.UniversalClient
	Invalidator *invalidation.Invalidator
	Filters     *bloom.Filters
	// LeaderTTL is the leader lease period; a dead leader is replaced within it. Default 5s.
	LeaderTTL  time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Tail is the binlog tail of one database.
type Tail struct {
	o   Options
	log *slog.Logger
	m   *metrics

	// oldest is the binlog time of the oldest change not yet checkpointed (zero when none).
	mu     sync.Mutex
	oldest []time.Time
}

// New returns a Tail.
func New(o Options) *Tail {
	if o.LeaderTTL <= 0 {
		o.LeaderTTL = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	t := &Tail{o: o, log: o.Logger.With("component", "cdc", "schema", o.Schema)}
	t.m = newMetrics(o.Registerer, t.checkpointAge)
	return t
}

func (t *Tail) leaderKey() string     { return t.o.Prefix + "{cdc:" + t.o.Schema + "}:leader" }
func (t *Tail) checkpointKey() string { return t.o.Prefix + "{cdc:" + t.o.Schema + "}:checkpoint" }

// Checkpoint is where a tail resumes.
type Checkpoint struct {
	Flavor string `json:"flavor"`
	GTID   string `json:"gtid,omitempty"` // GTID set; resumes by GTID when set
	File   string `json:"file,omitempty"`
	Pos    uint32 `json:"pos,omitempty"`
	// EventTime is the binlog time of the last change it covers.
	EventTime int64 `json:"event_time"`
}

// String names the position, for retry messages and logs.
func (cp Checkpoint) String() string {
	if cp.GTID != "" {
		return cp.GTID
	}
	return fmt.Sprintf("%s:%d", cp.File, cp.Pos)
}

// LoadCheckpoint reads the saved checkpoint; ok is false when there is none.
func (t *Tail) LoadCheckpoint(ctx context.Context) (cp Checkpoint, ok bool, err error) {
	b, err := t.o.Redis.Get(ctx, t.checkpointKey()).Bytes()
	if errors.Is(err, redis.Nil) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, err
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		return Checkpoint{}, false, fmt.Errorf("cdc: checkpoint %s is not readable: %w", t.checkpointKey(), err)
	}
	return cp, true, nil
}

func (t *Tail) saveCheckpoint(ctx context.Context, cp Checkpoint) error {
	b, _ := json.Marshal(cp)
	return t.o.Redis.Set(ctx, t.checkpointKey(), b, 0).Err()
}

// Run tails while this process holds the leader lease and stands by otherwise, until ctx ends.
// The lease is a singleflight lease on the leader key: an owner token, renewed every ttl/3.
func (t *Tail) Run(ctx context.Context) error {
	leases := singleflight.NewLeases(t.o.Redis, t.o.LeaderTTL)
	for ctx.Err() == nil {
		lease, err := leases.Acquire(ctx, t.leaderKey())
		if err != nil || lease == nil {
			t.m.leader.Set(0)
			if err != nil && ctx.Err() == nil {
				t.log.Warn("cannot reach Redis for the leader lease", "err", err)
			}
			sleep(ctx, t.o.LeaderTTL/3)
			continue
		}
		t.m.leader.Set(1)
		t.log.Info("leading: tailing the binlog")
		err = t.lead(ctx, leases, lease)
		t.m.leader.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		t.log.Warn("stopped leading", "err", err)
		sleep(ctx, time.Second)
	}
	return nil
}

// errLeaseLost stops a tail whose leader lease could not be renewed.
var errLeaseLost = errors.New("leader lease lost")

// lead tails while the lease is kept. The first renewal that fails stops the tail: the lease
// can only pass to another sidecar a whole period after the last renewal, so this one has
// stopped before another starts.
func (t *Tail) lead(ctx context.Context, leases *singleflight.Leases, lease *singleflight.Lease) error {
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	keeper := leases.Keep([]*singleflight.Lease{lease})
	go func() {
		select {
		case <-keeper.Lost():
			cancel(errLeaseLost)
		case <-lctx.Done():
		}
	}()
	err := t.tail(lctx)
	cancel(nil)
	keeper.Stop()
	leases.Release([]*singleflight.Lease{lease})
	if cause := context.Cause(lctx); errors.Is(cause, errLeaseLost) {
		return cause
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// start finds where to resume: the checkpoint, or the server's current position.
func (t *Tail) start(ctx context.Context, syncer *replication.BinlogSyncer) (*replication.BinlogStreamer, Checkpoint, error) {
	cp, ok, err := t.LoadCheckpoint(ctx)
	if err != nil {
		return nil, cp, err
	}
	if !ok {
		if cp, err = t.currentPosition(ctx); err != nil {
			return nil, cp, err
		}
		t.log.Info("no checkpoint: starting at the current binlog position; earlier changes are not replayed",
			"gtid", cp.GTID, "file", cp.File, "pos", cp.Pos)
	} else {
		t.log.Info("resuming from the checkpoint", "gtid", cp.GTID, "file", cp.File, "pos", cp.Pos)
	}
	set, pos, err := resumePoint(t.o.Flavor, cp)
	if err != nil {
		return nil, cp, err
	}
	if set != nil {
		st, err := syncer.StartSyncGTID(set)
		return st, cp, err
	}
	st, err := syncer.StartSync(pos)
	return st, cp, err
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

// pending is a change (a transaction or a DDL) waiting for its second deletes.
type pending struct {
	cp   Checkpoint
	done <-chan struct{}
	at   time.Time // binlog time
}

// tail streams the binlog until ctx ends or the stream fails.
func (t *Tail) tail(ctx context.Context) error {
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: t.o.ServerID, Flavor: t.o.Flavor, Host: t.o.Host, Port: t.o.Port,
		User: t.o.User, Password: t.o.Password, Logger: t.log.With("component", "binlog"),
		HeartbeatPeriod: time.Second, ReadTimeout: 5 * time.Second,
	})
	defer syncer.Close()
	stream, cp, err := t.start(ctx, syncer)
	if err != nil {
		return fmt.Errorf("cdc: start: %w", err)
	}
	cp.Flavor = t.o.Flavor
	t.mu.Lock()
	t.oldest = nil // this session's changes only
	t.mu.Unlock()

	// The saver advances the checkpoint in binlog order, each step only once that change's
	// second delete is done.
	queue := make(chan pending, 100_000)
	saverDone := make(chan error, 1)
	go func() { saverDone <- t.saver(ctx, queue) }()
	defer func() {
		close(queue)
		<-saverDone
	}()

	b := batch{keys: map[string]bool{}, inserts: map[string][]string{}}
	inTxn := false // between a transaction's start and its XID or COMMIT
	for {
		var ev *replication.BinlogEvent
		if b.changes > 0 {
			// Something waits to be flushed: flush as soon as the stream pauses.
			gctx, cancel := context.WithTimeout(ctx, 2*time.Millisecond)
			ev, err = stream.GetEvent(gctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				if err := t.flush(ctx, &b, queue); err != nil {
					return err
				}
				continue
			}
		} else {
			ev, err = stream.GetEvent(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cdc: binlog stream: %w", err)
		}
		at := time.Unix(int64(ev.Header.Timestamp), 0)
		switch e := ev.Event.(type) {
		case *replication.RotateEvent:
			cp.File, cp.Pos = string(e.NextLogName), uint32(e.Position)
		case *replication.RowsEvent:
			t.rows(ev.Header.EventType, e, &b)
		case *replication.XIDEvent:
			inTxn = false
			cp.Pos = ev.Header.LogPos
			if e.GSet != nil {
				cp.GTID = e.GSet.String()
			}
			cp.EventTime = at.Unix()
			b.commit(cp, at)
		case *replication.MariadbGTIDEvent:
			// MariaDB opens a transaction with its GTID event (no BEGIN); a standalone one
			// (DDL) has no terminating COMMIT.
			inTxn = !e.IsStandalone()
		case *replication.QueryEvent:
			q := strings.ToUpper(strings.TrimSpace(string(e.Query)))
			switch {
			case q == "BEGIN":
				inTxn = true
				continue
			case q == "COMMIT", strings.HasPrefix(q, "ROLLBACK") && !strings.HasPrefix(q, "ROLLBACK TO"):
				// The end of a transaction (a ROLLBACK is logged only when a non-transactional
				// table kept its changes, so its keys are invalidated all the same).
				inTxn = false
			case inTxn:
				// SAVEPOINT, ROLLBACK TO, XA END...: inside a transaction, not a commit point.
				// The GTID set already covers the whole transaction, so checkpointing here
				// could skip the rest of its rows.
				continue
			default:
				t.m.events.WithLabelValues("ddl").Inc()
			}
			cp.Pos = ev.Header.LogPos
			if e.GSet != nil {
				cp.GTID = e.GSet.String()
			}
			cp.EventTime = at.Unix()
			b.commit(cp, at)
		}
		if len(b.keys) >= 1000 || b.changes >= 1000 {
			if err := t.flush(ctx, &b, queue); err != nil {
				return err
			}
		}
	}
}

// batch collects committed changes between flushes.
type batch struct {
	keys    map[string]bool
	inserts map[string][]string // entity → ids inserted (for the Bloom filter)
	changes int                 // commits in the batch
	last    Checkpoint
	first   time.Time // binlog time of the oldest commit in the batch
	open    []string  // keys of the transaction in progress
	openIns map[string][]string
}

func (b *batch) commit(cp Checkpoint, at time.Time) {
	for _, k := range b.open {
		b.keys[k] = true
	}
	for e, ids := range b.openIns {
		b.inserts[e] = append(b.inserts[e], ids...)
	}
	b.open, b.openIns = b.open[:0], nil
	if b.changes == 0 {
		b.first = at
	}
	b.changes++
	b.last = cp
}

// rows turns a row event of a tailed table into keys of the open transaction.
func (t *Tail) rows(typ replication.EventType, e *replication.RowsEvent, b *batch) {
	if string(e.Table.Schema) != t.o.Schema {
		return
	}
	targets := t.o.Tables[string(e.Table.Table)]
	if len(targets) == 0 {
		return
	}
	action := "update"
	switch typ {
	case replication.WRITE_ROWS_EVENTv0, replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2,
		replication.MARIADB_WRITE_ROWS_COMPRESSED_EVENT_V1:
		action = "insert"
	case replication.DELETE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv2,
		replication.MARIADB_DELETE_ROWS_COMPRESSED_EVENT_V1:
		action = "delete"
	}
	rowsPerChange := 1
	if action == "update" {
		rowsPerChange = 2 // before and after: the key may have changed
	}
	t.m.events.WithLabelValues(action).Add(float64(len(e.Rows) / rowsPerChange))
	for _, tg := range targets {
		idx := keyIndex(e.Table, tg)
		for _, row := range e.Rows {
			if idx < 0 || idx >= len(row) {
				t.m.unmapped.Inc()
				t.log.Error("a row event has no key column; its key is not invalidated", "table", string(e.Table.Table), "entity", tg.Entity)
				continue
			}
			id, ok := formatID(row[idx], tg)
			if !ok {
				t.m.unmapped.Inc()
				continue
			}
			b.open = append(b.open, singleflight.CacheKey(t.o.Prefix, tg.Entity, id))
			if action == "insert" && tg.Bloom {
				if b.openIns == nil {
					b.openIns = map[string][]string{}
				}
				b.openIns[tg.Entity] = append(b.openIns[tg.Entity], id)
			}
		}
	}
}

// keyIndex finds the key column in the event's own metadata: by name, then by the primary key
// it declares, and only without metadata by the schema read at start.
func keyIndex(tm *replication.TableMapEvent, tg Target) int {
	if names := tm.ColumnNameString(); len(names) > 0 {
		for i, n := range names {
			if strings.EqualFold(n, tg.KeyColumn) {
				return i
			}
		}
		return -1
	}
	if len(tm.PrimaryKey) == 1 {
		return int(tm.PrimaryKey[0])
	}
	return tg.KeyIndex
}

// formatID writes a key value the way the read path writes ids: integers in plain decimal
// (unsigned columns arrive as signed values of their width), strings as they are.
func formatID(v any, tg Target) (string, bool) {
	var n int64
	switch v := v.(type) {
	case int8:
		n = int64(v)
	case int16:
		n = int64(v)
	case int32:
		n = int64(v)
	case int64:
		n = v
	case int:
		n = int64(v)
	case uint64:
		return strconv.FormatUint(v, 10), true
	case uint32:
		return strconv.FormatUint(uint64(v), 10), true
	case []byte:
		return string(v), true
	case string:
		return v, true
	default:
		return "", false
	}
	if tg.Unsigned && n < 0 && tg.Bits > 0 && tg.Bits < 64 {
		return strconv.FormatUint(uint64(n)&(1<<tg.Bits-1), 10), true
	}
	if tg.Unsigned {
		return strconv.FormatUint(uint64(n), 10), true
	}
	return strconv.FormatInt(n, 10), true
}

// flush hands a batch to invalidation: inserted ids into the Bloom filters first (so the key's
// delete never exposes an id the filter calls absent), then the first delete of every key, and
// queues the batch's checkpoint behind its second delete.
func (t *Tail) flush(ctx context.Context, b *batch, queue chan<- pending) error {
	if t.o.Filters != nil {
		for entity, ids := range b.inserts {
			for {
				err := t.o.Filters.Add(ctx, entity, ids...)
				if err == nil {
					break
				}
				t.log.Warn("bloom add failed; retrying", "entity", entity, "err", err)
				sleep(ctx, 100*time.Millisecond)
				if ctx.Err() != nil {
					return nil
				}
			}
		}
	}
	keys := make([]string, 0, len(b.keys))
	for k := range b.keys {
		keys = append(keys, k)
	}
	done, err := t.o.Invalidator.DeleteAt(ctx, keys, b.last.String())
	if err != nil {
		return nil // ctx ended; the checkpoint was not advanced past these
	}
	if len(keys) > 0 {
		t.m.lag.Observe(time.Since(b.first).Seconds())
	}
	t.mu.Lock()
	t.oldest = append(t.oldest, b.first)
	t.mu.Unlock()
	select {
	case queue <- pending{cp: b.last, done: done, at: b.first}:
	case <-ctx.Done():
		return nil
	}
	// A transaction still open (the stream paused inside it) carries over.
	*b = batch{keys: map[string]bool{}, inserts: map[string][]string{}, open: b.open, openIns: b.openIns}
	return nil
}

// saver writes the checkpoint of each change once its second delete is done, in order, at
// most every 100ms, and once more on the way out.
func (t *Tail) saver(ctx context.Context, queue <-chan pending) error {
	var latest *Checkpoint
	var saved time.Time
	save := func(sctx context.Context) {
		if latest == nil {
			return
		}
		if err := t.saveCheckpoint(sctx, *latest); err != nil {
			t.log.Warn("saving the checkpoint failed", "err", err)
			return
		}
		t.m.checkpointTime.Set(float64(latest.EventTime))
		latest, saved = nil, time.Now()
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		save(sctx)
		cancel()
	}()
	for p := range queue {
		select {
		case <-p.done:
		case <-ctx.Done():
			return nil // not done: the checkpoint stays before it
		}
		t.mu.Lock()
		t.oldest = t.oldest[1:]
		t.mu.Unlock()
		cp := p.cp
		latest = &cp
		if time.Since(saved) >= 100*time.Millisecond || len(queue) == 0 {
			save(ctx)
		}
	}
	return nil
}

// checkpointAge is how far behind the checkpoint is: the age of the oldest change not yet
// checkpointed, 0 when all are.
func (t *Tail) checkpointAge() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.oldest) == 0 {
		return 0
	}
	return time.Since(t.oldest[0]).Seconds()
}
