// Package mysqlsource is the MySQL side of the read path: it checks the configured entities
// against the live schema, validates ids against key column types, loads rows by primary key
// with parameterized queries, and encodes them as typed, lossless JSON.
package mysqlsource

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// ErrSchema marks a configuration that does not match the live schema.
var ErrSchema = errors.New("config does not match the database schema")

// Defaults of Open and New.
const (
	DefaultMaxOpenConns = 16
	DefaultQueryTimeout = 2 * time.Second
)

// Open opens a pool of at most maxOpenConns connections (0: DefaultMaxOpenConns) for dsn, with
// the session settings the encoder relies on: server-side prepared statements, text dates, and
// UTC for TIMESTAMP columns. It returns the pool and the database the DSN names.
func Open(dsn string, maxOpenConns int) (*sql.DB, string, error) {
	c, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, "", fmt.Errorf("mysql.dsn: %w", err)
	}
	c.ParseTime = false
	c.InterpolateParams = false
	if c.Params == nil {
		c.Params = make(map[string]string)
	}
	c.Params["time_zone"] = "'+00:00'"
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	connector, err := mysql.NewConnector(c)
	if err != nil {
		return nil, "", fmt.Errorf("mysql.dsn: %w", err)
	}
	db := sql.OpenDB(connector)
	maxOpenConns = cmp.Or(max(maxOpenConns, 0), DefaultMaxOpenConns)
	db.SetMaxOpenConns(maxOpenConns)
	db.SetMaxIdleConns(maxOpenConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, c.DBName, nil
}

// Column is one column of an entity as the schema has it.
type Column struct {
	Name     string
	DataType string
	codec    codec
	jsonName []byte // `"name":`
}

// Entity is an entity checked against the schema.
type Entity struct {
	Name    string
	Table   string
	KeyName string
	Key     Key
	// KeyOrdinal is the key column's position in the table, from 0, as the schema is at start.
	KeyOrdinal int
	// KeyCharset is the character set of a string key column ("" for integer keys).
	KeyCharset string
	Columns    []Column // the columns returned, in order
	// Cascades are foreign keys of this table whose parent's changes cascade into it (ON DELETE
	// or ON UPDATE CASCADE / SET NULL / SET DEFAULT): the server applies them without binlog
	// row events, so they are never invalidated.
	Cascades []Cascade

	one   *sql.Stmt
	mu    sync.Mutex
	many  map[int]*sql.Stmt // by padded id count
	query string            // SELECT ... FROM ... WHERE key

	scanFirst, scanNext string // keyset pagination over the key, ids only, up to a bound
	last                string // the greatest key
}

// Cascade is a foreign key whose parent's changes reach the table without binlog row events.
type Cascade struct {
	Constraint, Parent, OnDelete, OnUpdate string
}

// Source loads rows of the configured entities.
type Source struct {
	db *sql.DB // the schema checks
	// reads serves loads and scans: db, or a replica after ReadFrom.
	reads    *sql.DB
	schema   string
	timeout  time.Duration
	entities map[string]*Entity
	// lowerCaseNames: the server compares table names case-insensitively
	// (lower_case_table_names ≠ 0).
	lowerCaseNames bool
}

// Spec is an entity as configured: what New checks against the schema.
type Spec struct {
	Name  string
	Table string
	// Key is the primary key column; "" takes the table's.
	Key string
	// Columns are the columns returned; nil: all, in table order.
	Columns []string
}

// New checks every entity against the live schema of database schema and prepares its queries,
// each bounded by queryTimeout (0: DefaultQueryTimeout). An error names the entity and the
// field and wraps ErrSchema.
func New(ctx context.Context, db *sql.DB, schema string, entities []Spec, queryTimeout time.Duration) (*Source, error) {
	if queryTimeout <= 0 {
		queryTimeout = DefaultQueryTimeout
	}
	s := &Source{db: db, reads: db, schema: schema, timeout: queryTimeout, entities: make(map[string]*Entity)}
	mariadb, err := isMariaDB(ctx, db)
	if err != nil {
		return nil, err
	}
	var lctn int
	if err := db.QueryRowContext(ctx, "SELECT @@lower_case_table_names").Scan(&lctn); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	s.lowerCaseNames = lctn != 0
	for _, ce := range entities {
		e, err := s.check(ctx, ce, mariadb)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.entities[e.Name] = e
	}
	return s, nil
}

func isMariaDB(ctx context.Context, db *sql.DB) (bool, error) {
	var v string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&v); err != nil {
		return false, fmt.Errorf("mysql: %w", err)
	}
	return strings.Contains(strings.ToLower(v), "mariadb"), nil
}

type schemaColumn struct {
	table, name, dataType, columnType string
	maxChars                          sql.NullInt64
	charset                           sql.NullString
}

func (s *Source) check(ctx context.Context, ce Spec, mariadb bool) (*Entity, error) {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: entity %q: %s: %s", ErrSchema, ce.Name, field, fmt.Sprintf(format, args...))
	}
	// information_schema compares names without regard to case; the server compares table names
	// exactly unless lower_case_table_names is set, so only those rows count. The table's name
	// as the server spells it is what the binlog carries.
	rows, err := s.db.QueryContext(ctx, `SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_MAXIMUM_LENGTH, CHARACTER_SET_NAME
		FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`,
		s.schema, ce.Table)
	if err != nil {
		return nil, fmt.Errorf("mysql: reading the schema of %s.%s: %w", s.schema, ce.Table, err)
	}
	var cols []schemaColumn
	for rows.Next() {
		var c schemaColumn
		if err := rows.Scan(&c.table, &c.name, &c.dataType, &c.columnType, &c.maxChars, &c.charset); err != nil {
			rows.Close()
			return nil, fmt.Errorf("mysql: reading the schema of %s.%s: %w", s.schema, ce.Table, err)
		}
		if c.table != ce.Table && (!s.lowerCaseNames || !strings.EqualFold(c.table, ce.Table)) {
			continue
		}
		c.dataType = strings.ToLower(c.dataType)
		cols = append(cols, c)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, bad("table", "table %q does not exist in database %q (or the user may not read it)", ce.Table, s.schema)
	}
	table := cols[0].table
	byName := make(map[string]*schemaColumn, len(cols))
	for i := range cols {
		byName[strings.ToLower(cols[i].name)] = &cols[i]
	}
	if mariadb {
		// MariaDB's JSON is LONGTEXT with a json_valid() check named after the column.
		if err := s.markJSONColumns(ctx, table, byName); err != nil {
			return nil, err
		}
	}

	pk, err := s.primaryKey(ctx, table)
	if err != nil {
		return nil, err
	}
	switch {
	case len(pk) == 0:
		return nil, bad("key", "table %q has no primary key", ce.Table)
	case len(pk) > 1:
		return nil, bad("key", "table %q has a composite primary key (%s); only single-column keys are supported", ce.Table, strings.Join(pk, ", "))
	}
	keyName := ce.Key
	if keyName == "" {
		keyName = pk[0]
	}
	kc, ok := byName[strings.ToLower(keyName)]
	if !ok {
		return nil, bad("key", "column %q does not exist in table %q", keyName, ce.Table)
	}
	if !strings.EqualFold(kc.name, pk[0]) {
		return nil, bad("key", "column %q is not the primary key of table %q (the primary key is %q)", keyName, ce.Table, pk[0])
	}
	key, err := keyFor(*kc)
	if err != nil {
		return nil, bad("key", "column %q: %v", kc.name, err)
	}

	e := &Entity{Name: ce.Name, Table: table, KeyName: kc.name, Key: key, many: make(map[int]*sql.Stmt)}
	if key.Kind == KeyString {
		e.KeyCharset = strings.ToLower(kc.charset.String)
		switch e.KeyCharset {
		case "utf8mb4", "utf8mb3", "utf8", "ascii", "latin1":
		default:
			return nil, bad("key", "column %q is in character set %s; string keys must be utf8mb4, utf8mb3, ascii or latin1 "+
				"(the binlog carries their bytes, which must read as the same id)", kc.name, kc.charset.String)
		}
	}
	if e.Cascades, err = s.cascades(ctx, table); err != nil {
		return nil, err
	}
	for i := range cols {
		if &cols[i] == kc {
			e.KeyOrdinal = i
		}
	}
	names := ce.Columns
	if len(names) == 0 {
		for _, c := range cols {
			names = append(names, c.name)
		}
	}
	for i, n := range names {
		c, ok := byName[strings.ToLower(n)]
		if !ok {
			return nil, bad(fmt.Sprintf("columns[%d]", i), "column %q does not exist in table %q", n, ce.Table)
		}
		cd, ok := codecFor(c.dataType)
		if !ok {
			return nil, bad(fmt.Sprintf("columns[%d]", i), "column %q has type %s, which sidecache cannot encode", c.name, c.columnType)
		}
		e.Columns = append(e.Columns, Column{Name: c.name, DataType: c.dataType, codec: cd,
			jsonName: append(appendJSONString(nil, []byte(c.name)), ':')})
	}

	// The key always comes first so rows of a multi-get can be told apart; it is returned only
	// if it is among the configured columns.
	sel := []string{quote(kc.name)}
	for _, c := range e.Columns {
		sel = append(sel, quote(c.Name))
	}
	e.query = "SELECT " + strings.Join(sel, ", ") + " FROM " + quote(s.schema) + "." + quote(table) +
		" WHERE " + quote(kc.name)
	from := " FROM " + quote(s.schema) + "." + quote(table)
	k := quote(kc.name)
	e.scanFirst = "SELECT " + k + from + " WHERE " + k + " <= ? ORDER BY " + k + " LIMIT ?"
	e.scanNext = "SELECT " + k + from + " WHERE " + k + " > ? AND " + k + " <= ? ORDER BY " + k + " LIMIT ?"
	e.last = "SELECT " + k + from + " ORDER BY " + k + " DESC LIMIT 1"
	if e.one, err = s.reads.PrepareContext(ctx, e.query+" = ?"); err != nil {
		return nil, fmt.Errorf("mysql: preparing the query for entity %q: %w", ce.Name, err)
	}
	return e, nil
}

func (s *Source) markJSONColumns(ctx context.Context, table string, byName map[string]*schemaColumn) error {
	rows, err := s.db.QueryContext(ctx, `SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
		WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?`, s.schema, table)
	if err != nil {
		return fmt.Errorf("mysql: reading check constraints of %s.%s: %w", s.schema, table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, clause string
		if err := rows.Scan(&name, &clause); err != nil {
			return err
		}
		c, ok := byName[strings.ToLower(name)]
		if ok && c.dataType == "longtext" && strings.EqualFold(clause, "json_valid("+quote(c.name)+")") {
			c.dataType = "json"
		}
	}
	return rows.Err()
}

// cascades lists the foreign keys through which changes to other tables reach this one.
func (s *Source) cascades(ctx context.Context, table string) ([]Cascade, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT CONSTRAINT_NAME, REFERENCED_TABLE_NAME, DELETE_RULE, UPDATE_RULE
		FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?`, s.schema, table)
	if err != nil {
		return nil, fmt.Errorf("mysql: reading the foreign keys of %s.%s: %w", s.schema, table, err)
	}
	defer rows.Close()
	var out []Cascade
	for rows.Next() {
		var c Cascade
		if err := rows.Scan(&c.Constraint, &c.Parent, &c.OnDelete, &c.OnUpdate); err != nil {
			return nil, err
		}
		if reaches(c.OnDelete) || reaches(c.OnUpdate) {
			out = append(out, c)
		}
	}
	return out, rows.Err()
}

// reaches reports a referential action that changes the child's rows.
func reaches(rule string) bool {
	switch strings.ToUpper(rule) {
	case "CASCADE", "SET NULL", "SET DEFAULT":
		return true
	}
	return false
}

func (s *Source) primaryKey(ctx context.Context, table string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION`,
		s.schema, table)
	if err != nil {
		return nil, fmt.Errorf("mysql: reading the primary key of %s.%s: %w", s.schema, table, err)
	}
	defer rows.Close()
	var pk []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		pk = append(pk, n)
	}
	return pk, rows.Err()
}

func keyFor(c schemaColumn) (Key, error) {
	unsigned := strings.Contains(strings.ToLower(c.columnType), "unsigned")
	width := map[string]int{"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32, "bigint": 64}
	if w, ok := width[c.dataType]; ok {
		if unsigned {
			return Key{Kind: KeyUint, Bits: w}, nil
		}
		return Key{Kind: KeyInt, Bits: w}, nil
	}
	if c.dataType == "char" || c.dataType == "varchar" {
		return Key{Kind: KeyString, MaxChars: int(c.maxChars.Int64)}, nil
	}
	return Key{}, fmt.Errorf("type %s is not supported as a key (integer, CHAR or VARCHAR)", c.columnType)
}

func quote(ident string) string { return "`" + strings.ReplaceAll(ident, "`", "``") + "`" }

// Entity returns the checked entity called name, or nil.
func (s *Source) Entity(name string) *Entity { return s.entities[name] }

// ReadFrom makes loads and scans read db (a replica of the database the schema checks read)
// from now on. Call it before serving; the caller owns db.
func (s *Source) ReadFrom(ctx context.Context, db *sql.DB) error {
	for name, e := range s.entities {
		one, err := db.PrepareContext(ctx, e.query+" = ?")
		if err != nil {
			return fmt.Errorf("mysql: preparing the query for entity %q on the replica: %w", name, err)
		}
		e.mu.Lock()
		e.one.Close()
		e.one = one
		for n, st := range e.many {
			st.Close()
			delete(e.many, n)
		}
		e.mu.Unlock()
	}
	s.reads = db
	return nil
}

// Ping checks that MySQL (and the replica loads read, if any) answers.
func (s *Source) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return err
	}
	if s.reads != s.db {
		return s.reads.PingContext(ctx)
	}
	return nil
}

// Close releases the prepared statements (not the pool, which the caller owns).
func (s *Source) Close() {
	for _, e := range s.entities {
		e.one.Close()
		for _, st := range e.many {
			st.Close()
		}
	}
}

// Load reads the row whose key is id (canonical, as Key.Parse returns it) and encodes it as a
// JSON object. found is false when there is no such row.
func (s *Source) Load(ctx context.Context, entity, id string) (row []byte, found bool, err error) {
	e := s.entities[entity]
	if e == nil {
		return nil, false, fmt.Errorf("mysqlsource: unknown entity %q", entity)
	}
	arg, err := e.Key.arg(id)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", ErrInvalidID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := e.one.QueryContext(ctx, arg)
	if err != nil {
		return nil, false, err
	}
	err = e.scan(rows, func(key string, obj []byte) {
		// String keys compare exactly: a case-insensitive collation may return "abc" for "ABC",
		// but cache keys and binlog invalidations are exact, so only the exact row counts.
		if key == id {
			row, found = obj, true
		}
	})
	return row, found, err
}

// LastID returns the table's greatest key; ok is false when the table is empty.
func (s *Source) LastID(ctx context.Context, entity string) (id string, ok bool, err error) {
	e := s.entities[entity]
	if e == nil {
		return "", false, fmt.Errorf("mysqlsource: unknown entity %q", entity)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var v any
	switch err := s.reads.QueryRowContext(ctx, e.last).Scan(&v); {
	case errors.Is(err, sql.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return string(appendText(nil, v)), true, nil
}

// ScanIDs returns up to limit ids in key order after *after (nil: from the start) and up to
// *last (nil: to the end): keyset pagination on the primary key, never OFFSET, so each page
// costs the same.
func (s *Source) ScanIDs(ctx context.Context, entity string, after, last *string, limit int) ([]string, error) {
	e := s.entities[entity]
	if e == nil {
		return nil, fmt.Errorf("mysqlsource: unknown entity %q", entity)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if last == nil {
		id, ok, err := s.LastID(ctx, entity)
		if err != nil || !ok {
			return nil, err
		}
		last = &id
	}
	upTo, err := e.Key.arg(*last)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidID, err)
	}
	var rows *sql.Rows
	if after == nil {
		rows, err = s.reads.QueryContext(ctx, e.scanFirst, upTo, limit)
	} else {
		var arg any
		if arg, err = e.Key.arg(*after); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidID, err)
		}
		rows, err = s.reads.QueryContext(ctx, e.scanNext, arg, upTo, limit)
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ids := make([]string, 0, limit)
	var v any
	var text []byte
	for rows.Next() {
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		text = appendText(text[:0], v)
		ids = append(ids, string(text))
	}
	return ids, rows.Err()
}

// EstimateRows returns the table's row count as the server estimates it (cheap, approximate).
func (s *Source) EstimateRows(ctx context.Context, entity string) (int64, error) {
	e := s.entities[entity]
	if e == nil {
		return 0, fmt.Errorf("mysqlsource: unknown entity %q", entity)
	}
	var n sql.NullInt64
	err := s.db.QueryRowContext(ctx, "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
		s.schema, e.Table).Scan(&n)
	return n.Int64, err
}

// LoadMany reads the rows for ids with one IN (...) query and returns them by canonical id;
// ids with no row are absent from the map.
func (s *Source) LoadMany(ctx context.Context, entity string, ids []string) (map[string][]byte, error) {
	e := s.entities[entity]
	if e == nil {
		return nil, fmt.Errorf("mysqlsource: unknown entity %q", entity)
	}
	if len(ids) == 0 {
		return map[string][]byte{}, nil
	}
	// Pad to a power of two by repeating the last id, so a handful of prepared statements serve
	// every count.
	n := 1 << bits.Len(uint(len(ids)-1))
	args := make([]any, n)
	for i := range args {
		id := ids[min(i, len(ids)-1)]
		a, err := e.Key.arg(id)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidID, err)
		}
		args[i] = a
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	stmt, err := s.manyStmt(ctx, e, n)
	if err != nil {
		return nil, err
	}
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	out := make(map[string][]byte, len(ids))
	err = e.scan(rows, func(key string, obj []byte) {
		if want[key] {
			out[key] = obj
		}
	})
	return out, err
}

func (s *Source) manyStmt(ctx context.Context, e *Entity, n int) (*sql.Stmt, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if st := e.many[n]; st != nil {
		return st, nil
	}
	q := e.query + " IN (?" + strings.Repeat(", ?", n-1) + ")"
	st, err := s.reads.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	e.many[n] = st
	return st, nil
}

// scan encodes every row and hands it to fn with its key. It closes rows.
//
// Values are scanned into any rather than sql.RawBytes: RawBytes turns an empty string into nil
// once a NULL has been scanned into it, and NULL and "" must stay apart.
func (e *Entity) scan(rows *sql.Rows, fn func(key string, obj []byte)) error {
	defer rows.Close()
	vals := make([]any, len(e.Columns)+1)
	dest := make([]any, len(vals))
	for i := range vals {
		dest[i] = &vals[i]
	}
	var key []byte
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		obj, err := e.encode(vals[1:])
		if err != nil {
			return err
		}
		key = appendText(key[:0], vals[0])
		fn(string(key), obj)
	}
	return rows.Err()
}

// appendText appends the text form of a value as the driver returns it from the binary protocol.
func appendText(dst []byte, v any) []byte {
	switch v := v.(type) {
	case []byte:
		return append(dst, v...)
	case string:
		return append(dst, v...)
	case int64:
		return strconv.AppendInt(dst, v, 10)
	case uint64:
		return strconv.AppendUint(dst, v, 10)
	case float32:
		return strconv.AppendFloat(dst, float64(v), 'g', -1, 32)
	case float64:
		return strconv.AppendFloat(dst, v, 'g', -1, 64)
	}
	return fmt.Append(dst, v)
}

// encode writes one row as a JSON object of the entity's columns.
func (e *Entity) encode(vals []any) ([]byte, error) {
	b := make([]byte, 0, 64*len(vals))
	b = append(b, '{')
	var text []byte
	for i, v := range vals {
		c := &e.Columns[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, c.jsonName...)
		if v == nil {
			b = append(b, "null"...)
			continue
		}
		text = appendText(text[:0], v)
		var err error
		if b, err = c.codec.appendValue(b, text); err != nil {
			return nil, fmt.Errorf("entity %q column %q: %w", e.Name, c.Name, err)
		}
	}
	return append(b, '}'), nil
}
