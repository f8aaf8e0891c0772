// Package devstack starts a throwaway MariaDB and Redis (standalone, a master, a replica and
// Sentinels, or a Redis Cluster) as child processes in a temporary directory on free loopback
// ports. Tests, `make run`, demos and load runs use it so that everything runs against real
// servers without touching the machine's own services.
package devstack

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// ErrNotInstalled reports that a server binary is missing from the machine.
var ErrNotInstalled = errors.New("devstack: server binary not installed (run `make deps`)")

// Options configures Start. The zero value is usable.
type Options struct {
	// Dir is where data, sockets and logs go. Default: a new temporary directory that Stop removes.
	Dir string
	// MySQLPort and RedisPort pin the ports. Default: a free loopback port each.
	MySQLPort, RedisPort int
	// GeneralLog turns on MariaDB's general query log into mysql.general_log, so that callers
	// can count the queries the server really received.
	GeneralLog bool
	// RedisOnly starts Redis alone, for tests of Redis behaviour.
	RedisOnly bool
	// Sentinel starts Redis as a master, one replica of it and Redis Sentinels that watch
	// them, for tests of failover (see sentinel.go). RedisAddr is then the master at start.
	Sentinel bool
	// Sentinels is how many Sentinels watch the master when Sentinel is set. Default 3
	// (quorum 2); 1 (quorum 1) starts about 2 s sooner, as it need not wait for the Sentinels
	// to find each other.
	Sentinels int
	// Cluster starts a Redis Cluster of 3 masters and no replicas instead of one Redis server
	// (see cluster.go): Stack.RedisAddrs are its nodes, RedisAddr the first of them.
	Cluster bool
	// LowerCaseTableNames starts MariaDB with lower_case_table_names=1, as servers whose
	// schemas came from Windows or macOS often run: table names are stored in lower case and
	// compared without regard to case.
	LowerCaseTableNames bool
	// Replica starts a second MariaDB that replicates from the first by GTID (server_id 2,
	// read_only), for tests of reads from a lagging replica: Stack.MySQLReplicaAddr,
	// ReplicaDSN, StopReplicaSQL, StartReplicaSQL and WaitReplica.
	Replica bool
	// Logf receives progress lines. Default: silent.
	Logf func(format string, args ...any)
}

// Stack is a running MariaDB + Redis pair.
type Stack struct {
	Dir       string
	MySQLAddr string // host:port
	// MySQLReplicaAddr is the MariaDB replica's host:port, with Options.Replica.
	MySQLReplicaAddr string
	RedisAddr        string // host:port; with Options.Sentinel, the master at start

	// With Options.Sentinel: the replica at start, the Sentinels' addresses and the name
	// they know the master by (redis.master_name in a sidecache config).
	RedisReplicaAddr string
	SentinelAddrs    []string
	MasterName       string

	// RedisAddrs are the nodes of the Redis Cluster, with Options.Cluster.
	RedisAddrs []string

	ownDir bool
	logf   func(string, ...any)

	mu        sync.Mutex
	mysql     *proc
	redis     *proc
	replica   *proc // Redis's
	dbReplica *proc // MariaDB's
	sentinels []*proc
	// clusterNodes are the Redis Cluster's servers, their bus ports in clusterBusPorts.
	clusterNodes    []*proc
	clusterBusPorts []int
	killed          string // the master KillRedisMaster killed last
}

// proc is a started server and a channel closed when it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop asks the server to shut down and kills its process group if it takes too long. A
// server stopped by SIGSTOP (PauseRedis) is continued first, or it would not see the SIGTERM.
func (p *proc) stop() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// kill ends the server's process group with SIGKILL, as a crash or an OOM kill would, and
// waits for it to exit.
func (p *proc) kill() {
	if p == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Missing returns the names of the server binaries that cannot be found.
func Missing(redisOnly bool) []string {
	binaries := []string{"redis-server", "mariadbd", "mariadb-install-db"}
	if redisOnly {
		binaries = binaries[:1]
	}
	var missing []string
	for _, b := range binaries {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNotInstalled, name)
}

// Start initialises and starts MariaDB and Redis and waits until both answer.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if m := Missing(opts.RedisOnly); len(m) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotInstalled, strings.Join(m, ", "))
	}
	s := &Stack{Dir: opts.Dir, logf: opts.Logf}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	if s.Dir == "" {
		dir, err := os.MkdirTemp("", "sidecache-devstack-")
		if err != nil {
			return nil, err
		}
		s.Dir, s.ownDir = dir, true
	}
	mysqlPort, redisPort := opts.MySQLPort, opts.RedisPort
	var err error
	if mysqlPort == 0 {
		if mysqlPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	if redisPort == 0 {
		if redisPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	s.MySQLAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(mysqlPort))
	s.RedisAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(redisPort))

	if !opts.RedisOnly {
		if err := s.startMySQL(ctx, mysqlPort, opts.GeneralLog, opts.LowerCaseTableNames); err != nil {
			s.Stop()
			return nil, err
		}
		if opts.Replica {
			port, err := freePort()
			if err == nil {
				err = s.startReplica(ctx, port)
			}
			if err != nil {
				s.Stop()
				return nil, err
			}
		}
	}
	startRedis := s.StartRedis
	if opts.Cluster {
		startRedis = s.startCluster
	}
	if err := startRedis(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	if opts.Sentinel {
		if err := s.startSentinels(ctx, opts.Sentinels); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Stack) startMySQL(ctx context.Context, port int, generalLog, lowerCaseNames bool) error {
	gl := "0"
	if generalLog {
		gl = "1"
	}
	lctn := "0"
	if lowerCaseNames {
		lctn = "1"
	}
	// The binlog the tail reads (and a replica replicates from).
	p, err := s.startMariaDB(ctx, "mysql", s.MySQLAddr, port, fmt.Sprintf(`log_bin=%s
binlog_format=ROW
binlog_row_image=FULL
binlog_row_metadata=FULL
server_id=1
general_log=%s
lower_case_table_names=%s
`, filepath.Join(s.Dir, "binlog"), gl, lctn))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.mysql = p
	s.mu.Unlock()
	return nil
}

// startMariaDB initialises (once) and starts a mariadbd whose files are named after name in
// the stack's directory (data in NAME, NAME.sock, NAME.log; the primary's are mysql, my.cnf,
// mysqld.*), with extra lines in its [mysqld] section, and waits until it answers on addr.
func (s *Stack) startMariaDB(ctx context.Context, name, addr string, port int, extra string) (*proc, error) {
	data := filepath.Join(s.Dir, name)
	cnf, sock, pid, logPath := filepath.Join(s.Dir, name+".cnf"), filepath.Join(s.Dir, name+".sock"),
		filepath.Join(s.Dir, name+".pid"), filepath.Join(s.Dir, name+".log")
	if name == "mysql" {
		cnf, sock, pid, logPath = filepath.Join(s.Dir, "my.cnf"), filepath.Join(s.Dir, "mysql.sock"),
			filepath.Join(s.Dir, "mysqld.pid"), filepath.Join(s.Dir, "mysqld.log")
	}
	// A defaults file of our own keeps /etc/mysql out; as root mariadbd needs user=root. Each
	// server has its own tmpdir: mariadbd deletes stray #sql* files in its tmpdir at start, so
	// servers sharing /tmp (parallel test packages) would delete each other's temporary tables.
	tmp := filepath.Join(s.Dir, "tmp")
	if name != "mysql" {
		tmp = filepath.Join(s.Dir, name+"-tmp")
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`[mysqld]
user=%s
tmpdir=%s
datadir=%s
socket=%s
pid-file=%s
port=%d
bind-address=127.0.0.1
skip-name-resolve
log_output=TABLE
innodb_buffer_pool_size=128M
innodb_log_file_size=48M
innodb_flush_log_at_trx_commit=2
sync_binlog=0
max_connections=500
character-set-server=utf8mb4
collation-server=utf8mb4_general_ci
%s`, currentUser(), tmp, data, sock, pid, port, extra)
	if err := os.WriteFile(cnf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(data, "mysql")); err != nil {
		install, _ := lookPath("mariadb-install-db")
		out, err := exec.CommandContext(ctx, install, "--defaults-file="+cnf,
			"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("devstack: mariadb-install-db (%s): %w\n%s", name, err, tail(out))
		}
	}
	bin, _ := lookPath("mariadbd")
	db, err := sql.Open("mysql", dsnAt(addr, "root", "", ""))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	p, err := launch(ctx, exec.Command(bin, "--defaults-file="+cnf), "mariadbd ("+name+")", logPath,
		60*time.Second, func() error {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			return db.PingContext(pctx)
		})
	if err != nil {
		return nil, err
	}
	s.logf("mariadb (%s) ready on %s (data in %s)", name, addr, data)
	return p, nil
}

// StartRedis starts (or restarts, after StopRedis or KillRedis) the Redis server on its port,
// empty: it never saves. In a Sentinel stack that is the master at start.
func (s *Stack) StartRedis(ctx context.Context) error {
	_, port, _ := net.SplitHostPort(s.RedisAddr)
	// A replica's first sync would otherwise wait 5 s (repl-diskless-sync-delay) for others.
	p, err := s.startRedisServer(ctx, s.RedisAddr, "redis", "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.Dir, "--daemonize", "no", "--protected-mode", "no",
		"--repl-diskless-sync-delay", "0")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.redis = p
	s.mu.Unlock()
	return nil
}

// startRedisServer runs redis-server with args, its output in NAME.log in the stack's
// directory, and waits until addr answers PING.
func (s *Stack) startRedisServer(ctx context.Context, addr, name string, args ...string) (*proc, error) {
	bin, err := lookPath("redis-server")
	if err != nil {
		return nil, err
	}
	p, err := launch(ctx, exec.Command(bin, args...), name, filepath.Join(s.Dir, name+".log"), 20*time.Second,
		func() error { return pingRedis(addr) })
	if err == nil {
		s.logf("%s ready on %s", name, addr)
	}
	return p, err
}

// launch starts cmd in a process group of its own that dies with this process, its output
// appended to logPath, and waits until ready returns nil. A process that exits first is an
// error quoting its log; one not ready within timeout, or when ctx ends, is killed.
func launch(ctx context.Context, cmd *exec.Cmd, name, logPath string, timeout time.Duration, ready func() error) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p, err := startProc(cmd)
	logFile.Close()
	if err != nil {
		return nil, fmt.Errorf("devstack: start %s: %w", name, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return p, nil
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("devstack: %s exited during start:\n%s", name, tail(b))
		case <-ctx.Done():
			p.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("devstack: %s not ready after %v: %w", name, timeout, err)
		}
	}
}

// StopRedis stops the Redis server and waits for it to exit; StartRedis brings it back.
func (s *Stack) StopRedis() {
	s.takeRedis().stop()
}

// KillRedis ends the Redis server with SIGKILL, as a crash would, and waits for it to exit;
// StartRedis brings it back empty.
func (s *Stack) KillRedis() {
	s.takeRedis().kill()
}

func (s *Stack) takeRedis() *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.redis
	s.redis = nil
	return p
}

// PauseRedis stops the Redis server with SIGSTOP: connections are still accepted by the
// kernel, but nothing is answered, as with a Redis that hangs. ResumeRedis continues it.
func (s *Stack) PauseRedis() error { return s.signalRedis(syscall.SIGSTOP) }

// ResumeRedis continues a Redis server that PauseRedis stopped.
func (s *Stack) ResumeRedis() error { return s.signalRedis(syscall.SIGCONT) }

func (s *Stack) signalRedis(sig syscall.Signal) error {
	s.mu.Lock()
	p := s.redis
	s.mu.Unlock()
	if p == nil {
		return errors.New("devstack: redis-server is not running")
	}
	return p.cmd.Process.Signal(sig)
}

// Stop ends every server and removes the directory if Start created it.
func (s *Stack) Stop() {
	s.mu.Lock()
	m, r, rr, ss, dr, cn := s.mysql, s.redis, s.replica, s.sentinels, s.dbReplica, s.clusterNodes
	s.mysql, s.redis, s.replica, s.sentinels, s.dbReplica, s.clusterNodes = nil, nil, nil, nil, nil, nil
	s.mu.Unlock()
	for _, p := range append(ss, cn...) {
		p.stop()
	}
	rr.stop()
	dr.stop()
	r.stop()
	m.stop()
	if s.ownDir {
		os.RemoveAll(s.Dir)
	}
}

// DSN returns a go-sql-driver/mysql DSN for user on database db (db may be empty).
func (s *Stack) DSN(user, password, db string) string { return dsnAt(s.MySQLAddr, user, password, db) }

func dsnAt(addr, user, password, db string) string {
	return configAt(addr, user, password, db).FormatDSN()
}

func configAt(addr, user, password, db string) *mysql.Config {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = user, password, "tcp", addr, db
	c.Timeout = 5 * time.Second
	c.MultiStatements = true
	return c
}

// Root opens a root connection to database db (db may be empty).
func (s *Stack) Root(db string) (*sql.DB, error) {
	c := configAt(s.MySQLAddr, "root", "", db)
	// The tests' writers send one statement per write: with their arguments interpolated by
	// the driver, that is one round trip instead of a prepare, an execute and a close, and
	// half the server's work per write.
	c.InterpolateParams = true
	root, err := sql.Open("mysql", c.FormatDSN())
	if err != nil {
		return nil, err
	}
	// database/sql keeps 2 idle connections by default: concurrent writers beyond that open
	// and close a connection per statement, and their handshakes, not the writes, set the pace.
	root.SetMaxIdleConns(64)
	return root, nil
}

// CreateDatabase creates database name and a user of the same name and password that may
// read it, and returns that user's DSN.
func (s *Stack) CreateDatabase(ctx context.Context, name string) (string, error) {
	root, err := s.Root("")
	if err != nil {
		return "", err
	}
	defer root.Close()
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS `" + name + "`",
		"CREATE USER IF NOT EXISTS '" + name + "'@'127.0.0.1' IDENTIFIED BY '" + name + "'",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON `" + name + "`.* TO '" + name + "'@'127.0.0.1'",
	}
	for _, q := range stmts {
		if _, err := root.ExecContext(ctx, q); err != nil {
			return "", fmt.Errorf("devstack: %s: %w", q, err)
		}
	}
	return s.DSN(name, name, name), nil
}

func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), "+PONG") {
		return fmt.Errorf("redis answered %q", buf[:n])
	}
	return nil
}

func currentUser() string {
	if os.Geteuid() == 0 {
		return "root"
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return strconv.Itoa(os.Geteuid())
}

func tail(b []byte) string {
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}
