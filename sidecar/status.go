package sidecar

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/sidecache/sidecache/cdc"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/retry"
)

// Status is what GET /status reports: the state of every part, without internal addresses.
type Status struct {
	Ready bool       `json:"ready"`
	MySQL PartStatus `json:"mysql"`
	// Replica is the replica loads read; nil unless mysql.replica_dsn.
	Replica *ReplicaStatus `json:"mysql_replica,omitempty"`
	Redis   PartStatus     `json:"redis"`
	// Circuit is the circuit breaker around Redis: closed, half-open or open.
	Circuit string `json:"circuit"`
	// Degraded says reads go to MySQL without the cache now; DegradedMode is degraded.mode.
	Degraded     bool        `json:"degraded"`
	DegradedMode string      `json:"degraded_mode"`
	CDC          *cdc.View   `json:"cdc,omitempty"` // nil unless cdc.enabled
	Bloom        BloomStatus `json:"bloom,omitempty"`
}

// PartStatus says whether a server answers.
type PartStatus struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// BloomStatus is each filtered entity's filter state: ready, missing or building.
type BloomStatus map[string]string

// Status reads the state of every part.
func (s *Sidecar) Status(ctx context.Context) Status {
	var st Status
	if s.replica != nil {
		st.Replica = s.replica.status(ctx)
	}
	if err := s.source.Ping(ctx); err != nil {
		st.MySQL.Error = "unavailable"
	} else {
		st.MySQL.OK = true
	}
	if err := s.redis.Ping(ctx).Err(); err != nil {
		st.Redis.Error = "unavailable"
	} else {
		st.Redis.OK = true
	}
	st.Circuit = s.breaker.State().String()
	st.DegradedMode = s.cfg.Degraded.Mode
	st.Degraded = s.servesWithoutRedis() && (!st.Redis.OK || s.breaker.State() != gobreaker.StateClosed)
	st.Ready = st.MySQL.OK && (st.Replica == nil || st.Replica.OK) && (st.Redis.OK || s.servesWithoutRedis()) // as Ready decides
	if s.tail != nil {
		v := s.tail.View()
		st.CDC = &v
	}
	if s.filters != nil {
		st.Bloom = BloomStatus{}
		for _, e := range s.cfg.Entities {
			if !e.Bloom.Enabled {
				continue
			}
			state, err := s.filters.State(ctx, e.Name)
			if err != nil {
				st.Bloom[e.Name] = "unknown"
				continue
			}
			st.Bloom[e.Name] = string(state)
		}
	}
	return st
}

// checkEvictionPolicy warns, once Redis answers, when its maxmemory-policy may evict keys that
// have no TTL: the binlog checkpoint and the Bloom filters. Their loss is detected and repaired
// (a lost checkpoint is resumed from memory or replaced by dropping every entity's cache, a lost
// filter answers "maybe" and is rebuilt), but at a cost a volatile-* policy avoids.
func (s *Sidecar) checkEvictionPolicy(ctx context.Context) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		policy, node, err := s.evictingPolicy(cctx)
		cancel()
		switch {
		case err == nil:
			if policy != "" {
				s.log.Warn("Redis's maxmemory-policy evicts keys without a TTL: the binlog checkpoint and the Bloom filters "+
					"may be evicted; sidecache detects and repairs their loss, but set a volatile-* policy "+
					"(volatile-lru, volatile-lfu) or noeviction to avoid it", "maxmemory-policy", policy, "node", node)
			}
			return
		case isRedisNotAllowed(err):
			s.log.Info("cannot read Redis's maxmemory-policy (CONFIG is not allowed); sidecache needs one that keeps keys without a TTL, such as volatile-lru")
			return
		}
		retry.Sleep(ctx, 10*time.Second)
	}
}

// evictingPolicy returns the first allkeys-* maxmemory-policy of the Redis servers that hold
// keys, every master of a Redis Cluster (each sets its own), and the node's address; "" when
// none evicts keys without a TTL.
func (s *Sidecar) evictingPolicy(ctx context.Context) (policy, node string, err error) {
	nodes, err := keys.Nodes(ctx, s.redis)
	if err != nil {
		return "", "", err
	}
	for _, n := range nodes {
		got, err := n.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			return "", "", err
		}
		if p := got["maxmemory-policy"]; strings.HasPrefix(p, "allkeys-") {
			addr := ""
			if c, ok := n.(*redis.Client); ok {
				addr = c.Options().Addr
			}
			return p, addr, nil
		}
	}
	return "", "", nil
}

// isRedisNotAllowed reports an answer from Redis (as opposed to a failure to reach it).
func isRedisNotAllowed(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}
