package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/faults"
	"github.com/sidecache/sidecache/invalidation"
)

// The circuit breaker around Redis: after breakerTrips consecutive failures it opens, and for
// breakerOpen every Redis call fails at once instead of waiting for a timeout; then one call is
// let through, and its success closes the circuit. The binlog tail polls Redis every half
// second, so a Redis that came back closes the circuit within a second even with no reads.
const (
	breakerTrips = 5
	breakerOpen  = 500 * time.Millisecond
)

// connBufferSize is the size of the read and of the write buffer of each Redis connection
// (pipelines have connections of their own, with go-redis's larger buffers).
const connBufferSize = 4 << 10

// errCircuitOpen is what a Redis call returns while the circuit is open.
var errCircuitOpen = fmt.Errorf("%w: circuit open (Redis failed repeatedly; calls resume after a probe succeeds)", invalidation.ErrUnreachable)

// openRedis returns the Redis client: a Sentinel failover client with redis.master_name, a
// Redis Cluster client for more than one address, a standalone one otherwise. Fault injection
// is hooked in when configured, then the circuit breaker, which therefore never counts an
// injected failure. It does not connect yet.
//
// onBack is called when the circuit closes, before the call that found Redis back returns.
func openRedis(cfg *config.Config, reg prometheus.Registerer, log *slog.Logger, onBack func()) (redis.UniversalClient, *faults.Faults, *gobreaker.CircuitBreaker[struct{}]) {
	o := &redis.UniversalOptions{
		Addrs:         cfg.Redis.Addrs,
		MasterName:    cfg.Redis.MasterName,
		IsClusterMode: len(cfg.Redis.Addrs) > 1 && cfg.Redis.MasterName == "",
		Username:      cfg.Redis.Username,
		Password:      cfg.Redis.Password,
		DialTimeout:   cfg.Redis.Timeout.D(),
		ReadTimeout:   cfg.Redis.Timeout.D(),
		WriteTimeout:  cfg.Redis.Timeout.D(),
		PoolSize:      cfg.Redis.PoolSize,
		MaxRetries:    1,
		// One dial per attempt: a Redis that refuses connections fails the call at once (go-redis
		// would otherwise dial five times, 100ms apart), and the circuit breaker takes it from
		// there.
		DialerRetries: 1,
		// Each pooled connection has a read and a write buffer; go-redis's 32 KiB each would be
		// 64 KiB a connection, 10 connections per CPU, for commands and replies that are mostly
		// one key and one row. A reply or value longer than the buffer still goes through, read
		// or written past it.
		ReadBufferSize:  connBufferSize,
		WriteBufferSize: connBufferSize,
	}
	if nc := cfg.NearCache; nc.Enabled {
		// Server-assisted client-side caching: RESP3, every connection with CLIENT TRACKING on,
		// and each value dropped when Redis says its key changed or the connection that read it
		// goes away; MaxStaleness bounds the rest.
		o.Protocol = 3
		o.ClientSideCacheConfig = &redis.ClientSideCacheConfig{MaxEntries: nc.MaxEntries, MaxStaleness: nc.MaxStaleness.D()}
	}
	rc := redis.NewUniversalClient(o)
	if c, ok := rc.(*redis.Client); ok && cfg.NearCache.Enabled {
		registerNearCache(reg, c)
	}
	var inject *faults.Faults
	if cfg.Faults.Enabled() {
		inject = faults.New(cfg.Faults.DeleteFailureRate, cfg.Faults.DeleteLatency.D(), reg)
		rc.AddHook(inject.Hook())
		log.Warn("fault injection is on", "delete_failure_rate", cfg.Faults.DeleteFailureRate,
			"delete_latency", cfg.Faults.DeleteLatency.D().String(), "admin_listen", cfg.Faults.AdminListen)
	}
	cb := newBreaker(cfg, reg, log, onBack)
	rc.AddHook(breakerHook{cb})
	return rc, inject, cb
}

func newBreaker(cfg *config.Config, reg prometheus.Registerer, log *slog.Logger, onBack func()) *gobreaker.CircuitBreaker[struct{}] {
	state := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sidecache_redis_circuit_state", Help: "The circuit breaker around Redis: 0 closed, 1 half-open (probing), 2 open.",
	})
	changes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecache_redis_circuit_changes_total", Help: "Changes of the circuit breaker around Redis, by the state entered.",
	}, []string{"state"})
	reg.MustRegister(state, changes)
	opened := "Redis is failing: the circuit is open; reads go to MySQL (degraded.mode load, at most degraded.max_db_rate queries a second), and nothing is cached until Redis answers again"
	if cfg.Degraded.Mode == "unavailable" {
		opened = "Redis is failing: the circuit is open; reads answer 503 (degraded.mode unavailable) until Redis answers again"
	}
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1,
		Timeout:     breakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= breakerTrips },
		IsSuccessful: func(err error) bool {
			if err == nil {
				return true // before the declaration below, which would cost every call an allocation
			}
			var re redis.Error // an answer from Redis, as opposed to no answer
			return errors.As(err, &re)
		},
		// A caller that gave up, or a failure fault injection made up, says nothing of Redis.
		IsExcluded: func(err error) bool {
			return errors.Is(err, context.Canceled) || errors.Is(err, faults.ErrInjected)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			state.Set(float64(to))
			changes.WithLabelValues(to.String()).Inc()
			switch {
			case to == gobreaker.StateOpen && from == gobreaker.StateClosed:
				log.Warn(opened)
			case to == gobreaker.StateClosed:
				log.Warn("Redis answers again: the circuit is closed")
				onBack()
			}
		},
	})
}

// breakerHook passes each Redis call through the circuit breaker.
type breakerHook struct {
	cb *gobreaker.CircuitBreaker[struct{}]
}

// passed marks a context whose call the breaker already let through: the commands go-redis
// runs inside it (HELLO and CLIENT SETINFO on a new connection) belong to that call, and must
// not count as more calls, or the half-open circuit's one probe could never succeed.
type passed struct{}

func (h breakerHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h breakerHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if ctx.Value(passed{}) != nil {
			return next(ctx, cmd)
		}
		return h.call(ctx, func(ctx context.Context) error { return next(ctx, cmd) }, cmd)
	}
}

func (h breakerHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if ctx.Value(passed{}) != nil {
			return next(ctx, cmds)
		}
		return h.call(ctx, func(ctx context.Context) error { return next(ctx, cmds) }, cmds...)
	}
}

// call runs one Redis call through the breaker, with ctx marked as passed; while the circuit
// is open it fails cmds at once with errCircuitOpen. Execute rather than the two-step Allow:
// its request does not escape, so a call costs no allocation for the breaker's callback.
func (h breakerHook) call(ctx context.Context, next func(context.Context) error, cmds ...redis.Cmder) error {
	_, err := h.cb.Execute(func() (struct{}, error) {
		return struct{}{}, next(context.WithValue(ctx, passed{}, true))
	})
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		for _, c := range cmds {
			c.SetErr(errCircuitOpen)
		}
		return errCircuitOpen
	}
	return err
}

// registerNearCache exports the near cache's counters: a hit it serves answers X-Cache: hit like
// a Redis hit, and these tell them apart.
func registerNearCache(reg prometheus.Registerer, c *redis.Client) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecache_near_cache_hits_total", Help: "Redis reads answered from the near cache (in process), without a round trip.",
		}, func() float64 { return float64(c.CSCStats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecache_near_cache_misses_total", Help: "Cacheable Redis reads the near cache did not hold, sent to Redis.",
		}, func() float64 { return float64(c.CSCStats().Misses) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecache_near_cache_entries", Help: "Values the near cache holds.",
		}, func() float64 { return float64(c.CSCStats().Entries) }),
	)
}
