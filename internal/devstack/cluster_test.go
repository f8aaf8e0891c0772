package devstack_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

func TestRedisCluster(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	s := devstack.StartFor(t, devstack.Options{RedisOnly: true, Cluster: true, Logf: t.Logf})
	t.Logf("3-master cluster ready in %v", time.Since(start).Round(time.Millisecond))
	if len(s.RedisAddrs) != 3 || s.RedisAddr != s.RedisAddrs[0] {
		t.Fatalf("RedisAddrs %v, RedisAddr %s; want 3 nodes, the first as RedisAddr", s.RedisAddrs, s.RedisAddr)
	}
	if got := s.RedisConfigAddrs(); !slices.Equal(got, s.RedisAddrs) {
		t.Errorf("RedisConfigAddrs %v, want the nodes %v", got, s.RedisAddrs)
	}

	rc := s.UniversalClient(t)
	cc, ok := rc.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("UniversalClient is a %T, want a *redis.ClusterClient", rc)
	}
	// Every node is a master that serves a third of the slots, and keys land on all three.
	masters := map[string]int{}
	for i := range 300 {
		k := fmt.Sprintf("devstack:cluster:%d", i)
		if err := cc.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		master, err := cc.MasterForKey(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		masters[master.Options().Addr]++
	}
	if len(masters) != 3 {
		t.Errorf("300 keys went to the masters %v, want all three", masters)
	}
	var mu sync.Mutex
	var keys int64
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		n, err := c.DBSize(ctx).Result()
		if err != nil {
			return err
		}
		if role := c.Do(ctx, "ROLE").Val(); role == nil || role.([]any)[0] != "master" {
			return fmt.Errorf("%s answers ROLE %v", c.Options().Addr, role)
		}
		mu.Lock()
		keys += n
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if keys != 300 {
		t.Errorf("the masters hold %d keys, want the 300 set", keys)
	}
	for i := range 300 {
		if v, err := cc.Get(ctx, fmt.Sprintf("devstack:cluster:%d", i)).Int(); err != nil || v != i {
			t.Fatalf("GET devstack:cluster:%d: %d, %v", i, v, err)
		}
	}

	// A node killed and restarted comes back as the same master of its slots, empty.
	before := keysOn(t, s)
	s.KillClusterNode(1)
	if c, err := net.DialTimeout("tcp", s.RedisAddrs[1], 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("the killed node %s still accepts connections", s.RedisAddrs[1])
	}
	if err := s.RestartClusterNode(ctx, 1); err != nil {
		t.Fatal(err)
	}
	after := keysOn(t, s)
	if after[0] != before[0] || after[2] != before[2] || before[1] == 0 || after[1] != 0 {
		t.Errorf("keys per node before the restart of node 1 %v, after %v: want node 1 emptied, the others as they were", before, after)
	}

	s.Stop()
	for _, addr := range s.RedisAddrs {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			t.Errorf("the node %s still accepts connections after Stop", addr)
		}
	}
}

// keysOn counts the keys each node of the cluster holds.
func keysOn(t *testing.T, s *devstack.Stack) []int64 {
	t.Helper()
	var out []int64
	for _, addr := range s.RedisAddrs {
		n, err := client(t, addr).DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}
