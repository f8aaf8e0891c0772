package devstack

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// ErrReplicaBehind reports a replica that did not reach the primary's position in time.
var ErrReplicaBehind = errors.New("devstack: the MariaDB replica did not catch up in time")

// startReplica starts a second mariadbd that replicates from the first by GTID (server_id 2,
// read_only), from the start of the primary's binlog, and waits until it has caught up.
func (s *Stack) startReplica(ctx context.Context, port int) error {
	s.MySQLReplicaAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := s.startMariaDB(ctx, "replica", s.MySQLReplicaAddr, port, "server_id=2\nread_only=1\nskip_slave_start\n")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.dbReplica = p
	s.mu.Unlock()
	_, primaryPort, _ := net.SplitHostPort(s.MySQLAddr)
	db, err := sql.Open("mysql", dsnAt(s.MySQLReplicaAddr, "root", "", ""))
	if err != nil {
		return err
	}
	defer db.Close()
	// STOP SLAVE first: a replica restarted on an existing directory (Options.Dir) keeps its
	// GTID position, and the primary may have a new port.
	for _, q := range []string{
		"STOP SLAVE",
		"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = " + primaryPort +
			", MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_CONNECT_RETRY = 1, MASTER_USE_GTID = slave_pos",
		"START SLAVE",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("devstack: replica: %s: %w", q, err)
		}
	}
	return s.WaitReplica(ctx, 30*time.Second)
}

// ReplicaDSN is DSN on the replica (Options.Replica).
func (s *Stack) ReplicaDSN(user, password, db string) string {
	return dsnAt(s.MySQLReplicaAddr, user, password, db)
}

// StopReplicaSQL stops the replica's SQL thread: it goes on receiving the primary's binlog
// but applies none of it, so it lags until StartReplicaSQL.
func (s *Stack) StopReplicaSQL(ctx context.Context) error {
	return s.onReplica(ctx, "STOP SLAVE SQL_THREAD")
}

// StartReplicaSQL starts the replica's SQL thread again after StopReplicaSQL.
func (s *Stack) StartReplicaSQL(ctx context.Context) error {
	return s.onReplica(ctx, "START SLAVE SQL_THREAD")
}

func (s *Stack) onReplica(ctx context.Context, q string) error {
	if s.MySQLReplicaAddr == "" {
		return errors.New("devstack: the stack has no MariaDB replica (Options.Replica)")
	}
	db, err := sql.Open("mysql", dsnAt(s.MySQLReplicaAddr, "root", "", ""))
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, q)
	return err
}

// WaitReplica waits up to timeout until the replica has applied everything the primary had
// written when it was called (its @@gtid_binlog_pos), and returns ErrReplicaBehind if it has
// not. The SQL thread must be running.
func (s *Stack) WaitReplica(ctx context.Context, timeout time.Duration) error {
	if s.MySQLReplicaAddr == "" {
		return errors.New("devstack: the stack has no MariaDB replica (Options.Replica)")
	}
	primary, err := s.Root("")
	if err != nil {
		return err
	}
	defer primary.Close()
	var pos string
	if err := primary.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return err
	}
	if pos == "" {
		return nil // nothing written yet
	}
	replica, err := sql.Open("mysql", dsnAt(s.MySQLReplicaAddr, "root", "", ""))
	if err != nil {
		return err
	}
	defer replica.Close()
	var res sql.NullInt64
	if err := replica.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, timeout.Seconds()).Scan(&res); err != nil {
		return err
	}
	if !res.Valid || res.Int64 != 0 {
		return fmt.Errorf("%w: %v for %s", ErrReplicaBehind, timeout, pos)
	}
	return nil
}
