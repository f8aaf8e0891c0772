package check

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/mysqlsource"
)

// How the cache's keys are sampled: SCAN from a random cursor (a random point of the keyspace's
// hash order, which has nothing to do with the ids), scanCount keys a call, at most
// maxSampleScans calls per node and round, so that an entity with few keys in a large Redis
// costs a bounded number of calls.
const (
	scanCount      = 1000
	maxSampleScans = 200
)

// rangeLen is how many consecutive ids of the table one random start yields.
const rangeLen = 16

// sample checks up to n ids of e: up to half of them from the cache's keys, the rest from the
// table's.
func (rd *round) sample(ctx context.Context, e *Entity, n int) error {
	seen := make(map[string]bool, n)
	ids, err := rd.c.cacheSample(ctx, e, (n+1)/2, seen)
	if err != nil {
		return err
	}
	more, err := rd.c.tableSample(ctx, e, n-len(ids), seen)
	if err != nil {
		return err
	}
	ids = append(ids, more...)
	for len(ids) > 0 {
		k := min(len(ids), rd.c.batch)
		if err := rd.first(ctx, e, ids[:k], false, nil); err != nil {
			return err
		}
		ids = ids[k:]
	}
	return nil
}

// all checks every row of e's table, then every key of e in the cache whose row does not exist
// (a ghost, or a null marker): the others were checked from the table's side.
func (rd *round) all(ctx context.Context, e *Entity) error {
	last, ok, err := rd.c.o.Source.LastID(ctx, e.Name)
	if err != nil {
		return dbErr(e, err)
	}
	// The scan ends at the greatest id when it began: one that followed inserts could run for
	// as long as they keep coming.
	var after *string
	for ok {
		ids, err := rd.c.o.Source.ScanIDs(ctx, e.Name, after, &last, rd.c.batch)
		if err != nil {
			return dbErr(e, err)
		}
		if len(ids) > 0 {
			if err := rd.first(ctx, e, ids, false, nil); err != nil {
				return err
			}
			after = &ids[len(ids)-1]
		}
		ok = len(ids) == rd.c.batch
	}

	nodes, err := rd.c.nodes(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]bool) // a SCAN may return a key twice
	var ids []string
	for _, node := range nodes {
		err := rd.c.scan(ctx, node, e, 0, nil, func(id string) (bool, error) {
			ids = append(ids, id)
			if len(ids) < rd.c.batch {
				return true, nil
			}
			err := rd.first(ctx, e, ids, true, seen)
			ids = ids[:0]
			return err == nil, err
		})
		if err != nil {
			return err
		}
	}
	if len(ids) > 0 {
		return rd.first(ctx, e, ids, true, seen)
	}
	return nil
}

// cacheSample returns up to want ids of e's cache keys not in seen, spread over the nodes, and
// adds them to seen.
func (c *Checker) cacheSample(ctx context.Context, e *Entity, want int, seen map[string]bool) ([]string, error) {
	nodes, err := c.nodes(ctx)
	if err != nil || want <= 0 {
		return nil, err
	}
	var ids []string
	for i, node := range nodes {
		quota := (want - len(ids)) / (len(nodes) - i) // what the nodes before fell short of moves on
		got, budget := 0, maxSampleScans
		take := func(id string) (bool, error) {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
				got++
			}
			return got < quota, nil
		}
		// From a random cursor to the end, then from the start once more.
		err := c.scan(ctx, node, e, rand.Uint64(), &budget, take)
		if err == nil && got < quota {
			err = c.scan(ctx, node, e, 0, &budget, take)
		}
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// scan SCANs node for e's value keys from cursor until the cursor comes back to 0, handing
// each id in canonical form to fn until it says stop. A budget, if given, is the most SCAN
// calls it may make, and is spent.
func (c *Checker) scan(ctx context.Context, node redis.UniversalClient, e *Entity, cursor uint64, budget *int,
	fn func(id string) (more bool, err error)) error {
	pattern := keys.EntityPattern(c.o.Prefix, e.Name)
	for {
		if budget != nil {
			if *budget <= 0 {
				return nil
			}
			*budget--
		}
		found, next, err := node.Scan(ctx, cursor, pattern, scanCount).Result()
		if err != nil {
			return cacheErr(err)
		}
		for _, k := range found {
			id, ok := keys.ValueID(c.o.Prefix, e.Name, k)
			if !ok {
				continue // a lease
			}
			// Only ids the read path could have written: canonical for the key's type.
			if canon, err := e.Key.Parse(id, len(id)); err != nil || canon != id {
				continue
			}
			more, err := fn(id)
			if err != nil || !more {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// nodes returns where the cache's keys are: every master of a Redis Cluster, or the one server.
func (c *Checker) nodes(ctx context.Context) ([]redis.UniversalClient, error) {
	nodes, err := keys.Nodes(ctx, c.o.Redis)
	if err != nil {
		return nil, cacheErr(err)
	}
	return nodes, nil
}

// tableSample returns up to want ids of e's table not in seen, and adds them to seen. Each
// random start between the first and the last id yields the next rangeLen ids in key order:
// keyset reads on the primary key, whose cost does not grow with the table, unlike
// ORDER BY RAND() or OFFSET.
func (c *Checker) tableSample(ctx context.Context, e *Entity, want int, seen map[string]bool) ([]string, error) {
	if want <= 0 {
		return nil, nil
	}
	last, ok, err := c.o.Source.LastID(ctx, e.Name)
	if err != nil || !ok {
		return nil, dbErr(e, err)
	}
	var ids []string
	add := func(page []string) {
		for _, id := range page {
			if !seen[id] && len(ids) < want {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	// The first want ids: all of a table no larger than the sample, in one read.
	head, err := c.o.Source.ScanIDs(ctx, e.Name, nil, &last, want)
	if err != nil || len(head) == 0 {
		return nil, dbErr(e, err)
	}
	if len(head) < want {
		add(head)
		return ids, nil
	}
	// Starts that find nothing new (near the end of the table, or in ranges already taken)
	// are given up on after a while.
	for tries := 4 * (want/rangeLen + 1); len(ids) < want && tries > 0; tries-- {
		var after *string
		if start, ok := randomStart(e.Key, head[0], last); ok {
			after = &start
		}
		page, err := c.o.Source.ScanIDs(ctx, e.Name, after, &last, min(rangeLen, want-len(ids)))
		if err != nil {
			return nil, dbErr(e, err)
		}
		add(page)
	}
	return ids, nil
}

func dbErr(e *Entity, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: entity %q: %w", ErrDBUnavailable, e.Name, err)
}

// randomStart returns a random point between first and last, as the id to read after; ok is
// false for the very start (read from the first id). Integer keys are picked uniformly;
// string keys by their first strDigits characters, a coarse but cheap spread. A key of
// several columns is spread by its first column, the others starting at their least values.
func randomStart(k mysqlsource.Key, first, last string) (after string, ok bool) {
	if len(k) > 1 {
		lo, ok1 := keys.SplitID(first, len(k))
		hi, ok2 := keys.SplitID(last, len(k))
		if !ok1 || !ok2 {
			return "", false
		}
		start, ok := partStart(k[0], lo[0], hi[0])
		if !ok {
			return "", false
		}
		parts := []string{start}
		for _, p := range k[1:] {
			parts = append(parts, least(p))
		}
		return keys.JoinID(parts), true
	}
	return partStart(k[0], first, last)
}

// least is a key column's least value.
func least(p mysqlsource.KeyPart) string {
	if p.Kind == mysqlsource.KeyInt {
		return strconv.FormatInt(math.MinInt64>>(64-p.Bits), 10)
	}
	if p.Kind == mysqlsource.KeyUint {
		return "0"
	}
	return ""
}

// partStart is randomStart for one column.
func partStart(k mysqlsource.KeyPart, first, last string) (after string, ok bool) {
	switch k.Kind {
	case mysqlsource.KeyInt:
		lo, err1 := strconv.ParseInt(first, 10, 64)
		hi, err2 := strconv.ParseInt(last, 10, 64)
		if err1 != nil || err2 != nil || hi < lo {
			return "", false
		}
		off := offset(uint64(hi - lo)) // two's complement: the span fits in a uint64
		if off == 0 {
			return "", false
		}
		return strconv.FormatInt(lo+int64(off-1), 10), true // read from lo+off
	case mysqlsource.KeyUint:
		lo, err1 := strconv.ParseUint(first, 10, 64)
		hi, err2 := strconv.ParseUint(last, 10, 64)
		if err1 != nil || err2 != nil || hi < lo {
			return "", false
		}
		off := offset(hi - lo)
		if off == 0 {
			return "", false
		}
		return strconv.FormatUint(lo+off-1, 10), true
	case mysqlsource.KeyString:
		lo, hi := stringPoint(first), stringPoint(last)
		if hi < lo {
			return "", false
		}
		s := pointString(lo + offset(hi-lo))
		return s, s != ""
	}
	return "", false
}

// offset returns a uniform random number in [0, span].
func offset(span uint64) uint64 {
	if span == math.MaxUint64 {
		return rand.Uint64()
	}
	return rand.Uint64N(span + 1)
}

// Strings are placed by their first strDigits characters as digits of base 95, the printable
// ASCII characters; anything else counts as the nearest of them.
const strDigits = 4

func stringPoint(s string) uint64 {
	var v uint64
	for i := range strDigits {
		var d byte
		if i < len(s) {
			d = min(max(s[i], ' '), '~') - ' '
		}
		v = v*95 + uint64(d)
	}
	return v
}

func pointString(v uint64) string {
	b := make([]byte, strDigits)
	for i := strDigits - 1; i >= 0; i-- {
		b[i] = byte(v%95) + ' '
		v /= 95
	}
	return strings.TrimRight(string(b), " ")
}
