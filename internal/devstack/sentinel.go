package devstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel needs nothing beyond redis-server: `redis-server FILE --sentinel` is Redis
// Sentinel (Debian's redis-sentinel package only adds a service around that command), so
// `make deps` installs nothing more for it.

// masterName is the name the Sentinels know the master by.
const masterName = "sidecache"

// How fast the Sentinels act: a master that has not answered for sentinelDownAfter is down,
// and a failover may take sentinelFailoverTimeout before it is given up (and retried after
// twice that). Production keeps Redis's defaults (30 s and 3 min); these make a failover in a
// test take a few seconds.
const (
	sentinelDownAfter       = 1000 // milliseconds
	sentinelFailoverTimeout = 3000 // milliseconds
)

// startSentinels starts a replica of the running Redis server and n Sentinels (default 3)
// that watch it, and waits until every Sentinel knows the replica and the other Sentinels:
// before that a failover could find no replica to promote or no majority to authorize it.
func (s *Stack) startSentinels(ctx context.Context, n int) error {
	if n <= 0 {
		n = 3
	}
	s.MasterName = masterName
	port, err := freePort()
	if err != nil {
		return err
	}
	s.RedisReplicaAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	host, masterPort, _ := net.SplitHostPort(s.RedisAddr)
	replica, err := s.startRedisServer(ctx, s.RedisReplicaAddr, "redis-replica", "--port", strconv.Itoa(port),
		"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.Dir, "--daemonize", "no",
		"--protected-mode", "no", "--replicaof", host, masterPort)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.replica = replica
	s.mu.Unlock()
	if err := waitRedis(ctx, s.RedisReplicaAddr, "the replica to sync", func(ctx context.Context, c *redis.Client) (bool, error) {
		info, err := c.Info(ctx, "replication").Result()
		return strings.Contains(info, "master_link_status:up"), err
	}); err != nil {
		return err
	}

	// A majority of the Sentinels must agree that the master is down (the quorum) and elect
	// one of them to fail it over. One Sentinel (quorum 1) decides alone: fine for a test,
	// never for production, where a Sentinel cut off from the master would promote a replica.
	quorum := n/2 + 1
	for i := range n {
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		name := fmt.Sprintf("sentinel-%d", i+1)
		// Sentinel rewrites its file (its id, the replicas and Sentinels it found, the master
		// after a failover), so each has a writable one of its own in the stack's directory.
		conf := filepath.Join(s.Dir, name+".conf")
		doc := fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
daemonize no
dir %s
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %[3]s %[7]d
sentinel failover-timeout %[3]s %[8]d
sentinel parallel-syncs %[3]s 1
`, port, s.Dir, masterName, host, masterPort, quorum, sentinelDownAfter, sentinelFailoverTimeout)
		if err := os.WriteFile(conf, []byte(doc), 0o600); err != nil {
			return err
		}
		p, err := s.startRedisServer(ctx, addr, name, conf, "--sentinel")
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.sentinels = append(s.sentinels, p)
		s.mu.Unlock()
		s.SentinelAddrs = append(s.SentinelAddrs, addr)
	}
	for _, addr := range s.SentinelAddrs {
		if err := waitRedis(ctx, addr, "the Sentinel to find the replica and the other Sentinels", func(ctx context.Context, c *redis.Client) (bool, error) {
			replicas, err := c.Do(ctx, "SENTINEL", "REPLICAS", masterName).Slice()
			if err != nil {
				return false, err
			}
			others, err := c.Do(ctx, "SENTINEL", "SENTINELS", masterName).Slice()
			return len(replicas) == 1 && len(others) == n-1, err
		}); err != nil {
			return err
		}
	}
	s.logf("%d sentinel(s) on %s watch master %q at %s (replica %s)", n, strings.Join(s.SentinelAddrs, ", "),
		masterName, s.RedisAddr, s.RedisReplicaAddr)
	return nil
}

// waitRedis polls cond on a client of addr until it holds, for at most 30 s.
func waitRedis(ctx context.Context, addr, what string, cond func(context.Context, *redis.Client) (bool, error)) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx, c)
		if ok && err == nil {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devstack: waiting for %s at %s: %w (last error: %v)", what, addr, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// SentinelMaster asks the Sentinel at addr which address it holds the master at
// (SENTINEL get-master-addr-by-name).
func (s *Stack) SentinelMaster(ctx context.Context, addr string) (string, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond})
	defer c.Close()
	hp, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("devstack: sentinel %s answered %q", addr, hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// KillRedisMaster ends the Redis server that the Sentinels hold as the master with SIGKILL
// and returns its address. WaitFailover then waits for the Sentinels to promote a replica.
func (s *Stack) KillRedisMaster(ctx context.Context) (string, error) {
	if len(s.SentinelAddrs) == 0 {
		return "", errors.New("devstack: KillRedisMaster needs a stack started with Options.Sentinel")
	}
	master, err := s.SentinelMaster(ctx, s.SentinelAddrs[0])
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	var p *proc
	switch master {
	case s.RedisAddr:
		p, s.redis = s.redis, nil
	case s.RedisReplicaAddr:
		p, s.replica = s.replica, nil
	}
	s.killed = master
	s.mu.Unlock()
	if p == nil {
		return "", fmt.Errorf("devstack: the master %s is no server of this stack that is running", master)
	}
	p.kill()
	s.logf("killed the redis master %s", master)
	return master, nil
}

// WaitFailover waits until every Sentinel names a master other than the one KillRedisMaster
// killed, and that server answers as a master; it returns the new master's address.
func (s *Stack) WaitFailover(ctx context.Context) (string, error) {
	s.mu.Lock()
	killed := s.killed
	s.mu.Unlock()
	if killed == "" {
		return "", errors.New("devstack: WaitFailover without KillRedisMaster")
	}
	for {
		master, err := s.agreedMaster(ctx)
		if err == nil && master != killed {
			c := redis.NewClient(&redis.Options{Addr: master, MaxRetries: -1, DialTimeout: 500 * time.Millisecond,
				ReadTimeout: 500 * time.Millisecond})
			role, rerr := c.Do(ctx, "ROLE").Slice()
			c.Close()
			if rerr == nil && len(role) > 0 && role[0] == "master" {
				return master, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("devstack: no failover from %s: %w", killed, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// agreedMaster returns the master all Sentinels name, or an error when they differ.
func (s *Stack) agreedMaster(ctx context.Context) (string, error) {
	var master string
	for _, addr := range s.SentinelAddrs {
		m, err := s.SentinelMaster(ctx, addr)
		if err != nil {
			return "", err
		}
		if master != "" && m != master {
			return "", fmt.Errorf("devstack: the sentinels name %s and %s", master, m)
		}
		master = m
	}
	return master, nil
}
