package cdc

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/sidecache/sidecache/internal/keys"
)

// flushAt is how many keys (or ids to add to a filter) a batch holds before it is flushed, even
// in the middle of a transaction: memory stays bounded whatever a transaction's size. Rows read
// from the binlog are committed, so deleting their keys before the transaction's end is safe;
// only the checkpoint waits for the end.
const flushAt = 1000

// work is what a batch of binlog events asks of the cache.
type work struct {
	keys  map[string]struct{}
	adds  map[string][]string // entity → ids to add to its Bloom filter (before the deletes)
	drops map[string]string   // entity → why its whole cache goes
	n     int
}

func newWork() work {
	return work{keys: map[string]struct{}{}}
}

// reset empties w for the next batch. The key set is cleared and kept, so that a batch after a
// big one does not grow it again; adds and drops went to the batch and are made anew on use.
func (w *work) reset() {
	clear(w.keys)
	w.adds, w.drops, w.n = nil, nil, 0
}

func (w *work) key(k string) {
	if _, ok := w.keys[k]; !ok {
		w.keys[k] = struct{}{}
		w.n++
	}
}

func (w *work) add(entity, id string) {
	if w.adds == nil {
		w.adds = map[string][]string{}
	}
	w.adds[entity] = append(w.adds[entity], id)
	w.n++
}

func (w *work) drop(entity, reason string) {
	if w.drops == nil {
		w.drops = map[string]string{}
	}
	if _, ok := w.drops[entity]; !ok {
		w.drops[entity] = reason
	}
}

func (w *work) empty() bool { return len(w.keys) == 0 && len(w.adds) == 0 && len(w.drops) == 0 }

// merge adds o's work to w.
func (w *work) merge(o *work) {
	for k := range o.keys {
		w.key(k)
	}
	for e, ids := range o.adds {
		for _, id := range ids {
			w.add(e, id)
		}
	}
	for e, why := range o.drops {
		w.drop(e, why)
	}
}

// xaChanges are the changes of one XA transaction, held until its XA COMMIT.
type xaChanges struct {
	w        work
	entities map[string]bool
}

func (x *xaChanges) names() []string { return slices.Sorted(maps.Keys(x.entities)) }

// session is one tailing session: the position, the open transaction and the work not yet
// flushed.
type session struct {
	t      *Tail
	cp     Checkpoint // as of the last commit point processed
	stored []byte     // the checkpoint in Redis when the session began, nil for none

	inTxn    bool
	xa       *xaChanges // the open transaction is an XA transaction: its changes wait for XA COMMIT
	xaID     string     // from its XA END
	prepared map[string]*xaChanges
	lastGSet string // the newest GTID set an event carried
	openGTID string // the GTID of the event group being read, "" when unknown

	w       work
	marked  bool            // a commit point was processed since the last flush
	first   time.Time       // binlog time of the oldest change in w
	dropped map[string]bool // entities dropped since the open transaction began: once is enough
}

func newSession(t *Tail, cp Checkpoint) *session {
	s := &session{t: t, cp: cp, w: newWork(), prepared: map[string]*xaChanges{}, dropped: map[string]bool{}}
	s.cp.Flavor = t.o.Flavor
	for xid, entities := range cp.Prepared {
		x := &xaChanges{w: newWork(), entities: map[string]bool{}}
		for _, e := range entities {
			x.entities[e] = true
			x.w.drop(e, "xa")
		}
		s.prepared[xid] = x
	}
	return s
}

func (s *session) dirty() bool { return s.marked || !s.w.empty() }

// full reports a batch to flush now: a thousand keys, or a drop once its transaction ended (a
// drop scans every key in Redis, so a transaction's drops of one entity run once).
func (s *session) full() bool { return s.w.n >= flushAt || len(s.w.drops) > 0 && !s.inTxn }

// drop drops an entity's cache, once per transaction: a drop runs after the transaction was
// committed, so it also covers the transaction's later rows.
func (s *session) drop(entity, reason string) {
	if s.dropped[entity] {
		return
	}
	s.dropped[entity] = true
	s.work().drop(entity, reason)
	if s.xa != nil {
		s.xa.entities[entity] = true
	}
}

// work returns where the open transaction's changes go.
func (s *session) work() *work {
	if s.xa != nil {
		return &s.xa.w
	}
	return &s.w
}

// event processes one binlog event.
func (s *session) event(ev *replication.BinlogEvent) {
	if s.first.IsZero() && ev.Header.Timestamp != 0 { // heartbeats and fake rotations have none
		s.first = time.Unix(int64(ev.Header.Timestamp), 0)
	}
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		s.cp.File, s.cp.Pos = string(e.NextLogName), uint32(e.Position)
	case *replication.MariadbGTIDEvent:
		// MariaDB opens a transaction with its GTID event (no BEGIN); a standalone one (DDL,
		// XA COMMIT) has no terminating COMMIT.
		s.begin()
		s.openGTID = e.GTID.String()
		s.inTxn = !e.IsStandalone()
		if s.inTxn && e.Flags&mariadbPreparedXA != 0 {
			s.xa = &xaChanges{w: newWork(), entities: map[string]bool{}}
		}
	case *replication.GTIDEvent:
		s.begin() // MySQL: a new group; BEGIN or XA START opens its transaction
		s.openGTID = ""
		if next, err := e.GTIDNext(); err == nil {
			s.openGTID = next.String()
		}
	case *replication.RowsEvent:
		s.rows(ev.Header.EventType, e)
	case *replication.XIDEvent:
		if e.GSet != nil {
			s.lastGSet = e.GSet.String()
		}
		s.endXA(true)
		s.inTxn = false
		s.commit(ev)
	case *replication.QueryEvent:
		if e.GSet != nil {
			s.lastGSet = e.GSet.String()
		}
		s.query(ev, e)
	case *replication.TransactionPayloadEvent:
		// A transaction compressed by a session (MySQL 8): go-mysql has decoded its events.
		for _, inner := range e.Events {
			s.event(inner)
		}
	case *replication.ExecuteLoadQueryEvent:
		// LOAD DATA logged as a statement: the event does not say which table it loaded.
		s.t.log.Info("a LOAD DATA logged as a statement: dropping every entity's cache")
		for _, en := range s.t.entities() {
			s.drop(en, "statement")
		}
	case *replication.GenericEvent:
		if ev.Header.EventType == replication.XA_PREPARE_LOG_EVENT {
			s.prepare(ev, e.Data)
		}
	}
}

// begin starts a new event group: nothing of an earlier one is open any more.
func (s *session) begin() {
	s.inTxn, s.xa, s.xaID = false, nil, ""
}

// query handles a statement: transaction control, XA, or a statement that changed rows
// without row events (DDL, or a session that logs in STATEMENT format).
func (s *session) query(ev *replication.BinlogEvent, e *replication.QueryEvent) {
	q := strings.TrimSpace(string(e.Query))
	upper := strings.ToUpper(q[:min(len(q), 40)])
	switch {
	case upper == "BEGIN":
		s.inTxn = true
		return
	case strings.HasPrefix(upper, "XA START") || strings.HasPrefix(upper, "XA BEGIN"):
		s.inTxn = true
		s.xa = &xaChanges{w: newWork(), entities: map[string]bool{}}
		return
	case strings.HasPrefix(upper, "XA END"):
		s.xaID = xidFromQuery(q)
		return
	case strings.HasPrefix(upper, "XA COMMIT"):
		if xid := xidFromQuery(q); s.ownXA(xid) {
			s.endXA(true) // XA COMMIT ... ONE PHASE of the transaction this group holds
		} else {
			s.commitPrepared(xid)
		}
	case strings.HasPrefix(upper, "XA ROLLBACK"):
		if xid := xidFromQuery(q); s.ownXA(xid) {
			s.endXA(false)
		} else {
			delete(s.prepared, xid)
		}
	case upper == "COMMIT":
		s.endXA(true)
	case strings.HasPrefix(upper, "ROLLBACK") && !strings.HasPrefix(upper, "ROLLBACK TO"):
		// A ROLLBACK is logged only when a non-transactional table kept its changes, so its
		// keys are invalidated all the same.
		s.endXA(true)
	case strings.HasPrefix(upper, "SAVEPOINT") || strings.HasPrefix(upper, "ROLLBACK TO") || strings.HasPrefix(upper, "RELEASE"):
		return
	default:
		entities, harmless := s.t.statementEntities(string(e.Schema), q)
		if s.inTxn && !harmless && len(entities) == 0 {
			// A write logged as a statement inside a transaction that names no tailed table
			// may still change one, through a trigger, a view or a function.
			entities = s.t.entities()
		}
		if len(entities) > 0 {
			s.t.m.events.WithLabelValues("statement").Inc()
			s.t.log.Info("a statement changed tables without row events: dropping the entities' caches",
				"entities", entities, "statement", truncate(q, 200))
		}
		for _, en := range entities {
			s.drop(en, "statement")
		}
		if s.inTxn {
			return // a statement inside a transaction; its commit comes later
		}
	}
	s.inTxn = false
	s.commit(ev)
}

// ownXA reports whether xid names the XA transaction this event group holds open.
func (s *session) ownXA(xid string) bool {
	return s.xa != nil && s.inTxn && (s.xaID == "" || s.xaID == xid)
}

// endXA ends the open transaction: a committed XA transaction's changes join the batch, a
// rolled back one's are dropped.
func (s *session) endXA(committed bool) {
	if s.xa != nil && committed {
		s.w.merge(&s.xa.w)
	}
	s.xa, s.xaID = nil, ""
}

// prepare ends the prepared part of an XA transaction: its changes wait for XA COMMIT. MySQL
// logs XA COMMIT ... ONE PHASE as a prepare event with its one-phase flag set: a commit.
func (s *session) prepare(ev *replication.BinlogEvent, data []byte) {
	xid := s.xaID
	if xid == "" {
		xid = xidFromPrepare(data)
	}
	if len(data) > 0 && data[0] == 1 {
		s.endXA(true)
	} else if s.xa != nil && xid != "" {
		s.prepared[xid] = s.xa
	} else if s.xa != nil {
		// An XA transaction this tail cannot name: invalidate it now and again at every XA
		// COMMIT it cannot match (XAComplete off).
		s.w.merge(&s.xa.w)
		s.cp.XAComplete = false
	}
	s.xa, s.xaID = nil, ""
	s.inTxn = false
	s.commit(ev)
}

// commitPrepared handles the XA COMMIT of a transaction prepared earlier.
func (s *session) commitPrepared(xid string) {
	if x, ok := s.prepared[xid]; ok {
		delete(s.prepared, xid)
		s.w.merge(&x.w)
		return
	}
	if !s.cp.XAComplete {
		s.t.log.Warn("XA COMMIT of a transaction prepared before this tail's start: its changes are unknown, so every entity's cache is dropped", "xid", xid)
		for _, e := range s.t.entities() {
			s.drop(e, "xa")
		}
	}
}

// commit records a commit point: the position after ev, which the checkpoint may reach once
// everything before it is invalidated.
func (s *session) commit(ev *replication.BinlogEvent) {
	s.cp.Pos = ev.Header.LogPos
	if s.lastGSet != "" {
		s.cp.GTID = s.lastGSet
	}
	s.cp.EventTime = int64(ev.Header.Timestamp)
	s.marked = true
	clear(s.dropped)
}

// mark makes the current position a commit point to be saved (the start of a session).
func (s *session) mark() { s.marked = true }

// rows turns a row event of a tailed table into keys to delete and ids to add to filters.
func (s *session) rows(typ replication.EventType, e *replication.RowsEvent) {
	t := s.t
	targets := t.targets(e.Table)
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
	step := 1
	if action == "update" {
		step = 2 // before and after images: the key may have changed
	}
	t.m.events.WithLabelValues(action).Add(float64(len(e.Rows) / step))
	w := s.work()
	for _, tg := range targets {
		if s.xa != nil {
			s.xa.entities[tg.Entity] = true
		}
		if _, dropping := w.drops[tg.Entity]; dropping || s.dropped[tg.Entity] {
			continue // the whole cache goes anyway
		}
		read := t.keyReader(e.Table, tg)
		for i := 0; i < len(e.Rows); i += step {
			var ids [2]string
			ok := true
			for j := 0; j < step && i+j < len(e.Rows); j++ {
				var skipped []int // columns a minimal or noblob row image leaves out
				if i+j < len(e.SkippedColumns) {
					skipped = e.SkippedColumns[i+j]
				}
				if ids[j], ok = read(e.Rows[i+j], skipped); !ok {
					break
				}
			}
			if !ok {
				t.unreadable(tg, string(e.Table.Table))
				s.drop(tg.Entity, "unreadable_key")
				break
			}
			if tg.Lookup {
				for _, id := range ids[:step] {
					if id != nullLookup {
						w.key(keys.Value(t.o.Prefix, tg.Entity, id))
					}
				}
				continue
			}
			w.key(keys.Value(t.o.Prefix, tg.Entity, ids[0]))
			switch {
			case action == "insert" && tg.Bloom:
				w.add(tg.Entity, ids[0])
			case action == "update":
				if ids[1] != ids[0] {
					// A key move: the new key exists from now on, so the filter must learn it
					// before its key is deleted, like an insert's.
					w.key(keys.Value(t.o.Prefix, tg.Entity, ids[1]))
					if tg.Bloom {
						w.add(tg.Entity, ids[1])
					}
				}
			}
		}
		if s.xa != nil && len(s.xa.w.keys) > xaMaxKeys {
			// Too many to hold until the commit: drop the entities whole at the commit instead.
			for en := range s.xa.entities {
				s.drop(en, "xa")
			}
			s.xa.w.keys, s.xa.w.adds = map[string]struct{}{}, nil
		}
	}
}

// targets returns the targets of the table a row event changed: none for a table that is not
// tailed.
func (t *Tail) targets(tm *replication.TableMapEvent) []Target {
	if t.fold(string(tm.Schema)) != t.fold(t.o.Schema) {
		return nil
	}
	return t.tables[t.fold(string(tm.Table))]
}

// decodeRows is the syncer's decoder of row events: it decodes the rows of tailed tables only.
// The rows of every other table are never read, and decoding them, every column of every
// image, would cost the syncer as much as those of the tailed ones.
func (t *Tail) decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil || len(t.targets(e.Table)) == 0 {
		return err
	}
	return e.DecodeData(pos, data)
}

// nullLookup is keyReader's id of a lookup's image with a NULL in its columns: no id has it,
// since ids are valid UTF-8.
const nullLookup = "\xff"

// keyReader returns the function that reads a row image's id for tg, as the read path writes
// ids: each key column's value in the id's form, joined as keys.JoinID joins them. It reports
// false for a row whose key cannot be read, one of whose columns the image left out (skipped)
// among them: a lookup column left out is not NULL, its value is unknown.
func (t *Tail) keyReader(tm *replication.TableMapEvent, tg Target) func(row []any, skipped []int) (string, bool) {
	idx := make([]int, len(tg.Key))
	charsets := make([]string, len(tg.Key))
	for i := range tg.Key {
		idx[i] = keyIndex(tm, tg, i)
		charsets[i] = t.keyCharset(tm, idx[i])
	}
	parts := make([]string, len(tg.Key))
	return func(row []any, skipped []int) (string, bool) {
		for i, at := range idx {
			if at < 0 || at >= len(row) || slices.Contains(skipped, at) {
				return "", false
			}
			if row[at] == nil && tg.Lookup {
				return nullLookup, true
			}
			var ok bool
			if parts[i], ok = formatID(row[at], tg.Key[i], charsets[i]); !ok {
				return "", false
			}
		}
		return keys.JoinID(parts), true
	}
}

// keyIndex finds key column i in the event's own metadata: by name, then (for a primary key)
// by the primary key it declares, and only without metadata by the schema read at start.
func keyIndex(tm *replication.TableMapEvent, tg Target, i int) int {
	key := tg.Key
	if names := tm.ColumnNameString(); len(names) > 0 {
		for at, n := range names {
			if strings.EqualFold(n, key[i].Name) {
				return at
			}
		}
		return -1
	}
	if len(tm.PrimaryKey) == len(key) && !tg.Lookup {
		return int(tm.PrimaryKey[i])
	}
	return key[i].Index
}

// keyCharset is the character set of a string key column as the event declares it ("" when
// the event carries no collations, or for other columns).
func (t *Tail) keyCharset(tm *replication.TableMapEvent, idx int) string {
	if idx < 0 || t.charsets == nil || len(tm.DefaultCharset) == 0 && len(tm.ColumnCharset) == 0 {
		return ""
	}
	id, ok := tm.CollationMap()[idx]
	if !ok {
		return ""
	}
	if cs, ok := t.charsets[id]; ok {
		return cs
	}
	return "unknown"
}

// formatID writes a key value the way the read path writes ids: integers in plain decimal
// (without row metadata unsigned columns arrive as signed values of their width), strings as
// they are. ok is false for a value whose id cannot be known: a type no key has, or a string
// that is not UTF-8 or is in a character set whose bytes the read path would see differently.
func formatID(v any, tg KeyColumn, charset string) (string, bool) {
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
	case uint8:
		return strconv.FormatUint(uint64(v), 10), true
	case uint16:
		return strconv.FormatUint(uint64(v), 10), true
	case uint32:
		return strconv.FormatUint(uint64(v), 10), true
	case uint64:
		return strconv.FormatUint(v, 10), true
	case uint:
		return strconv.FormatUint(uint64(v), 10), true
	case []byte:
		return stringID(string(v), charset)
	case string:
		return stringID(v, charset)
	default:
		return "", false
	}
	if tg.Bits == 0 {
		return "", false // an integer where the key is a string: the column changed type
	}
	if tg.Unsigned && n < 0 && tg.Bits < 64 {
		return strconv.FormatUint(uint64(n)&(1<<tg.Bits-1), 10), true
	}
	if tg.Unsigned {
		return strconv.FormatUint(uint64(n), 10), true
	}
	return strconv.FormatInt(n, 10), true
}

// stringID turns a string key's bytes into the id the read path sees, which reads through a
// utf8mb4 connection: UTF-8 as it is, latin1 converted, and in any other character set only
// ASCII (the same bytes in all of them).
func stringID(s, charset string) (string, bool) {
	switch charset {
	case "", "utf8mb4", "utf8mb3", "utf8", "ascii":
		return s, utf8.ValidString(s)
	case "latin1":
		return latin1ToUTF8(s), true
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return "", false
		}
	}
	return s, true
}

// latin1High is MySQL's latin1 from 0x80 to 0x9f: Windows-1252, with the five bytes it leaves
// undefined mapped to the C1 controls of the same value.
var latin1High = [32]rune{
	0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
	0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
}

func latin1ToUTF8(s string) string {
	var b strings.Builder
	b.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x80:
			b.WriteByte(c)
		case c < 0xa0:
			b.WriteRune(latin1High[c-0x80])
		default:
			b.WriteRune(rune(c))
		}
	}
	return b.String()
}

// unreadable reports a row whose key could not be read, at most once a minute per entity.
func (t *Tail) unreadable(tg Target, table string) {
	t.m.unmapped.Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lastUnreadable == nil {
		t.lastUnreadable = map[string]time.Time{}
	}
	if time.Since(t.lastUnreadable[tg.Entity]) < time.Minute {
		return
	}
	t.lastUnreadable[tg.Entity] = time.Now()
	t.log.Error("a row of a tailed table has a key that cannot be read (the key column was renamed, "+
		"changed type or character set, or binlog_row_image is not FULL): dropping the entity's whole cache; "+
		"restart sidecache after changing a key column", "entity", tg.Entity, "table", table, "key", tg.keyNames())
}

// statementEntities returns the entities whose tables a statement names, and whether the
// statement is one that leaves every row as it was.
func (t *Tail) statementEntities(defaultSchema, q string) (entities []string, harmless bool) {
	tables, databases, harmless := statementRefs(q)
	hit := map[string]bool{}
	for _, db := range databases {
		if t.fold(db) == t.fold(t.o.Schema) {
			for e := range t.fingerprints {
				hit[e] = true
			}
		}
	}
	for _, ref := range tables {
		schema := ref.schema
		if schema == "" {
			schema = defaultSchema
		}
		if t.fold(schema) != t.fold(t.o.Schema) {
			continue
		}
		for _, tg := range t.tables[t.fold(ref.table)] {
			hit[tg.Entity] = true
		}
	}
	return slices.Sorted(maps.Keys(hit)), harmless
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// waitGTID is the GTID set a replica must have applied to have every change of the batch: the
// last commit point's, and, when the batch was flushed in the middle of a transaction (a
// thousand keys), that transaction's own GTID too, since it is not committed in s.cp yet.
// "" without GTIDs (a MySQL server without gtid_mode).
func (s *session) waitGTID() string {
	if s.cp.GTID == "" {
		return ""
	}
	if !s.inTxn || s.openGTID == "" {
		return s.cp.GTID
	}
	set, err := mysql.ParseGTIDSet(s.t.o.Flavor, s.cp.GTID)
	if err != nil || set.Update(s.openGTID) != nil {
		return s.cp.GTID
	}
	return set.String()
}

// cut takes the session's work as a batch for the flusher and starts the next: the keys, the
// ids to add, the drops, and, after a commit point, the checkpoint the batch lets the saver
// reach.
func (s *session) cut() batch {
	b := batch{position: s.cp.String(), gtid: s.waitGTID(), at: s.first, adds: s.w.adds, drops: s.w.drops, n: s.w.n}
	if s.marked {
		c := s.cp
		c.Prepared = nil
		if len(s.prepared) > 0 {
			c.Prepared = make(map[string][]string, len(s.prepared))
			for xid, x := range s.prepared {
				c.Prepared[xid] = x.names()
			}
		}
		b.cp = &c
	}
	if len(s.w.keys) > 0 {
		b.keys = make([]string, 0, len(s.w.keys))
		for k := range s.w.keys {
			b.keys = append(b.keys, k)
		}
	}
	s.w.reset()
	s.marked, s.first = false, time.Time{}
	return b
}
