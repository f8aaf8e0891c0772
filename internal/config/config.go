// Package config loads and validates sidecache's YAML configuration: it maps the file onto the
// fields the packages' Options take, fills in their defaults (applyDefaults, from the constants
// of the package each default belongs to) and reports the first problem as one line naming the
// file, the entity and the field.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"gopkg.in/yaml.v3"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/cdc"
	"github.com/sidecache/sidecache/internal/faults"
	"github.com/sidecache/sidecache/internal/mysqlsource"
	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/lease"
	"github.com/sidecache/sidecache/readthrough"
)

// ErrInvalid marks every configuration error; errors.Is(err, ErrInvalid) tells them apart from I/O.
var ErrInvalid = errors.New("invalid configuration")

// Config is the whole file. Every field documents its default.
type Config struct {
	// Listen is the address of the data API (/v1/...). Default "127.0.0.1:8080". Keep it on
	// loopback: the application in the pod is its only client.
	Listen string `yaml:"listen"`
	// AdminListen, if set, is the address of /healthz, /readyz, /status and /metrics, which then
	// leave Listen: the kubelet's probes and Prometheus reach them on the pod's address while
	// the data API stays on loopback. Default none: they are served on Listen.
	AdminListen string `yaml:"admin_listen"`
	// PprofListen, if set, serves Go's profiler (/debug/pprof/) there; loopback only. Default
	// none.
	PprofListen string `yaml:"pprof_listen"`
	// ShutdownTimeout bounds the drain of in-flight requests on SIGTERM. Default 10s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// Log configures the structured log on stderr.
	Log Log `yaml:"log"`
	// Limits bounds what one request may ask for.
	Limits Limits `yaml:"limits"`

	MySQL     MySQL     `yaml:"mysql"`
	Redis     Redis     `yaml:"redis"`
	NearCache NearCache `yaml:"near_cache"`
	Degraded  Degraded  `yaml:"degraded"`
	Lease     Lease     `yaml:"lease"`
	Kafka     Kafka     `yaml:"kafka"`
	CDC       CDC       `yaml:"cdc"`
	Faults    Faults    `yaml:"faults"`
	Entities  []Entity  `yaml:"entities"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default "info".
	Level string `yaml:"level"`
	// Format is json or text. Default "json".
	Format string `yaml:"format"`
}

// Limits bounds request sizes.
type Limits struct {
	// MaxIDs is the most ids one multi-get may ask for. Default 100, at most 1000.
	MaxIDs int `yaml:"max_ids"`
	// MaxIDLength is the longest id accepted, in bytes, for string keys (integer keys are bounded
	// by their type). Default 255.
	MaxIDLength int `yaml:"max_id_length"`
	// RequestTimeout bounds a request that misses the cache: waiting for the in-process load,
	// the MySQL query and the fill. A hit is bounded by redis.timeout. Default 5s.
	RequestTimeout Duration `yaml:"request_timeout"`
}

// MySQL is the database the rows come from.
type MySQL struct {
	// DSN is a go-sql-driver/mysql DSN that names a database. Required.
	DSN string `yaml:"dsn"`
	// QueryTimeout bounds each query. Default 2s.
	QueryTimeout Duration `yaml:"query_timeout"`
	// MaxOpenConns caps connections to MySQL (and to the replica, each). Default 16.
	MaxOpenConns int `yaml:"max_open_conns"`
	// ReplicaDSN, if set, is a replica of DSN's server that loads read (misses, multi-gets,
	// preload and Bloom rebuild scans); schema checks and the binlog tail keep DSN (or
	// cdc.dsn). It must name the same database. Default none.
	ReplicaDSN string `yaml:"replica_dsn"`
	// ReplicaWaitTimeout bounds how long, after double_delete_delay, a second delete waits for
	// the replica to apply the change (by its GTID); past it the delete runs anyway. 0 turns the
	// wait off: the second delete runs after double_delete_delay alone. Default 5s; used only
	// with ReplicaDSN.
	ReplicaWaitTimeout *Duration `yaml:"replica_wait_timeout"`
}

// NearCache keeps recently read values in the process, kept in step by Redis's server-assisted
// client-side caching (RESP3 CLIENT TRACKING): every write to a key, by anyone, invalidates the
// copies.
type NearCache struct {
	// Enabled turns it on. Default false. Only with a single Redis server (not Sentinel or
	// Cluster, which go-redis's client-side caching does not serve yet).
	Enabled bool `yaml:"enabled"`
	// MaxEntries bounds the values held. Default 100000.
	MaxEntries int `yaml:"max_entries"`
	// MaxStaleness bounds how long a value is served from memory before it is read from Redis
	// again, whatever the invalidations: the bound when Redis hangs (no invalidation arrives,
	// and the connection is not yet known dead). Default 1s.
	MaxStaleness Duration `yaml:"max_staleness"`
}

// Redis is the cache.
type Redis struct {
	// Addrs are host:port pairs; more than one means Redis Cluster, unless MasterName is set.
	// Default ["127.0.0.1:6379"].
	Addrs []string `yaml:"addrs"`
	// MasterName, if set, is the master's name in Redis Sentinel; Addrs are then the Sentinels'
	// addresses, and the client follows a failover to the promoted replica. Default none.
	MasterName string `yaml:"master_name"`
	// Username and Password authenticate (Redis ACL / requirepass). Default none.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// KeyPrefix starts every key sidecache writes. Default "sc:". May not contain '{' or '}'.
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds each dial, read and write. Default 500ms.
	Timeout Duration `yaml:"timeout"`
	// PoolSize is the connection pool size per node. Default 10 per CPU (go-redis's default).
	PoolSize int `yaml:"pool_size"`
}

// Degraded configures reads while Redis is unreachable (its circuit breaker is open).
type Degraded struct {
	// Mode is "load": read MySQL directly, without the Bloom filter, the lease or a fill
	// (X-Cache: bypass), behind MaxDBRate; or "unavailable": answer 503 at once. Default "load".
	Mode string `yaml:"mode"`
	// MaxDBRate caps the MySQL loads (queries) per second of one process while degraded; past
	// it a read answers 503 with Retry-After. Required > 0 with mode "load". Default 100.
	MaxDBRate float64 `yaml:"max_db_rate"`
}

// Lease configures the cluster-wide load lease: one MySQL query per key per fill across every
// sidecar, and fills that land only while their loader still holds the lease.
type Lease struct {
	// Enabled turns the lease on. Default true; false leaves in-process flights only, and fills
	// become plain SETs that can put back a row read just before a write.
	Enabled *bool `yaml:"enabled"`
	// TTL is the lease period. A holder renews it every TTL/3 while loading; a crashed holder
	// frees the key within TTL. Default 3s.
	TTL Duration `yaml:"ttl"`
	// Wait bounds how long a miss waits for another sidecar's load. Default 2s.
	Wait Duration `yaml:"wait"`
	// Fallback after Wait: "load" reads MySQL directly without filling the cache (X-Cache:
	// bypass), "unavailable" answers 503. Default "load".
	Fallback string `yaml:"fallback"`
	// FallbackConcurrency caps direct loads by the fallback in one process. Default 4.
	FallbackConcurrency int `yaml:"fallback_concurrency"`
}

// Kafka configures the retry path for failed deletes.
type Kafka struct {
	// Brokers of the Kafka cluster. Default none: failed deletes are retried in process.
	Brokers []string `yaml:"brokers"`
	// RetryTopic receives failed deletes. Default "sidecache.invalidate.retry".
	RetryTopic string `yaml:"retry_topic"`
	// DLQTopic receives deletes that failed MaxAttempts times. Default "sidecache.invalidate.dlq".
	DLQTopic string `yaml:"dlq_topic"`
	// Group is the retry workers' consumer group. Default "sidecache-invalidate".
	Group string `yaml:"group"`
	// MaxAttempts counts every delete attempt of a key, the first included. Default 10.
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff before the n-th retry is backoff·2^(n-1), at most max_backoff, ±50%.
	// Defaults 100ms and 30s.
	Backoff    Duration `yaml:"backoff"`
	MaxBackoff Duration `yaml:"max_backoff"`
	// QueueSize bounds failed deletes held in process while Kafka is unreachable; when it is
	// full the binlog tail pauses. Default 10000.
	QueueSize int `yaml:"queue_size"`
}

// Faults injects failures for demos and tests. Off by default.
type Faults struct {
	// DeleteFailureRate is the fraction of Redis DEL/UNLINK commands that fail, in [0, 1].
	DeleteFailureRate float64 `yaml:"delete_failure_rate"`
	// DeleteLatency is added to every Redis delete.
	DeleteLatency Duration `yaml:"delete_latency"`
	// AdminListen, if set, serves GET/PUT /faults to change the above at run time. It must be a
	// loopback address.
	AdminListen string `yaml:"admin_listen"`
}

// Enabled reports whether fault injection is wired in at all.
func (f Faults) Enabled() bool {
	return f.DeleteFailureRate > 0 || f.DeleteLatency > 0 || f.AdminListen != ""
}

// CDC configures the binlog tail.
type CDC struct {
	// Enabled turns the binlog tail on. Default false.
	Enabled bool `yaml:"enabled"`
	// Flavor is "mysql" or "mariadb". Default "mysql".
	Flavor string `yaml:"flavor"`
	// ServerID is the replica server id the tail uses; unique among the server's replicas.
	// Default 1001.
	ServerID uint32 `yaml:"server_id"`
	// DoubleDeleteDelay is how long after the first delete the second runs. Default 500ms.
	DoubleDeleteDelay Duration `yaml:"double_delete_delay"`
	// DSN is the account that reads the binlog: it needs REPLICATION SLAVE and REPLICATION
	// CLIENT. Default: mysql.dsn.
	DSN string `yaml:"dsn"`
	// LeaderTTL is the leader lease: one sidecar per database tails, and a dead one is replaced
	// within this period. Default 5s.
	LeaderTTL Duration `yaml:"leader_ttl"`
	// OnBinlogGone is what the tail does when the binlog it must resume from was purged:
	// "reset" drops every configured entity's cache and starts again at the server's current
	// position; "stall" keeps retrying and reports itself stalled. Default "reset".
	OnBinlogGone string `yaml:"on_binlog_gone"`

	// Conn is DSN's server and account, parsed by validation when Enabled.
	Conn BinlogConn `yaml:"-"`
}

// BinlogConn is where the binlog tail connects, and as whom.
type BinlogConn struct {
	Host           string
	Port           uint16
	User, Password string
}

// Entity maps a URL name to a table.
type Entity struct {
	// Name is the URL name: lower-case letters, digits, '_' and '-'. Required, unique.
	Name string `yaml:"name"`
	// Table is the table in the DSN's database. Default: Name.
	Table string `yaml:"table"`
	// Key is the primary key's column, or its columns in primary-key order
	// (key: ["actor_id", "film_id"]). Default: the table's primary key.
	Key KeyColumns `yaml:"key"`
	// Columns are the columns returned. Default: all columns, in table order.
	Columns []string `yaml:"columns"`
	// TTL of a cached row. Default 10m.
	TTL Duration `yaml:"ttl"`
	// TTLJitter spreads TTLs by ±this fraction, in [0, 1). Default 0.1.
	TTLJitter *float64 `yaml:"ttl_jitter"`
	// NullTTL of a cached "no such row" marker. Default 1m.
	NullTTL Duration `yaml:"null_ttl"`
	// Hot entities use logical expiry: past a soft deadline of ttl ± jitter the stale value is
	// served while one background refresh runs. Default false.
	Hot bool `yaml:"hot"`
	// StaleTTL is how long past its soft deadline a hot value stays in Redis to be served while
	// it is refreshed; its hard TTL is the soft one plus this. Default: ttl.
	StaleTTL Duration `yaml:"stale_ttl"`
	// Bloom configures the penetration guard.
	Bloom Bloom `yaml:"bloom"`
	// Lookups read rows by a unique key: GET /v1/{entity}/{lookup}/{value}.
	Lookups []Lookup `yaml:"lookups"`
}

// Lookup reads an entity's rows by the columns of one of its table's UNIQUE indexes.
type Lookup struct {
	// Name is the URL name: lower-case letters, digits, '_' and '-'. Required, unique per entity.
	Name string `yaml:"name"`
	// Columns are the unique index's columns, in the order a lookup value lists them.
	Columns []string `yaml:"columns"`
}

// Bloom sizes an entity's Bloom filter.
type Bloom struct {
	// Enabled turns the filter on. Default false.
	Enabled bool `yaml:"enabled"`
	// ExpectedItems sizes the filter. Default 1000000.
	ExpectedItems uint `yaml:"expected_items"`
	// FPRate is the target false-positive rate, in (0, 1). Default 0.01.
	FPRate float64 `yaml:"fp_rate"`

	// Params are the filter's size for the two above, computed by validation.
	Params bloom.Params `yaml:"-"`
}

// columnList checks a list of column names: each a plain identifier, none twice.
func columnList(list []string, name string, field func(string) string, bad func(field, format string, args ...any) error) error {
	seen := make(map[string]bool)
	for j, col := range list {
		f := field(fmt.Sprintf("%s[%d]", name, j))
		if !identifier.MatchString(col) {
			return bad(f, "%q is not a plain MySQL identifier ([A-Za-z0-9_$], at most 64)", col)
		}
		if seen[strings.ToLower(col)] {
			return bad(f, "%q is listed twice", col)
		}
		seen[strings.ToLower(col)] = true
	}
	return nil
}

// KeyColumns are the columns of a key, written as one column name or a list of them.
type KeyColumns []string

// UnmarshalYAML takes a column name or a list of column names.
func (k *KeyColumns) UnmarshalYAML(n *yaml.Node) error {
	var one string
	if n.Kind == yaml.ScalarNode && n.Decode(&one) == nil {
		*k = KeyColumns{one}
		if one == "" {
			*k = nil
		}
		return nil
	}
	var list []string
	if n.Kind != yaml.SequenceNode || n.Decode(&list) != nil {
		return fmt.Errorf("line %d: want a column name or a list of them, like key: [\"actor_id\", \"film_id\"]", n.Line)
	}
	*k = list
	return nil
}

// Duration is a time.Duration written as a Go duration string ("500ms", "10m").
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration string like \"500ms\" or \"10m\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: bad duration %q: want a Go duration like \"500ms\" or \"10m\"", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Load reads, expands, decodes, defaults and validates the file at path. Errors start with path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes, defaults and validates a configuration document.
func Parse(b []byte) (*Config, error) {
	b, err := expandEnv(b)
	if err != nil {
		return nil, err
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the file is empty", ErrInvalid)
		}
		return nil, fmt.Errorf("%w: %s", ErrInvalid, yamlMessage(err))
	}
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type config\.(\w+)`)

// yamlMessage turns yaml.v3's multi-line errors into one line in the config's own words.
func yamlMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n")
	msg = unknownField.ReplaceAllString(msg, "unknown field \"$1\"")
	lines := strings.Split(msg, "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} with the environment variable NAME, so secrets can come from a
// Kubernetes Secret. An unset variable is an error rather than a silent empty string.
func expandEnv(b []byte) ([]byte, error) {
	var missing []string
	out := envRef.ReplaceAllFunc(b, func(m []byte) []byte {
		name := string(envRef.FindSubmatch(m)[1])
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return []byte(v)
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: environment variable %s is referenced but not set", ErrInvalid, strings.Join(missing, ", "))
	}
	return out, nil
}

// Defaults of the fields that are the sidecar's own. The others are the defaults of the package
// that uses the field (readthrough, invalidation, cdc, lease, bloom, mysqlsource), which
// applyDefaults fills in so that validation sees the values that will run.
const (
	DefaultListen          = "127.0.0.1:8080"
	DefaultShutdownTimeout = 10 * time.Second
	MaxMaxIDs              = 1000
	DefaultMaxIDLength     = 255
	DefaultRedisAddr       = "127.0.0.1:6379"
	DefaultKeyPrefix       = "sc:"
	DefaultRedisTimeout    = 500 * time.Millisecond
	DefaultFallback        = "load"
	DefaultDegradedMode    = "load"
	DefaultMaxDBRate       = 100
	DefaultReplicaWait     = 5 * time.Second
	DefaultNearEntries     = 100000
	DefaultNearStaleness   = time.Second
)

func (c *Config) applyDefaults() {
	setDefault(&c.Listen, DefaultListen)
	setDefault(&c.ShutdownTimeout, Duration(DefaultShutdownTimeout))
	setDefault(&c.Log.Level, "info")
	setDefault(&c.Log.Format, "json")
	setDefault(&c.Limits.MaxIDs, readthrough.DefaultMaxIDs)
	setDefault(&c.Limits.MaxIDLength, DefaultMaxIDLength)
	setDefault(&c.Limits.RequestTimeout, Duration(readthrough.DefaultLoadTimeout))
	setDefault(&c.MySQL.QueryTimeout, Duration(mysqlsource.DefaultQueryTimeout))
	setDefault(&c.MySQL.MaxOpenConns, mysqlsource.DefaultMaxOpenConns)
	if c.MySQL.ReplicaWaitTimeout == nil {
		d := Duration(DefaultReplicaWait)
		c.MySQL.ReplicaWaitTimeout = &d
	}
	if len(c.Redis.Addrs) == 0 {
		c.Redis.Addrs = []string{DefaultRedisAddr}
	}
	setDefault(&c.Redis.KeyPrefix, DefaultKeyPrefix)
	setDefault(&c.Redis.Timeout, Duration(DefaultRedisTimeout))
	setDefault(&c.Degraded.Mode, DefaultDegradedMode)
	setDefault(&c.NearCache.MaxEntries, DefaultNearEntries)
	setDefault(&c.NearCache.MaxStaleness, Duration(DefaultNearStaleness))
	if c.Degraded.Mode == "load" {
		setDefault(&c.Degraded.MaxDBRate, DefaultMaxDBRate)
	}
	if c.Lease.Enabled == nil {
		on := true
		c.Lease.Enabled = &on
	}
	setDefault(&c.Lease.TTL, Duration(lease.DefaultTTL))
	setDefault(&c.Lease.Wait, Duration(readthrough.DefaultLeaseWait))
	setDefault(&c.Lease.Fallback, DefaultFallback)
	setDefault(&c.Lease.FallbackConcurrency, readthrough.DefaultFallbackConcurrency)
	setDefault(&c.Kafka.RetryTopic, invalidation.DefaultTopic)
	setDefault(&c.Kafka.DLQTopic, invalidation.DefaultDLQTopic)
	setDefault(&c.Kafka.Group, invalidation.DefaultGroup)
	setDefault(&c.Kafka.MaxAttempts, invalidation.DefaultMaxAttempts)
	setDefault(&c.Kafka.Backoff, Duration(invalidation.DefaultBackoff))
	setDefault(&c.Kafka.MaxBackoff, Duration(invalidation.DefaultMaxBackoff))
	setDefault(&c.Kafka.QueueSize, invalidation.DefaultQueueSize)
	setDefault(&c.CDC.Flavor, cdc.DefaultFlavor)
	setDefault(&c.CDC.ServerID, cdc.DefaultServerID)
	setDefault(&c.CDC.DoubleDeleteDelay, Duration(invalidation.DefaultDelay))
	setDefault(&c.CDC.DSN, c.MySQL.DSN)
	setDefault(&c.CDC.LeaderTTL, Duration(cdc.DefaultLeaderTTL))
	setDefault(&c.CDC.OnBinlogGone, cdc.Reset)
	for i := range c.Entities {
		e := &c.Entities[i]
		setDefault(&e.Table, e.Name)
		setDefault(&e.TTL, Duration(readthrough.DefaultTTL))
		setDefault(&e.NullTTL, Duration(readthrough.DefaultNullTTL))
		setDefault(&e.StaleTTL, e.TTL)
		if e.TTLJitter == nil {
			j := readthrough.DefaultJitter
			e.TTLJitter = &j
		}
		setDefault(&e.Bloom.ExpectedItems, bloom.DefaultExpectedItems)
		setDefault(&e.Bloom.FPRate, bloom.DefaultFPRate)
	}
}

func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

var (
	entityName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	identifier = regexp.MustCompile(`^[A-Za-z0-9_$]{1,64}$`)
)

func (c *Config) validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
	}
	if c.ShutdownTimeout <= 0 {
		return bad("shutdown_timeout", "must be positive")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		return bad("log.format", "%q is not one of json, text", c.Log.Format)
	}
	if c.Limits.MaxIDs < 1 || c.Limits.MaxIDs > MaxMaxIDs {
		return bad("limits.max_ids", "%d is outside [1, %d]", c.Limits.MaxIDs, MaxMaxIDs)
	}
	if c.Limits.MaxIDLength < 1 || c.Limits.MaxIDLength > 4096 {
		return bad("limits.max_id_length", "%d is outside [1, 4096]", c.Limits.MaxIDLength)
	}
	if c.Limits.RequestTimeout <= 0 {
		return bad("limits.request_timeout", "must be positive")
	}
	if c.MySQL.DSN == "" {
		return bad("mysql.dsn", "is required")
	}
	dsn, err := mysql.ParseDSN(c.MySQL.DSN)
	if err != nil {
		return bad("mysql.dsn", "%v", err)
	}
	if dsn.DBName == "" {
		return bad("mysql.dsn", "names no database (want user:pass@tcp(host:3306)/dbname)")
	}
	if c.MySQL.QueryTimeout <= 0 {
		return bad("mysql.query_timeout", "must be positive")
	}
	if c.MySQL.MaxOpenConns < 1 {
		return bad("mysql.max_open_conns", "must be at least 1")
	}
	if c.MySQL.ReplicaDSN != "" {
		rd, err := mysql.ParseDSN(c.MySQL.ReplicaDSN)
		if err != nil {
			return bad("mysql.replica_dsn", "%v", err)
		}
		if rd.DBName != dsn.DBName {
			return bad("mysql.replica_dsn", "names database %q, but mysql.dsn names %q: a replica serves the same database", rd.DBName, dsn.DBName)
		}
	}
	if *c.MySQL.ReplicaWaitTimeout < 0 {
		return bad("mysql.replica_wait_timeout", "must not be negative (0 turns the wait off)")
	}
	for i, a := range c.Redis.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return bad(fmt.Sprintf("redis.addrs[%d]", i), "%q: %v", a, err)
		}
	}
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return bad("admin_listen", "%q: %v", c.AdminListen, err)
		}
		if c.AdminListen == c.Listen {
			return bad("admin_listen", "must differ from listen (leave it out to serve everything on listen)")
		}
	}
	switch c.Degraded.Mode {
	case "load":
		if !(c.Degraded.MaxDBRate > 0) {
			return bad("degraded.max_db_rate", "must be positive with degraded.mode load (it caps MySQL loads per second while Redis is down)")
		}
	case "unavailable":
	default:
		return bad("degraded.mode", "%q is not one of load, unavailable", c.Degraded.Mode)
	}
	if c.NearCache.Enabled {
		switch {
		case c.Redis.MasterName != "":
			return bad("near_cache.enabled", "a near cache needs a single Redis server: go-redis's client-side caching does not serve Sentinel (redis.master_name) yet")
		case len(c.Redis.Addrs) > 1:
			return bad("near_cache.enabled", "a near cache needs a single Redis server: go-redis's client-side caching does not serve Redis Cluster yet")
		}
	}
	if c.NearCache.MaxEntries < 0 {
		return bad("near_cache.max_entries", "must be positive")
	}
	if c.NearCache.MaxStaleness < 0 {
		return bad("near_cache.max_staleness", "must be positive")
	}
	if strings.ContainsAny(c.Redis.MasterName, " \t\r\n") {
		return bad("redis.master_name", "%q may not contain white space", c.Redis.MasterName)
	}
	if strings.ContainsAny(c.Redis.KeyPrefix, "{} \t\r\n") {
		return bad("redis.key_prefix", "%q may not contain braces or white space (braces are hash tags in Redis Cluster)", c.Redis.KeyPrefix)
	}
	if c.Redis.Timeout <= 0 {
		return bad("redis.timeout", "must be positive")
	}
	if c.Redis.PoolSize < 0 {
		return bad("redis.pool_size", "must not be negative")
	}
	if c.Lease.TTL.D() < 30*time.Millisecond {
		return bad("lease.ttl", "%v is too short to renew (at least 30ms)", c.Lease.TTL.D())
	}
	if c.Lease.Wait <= 0 {
		return bad("lease.wait", "must be positive")
	}
	if c.Lease.Wait >= c.Limits.RequestTimeout {
		return bad("lease.wait", "%v must be shorter than limits.request_timeout (%v), or the fallback never runs",
			c.Lease.Wait.D(), c.Limits.RequestTimeout.D())
	}
	switch c.Lease.Fallback {
	case "load", "unavailable":
	default:
		return bad("lease.fallback", "%q is not one of load, unavailable", c.Lease.Fallback)
	}
	if c.Lease.FallbackConcurrency < 1 {
		return bad("lease.fallback_concurrency", "must be at least 1")
	}
	for i, b := range c.Kafka.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return bad(fmt.Sprintf("kafka.brokers[%d]", i), "%q: %v", b, err)
		}
	}
	if c.Kafka.MaxAttempts < 2 {
		return bad("kafka.max_attempts", "must be at least 2 (the first attempt and one retry)")
	}
	if c.Kafka.Backoff <= 0 || c.Kafka.MaxBackoff < c.Kafka.Backoff {
		return bad("kafka.backoff", "must be positive and at most kafka.max_backoff")
	}
	if c.Kafka.QueueSize < 1 {
		return bad("kafka.queue_size", "must be at least 1")
	}
	if c.Kafka.RetryTopic == c.Kafka.DLQTopic {
		return bad("kafka.dlq_topic", "must differ from kafka.retry_topic")
	}
	if r := c.Faults.DeleteFailureRate; r < 0 || r > 1 {
		return bad("faults.delete_failure_rate", "%v is outside [0, 1]", r)
	}
	if c.Faults.DeleteLatency < 0 {
		return bad("faults.delete_latency", "must not be negative")
	}
	if c.Faults.AdminListen != "" {
		if err := faults.CheckLoopback(c.Faults.AdminListen); err != nil {
			return bad("faults.admin_listen", "%v", err)
		}
	}
	if c.PprofListen != "" {
		if err := faults.CheckLoopback(c.PprofListen); err != nil {
			return bad("pprof_listen", "%v", err)
		}
	}
	switch c.CDC.Flavor {
	case "mysql", "mariadb":
	default:
		return bad("cdc.flavor", "%q is not one of mysql, mariadb", c.CDC.Flavor)
	}
	if c.CDC.DoubleDeleteDelay < 0 {
		return bad("cdc.double_delete_delay", "must not be negative")
	}
	if c.CDC.LeaderTTL.D() < 300*time.Millisecond {
		return bad("cdc.leader_ttl", "%v is too short (at least 300ms)", c.CDC.LeaderTTL.D())
	}
	switch c.CDC.OnBinlogGone {
	case "reset", "stall":
	default:
		return bad("cdc.on_binlog_gone", "%q is not one of reset, stall", c.CDC.OnBinlogGone)
	}
	if c.CDC.Enabled {
		if c.CDC.ServerID == 0 {
			return bad("cdc.server_id", "must not be 0")
		}
		cd, err := mysql.ParseDSN(c.CDC.DSN)
		if err != nil {
			return bad("cdc.dsn", "%v", err)
		}
		if cd.Net != "tcp" {
			return bad("cdc.dsn", "the binlog is read over TCP; use tcp(host:port)")
		}
		host, port, err := net.SplitHostPort(cd.Addr)
		if err != nil {
			return bad("cdc.dsn", "%v", err)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return bad("cdc.dsn", "port %q is not a TCP port", port)
		}
		c.CDC.Conn = BinlogConn{Host: host, Port: uint16(p), User: cd.User, Password: cd.Passwd}
	}
	if len(c.Entities) == 0 {
		return bad("entities", "at least one entity is required")
	}
	seen := make(map[string]int)
	for i, e := range c.Entities {
		field := func(f string) string {
			if !entityName.MatchString(e.Name) {
				return fmt.Sprintf("entities[%d].%s", i, f)
			}
			return fmt.Sprintf("entity %q: %s", e.Name, f)
		}
		if !entityName.MatchString(e.Name) {
			return bad(field("name"), "%q: want lower-case letters, digits, '_' or '-', at most 64", e.Name)
		}
		if j, dup := seen[e.Name]; dup {
			return bad(field("name"), "duplicate: entities[%d] and entities[%d] are both %q", j, i, e.Name)
		}
		seen[e.Name] = i
		if !identifier.MatchString(e.Table) {
			return bad(field("table"), "%q is not a plain MySQL identifier ([A-Za-z0-9_$], at most 64)", e.Table)
		}
		if err := columnList(e.Key, "key", field, bad); err != nil {
			return err
		}
		if err := columnList(e.Columns, "columns", field, bad); err != nil {
			return err
		}
		lookups := make(map[string]int)
		for j, l := range e.Lookups {
			lf := func(f string) string { return field(fmt.Sprintf("lookups[%d].%s", j, f)) }
			if !entityName.MatchString(l.Name) {
				return bad(lf("name"), "%q: want lower-case letters, digits, '_' or '-', at most 64", l.Name)
			}
			if k, dup := lookups[l.Name]; dup {
				return bad(lf("name"), "duplicate: lookups[%d] and lookups[%d] are both %q", k, j, l.Name)
			}
			lookups[l.Name] = j
			if len(l.Columns) == 0 {
				return bad(lf("columns"), "at least one column is required")
			}
			if err := columnList(l.Columns, "columns", lf, bad); err != nil {
				return err
			}
		}
		if e.TTL <= 0 {
			return bad(field("ttl"), "must be positive")
		}
		if e.NullTTL <= 0 {
			return bad(field("null_ttl"), "must be positive")
		}
		if e.StaleTTL <= 0 {
			return bad(field("stale_ttl"), "must be positive")
		}
		if j := *e.TTLJitter; !(j >= 0 && j < 1) {
			return bad(field("ttl_jitter"), "%v is outside [0, 1)", j)
		}
		if e.Bloom.FPRate <= 0 || e.Bloom.FPRate >= 1 {
			return bad(field("bloom.fp_rate"), "%v is outside (0, 1)", e.Bloom.FPRate)
		}
		p, err := bloom.Size(e.Bloom.ExpectedItems, e.Bloom.FPRate)
		if err != nil {
			return bad(field("bloom"), "%v", err)
		}
		c.Entities[i].Bloom.Params = p
	}
	return nil
}

// Entity returns the entity named name, or nil.
// CheckServe reports what this configuration cannot serve, though a preload or a check can use
// it: lookups without the binlog tail, the only thing that sees a row's old lookup values
// (without it a changed email would answer the row until its TTL).
func (c *Config) CheckServe() error {
	if c.CDC.Enabled {
		return nil
	}
	for _, e := range c.Entities {
		if len(e.Lookups) > 0 {
			return fmt.Errorf("%w: entity %q: lookups need the binlog tail (cdc.enabled: true), the only thing that sees a value change", ErrInvalid, e.Name)
		}
	}
	return nil
}

func (c *Config) Entity(name string) *Entity {
	for i := range c.Entities {
		if c.Entities[i].Name == name {
			return &c.Entities[i]
		}
	}
	return nil
}

// EntityNames returns the entities' names, in the file's order.
func (c *Config) EntityNames() []string {
	names := make([]string, len(c.Entities))
	for i, e := range c.Entities {
		names[i] = e.Name
	}
	return names
}

// AnyBloom reports whether any entity has a Bloom filter.
func (c *Config) AnyBloom() bool {
	for _, e := range c.Entities {
		if e.Bloom.Enabled {
			return true
		}
	}
	return false
}
