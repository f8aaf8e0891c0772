package devstack

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// A Redis Cluster needs nothing beyond redis-server either: each node is a redis-server with
// cluster-enabled, and the slots are handed out and the nodes introduced with CLUSTER
// commands, as redis-cli --cluster create would.

// clusterSlotRanges are the slots of each master Options.Cluster starts (no replicas): the
// 16384 slots in three, as redis-cli --cluster create splits them.
var clusterSlotRanges = [][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}

// startCluster starts len(clusterSlotRanges) Redis Cluster nodes, gives each an equal range of the
// slots, introduces them to each other and waits until every node reports cluster_state:ok
// and names the same master for every slot. s.RedisAddrs are then the nodes, and s.RedisAddr
// the first.
func (s *Stack) startCluster(ctx context.Context) error {
	for i := range clusterSlotRanges {
		port, err := freePort()
		if err != nil {
			return err
		}
		// The cluster bus listens on a port of its own, by default the data port plus 10000,
		// which a free port above 55535 does not have: name a free one.
		busPort, err := freePort()
		if err != nil {
			return err
		}
		s.RedisAddrs = append(s.RedisAddrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		s.clusterBusPorts = append(s.clusterBusPorts, busPort)
		s.mu.Lock()
		s.clusterNodes = append(s.clusterNodes, nil)
		s.mu.Unlock()
		if err := s.startClusterNode(ctx, i); err != nil {
			return err
		}
	}
	s.RedisAddr = s.RedisAddrs[0]

	for i, addr := range s.RedisAddrs {
		r := clusterSlotRanges[i]
		if err := clusterDo(ctx, addr, "CLUSTER", "ADDSLOTSRANGE", r[0], r[1]); err != nil {
			return err
		}
	}
	for i, addr := range s.RedisAddrs[1:] {
		host, port, _ := net.SplitHostPort(addr)
		if err := clusterDo(ctx, s.RedisAddrs[0], "CLUSTER", "MEET", host, port, s.clusterBusPorts[i+1]); err != nil {
			return err
		}
	}
	if err := s.waitCluster(ctx); err != nil {
		return err
	}
	s.logf("redis cluster of %d masters ready on %s", len(s.RedisAddrs), strings.Join(s.RedisAddrs, ", "))
	return nil
}

// startClusterNode starts (or restarts) the i-th node of the cluster on its ports. It never
// saves data, but keeps its cluster config file: a node restarted after KillClusterNode comes
// back as the same node, with its slots and no keys.
func (s *Stack) startClusterNode(ctx context.Context, i int) error {
	_, port, _ := net.SplitHostPort(s.RedisAddrs[i])
	p, err := s.startRedisServer(ctx, s.RedisAddrs[i], fmt.Sprintf("redis-cluster-%d", i+1), "--port", port,
		"--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(s.clusterBusPorts[i]),
		"--cluster-config-file", filepath.Join(s.Dir, fmt.Sprintf("nodes-%d.conf", i+1)),
		"--save", "", "--appendonly", "no", "--dir", s.Dir, "--daemonize", "no", "--protected-mode", "no")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.clusterNodes[i] = p
	s.mu.Unlock()
	return nil
}

// waitCluster waits until every node reports cluster_state:ok and the slot owners
// startCluster set up.
func (s *Stack) waitCluster(ctx context.Context) error {
	want := s.slotOwners()
	for _, addr := range s.RedisAddrs {
		if err := waitRedis(ctx, addr, "the cluster to agree on its slots", func(ctx context.Context, c *redis.Client) (bool, error) {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false, err
			}
			slots, err := c.ClusterSlots(ctx).Result()
			return slices.Equal(owners(slots), want), err
		}); err != nil {
			return err
		}
	}
	return nil
}

// KillClusterNode ends the i-th node of the Redis Cluster (in RedisAddrs order) with SIGKILL,
// as a crash would, and waits for it to exit.
func (s *Stack) KillClusterNode(i int) {
	s.mu.Lock()
	p := s.clusterNodes[i]
	s.clusterNodes[i] = nil
	s.mu.Unlock()
	p.kill()
}

// RestartClusterNode starts the i-th node again after KillClusterNode, empty, and waits until
// the cluster is whole again.
func (s *Stack) RestartClusterNode(ctx context.Context, i int) error {
	if err := s.startClusterNode(ctx, i); err != nil {
		return err
	}
	return s.waitCluster(ctx)
}

// slotOwners lists the slot ranges startCluster gives out, as owners formats them.
func (s *Stack) slotOwners() []string {
	var out []string
	for i, addr := range s.RedisAddrs {
		out = append(out, fmt.Sprintf("%d-%d %s", clusterSlotRanges[i][0], clusterSlotRanges[i][1], addr))
	}
	slices.Sort(out)
	return out
}

// owners formats a CLUSTER SLOTS answer as "from-to master" lines, sorted.
func owners(slots []redis.ClusterSlot) []string {
	var out []string
	for _, r := range slots {
		master := ""
		if len(r.Nodes) > 0 {
			master = r.Nodes[0].Addr
		}
		out = append(out, fmt.Sprintf("%d-%d %s", r.Start, r.End, master))
	}
	slices.Sort(out)
	return out
}

// clusterDo sends one command to the node at addr.
func clusterDo(ctx context.Context, addr string, args ...any) error {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if err := c.Do(ctx, args...).Err(); err != nil {
		return fmt.Errorf("devstack: %v at %s: %w", args, addr, err)
	}
	return nil
}

// UniversalClient returns a client on the stack's Redis, closed when the test ends: a Redis
// Cluster client with Options.Cluster, a client of RedisAddr otherwise.
func (s *Stack) UniversalClient(tb testing.TB) redis.UniversalClient {
	if len(s.RedisAddrs) == 0 {
		return s.Client(tb)
	}
	rc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: s.RedisAddrs})
	tb.Cleanup(func() { rc.Close() })
	return rc
}

// RedisConfigAddrs returns what a sidecache config's redis.addrs lists for the stack's
// Redis: every Cluster node with Options.Cluster, RedisAddr otherwise.
func (s *Stack) RedisConfigAddrs() []string {
	if len(s.RedisAddrs) == 0 {
		return []string{s.RedisAddr}
	}
	return slices.Clone(s.RedisAddrs)
}
