package cdc

import (
	"encoding/binary"
	"maps"
	"slices"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// Event sequences as MySQL and MariaDB write them, fed to a session without a server: what
// each leaves to invalidate.

func testTail() *Tail {
	return New(Options{Flavor: "mysql", Schema: "app", Prefix: "sc:",
		Tables: map[string][]Target{
			"items":  {{Entity: "items", Key: []KeyColumn{{Name: "id", Bits: 64}}, Bloom: true}},
			"things": {{Entity: "things", Key: []KeyColumn{{Name: "id", Bits: 64}}}},
		}})
}

func ev(typ replication.EventType, e replication.Event) *replication.BinlogEvent {
	return &replication.BinlogEvent{Header: &replication.EventHeader{EventType: typ, LogPos: 100, Timestamp: 1_700_000_000}, Event: e}
}

func query(q string) *replication.BinlogEvent {
	return ev(replication.QUERY_EVENT, &replication.QueryEvent{Schema: []byte("app"), Query: []byte(q)})
}

func rowsOf(typ replication.EventType, table string, rows ...[]any) *replication.BinlogEvent {
	tm := &replication.TableMapEvent{Schema: []byte("app"), Table: []byte(table), ColumnName: [][]byte{[]byte("id"), []byte("name")}}
	return ev(typ, &replication.RowsEvent{Table: tm, Rows: rows})
}

func update(id, to int64) *replication.BinlogEvent {
	return rowsOf(replication.UPDATE_ROWS_EVENTv2, "items", []any{id, "a"}, []any{to, "b"})
}

func xidEvent() *replication.BinlogEvent { return ev(replication.XID_EVENT, &replication.XIDEvent{}) }

func mysqlGTID() *replication.BinlogEvent {
	return ev(replication.GTID_EVENT, &replication.GTIDEvent{})
}

func mariadbGTID(flags byte) *replication.BinlogEvent {
	return ev(replication.MARIADB_GTID_EVENT, &replication.MariadbGTIDEvent{GTID: mysql.MariadbGTID{SequenceNumber: 1}, Flags: flags})
}

// xaPrepare is an XA_PREPARE_LOG_EVENT for gtrid (format 1, no bqual).
func xaPrepare(onePhase byte, gtrid string) *replication.BinlogEvent {
	d := []byte{onePhase}
	d = binary.LittleEndian.AppendUint32(d, 1)
	d = binary.LittleEndian.AppendUint32(d, uint32(len(gtrid)))
	d = binary.LittleEndian.AppendUint32(d, 0)
	d = append(d, gtrid...)
	return ev(replication.XA_PREPARE_LOG_EVENT, &replication.GenericEvent{Data: d})
}

func feed(s *session, evs ...*replication.BinlogEvent) {
	for _, e := range evs {
		s.event(e)
	}
}

func batchKeys(s *session) []string { return slices.Sorted(maps.Keys(s.w.keys)) }

func TestSessionXA(t *testing.T) {
	const (
		transactional = 4 | 8    // MariaDB: FL_TRANSACTIONAL | FL_ALLOW_PARALLEL
		standalone    = 1 | 8    // MariaDB: FL_STANDALONE | FL_ALLOW_PARALLEL
		prepared      = 64 | 4   // MariaDB: FL_PREPARED_XA | FL_TRANSACTIONAL
		completed     = 128 | 13 // MariaDB: FL_COMPLETED_XA | FL_STANDALONE | ...
	)
	type events = []*replication.BinlogEvent
	tests := []struct {
		name            string
		prepare, finish events
		// The keys to delete once the prepare part ran, and once the whole ran.
		afterPrepare, atEnd []string
	}{
		{"mysql, two phases, a transaction in between",
			events{mysqlGTID(), query("BEGIN"), update(1, 1), xidEvent(),
				mysqlGTID(), query("XA START X'7831',X'',1"), update(7, 7), query("XA END X'7831',X'',1"), xaPrepare(0, "x1"),
				mysqlGTID(), query("BEGIN"), update(2, 2), xidEvent()},
			events{mysqlGTID(), query("XA COMMIT X'7831',X'',1")},
			[]string{"sc:{items:1}", "sc:{items:2}"}, []string{"sc:{items:1}", "sc:{items:2}", "sc:{items:7}"}},
		{"mysql, one phase (a prepare event with its one-phase flag)",
			events{mysqlGTID(), query("XA START X'7932',X'',1"), update(9, 9), query("XA END X'7932',X'',1")},
			events{xaPrepare(1, "y2")},
			nil, []string{"sc:{items:9}"}},
		{"mysql, one phase (an XA COMMIT ... ONE PHASE query)",
			events{mysqlGTID(), query("XA START X'7932',X'',1"), update(9, 9), query("XA END X'7932',X'',1")},
			events{query("XA COMMIT X'7932',X'',1 ONE PHASE")},
			nil, []string{"sc:{items:9}"}},
		{"mysql, rolled back",
			events{mysqlGTID(), query("XA START X'7a',X'',1"), update(3, 3), query("XA END X'7a',X'',1"), xaPrepare(0, "z")},
			events{mysqlGTID(), query("XA ROLLBACK X'7a',X'',1")},
			nil, nil},
		{"mariadb, two phases, a transaction in between",
			events{mariadbGTID(prepared), update(7, 7), query("XA END X'7831',X'',1"), xaPrepare(0, "x1"),
				mariadbGTID(transactional), update(2, 2), xidEvent()},
			events{mariadbGTID(completed), query("XA COMMIT X'7831',X'',1")},
			[]string{"sc:{items:2}"}, []string{"sc:{items:2}", "sc:{items:7}"}},
		{"mariadb, a DDL between the parts",
			events{mariadbGTID(prepared), update(7, 7), query("XA END X'7831',X'',1"), xaPrepare(0, "x1"),
				mariadbGTID(standalone), query("CREATE TABLE other (id INT)")},
			events{mariadbGTID(completed), query("XA COMMIT X'7831',X'',1")},
			nil, []string{"sc:{items:7}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession(testTail(), Checkpoint{XAComplete: true})
			feed(s, tt.prepare...)
			if got := batchKeys(s); !slices.Equal(got, tt.afterPrepare) {
				t.Errorf("before the commit: %v, want %v", got, tt.afterPrepare)
			}
			feed(s, tt.finish...)
			if got := batchKeys(s); !slices.Equal(got, tt.atEnd) {
				t.Errorf("at the end: %v, want %v", got, tt.atEnd)
			}
			if len(s.prepared) != 0 {
				t.Errorf("%d XA transactions still held as prepared", len(s.prepared))
			}
		})
	}
}

func TestSessionUnknownXACommit(t *testing.T) {
	s := newSession(testTail(), Checkpoint{XAComplete: false})
	feed(s, mysqlGTID(), query("XA COMMIT X'7831',X'',1"))
	if got := slices.Sorted(maps.Keys(s.w.drops)); !slices.Equal(got, []string{"items", "things"}) {
		t.Errorf("an XA COMMIT of a transaction prepared before the tail began dropped %v, want every entity", got)
	}
	s = newSession(testTail(), Checkpoint{XAComplete: true})
	feed(s, mysqlGTID(), query("XA COMMIT X'7831',X'',1"))
	if len(s.w.drops) != 0 {
		t.Errorf("with every prepared transaction known, an unknown xid dropped %v", s.w.drops)
	}
}

func TestSessionStatements(t *testing.T) {
	tests := []struct {
		name   string
		events []*replication.BinlogEvent
		drops  []string
	}{
		{"DDL naming a table", []*replication.BinlogEvent{mysqlGTID(), query("TRUNCATE TABLE items")}, []string{"items"}},
		{"DDL naming another table", []*replication.BinlogEvent{mysqlGTID(), query("TRUNCATE TABLE other")}, nil},
		{"a statement-logged write naming a table",
			[]*replication.BinlogEvent{mysqlGTID(), query("BEGIN"), query("UPDATE things SET name = 'x'"), xidEvent()}, []string{"things"}},
		// It may change a tailed table through a trigger, a view or a function.
		{"a statement-logged write naming no tailed table",
			[]*replication.BinlogEvent{mysqlGTID(), query("BEGIN"), query("UPDATE other SET name = 'x'"), xidEvent()}, []string{"items", "things"}},
		{"a savepoint", []*replication.BinlogEvent{mysqlGTID(), query("BEGIN"), query("SAVEPOINT `s1`"), update(1, 1), xidEvent()}, nil},
		{"LOAD DATA logged as a statement",
			[]*replication.BinlogEvent{mysqlGTID(), query("BEGIN"), ev(replication.EXECUTE_LOAD_QUERY_EVENT, &replication.ExecuteLoadQueryEvent{}), xidEvent()},
			[]string{"items", "things"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession(testTail(), Checkpoint{})
			feed(s, tt.events...)
			if got := slices.Sorted(maps.Keys(s.w.drops)); !slices.Equal(got, tt.drops) {
				t.Errorf("drops %v, want %v", got, tt.drops)
			}
		})
	}
}

func TestSessionRows(t *testing.T) {
	s := newSession(testTail(), Checkpoint{})
	feed(s, mysqlGTID(), query("BEGIN"),
		update(1, 1),      // the key stays
		update(2, 100002), // a key move
		rowsOf(replication.WRITE_ROWS_EVENTv2, "items", []any{int64(5), "new"}),
		rowsOf(replication.DELETE_ROWS_EVENTv2, "things", []any{int64(6), "gone"}),
		xidEvent())
	want := []string{"sc:{items:100002}", "sc:{items:1}", "sc:{items:2}", "sc:{items:5}", "sc:{things:6}"}
	if got := batchKeys(s); !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	if got := s.w.adds["items"]; !slices.Equal(got, []string{"100002", "5"}) {
		t.Errorf("filter adds %v, want the moved-to id and the inserted one", got)
	}

	// Rows whose key cannot be read drop the entity once in a transaction, however many.
	s = newSession(testTail(), Checkpoint{})
	bad := []any{3.5, "x"}
	feed(s, mysqlGTID(), query("BEGIN"))
	for range 5 {
		feed(s, rowsOf(replication.WRITE_ROWS_EVENTv2, "items", bad))
	}
	if !s.w.empty() && s.w.drops["items"] != "unreadable_key" || len(s.w.drops) != 1 {
		t.Errorf("drops %v, want items once", s.w.drops)
	}
	if s.full() {
		t.Error("a drop inside a transaction was to be flushed before the transaction ends")
	}
	feed(s, xidEvent())
	if !s.full() {
		t.Error("the transaction ended and its drop is not flushed")
	}
}

func TestSessionHeartbeatTime(t *testing.T) {
	s := newSession(testTail(), Checkpoint{})
	s.event(&replication.BinlogEvent{Header: &replication.EventHeader{EventType: replication.HEARTBEAT_EVENT}, Event: &replication.GenericEvent{}})
	feed(s, update(3, 3))
	if s.first.Unix() != 1_700_000_000 {
		t.Errorf("the batch's first change is at %v, want the row's time, not a heartbeat's zero", s.first)
	}
}

// TestSessionWaitGTID checks the GTID set a batch asks a replica to have applied: the commit
// point's after a commit, and with the open transaction's own GTID when a batch is flushed in
// the middle of a transaction (else a replica that has not applied it would count as caught up).
func TestSessionWaitGTID(t *testing.T) {
	tail := testTail()
	tail.o.Flavor = "mariadb"
	s := newSession(tail, Checkpoint{GTID: "0-1-10,1-1-3"})
	gtid := func(seq uint64) *replication.BinlogEvent {
		return ev(replication.MARIADB_GTID_EVENT, &replication.MariadbGTIDEvent{GTID: mysql.MariadbGTID{ServerID: 1, SequenceNumber: seq}, Flags: 4})
	}
	feed(s, gtid(11), update(1, 1))
	if got, want := s.waitGTID(), "0-1-11,1-1-3"; got != want {
		t.Errorf("in the middle of a transaction: %q, want %q (its own GTID added)", got, want)
	}
	commit := xidEvent()
	commit.Event.(*replication.XIDEvent).GSet, _ = mysql.ParseMariadbGTIDSet("0-1-11,1-1-3")
	feed(s, commit)
	if got, want := s.waitGTID(), "0-1-11,1-1-3"; got != want {
		t.Errorf("after the commit: %q, want %q", got, want)
	}

	if got := newSession(testTail(), Checkpoint{File: "binlog.000001", Pos: 4}).waitGTID(); got != "" {
		t.Errorf("without GTIDs: %q, want none", got)
	}
}

// TestSessionLookupRows: a lookup's keys are deleted for both images of every change, a NULL
// has nothing to delete, and a lookup column the image leaves out drops the lookup's cache.
func TestSessionLookupRows(t *testing.T) {
	tail := New(Options{Flavor: "mysql", Schema: "app", Prefix: "sc:",
		Tables: map[string][]Target{"users": {
			{Entity: "users", Key: []KeyColumn{{Name: "id", Bits: 64}}},
			{Entity: "users/by-email", Lookup: true, Key: []KeyColumn{{Name: "email", Index: 1}}},
		}}})
	users := func(typ replication.EventType, skipped [][]int, rows ...[]any) *replication.BinlogEvent {
		tm := &replication.TableMapEvent{Schema: []byte("app"), Table: []byte("users"), ColumnName: [][]byte{[]byte("id"), []byte("email"), []byte("name")}}
		return ev(typ, &replication.RowsEvent{Table: tm, Rows: rows, SkippedColumns: skipped})
	}
	s := newSession(tail, Checkpoint{})
	feed(s, mysqlGTID(), query("BEGIN"),
		users(replication.UPDATE_ROWS_EVENTv2, nil, []any{int64(1), "old@x", "a"}, []any{int64(1), "new@x", "a"}),
		users(replication.UPDATE_ROWS_EVENTv2, nil, []any{int64(2), "same@x", "a"}, []any{int64(2), "same@x", "b"}),
		users(replication.WRITE_ROWS_EVENTv2, nil, []any{int64(3), nil, "c"}),
		users(replication.DELETE_ROWS_EVENTv2, nil, []any{int64(4), "gone@x", "d"}),
		xidEvent())
	want := []string{"sc:{users/by-email:gone@x}", "sc:{users/by-email:new@x}", "sc:{users/by-email:old@x}", "sc:{users/by-email:same@x}",
		"sc:{users:1}", "sc:{users:2}", "sc:{users:3}", "sc:{users:4}"}
	if got := batchKeys(s); !slices.Equal(got, want) || len(s.w.drops) != 0 {
		t.Errorf("keys %v, drops %v; want %v and no drop", got, s.w.drops, want)
	}

	// A minimal image: the delete lists only the key; the email it had is unknown.
	s = newSession(tail, Checkpoint{})
	feed(s, mysqlGTID(), query("BEGIN"),
		users(replication.DELETE_ROWS_EVENTv2, [][]int{{1, 2}}, []any{int64(5), nil, nil}))
	if s.w.drops["users/by-email"] != "unreadable_key" || len(s.w.drops) != 1 {
		t.Errorf("drops %v, want the lookup's cache dropped (and only it: the key was there)", s.w.drops)
	}
}
