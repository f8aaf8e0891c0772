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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/sidecache/sidecache/internal/keys"
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
	// Ids and rows are read as the binlog has them: in utf8mb4, and CHAR values without the
	// padding PAD_CHAR_TO_FULL_LENGTH would add. Another character set would give a row's key
	// other bytes than the binlog's, so its invalidations would miss.
	if _, query, ok := strings.Cut(dsn, "?"); ok {
		if q, err := url.ParseQuery(query); err == nil && q.Has("charset") && !strings.EqualFold(q.Get("charset"), "utf8mb4") {
			return nil, "", fmt.Errorf("mysql.dsn: charset=%s: sidecache reads in utf8mb4, the form ids take in the binlog (remove the parameter)", q.Get("charset"))
		}
	}
	if err := c.Apply(mysql.Charset("utf8mb4", "")); err != nil {
		return nil, "", fmt.Errorf("mysql.dsn: %w", err)
	}
	c.Params["sql_mode"] = "(SELECT REPLACE(@@SESSION.sql_mode, 'PAD_CHAR_TO_FULL_LENGTH', ''))"
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
	Name  string
	Table string
	// Key is the primary key, its columns in the key's order.
	Key     Key
	Columns []Column // the columns returned, in order
	// Cascades are foreign keys of this table whose parent's changes cascade into it (ON DELETE
	// or ON UPDATE CASCADE / SET NULL / SET DEFAULT): the server applies them without binlog
	// row events, so they are never invalidated.
	Cascades []Cascade

	one   *sql.Stmt
	mu    sync.Mutex
	many  map[int]*sql.Stmt // by padded id count
	query string            // SELECT key columns, columns FROM ... WHERE

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
	// reads serves loads and scans: db, or a replica (Reading).
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
	// Key is the primary key's columns in order; nil takes the table's.
	Key []string
	// Columns are the columns returned; nil: all, in table order.
	Columns []string
	// Lookups read rows by the columns of a UNIQUE index.
	Lookups []LookupSpec
}

// LookupSpec is a lookup as configured.
type LookupSpec struct {
	Name    string
	Columns []string // a UNIQUE index's columns, in the order a lookup value lists them
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
		es, err := s.check(ctx, ce, mariadb)
		if err != nil {
			s.Close()
			return nil, err
		}
		for _, e := range es {
			s.entities[e.Name] = e
		}
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

// check checks ce against the schema and prepares its queries. It returns the entity and one
// entity per lookup, named keys.Lookup(entity, lookup), whose key is the lookup's columns.
func (s *Source) check(ctx context.Context, ce Spec, mariadb bool) ([]*Entity, error) {
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
	if len(pk) == 0 {
		return nil, bad("key", "table %q has no primary key", ce.Table)
	}
	if err := matchKey(ce.Key, pk, byName, ce.Table); err != nil {
		return nil, bad("key", "%v", err)
	}
	e := &Entity{Name: ce.Name, Table: table, many: make(map[int]*sql.Stmt)}
	if e.Key, err = keyParts(pk, cols, byName); err != nil {
		return nil, bad("key", "%v", err)
	}
	if e.Cascades, err = s.cascades(ctx, table); err != nil {
		return nil, err
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

	if err := s.prepare(ctx, e); err != nil {
		return nil, err
	}
	entities := []*Entity{e}
	if len(ce.Lookups) > 0 {
		unique, err := s.uniqueIndexes(ctx, table)
		if err != nil {
			return nil, err
		}
		for i, l := range ce.Lookups {
			field := fmt.Sprintf("lookups[%d]", i)
			if !unique.has(l.Columns) {
				return nil, bad(field, "(%s) is not the column list of a UNIQUE index of table %q", strings.Join(l.Columns, ", "), ce.Table)
			}
			le := &Entity{Name: keys.Lookup(ce.Name, l.Name), Table: table, Columns: e.Columns, Cascades: e.Cascades, many: make(map[int]*sql.Stmt)}
			if le.Key, err = keyParts(l.Columns, cols, byName); err != nil {
				return nil, bad(field, "%v", err)
			}
			if err := s.prepare(ctx, le); err != nil {
				return nil, err
			}
			entities = append(entities, le)
		}
	}
	return entities, nil
}

// keyParts describes the columns names, in order, as a key: each of a type a key may have.
func keyParts(names []string, cols []schemaColumn, byName map[string]*schemaColumn) (Key, error) {
	var key Key
	for _, n := range names {
		kc, ok := byName[strings.ToLower(n)]
		if !ok {
			return nil, fmt.Errorf("column %q does not exist", n)
		}
		part, err := keyFor(*kc)
		if err != nil {
			return nil, fmt.Errorf("column %q: %v", kc.name, err)
		}
		for i := range cols {
			if &cols[i] == kc {
				part.Ordinal = i
			}
		}
		if part.Kind == KeyString {
			part.Charset = strings.ToLower(kc.charset.String)
			switch part.Charset {
			case "utf8mb4", "utf8mb3", "utf8", "ascii", "latin1":
			default:
				return nil, fmt.Errorf("column %q is in character set %s; string keys must be utf8mb4, utf8mb3, ascii or latin1 "+
					"(the binlog carries their bytes, which must read as the same id)", kc.name, kc.charset.String)
			}
		}
		key = append(key, part)
	}
	return key, nil
}

// prepare builds e's queries from its key and columns, and prepares the one-row load.
func (s *Source) prepare(ctx context.Context, e *Entity) error {
	// The key's columns always come first so rows of a multi-get can be told apart; they are
	// returned only if they are among the configured columns.
	var sel, key []string
	for _, p := range e.Key {
		key = append(key, quote(p.Name))
	}
	sel = append(sel, key...)
	for _, c := range e.Columns {
		sel = append(sel, quote(c.Name))
	}
	from := " FROM " + quote(s.schema) + "." + quote(e.Table)
	e.query = "SELECT " + strings.Join(sel, ", ") + from + " WHERE "
	// A lookup's unique key may hold NULLs, which no id names: the scans pass over such rows.
	// (A primary key has none, and the condition costs it nothing.)
	ids := "SELECT " + strings.Join(key, ", ") + from + " WHERE " + strings.Join(key, " IS NOT NULL AND ") + " IS NOT NULL"
	order := " ORDER BY " + strings.Join(key, ", ")
	e.scanFirst = ids + " AND " + lexCompare(key, "<=") + order + " LIMIT ?"
	e.scanNext = ids + " AND " + lexCompare(key, ">") + " AND " + lexCompare(key, "<=") + order + " LIMIT ?"
	e.last = ids + " ORDER BY " + strings.Join(key, " DESC, ") + " DESC LIMIT 1"
	var err error
	if e.one, err = s.reads.PrepareContext(ctx, e.query+e.match(1)); err != nil {
		return fmt.Errorf("mysql: preparing the query for entity %q: %w", e.Name, err)
	}
	return nil
}

// uniqueKeys are the column lists of a table's unique indexes, in lower case.
type uniqueKeys [][]string

// has reports whether cols, in any order, are the columns of one of the indexes.
func (u uniqueKeys) has(cols []string) bool {
	want := make([]string, len(cols))
	for i, c := range cols {
		want[i] = strings.ToLower(c)
	}
	slices.Sort(want)
	for _, idx := range u {
		got := slices.Sorted(slices.Values(idx))
		if slices.Equal(got, want) {
			return true
		}
	}
	return false
}

func (s *Source) uniqueIndexes(ctx context.Context, table string) (uniqueKeys, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX`, s.schema, table)
	if err != nil {
		return nil, fmt.Errorf("mysql: reading the indexes of %s.%s: %w", s.schema, table, err)
	}
	defer rows.Close()
	byIndex := map[string][]string{}
	expression := map[string]bool{} // a functional key part (MySQL 8) has no column name
	var order []string
	for rows.Next() {
		var idx string
		var col sql.NullString
		if err := rows.Scan(&idx, &col); err != nil {
			return nil, err
		}
		if _, ok := byIndex[idx]; !ok {
			order = append(order, idx)
		}
		expression[idx] = expression[idx] || !col.Valid
		byIndex[idx] = append(byIndex[idx], strings.ToLower(col.String))
	}
	var u uniqueKeys
	for _, idx := range order {
		if !expression[idx] {
			u = append(u, byIndex[idx])
		}
	}
	return u, rows.Err()
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

func keyFor(c schemaColumn) (KeyPart, error) {
	unsigned := strings.Contains(strings.ToLower(c.columnType), "unsigned")
	width := map[string]int{"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32, "bigint": 64}
	if w, ok := width[c.dataType]; ok {
		if unsigned {
			return KeyPart{Name: c.name, Kind: KeyUint, Bits: w}, nil
		}
		return KeyPart{Name: c.name, Kind: KeyInt, Bits: w}, nil
	}
	if c.dataType == "char" || c.dataType == "varchar" {
		return KeyPart{Name: c.name, Kind: KeyString, MaxChars: int(c.maxChars.Int64)}, nil
	}
	return KeyPart{}, fmt.Errorf("type %s is not supported as a key (integer, CHAR or VARCHAR)", c.columnType)
}

// matchKey checks the configured key columns (none: the table's) against the primary key pk.
func matchKey(want, pk []string, byName map[string]*schemaColumn, table string) error {
	if len(want) == 0 {
		return nil
	}
	for _, n := range want {
		if _, ok := byName[strings.ToLower(n)]; !ok {
			return fmt.Errorf("column %q does not exist in table %q", n, table)
		}
	}
	if slices.EqualFunc(want, pk, strings.EqualFold) {
		return nil
	}
	if len(pk) == 1 {
		return fmt.Errorf("%q is not the primary key of table %q (the primary key is %q)", strings.Join(want, ", "), table, pk[0])
	}
	return fmt.Errorf("table %q has the composite primary key (%s); key must list its columns in that order: [%s]",
		table, strings.Join(pk, ", "), strings.Join(pk, ", "))
}

// lexCompare is the condition that the key columns, compared in order, are op ("<=" or ">")
// the placeholders' values: (a < ? OR (a = ? AND b <= ?)) for two columns. Written out rather
// than as a row comparison, (a, b) <= (?, ?), which not every server turns into a range on the
// primary key. Its arguments are lexArgs's.
func lexCompare(cols []string, op string) string {
	if len(cols) == 1 {
		return cols[0] + " " + op + " ?"
	}
	strict := strings.TrimSuffix(op, "=")
	return "(" + cols[0] + " " + strict + " ? OR (" + cols[0] + " = ? AND " + lexCompare(cols[1:], op) + "))"
}

// lexArgs are the arguments of lexCompare for an id's values: each but the last twice.
func lexArgs(values []any) []any {
	out := make([]any, 0, 2*len(values))
	for i, v := range values {
		out = append(out, v)
		if i < len(values)-1 {
			out = append(out, v)
		}
	}
	return out
}

// match is the condition that picks n ids' rows: key = ? or key IN (?, ...) for one column,
// (a = ? AND b = ?) OR ... for several; each id's values are its arguments, in order.
func (e *Entity) match(n int) string {
	if len(e.Key) == 1 {
		k := quote(e.Key[0].Name)
		if n == 1 {
			return k + " = ?"
		}
		return k + " IN (?" + strings.Repeat(", ?", n-1) + ")"
	}
	var one []string
	for _, p := range e.Key {
		one = append(one, quote(p.Name)+" = ?")
	}
	row := "(" + strings.Join(one, " AND ") + ")"
	return row + strings.Repeat(" OR "+row, n-1)
}

func quote(ident string) string { return "`" + strings.ReplaceAll(ident, "`", "``") + "`" }

// Entity returns the checked entity called name, or nil.
func (s *Source) Entity(name string) *Entity { return s.entities[name] }

// Reading returns a Source with s's checked entities whose loads and scans read db (a replica
// of the database s checked): the schema is not read again, only the row queries are prepared
// on db. The caller owns db, and closes the returned Source apart from s.
func (s *Source) Reading(ctx context.Context, db *sql.DB) (*Source, error) {
	r := &Source{db: s.db, reads: db, schema: s.schema, timeout: s.timeout, entities: make(map[string]*Entity, len(s.entities)),
		lowerCaseNames: s.lowerCaseNames}
	for name, e := range s.entities {
		re := &Entity{Name: e.Name, Table: e.Table, Key: e.Key, Columns: e.Columns, Cascades: e.Cascades, many: make(map[int]*sql.Stmt),
			query: e.query, scanFirst: e.scanFirst, scanNext: e.scanNext, last: e.last}
		var err error
		if re.one, err = db.PrepareContext(ctx, re.query+re.match(1)); err != nil {
			r.Close()
			return nil, fmt.Errorf("mysql: preparing the query for entity %q on the replica: %w", name, err)
		}
		r.entities[name] = re
	}
	return r, nil
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
	args, err := e.Key.args(id)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", ErrInvalidID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := e.one.QueryContext(ctx, args...)
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
	vals, dest := scanDest(len(e.Key))
	switch err := s.reads.QueryRowContext(ctx, e.last).Scan(dest...); {
	case errors.Is(err, sql.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return e.id(vals), true, nil
}

// scanDest returns n values and the pointers to scan them into.
func scanDest(n int) (vals, dest []any) {
	vals = make([]any, n)
	dest = make([]any, n)
	for i := range vals {
		dest[i] = &vals[i]
	}
	return vals, dest
}

// id is the canonical id of a row's key values, as the driver returns them.
func (e *Entity) id(vals []any) string {
	if len(vals) == 1 {
		return string(appendText(nil, vals[0]))
	}
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = string(appendText(nil, v))
	}
	return keys.JoinID(parts)
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
	upTo, err := e.Key.args(*last)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidID, err)
	}
	var rows *sql.Rows
	if after == nil {
		rows, err = s.reads.QueryContext(ctx, e.scanFirst, append(lexArgs(upTo), limit)...)
	} else {
		var from []any
		if from, err = e.Key.args(*after); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidID, err)
		}
		rows, err = s.reads.QueryContext(ctx, e.scanNext, append(append(lexArgs(from), lexArgs(upTo)...), limit)...)
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ids := make([]string, 0, limit)
	vals, dest := scanDest(len(e.Key))
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		ids = append(ids, e.id(vals))
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
	args := make([]any, 0, n*len(e.Key))
	for i := range n {
		a, err := e.Key.args(ids[min(i, len(ids)-1)])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidID, err)
		}
		args = append(args, a...)
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
	st, err := s.reads.PrepareContext(ctx, e.query+e.match(n))
	if err != nil {
		return nil, err
	}
	e.many[n] = st
	return st, nil
}

// scan encodes every row and hands it to fn with its key. It closes rows.
func (e *Entity) scan(rows *sql.Rows, fn func(key string, obj []byte)) error {
	defer rows.Close()
	nk := len(e.Key)
	n := nk + len(e.Columns)
	vals, cols, dest := make([]any, n), make([]inPlace, n), make([]any, n)
	for i := range cols {
		dest[i] = &cols[i]
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		for i := range cols {
			vals[i] = cols[i].v
		}
		obj, err := e.encode(vals[nk:])
		if err != nil {
			return err
		}
		fn(e.id(vals[:nk]), obj)
	}
	return rows.Err()
}

// inPlace receives a value as the driver returns it, bytes still in the driver's buffer, where
// scanning into *any would copy them first: scan encodes each row before it reads the next.
// Not sql.RawBytes, which turns an empty string into nil once a NULL has been scanned into it,
// and NULL and "" must stay apart.
type inPlace struct{ v any }

func (c *inPlace) Scan(src any) error {
	c.v = src
	return nil
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
