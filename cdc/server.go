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
// the first setting that is missing.
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
	return rows.Err()
}

// currentPosition is the server's binlog position now.
func (t *Tail) currentPosition(ctx context.Context) (Checkpoint, error) {
	cp := Checkpoint{Flavor: t.o.Flavor}
	if t.o.Flavor == "mariadb" {
		err := t.o.DB.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&cp.GTID)
		return cp, err
	}
	rows, err := t.o.DB.QueryContext(ctx, "SHOW MASTER STATUS")
	if err != nil {
		return cp, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return cp, fmt.Errorf("%w: SHOW MASTER STATUS returned nothing (is log_bin on?)", ErrServer)
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
