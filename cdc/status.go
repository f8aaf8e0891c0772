package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/retry"
)

// States of a process's binlog tail.
const (
	StateStandby  = "standby"  // another process leads (or none does yet)
	StateStarting = "starting" // leading, connecting to the binlog
	StateTailing  = "tailing"  // leading and streaming
	StateStalled  = "stalled"  // trying to lead and failing: Error says why, Remedy what to do
)

// Status is a process's binlog tail as /status shows it. The leader publishes its own to Redis
// every second, so that every sidecar can show it.
type Status struct {
	State  string `json:"state"`
	Leader string `json:"leader,omitempty"` // the process that wrote it: host/pid
	// Error and Remedy say why a stalled tail cannot go on, without internal addresses; the
	// log has the details.
	Error    string `json:"error,omitempty"`
	Remedy   string `json:"remedy,omitempty"`
	Position string `json:"position,omitempty"` // the last commit processed
	// CaughtUpAt is the last time the tail had processed everything the server had written;
	// Behind is how far behind it was when it wrote this, in seconds.
	CaughtUpAt time.Time `json:"caught_up_at,omitzero"`
	Behind     float64   `json:"seconds_behind"`
	Resets     int       `json:"resets"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// View is what this process knows of the binlog tail: its own part and the leader's.
type View struct {
	Leading bool    `json:"leading"`
	Self    Status  `json:"self"`
	Leader  *Status `json:"leader,omitempty"` // nil: no leader published its status lately
	// SecondsBehind counts how long the tail has been behind the server's binlog head; it keeps
	// growing while no tail runs.
	SecondsBehind float64 `json:"seconds_behind"`
	// Checkpoint is the saved position, "" when there is none.
	Checkpoint string `json:"checkpoint"`
	// Covered says, per entity, whether the checkpoint covers it: its reads use the cache only then.
	Covered map[string]bool `json:"covered"`
}

type headSample struct {
	at  time.Time
	pos Checkpoint
}

func (t *Tail) setProcessed(cp Checkpoint) {
	t.processed.Store(&cp)
}

func (t *Tail) setState(state, errText, remedy string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status.State, t.status.Error, t.status.Remedy = state, errText, remedy
	t.status.Leader = t.id
	t.status.UpdatedAt = time.Now()
	if state != StateStalled {
		t.lastErr = ""
	}
}

// fail records a tail that cannot go on: one error log line naming the remedy (again every five
// minutes while it lasts), the stalled state, and the status published for the other sidecars.
func (t *Tail) fail(ctx context.Context, err error, publish bool) {
	summary, remedy := explain(err)
	t.mu.Lock()
	t.status.State, t.status.Error, t.status.Remedy = StateStalled, summary, remedy
	t.status.Leader = t.id
	t.status.UpdatedAt = time.Now()
	t.status.Resets = t.resets
	logIt := err.Error() != t.lastErr || time.Since(t.lastErrLog) > 5*time.Minute
	if logIt {
		t.lastErr, t.lastErrLog = err.Error(), time.Now()
	}
	st := t.status
	t.mu.Unlock()
	t.m.stalls.Inc()
	if logIt {
		t.log.Error("the binlog tail cannot go on: "+remedy, "err", err)
	}
	if publish {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		t.publish(pctx, st)
		cancel()
	}
}

// explain turns a tail's error into a summary without internal addresses and a remedy.
func explain(err error) (summary, remedy string) {
	var my *mysql.MyError
	var netErr net.Error
	switch {
	case isBinlogGone(err):
		return "the binlog needed to resume is no longer on the server (MySQL error 1236)",
			"keep binlogs longer than sidecache may be down (binlog_expire_logs_seconds); with cdc.on_binlog_gone: reset " +
				"(the default) sidecache drops the configured entities' caches and starts again at the current position"
	case errors.As(err, &my) && (my.Code == 1045 || my.Code == 1227 || my.Code == 1044 || my.Code == 1142):
		return fmt.Sprintf("MySQL refused the binlog user (error %d)", my.Code),
			"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO the cdc.dsn user"
	case errors.As(err, &my) && my.Code == 1236 && strings.Contains(strings.ToLower(my.Message), "same server"):
		return "another replica uses the same server id (MySQL error 1236)", "give cdc.server_id a value no other replica of the server uses"
	case errors.As(err, &my):
		return fmt.Sprintf("MySQL error %d while tailing", my.Code), "see the sidecar's log for the server's message"
	case strings.Contains(err.Error(), "Redis"), strings.Contains(err.Error(), "redis"):
		return "Redis is unreachable", "the tail resumes once Redis answers; check redis.addrs"
	case errors.As(err, &netErr), errors.Is(err, context.DeadlineExceeded):
		return "cannot reach MySQL for the binlog", "check cdc.dsn and that the server is up"
	}
	return "the binlog tail failed", "see the sidecar's log"
}

// isBinlogGone reports the server's answer to a resume from a position it no longer has:
// ER_MASTER_FATAL_ERROR_READING_BINLOG, whose message names purged files or GTIDs (the same
// code also reports a duplicate server id or an oversized event, which a reset would not cure).
func isBinlogGone(err error) bool {
	var my *mysql.MyError
	if !errors.As(err, &my) || my.Code != 1236 {
		return false
	}
	msg := strings.ToLower(my.Message)
	return strings.Contains(msg, "purged") || strings.Contains(msg, "could not find first log file") ||
		strings.Contains(msg, "could not find gtid state") || strings.Contains(msg, "not in the master's binlog")
}

// publish writes a status to Redis for the other sidecars (best effort: it expires when the
// leader stops writing it).
func (t *Tail) publish(ctx context.Context, st Status) {
	b, _ := json.Marshal(st)
	t.o.Redis.Set(ctx, t.statusKey(), b, 10*time.Second)
}

// monitor runs beside the leader's tail: every second it compares the position processed with
// the server's binlog head (for seconds behind), publishes the status, and stops the tail with
// errRedisChanged when Redis restarted or failed over (so that it resumes from before).
func (t *Tail) monitor(ctx context.Context, stop context.CancelCauseFunc) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	identity, _ := t.redisIdentity(ctx)
	for {
		now := time.Now()
		if head, err := t.currentPosition(ctx); err == nil {
			t.observeHead(now, head)
		}
		if id, err := t.redisIdentity(ctx); err == nil {
			t.mu.Lock()
			if t.identity != "" {
				// What the checkpoint records: a master that restarted between the tail's
				// start and this monitor's first look counts too.
				identity = t.identity
			}
			t.mu.Unlock()
			switch {
			case identity == "":
				identity = id
			case id != identity:
				if _, cluster := t.o.Redis.(*redis.ClusterClient); cluster {
					// The checkpoint lives on one master and the rows on all: a master restored
					// from a snapshot, or a failover, may have lost deletes that no checkpoint
					// can tell.
					t.log.Warn("a Redis Cluster master restarted or failed over: what it lost cannot be told, " +
						"so every entity's cache is dropped and the tail starts at the current position")
					t.mu.Lock()
					t.forceReset = true
					t.mu.Unlock()
				} else {
					t.log.Warn("Redis restarted or failed over: what it held lately may be lost; resuming from before it")
				}
				stop(errRedisChanged)
				return
			}
		}
		t.mu.Lock()
		st := t.status
		t.mu.Unlock()
		if st.State != StateStalled {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			t.publish(pctx, st)
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// observeHead records a sample of the server's binlog head and works out how far behind the
// processed position is: caught up to the newest sample it has reached.
func (t *Tail) observeHead(now time.Time, head Checkpoint) {
	processed := t.processed.Load()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.heads) < 600 {
		t.heads = append(t.heads, headSample{at: now, pos: head})
	} else {
		// Full: the newest sample moves on, so that "caught up" still means the newest head.
		t.heads[len(t.heads)-1] = headSample{at: now, pos: head}
	}
	for len(t.heads) > 0 && processed != nil && reached(t.o.Flavor, *processed, t.heads[0].pos) {
		t.status.CaughtUpAt = t.heads[0].at
		t.heads = t.heads[1:]
	}
	if len(t.heads) == 0 {
		t.status.CaughtUpAt = now
		t.status.Behind = 0
	} else if !t.status.CaughtUpAt.IsZero() {
		t.status.Behind = now.Sub(t.status.CaughtUpAt).Seconds()
	} else {
		t.status.Behind = now.Sub(t.started).Seconds()
	}
	if processed != nil {
		t.status.Position = processed.String()
	}
	t.status.Resets = t.resets
	t.status.UpdatedAt = now
}

// reached reports whether position p includes everything up to head.
func reached(flavor string, p, head Checkpoint) bool {
	if p.GTID != "" && head.GTID != "" {
		sp, errP := mysql.ParseGTIDSet(flavor, p.GTID)
		sh, errH := mysql.ParseGTIDSet(flavor, head.GTID)
		if errP == nil && errH == nil {
			return sp.Contain(sh)
		}
	}
	if head.File == "" {
		return false
	}
	if c := compareFiles(p.File, head.File); c != 0 {
		return c > 0
	}
	return p.Pos >= head.Pos
}

// redisIdentity names the Redis data set: each master's run id (new at every restart) and
// replication id (new at every failover).
func (t *Tail) redisIdentity(ctx context.Context) (string, error) {
	one := func(ctx context.Context, c redis.UniversalClient) (string, error) {
		info, err := c.Info(ctx, "server", "replication").Result()
		if err != nil {
			return "", err
		}
		var run, repl string
		for _, line := range strings.Split(info, "\n") {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "run_id:"); ok {
				run = v
			}
			if v, ok := strings.CutPrefix(line, "master_replid:"); ok {
				repl = v
			}
		}
		return run + "/" + repl, nil
	}
	cc, ok := t.o.Redis.(*redis.ClusterClient)
	if !ok {
		return one(ctx, t.o.Redis)
	}
	var mu sync.Mutex
	var ids []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		id, err := one(ctx, c)
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, id)
		return err
	})
	slices.Sort(ids)
	return strings.Join(ids, ","), err
}

// watch follows the saved checkpoint and the leader's status every half second, in every
// process: readers cache an entity only while the checkpoint covers it.
func (t *Tail) watch(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		t.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// refresh reads the checkpoint and the leader's status once. When Redis cannot be read the
// last view stays, and the time is kept: once Redis answers again, the cache is not used until
// the leader has caught up past that moment (see catchUpGate).
func (t *Tail) refresh(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cp, ok, err := t.LoadCheckpoint(rctx)
	if err != nil {
		t.mu.Lock()
		if t.lostRedisAt.IsZero() {
			t.lostRedisAt = time.Now()
		}
		t.mu.Unlock()
		t.gated.Store(true) // Redis may answer again before the next poll
		return
	}
	var st *Status
	if b, err := t.o.Redis.Get(rctx, t.statusKey()).Bytes(); err == nil {
		var s Status
		if json.Unmarshal(b, &s) == nil {
			st = &s
		}
	}
	t.mu.Lock()
	t.checkpoint = ""
	if ok {
		t.checkpoint = cp.String()
	}
	if st != nil {
		t.seen = *st
	}
	gated := t.catchUpGate()
	t.mu.Unlock()
	t.gated.Store(gated)
	covered := make(map[string]bool, len(t.fingerprints))
	for e, fp := range t.fingerprints {
		covered[e] = ok && cp.covers(e, fp)
		t.m.covered.WithLabelValues(e).Set(b2f(covered[e] && !gated))
	}
	t.coverage.Store(&covered)
}

// RedisReturned tells the tail that Redis answers again after failing (its circuit breaker
// closed): from now until the leader has caught up past this moment, Covered is false, so that
// no read answers a row Redis kept from before a change it missed. The caller calls it before
// the call that found Redis back returns its answer.
func (t *Tail) RedisReturned() {
	t.gated.Store(true)
	t.mu.Lock()
	t.lostRedisAt = time.Now()
	t.catchUpGate()
	t.mu.Unlock()
}

// catchUpGate reports whether the cache must wait for the binlog tail after Redis could not be
// read. While Redis was away nothing was invalidated, and Redis may come back with the rows it
// held (a hang, a partition, a failover that kept the data): until the leader has processed
// what the server wrote up to after Redis answered again, such a row may be older than its
// table, so reads bypass the cache. Call with t.mu held, after t.seen was read. It compares
// the leader's CaughtUpAt with this process's clock: hosts' clocks must agree to better than an
// outage's length (NTP keeps them within milliseconds).
func (t *Tail) catchUpGate() bool {
	if !t.lostRedisAt.IsZero() {
		t.recoveredAt, t.lostRedisAt = time.Now(), time.Time{}
		t.log.Warn("Redis answers again: reads bypass the cache until the binlog tail has invalidated what changed meanwhile")
	}
	if t.recoveredAt.IsZero() {
		return false
	}
	if t.seen.CaughtUpAt.After(t.recoveredAt) {
		t.recoveredAt = time.Time{}
		t.log.Info("the binlog tail caught up after Redis came back: reads use the cache again")
		return false
	}
	return true
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Covered reports whether the saved checkpoint covers entity: every change to its table up to
// the checkpoint is invalidated, so the cache may be used for it. It is false until the first
// checkpoint is read, and after Redis failed until the tail has caught up past its return.
func (t *Tail) Covered(entity string) bool {
	m := t.coverage.Load()
	return m != nil && (*m)[entity] && !t.gated.Load()
}

// WaitCovered waits until the checkpoint covers entity, or ctx ends.
func (t *Tail) WaitCovered(ctx context.Context, entity string) error {
	for {
		t.refresh(ctx)
		if t.Covered(entity) {
			return nil
		}
		if err := retry.Sleep(ctx, 200*time.Millisecond); err != nil {
			return fmt.Errorf("cdc: no binlog tail covers entity %q yet: %w", entity, err)
		}
	}
}

// View returns what this process knows of the binlog tail now.
func (t *Tail) View() View {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := View{Leading: t.leading.Load(), Self: t.status, Checkpoint: t.checkpoint, Covered: map[string]bool{}}
	if m := t.coverage.Load(); m != nil {
		for e, c := range *m {
			v.Covered[e] = c && !t.gated.Load()
		}
	}
	if !t.seen.UpdatedAt.IsZero() {
		seen := t.seen
		v.Leader = &seen
	}
	v.SecondsBehind = t.behind()
	return v
}

// behind is seconds behind the binlog head, from this process's own status while it leads,
// else from the leader's; while no leader writes one, it grows from the last time one was
// caught up (or from this process's start). Call with t.mu held.
func (t *Tail) behind() float64 {
	now := time.Now()
	st := t.seen
	if t.leading.Load() || t.status.UpdatedAt.After(st.UpdatedAt) {
		st = t.status
	}
	switch {
	case st.UpdatedAt.IsZero():
		return now.Sub(t.started).Seconds()
	case st.State == StateTailing && now.Sub(st.UpdatedAt) < 3*time.Second:
		if st.Behind == 0 {
			return 0
		}
		return st.Behind + now.Sub(st.UpdatedAt).Seconds()
	case !st.CaughtUpAt.IsZero():
		return now.Sub(st.CaughtUpAt).Seconds()
	}
	return now.Sub(t.started).Seconds()
}

// Stalled reports whether the tail this process knows of (its own, or the leader's) cannot go on.
func (t *Tail) Stalled() bool {
	v := t.View()
	if v.Leading {
		return v.Self.State == StateStalled
	}
	return v.Self.State == StateStalled || v.Leader != nil && v.Leader.State == StateStalled
}

// Leading reports whether this process tails the binlog now.
func (t *Tail) Leading() bool { return t.leading.Load() }
