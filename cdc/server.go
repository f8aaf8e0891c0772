package cdc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// ErrServer marks a server that cannot serve row-based CDC as configured.
var ErrServer = errors.New("cdc: the server cannot serve row-based change capture")

// Check verifies that the server writes a row-based binlog with full row images (and full row
// metadata, where the server has the setting) and that the user may read it. The error names
// the first setting that is missing. Then it reads the checkpoint's coverage once, if Redis
// answers.
func (t *Tail) Check(ctx context.Context) error {
	var logBin, format, image string
	if err := t.o.DB.QueryRowContext(ctx, "SELECT @@log_bin, @@binlog_format, @@binlog_row_image").Scan(&logBin, &format, &image); err != nil {
		return fmt.Errorf("cdc: reading the binlog settings: %w", err)
	}
	switch {
	case logBin != "1" && !strings.EqualFold(logBin, "ON"):
		return fmt.Errorf("%w: log_bin is off (start the server with log_bin and binlog_format=ROW)", ErrServer)
	case !strings.EqualFold(format, "ROW"):
		return fmt.Errorf("%w: binlog_format=%s, want ROW", ErrServer, format)
	case !strings.EqualFold(image, "FULL"):
		return fmt.Errorf("%w: binlog_row_image=%s, want FULL", ErrServer, image)
	}
	var name, meta string
	err := t.o.DB.QueryRowContext(ctx, "SHOW VARIABLES LIKE 'binlog_row_metadata'").Scan(&name, &meta)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		t.log.Warn("the server has no binlog_row_metadata: keys are found through the schema read at start, " +
			"so catching up across an ALTER TABLE that moves the key column can misroute invalidations")
	case err != nil:
		return fmt.Errorf("cdc: reading binlog_row_metadata: %w", err)
	case !strings.EqualFold(meta, "FULL"):
		return fmt.Errorf("%w: binlog_row_metadata=%s, want FULL (row events then carry their own column names)", ErrServer, meta)
	}
	// MySQL 8 can wrap each transaction in one compressed payload event, which this tail does
	// not unpack; its changes would go unseen.
	var compression string
	err = t.o.DB.QueryRowContext(ctx, "SHOW VARIABLES LIKE 'binlog_transaction_compression'").Scan(&name, &compression)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("cdc: reading binlog_transaction_compression: %w", err)
	case strings.EqualFold(compression, "ON"):
		return fmt.Errorf("%w: binlog_transaction_compression=ON, want OFF (compressed transaction payloads are not read)", ErrServer)
	}
	var lctn int
	if err := t.o.DB.QueryRowContext(ctx, "SELECT @@lower_case_table_names").Scan(&lctn); err != nil {
		return fmt.Errorf("cdc: reading lower_case_table_names: %w", err)
	}
	t.setTables(lctn != 0)
	if err := t.loadCharsets(ctx); err != nil {
		return err
	}
	rows, err := t.o.DB.QueryContext(ctx, "SHOW GRANTS")
	if err != nil {
		return fmt.Errorf("cdc: reading the user's grants: %w", err)
	}
	defer rows.Close()
	var grants []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return err
		}
		grants = append(grants, strings.ToUpper(g))
	}
	all := strings.Join(grants, "\n")
	if !strings.Contains(all, "REPLICATION SLAVE") && !strings.Contains(all, "REPLICATION REPLICA") && !strings.Contains(all, "ALL PRIVILEGES ON *.*") {
		return fmt.Errorf("%w: the user may not read the binlog (GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO the cdc.dsn user)", ErrServer)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	// Read which entities the checkpoint covers now, so that reads use the cache from the
	// first request on, not from the first poll (until then they bypass it).
	t.refresh(ctx)
	return nil
}

// loadCharsets reads which character set each collation id belongs to, for string keys.
func (t *Tail) loadCharsets(ctx context.Context) error {
	rows, err := t.o.DB.QueryContext(ctx, "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL")
	if err != nil {
		return fmt.Errorf("cdc: reading the server's collations: %w", err)
	}
	defer rows.Close()
	t.charsets = map[uint64]string{}
	for rows.Next() {
		var id uint64
		var cs string
		if err := rows.Scan(&id, &cs); err != nil {
			return err
		}
		t.charsets[id] = strings.ToLower(cs)
	}
	return rows.Err()
}

// recoverPrepared records the XA transactions prepared on the server now (XA RECOVER) in cp,
// each to drop every entity at its commit: a tail that starts at the current position never
// saw what they changed. It reports whether cp now lists every prepared transaction.
func (t *Tail) recoverPrepared(ctx context.Context, cp *Checkpoint) bool {
	rows, err := t.o.DB.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		t.log.Warn("cannot list prepared XA transactions (XA RECOVER); an XA COMMIT of one prepared before this start "+
			"will drop every entity's cache", "err", err)
		return false
	}
	defer rows.Close()
	for rows.Next() {
		var format int64
		var gl, bl int
		var data []byte
		if err := rows.Scan(&format, &gl, &bl, &data); err != nil || gl+bl > len(data) {
			return false
		}
		xid := fmt.Sprintf("%x,%x,%d", data[:gl], data[gl:gl+bl], format)
		if cp.Prepared == nil {
			cp.Prepared = map[string][]string{}
		}
		cp.Prepared[xid] = t.entities()
	}
	return rows.Err() == nil
}

// currentPosition is the server's binlog position now.
func (t *Tail) currentPosition(ctx context.Context) (Checkpoint, error) {
	cp := Checkpoint{Flavor: t.o.Flavor}
	if t.o.Flavor == "mariadb" {
		err := t.o.DB.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&cp.GTID)
		return cp, err
	}
	// MySQL 8.2 renamed SHOW MASTER STATUS, and 8.4 removed the old name.
	rows, err := t.o.DB.QueryContext(ctx, "SHOW BINARY LOG STATUS")
	if err != nil {
		rows, err = t.o.DB.QueryContext(ctx, "SHOW MASTER STATUS")
	}
	if err != nil {
		return cp, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return cp, fmt.Errorf("%w: the server reports no binlog position (is log_bin on?)", ErrServer)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return cp, err
	}
	for i, c := range cols {
		switch c {
		case "File":
			cp.File = vals[i].String
		case "Position":
			var p uint32
			fmt.Sscan(vals[i].String, &p)
			cp.Pos = p
		case "Executed_Gtid_Set":
			cp.GTID = strings.ReplaceAll(vals[i].String, "\n", "")
		}
	}
	return cp, rows.Err()
}
