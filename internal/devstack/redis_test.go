package devstack_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

func client(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 300 * time.Millisecond,
		ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSentinelFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	s := devstack.StartFor(t, devstack.Options{RedisOnly: true, Sentinel: true, Logf: t.Logf})
	t.Logf("master, replica and %d sentinels ready in %v", len(s.SentinelAddrs), time.Since(start).Round(time.Millisecond))
	if len(s.SentinelAddrs) != 3 || s.MasterName == "" || s.RedisReplicaAddr == "" {
		t.Fatalf("sentinels %v, master name %q, replica %q", s.SentinelAddrs, s.MasterName, s.RedisReplicaAddr)
	}

	if err := client(t, s.RedisAddr).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	replica := client(t, s.RedisReplicaAddr)
	devstack.Eventually(t, 10*time.Second, "the replica never got k", func() bool {
		return replica.Get(ctx, "k").Val() == "v"
	})
	for _, addr := range s.SentinelAddrs {
		if m, err := s.SentinelMaster(ctx, addr); err != nil || m != s.RedisAddr {
			t.Fatalf("sentinel %s names master %q (%v), want %s", addr, m, err, s.RedisAddr)
		}
	}

	killed, err := s.KillRedisMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if killed != s.RedisAddr {
		t.Errorf("killed %s, want the master %s", killed, s.RedisAddr)
	}
	if _, err := net.DialTimeout("tcp", killed, 200*time.Millisecond); err == nil {
		t.Errorf("the killed master %s still accepts connections", killed)
	}
	killedAt := time.Now()
	master, err := s.WaitFailover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the sentinels promoted %s %v after the master was killed", master, time.Since(killedAt).Round(time.Millisecond))
	if master != s.RedisReplicaAddr {
		t.Errorf("new master %s, want the replica %s", master, s.RedisReplicaAddr)
	}
	for _, addr := range s.SentinelAddrs {
		if m, err := s.SentinelMaster(ctx, addr); err != nil || m != master {
			t.Errorf("sentinel %s names master %q (%v) after the failover, want %s", addr, m, err, master)
		}
	}

	// A client that asks the Sentinels finds the promoted replica, with the data, writable.
	fc := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName, SentinelAddrs: s.SentinelAddrs})
	defer fc.Close()
	if v, err := fc.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Errorf("GET k through the sentinels: %q, %v", v, err)
	}
	if err := fc.Set(ctx, "k2", "v2", 0).Err(); err != nil {
		t.Errorf("SET on the new master: %v", err)
	}
}

func TestPauseRedisHangsItUntilResumed(t *testing.T) {
	s := devstack.Require(t, stack)
	ctx := context.Background()
	c := client(t, s.RedisAddr)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.PauseRedis(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			s.ResumeRedis()
		}
	}()
	// The kernel still accepts connections; nothing answers on them.
	conn, err := net.DialTimeout("tcp", s.RedisAddr, time.Second)
	if err != nil {
		t.Fatalf("a paused Redis refused a connection: %v", err)
	}
	conn.Close()
	start := time.Now()
	err = c.Ping(ctx).Err()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("PING to a paused Redis: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("PING failed after %v, before the read timeout", d)
	}
	if err := s.ResumeRedis(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	devstack.Eventually(t, 5*time.Second, "Redis does not answer after ResumeRedis", func() bool {
		return c.Ping(ctx).Err() == nil
	})
}

func TestKillRedisThenStartIsEmpty(t *testing.T) {
	s := devstack.Require(t, stack)
	ctx := context.Background()
	c := client(t, s.RedisAddr)
	if err := c.Set(ctx, "devstack:kill", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.KillRedis()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("a killed Redis answered PING")
	}
	if err := s.StartRedis(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Exists(ctx, "devstack:kill").Result(); err != nil || n != 0 {
		t.Errorf("after the restart, EXISTS: %d, %v; want an empty Redis", n, err)
	}
}
