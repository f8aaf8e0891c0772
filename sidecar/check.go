package sidecar

import (
	"github.com/sidecache/sidecache/check"
	"github.com/sidecache/sidecache/internal/keys"
)

// Checker returns the consistency checker over this sidecar's MySQL source, Redis and Bloom
// filters; see package check. Redis, Source, Filters, Prefix, Entities (every configured one,
// each followed by its lookups), DoubleDeleteDelay and Lag are filled in: with cdc.enabled, a
// mismatch is looked at again once the double-delete delay and the binlog lag its leader
// reports have passed.
func (s *Sidecar) Checker(opts check.Options) *check.Checker {
	opts.Redis, opts.Source, opts.Prefix = s.redis, s.source, s.cfg.Redis.KeyPrefix
	if s.filters != nil {
		opts.Filters = s.filters
	}
	opts.Entities = nil
	for _, ce := range s.cfg.Entities {
		opts.Entities = append(opts.Entities, check.Entity{Name: ce.Name, Key: s.source.Entity(ce.Name).Key, Bloom: ce.Bloom.Enabled})
		// A lookup's rows are cached under its own keys, named by the unique key's values, and
		// kept by the binlog tail as the entity's are: it is checked as an entity of its own,
		// with no Bloom filter, as it has none.
		for _, l := range ce.Lookups {
			name := keys.Lookup(ce.Name, l.Name)
			opts.Entities = append(opts.Entities, check.Entity{Name: name, Key: s.source.Entity(name).Key})
		}
	}
	opts.DoubleDeleteDelay = s.cfg.CDC.DoubleDeleteDelay.D()
	if s.tail != nil {
		opts.Lag = s.tail.LeaderLag
	}
	if s.replica != nil {
		// A second delete also waits for the replica loads read, up to replica_wait_timeout.
		opts.DoubleDeleteDelay += s.replica.timeout
	}
	return check.New(opts)
}
