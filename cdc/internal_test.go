package cdc

import (
	"fmt"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

func TestResumePoint(t *testing.T) {
	const mysqlSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,4c7d8a9e-71ca-11e1-9e33-c80aa9429562:1-100"
	tests := []struct {
		name    string
		flavor  string
		cp      Checkpoint
		wantSet string
		wantPos mysql.Position
		wantErr bool
	}{
		{"mysql by GTID", "mysql", Checkpoint{Flavor: "mysql", GTID: mysqlSet}, mysqlSet, mysql.Position{}, false},
		{"mysql by position", "mysql", Checkpoint{Flavor: "mysql", File: "binlog.000042", Pos: 1234}, "", mysql.Position{Name: "binlog.000042", Pos: 1234}, false},
		{"mariadb by GTID", "mariadb", Checkpoint{Flavor: "mariadb", GTID: "0-1-5,1-2-9"}, "0-1-5,1-2-9", mysql.Position{}, false},
		{"GTID wins over position", "mysql", Checkpoint{GTID: mysqlSet, File: "binlog.000001", Pos: 4}, mysqlSet, mysql.Position{}, false},
		{"flavor changed", "mariadb", Checkpoint{Flavor: "mysql", GTID: mysqlSet}, "", mysql.Position{}, true},
		{"bad mysql set", "mysql", Checkpoint{GTID: "not-a-uuid:1-2"}, "", mysql.Position{}, true},
		{"empty", "mysql", Checkpoint{}, "", mysql.Position{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, pos, err := resumePoint(tt.flavor, tt.cp)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %v %v, want an error", set, pos)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantSet != "" {
				want, _ := mysql.ParseGTIDSet(tt.flavor, tt.wantSet)
				if set == nil || !set.Equal(want) {
					t.Errorf("set %v, want %v", set, want)
				}
				return
			}
			if set != nil || pos != tt.wantPos {
				t.Errorf("got %v %v, want position %v", set, pos, tt.wantPos)
			}
		})
	}
}

func TestFormatID(t *testing.T) {
	tests := []struct {
		v       any
		tg      KeyColumn
		charset string
		want    string
	}{
		{int32(42), KeyColumn{Bits: 32}, "", "42"},
		{int32(-7), KeyColumn{Bits: 32}, "", "-7"},
		{int32(-1), KeyColumn{Unsigned: true, Bits: 32}, "", "4294967295"},           // INT UNSIGNED max, without metadata
		{int8(-1), KeyColumn{Unsigned: true, Bits: 8}, "", "255"},                    // TINYINT UNSIGNED max, without metadata
		{int32(-1), KeyColumn{Unsigned: true, Bits: 24}, "", "16777215"},             // MEDIUMINT UNSIGNED max, without metadata
		{int64(-1), KeyColumn{Unsigned: true, Bits: 64}, "", "18446744073709551615"}, // BIGINT UNSIGNED max, without metadata
		{int64(-9223372036854775808), KeyColumn{Bits: 64}, "", "-9223372036854775808"},
		{int8(-128), KeyColumn{Bits: 8}, "", "-128"},
		{int16(-32768), KeyColumn{Bits: 16}, "", "-32768"},
		// With binlog_row_metadata=FULL, go-mysql hands unsigned columns over as unsigned types.
		{uint8(255), KeyColumn{Unsigned: true, Bits: 8}, "", "255"},
		{uint16(65535), KeyColumn{Unsigned: true, Bits: 16}, "", "65535"},
		{uint32(16777215), KeyColumn{Unsigned: true, Bits: 24}, "", "16777215"},
		{uint32(4294967295), KeyColumn{Unsigned: true, Bits: 32}, "", "4294967295"},
		{uint64(18446744073709551615), KeyColumn{Unsigned: true, Bits: 64}, "", "18446744073709551615"},
		{[]byte("JP"), KeyColumn{}, "", "JP"},
		{"a:b}c", KeyColumn{}, "utf8mb4", "a:b}c"},
		{"né☃", KeyColumn{}, "utf8mb4", "né☃"},
		{"plain", KeyColumn{}, "latin1", "plain"},
		{"\xe9t\xe9 \x80", KeyColumn{}, "latin1", "été €"}, // MySQL's latin1 is Windows-1252
		{"plain", KeyColumn{}, "cp1251", "plain"},
	}
	for _, tt := range tests {
		if got, ok := formatID(tt.v, tt.tg, tt.charset); !ok || got != tt.want {
			t.Errorf("formatID(%#v, %+v, %q) = %q, %v; want %q", tt.v, tt.tg, tt.charset, got, ok, tt.want)
		}
	}
	unreadable := []struct {
		v       any
		tg      KeyColumn
		charset string
	}{
		{3.5, KeyColumn{}, ""},          // no key has this type
		{"\xe9t\xe9", KeyColumn{}, ""},  // not UTF-8
		{"\xe9", KeyColumn{}, "cp1251"}, // a character set the tail cannot convert
		{int32(5), KeyColumn{}, ""},     // an integer where the key is a string
		{nil, KeyColumn{Bits: 32}, ""},  // a column missing from a minimal row image
	}
	for _, tt := range unreadable {
		if got, ok := formatID(tt.v, tt.tg, tt.charset); ok {
			t.Errorf("formatID(%#v, %+v, %q) = %q, want unreadable", tt.v, tt.tg, tt.charset, got)
		}
	}
}

func TestKeyIndex(t *testing.T) {
	tg := Target{Key: []KeyColumn{{Name: "id", Index: 0}}}
	withNames := &replication.TableMapEvent{ColumnName: [][]byte{[]byte("extra"), []byte("ID"), []byte("name")}, PrimaryKey: []uint64{1}}
	if got := keyIndex(withNames, tg, 0); got != 1 {
		t.Errorf("with column names: %d, want 1", got)
	}
	pkOnly := &replication.TableMapEvent{PrimaryKey: []uint64{2}}
	if got := keyIndex(pkOnly, tg, 0); got != 2 {
		t.Errorf("with the primary key only: %d, want 2", got)
	}
	bare := &replication.TableMapEvent{}
	if got := keyIndex(bare, Target{Key: []KeyColumn{{Name: "id", Index: 3}}}, 0); got != 3 {
		t.Errorf("without metadata: %d, want the start-time index 3", got)
	}
	renamed := &replication.TableMapEvent{ColumnName: [][]byte{[]byte("uid")}}
	if got := keyIndex(renamed, tg, 0); got != -1 {
		t.Errorf("key column gone: %d, want -1 (reported, not guessed)", got)
	}
	// A composite key: each column by name, or by the primary key the event declares, in order.
	pair := Target{Key: []KeyColumn{{Name: "actor_id", Index: 5}, {Name: "film_id", Index: 6}}}
	named := &replication.TableMapEvent{ColumnName: [][]byte{[]byte("film_id"), []byte("x"), []byte("actor_id")}}
	if a, f := keyIndex(named, pair, 0), keyIndex(named, pair, 1); a != 2 || f != 0 {
		t.Errorf("composite by name: %d, %d; want 2, 0", a, f)
	}
	declared := &replication.TableMapEvent{PrimaryKey: []uint64{3, 1}}
	if a, f := keyIndex(declared, pair, 0), keyIndex(declared, pair, 1); a != 3 || f != 1 {
		t.Errorf("composite by the declared primary key: %d, %d; want 3, 1", a, f)
	}
	if a, f := keyIndex(bare, pair, 0), keyIndex(bare, pair, 1); a != 5 || f != 6 {
		t.Errorf("composite without metadata: %d, %d; want the start-time 5, 6", a, f)
	}
	// A lookup's columns are not the primary key the event declares.
	lookup := Target{Lookup: true, Key: []KeyColumn{{Name: "email", Index: 1}}}
	if got := keyIndex(&replication.TableMapEvent{PrimaryKey: []uint64{0}}, lookup, 0); got != 1 {
		t.Errorf("a lookup with the primary key declared: %d, want its start-time index 1", got)
	}
}

func TestCompareFiles(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"binlog.000009", "binlog.000010", -1},
		{"binlog.999999", "binlog.1000000", -1},
		{"binlog.000010", "binlog.000010", 0},
		{"mysql-bin.000002", "mysql-bin.000001", 1},
	}
	for _, tt := range tests {
		if got := compareFiles(tt.a, tt.b); got != tt.want {
			t.Errorf("compareFiles(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestIsBinlogGone(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&mysql.MyError{Code: 1236, Message: "Could not find GTID state requested by slave in any binlog files. Probably the slave state is too old and required binlog files have been purged."}, true},
		{&mysql.MyError{Code: 1236, Message: "Cannot replicate because the master purged required binary logs."}, true},
		{&mysql.MyError{Code: 1236, Message: "Could not find first log file name in binary log index file"}, true},
		{&mysql.MyError{Code: 1236, Message: "A slave with the same server_uuid/server_id as this slave has connected to the master"}, false},
		{&mysql.MyError{Code: 1236, Message: "log event entry exceeded max_allowed_packet"}, false},
		{&mysql.MyError{Code: 1045, Message: "Access denied"}, false},
	}
	for _, tt := range tests {
		if got := isBinlogGone(fmt.Errorf("cdc: binlog stream: %w", tt.err)); got != tt.want {
			t.Errorf("isBinlogGone(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
