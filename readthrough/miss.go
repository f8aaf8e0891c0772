package readthrough

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sidecache/sidecache/internal/retry"
	"github.com/sidecache/sidecache/lease"
)

// load answers one id that missed: concurrent misses for the key in this process share one
// flight, and the flight takes the cluster-wide lease.
func (r *Reader) load(ctx context.Context, e *entity, id, key string) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, shared, err := r.flights.Do(ctx, key, func(ctx context.Context) (Result, error) {
		// The flight outlives any one caller's cancellation, but not its own bound.
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		results, err := r.loadMisses(ctx, e, []string{id})
		if err != nil {
			return Result{}, err
		}
		return results[id].orNotFound(e.Name, id)
	})
	if shared {
		e.m.sharedLoads.Inc()
	}
	return res, err
}

// loadMisses answers ids that missed the cache, each as a Result: Miss when this caller loaded
// it, Hit or Negative when another caller's fill answered it, Stale for a stale hot value,
// Bypass when the fallback loaded it without the cache.
func (r *Reader) loadMisses(ctx context.Context, e *entity, ids []string) (map[string]Result, error) {
	if r.leases == nil {
		return r.loadUnleased(ctx, e, ids)
	}
	results := make(map[string]Result, len(ids))
	keyOf := func(id string) string { return r.cacheKey(e, id) }
	retried := make(map[string]bool)
	var waitStart time.Time
	backoff := retry.Backoff{Min: 2 * time.Millisecond, Max: 50 * time.Millisecond}
	pending := ids
	for {
		keys := make([]string, len(pending))
		for i, id := range pending {
			keys[i] = keyOf(id)
		}
		// One round trip: the value if one has landed since our GET, else the lease. Reading
		// the value again here closes the race with a fill that ended between the two.
		start := time.Now()
		probes, err := r.leases.Probe(ctx, keys)
		e.m.redisProbe.Observe(time.Since(start).Seconds())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
		}
		var held []*lease.Lease
		var heldIDs, contended []string
		for i, p := range probes {
			id := pending[i]
			switch p.State {
			case lease.Found:
				res, ok := e.answer(p.Value)
				if !ok {
					// A value this build cannot read (a newer format): drop exactly those bytes,
					// leaving any lease alone, and take the lease next round.
					if err := r.leases.DropIfSame(ctx, keys[i], p.Value); err != nil {
						return nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
					}
					contended = append(contended, id)
					continue
				}
				results[id] = res
				if res.Status == Stale {
					r.refresh(e, id, keys[i])
				}
			case lease.Acquired:
				e.m.leaseAcquired.Inc()
				held = append(held, p.Lease)
				heldIDs = append(heldIDs, id)
			default:
				e.m.leaseContended.Inc()
				contended = append(contended, id)
			}
		}
		if len(held) > 0 {
			voided, err := r.loadHeld(ctx, e, heldIDs, held, results)
			if err != nil {
				return nil, err
			}
			// A voided fill means a write was invalidated while we loaded, so what we read may
			// predate it: probe again, once, rather than hand anyone the older row.
			for _, id := range voided {
				if retried[id] {
					res := results[id]
					res.Status = Bypass
					results[id] = res
					continue
				}
				retried[id] = true
				delete(results, id)
				contended = append(contended, id)
			}
		}
		if len(contended) == 0 {
			break
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
			e.m.leaseWaits.Inc()
		}
		if time.Since(waitStart) >= r.wait {
			if err := r.fallBack(ctx, e, contended, results); err != nil {
				return nil, err
			}
			break
		}
		// Wait for the holder's fill with jittered exponential backoff, so waiters across the
		// cluster do not poll Redis in step.
		if err := retry.Sleep(ctx, backoff.Next()); err != nil {
			e.m.leaseWaitSeconds.Observe(time.Since(waitStart).Seconds())
			return nil, err
		}
		pending = contended
	}
	if !waitStart.IsZero() {
		e.m.leaseWaitSeconds.Observe(time.Since(waitStart).Seconds())
	}
	return results, nil
}

// loadHeld loads ids whose leases the caller holds and fills the cache where the leases are
// still held (loadUnderLeases). It returns the ids whose fills were voided. A failed load (or a
// panic) releases the leases and caches nothing; a failed fill still answers from MySQL.
func (r *Reader) loadHeld(ctx context.Context, e *entity, ids []string, leases []*lease.Lease, results map[string]Result) (voided []string, err error) {
	rows, landed, err := r.loadUnderLeases(ctx, e, r.leases, ids, leases)
	if errors.Is(err, ErrCacheUnavailable) {
		// The answer is right; nothing was cached.
		r.log.Warn("cache fill failed", "entity", e.Name, "keys", len(ids), "err", err)
		landed, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	for i, id := range ids {
		results[id] = Result{Body: rows[id], Status: Miss}
		if landed != nil && !landed[i] {
			// The lease was voided (an invalidation deleted the key) or lapsed: what we read
			// may be older than the write that voided it, so it must not land.
			voided = append(voided, id)
		}
	}
	return voided, nil
}

// loadUnderLeases is the one sequence that fills the cache under leases, for misses, refreshes
// and the preload: load ids from MySQL with one query while renewing their leases, then write
// each answer (the row, or a null marker) only where its lease is still held, and drop the
// leases. landed[i] says whether ids[i]'s fill landed. A failed load (or a panic) releases the
// leases and caches nothing; a failed fill returns rows with an error wrapping
// ErrCacheUnavailable.
func (r *Reader) loadUnderLeases(ctx context.Context, e *entity, l *lease.Leases, ids []string, leases []*lease.Lease) (rows map[string][]byte, landed []bool, err error) {
	keep := l.Keep(leases)
	filled := false
	defer func() {
		keep.Stop()
		if !filled {
			l.Release(leases)
		}
	}()
	rows, err = r.sourceLoad(ctx, e, ids)
	if r.afterLoad != nil {
		r.afterLoad(ids)
	}
	if err != nil {
		return nil, nil, err
	}
	if !keep.Stop() {
		e.m.leaseLost.Inc()
	}
	fills := make([]lease.Fill, len(ids))
	for i, id := range ids {
		en := e.entry(leases[i].Key, rows[id])
		fills[i] = lease.Fill{Lease: leases[i], Value: en.Value, TTL: en.TTL}
	}
	start := time.Now()
	landed, err = l.Fill(ctx, fills) // releases the leases itself if it fails
	filled = true
	e.m.redisSet.Observe(time.Since(start).Seconds())
	if err != nil {
		e.m.fillErrors.Add(float64(len(fills)))
		return rows, nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	for i, ok := range landed {
		switch {
		case !ok:
			e.m.leaseLost.Inc()
		case fills[i].Value[1] == kindNull:
			e.m.nullMarkers.Inc()
		default:
			e.m.fills.Inc()
		}
	}
	return rows, landed, nil
}

// loadUnleased is the miss path without leases: in-process flights only.
func (r *Reader) loadUnleased(ctx context.Context, e *entity, ids []string) (map[string]Result, error) {
	results := make(map[string]Result, len(ids))
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.cacheKey(e, id)
	}
	// Re-check the cache: a flight for these keys may have filled them and ended between our
	// GET and the start of this one, and loading again would be a second query for one fill.
	vals, err := r.cache.GetMany(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	var missIDs []string
	for i, id := range ids {
		if res, ok := e.answer(vals[i]); ok {
			results[id] = res
		} else {
			missIDs = append(missIDs, id)
		}
	}
	if len(missIDs) == 0 {
		return results, nil
	}
	rows, err := r.sourceLoad(ctx, e, missIDs)
	if r.afterLoad != nil {
		r.afterLoad(missIDs)
	}
	if err != nil {
		return nil, err
	}
	entries := make([]Entry, 0, len(missIDs))
	for _, id := range missIDs {
		results[id] = Result{Body: rows[id], Status: Miss}
		entries = append(entries, e.entry(r.cacheKey(e, id), rows[id]))
	}
	r.fill(ctx, e, entries)
	return results, nil
}

// fallBack answers ids whose lease another caller held past the wait bound.
func (r *Reader) fallBack(ctx context.Context, e *entity, ids []string, results map[string]Result) error {
	if r.fallback == FallbackUnavailable {
		e.m.fallbackUnavailable.Inc()
		return fmt.Errorf("%w: %d ids after %v", ErrWaitTimeout, len(ids), r.wait)
	}
	e.m.fallbackLoad.Inc()
	select {
	case r.fallbacks <- struct{}{}:
		defer func() { <-r.fallbacks }()
	case <-ctx.Done():
		return ctx.Err()
	}
	// No fill: without the lease a fill could put back a row older than a concurrent write.
	rows, err := r.sourceLoad(ctx, e, ids)
	if err != nil {
		return err
	}
	for _, id := range ids {
		results[id] = Result{Body: rows[id], Status: Bypass}
	}
	return nil
}

// bypass answers one id of an entity the binlog tail does not cover, from MySQL and without the
// cache.
func (r *Reader) bypass(ctx context.Context, e *entity, id, key string) (Result, error) {
	e.m.bypasses.Inc()
	return r.direct(ctx, e, id, "bypass:"+key, r.bypassLoad)
}

// bypassMany is bypass for a multi-get: one query.
func (r *Reader) bypassMany(ctx context.Context, e *entity, ids []string) (Many, error) {
	e.m.bypasses.Inc()
	return r.directMany(ctx, e, ids, r.bypassLoad)
}

// loader reads rows from MySQL for a read that goes around the cache.
type loader func(ctx context.Context, e *entity, ids []string) (map[string][]byte, error)

// direct answers one id from MySQL with load, without the cache (X-Cache: bypass). Concurrent
// requests for the key in this process share one query, in the flight named flight.
func (r *Reader) direct(ctx context.Context, e *entity, id, flight string, load loader) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, shared, err := r.flights.Do(ctx, flight, func(ctx context.Context) (Result, error) {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		defer cancel()
		rows, err := load(ctx, e, []string{id})
		if err != nil {
			return Result{}, err
		}
		return Result{Body: rows[id], Status: Bypass}.orNotFound(e.Name, id)
	})
	if shared {
		e.m.sharedLoads.Inc()
	}
	return res, err
}

// directMany is direct for a multi-get: one query.
func (r *Reader) directMany(ctx context.Context, e *entity, ids []string, load loader) (Many, error) {
	rows, err := load(ctx, e, ids)
	if err != nil {
		return Many{}, err
	}
	out := Many{Status: Bypass}
	for _, id := range ids {
		if row := rows[id]; row != nil {
			out.Items = append(out.Items, Item{ID: id, Body: row})
		} else {
			out.Missing = append(out.Missing, id)
		}
	}
	return out, nil
}

// bypassLoad loads the rows of an uncovered entity, at most BypassConcurrency at once.
func (r *Reader) bypassLoad(ctx context.Context, e *entity, ids []string) (map[string][]byte, error) {
	select {
	case r.bypassing <- struct{}{}:
		defer func() { <-r.bypassing }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return r.sourceLoad(ctx, e, ids)
}

// degradedLoad loads rows while the cache is unavailable, if the Degraded limiter has a token
// for the query now; it never waits for one.
func (r *Reader) degradedLoad(ctx context.Context, e *entity, ids []string) (map[string][]byte, error) {
	if !r.degraded.Allow() {
		e.m.degradedRejected.Inc()
		return nil, ErrOverloaded
	}
	e.m.degradedLoads.Inc()
	return r.sourceLoad(ctx, e, ids)
}

// sourceLoad reads rows with one query.
func (r *Reader) sourceLoad(ctx context.Context, e *entity, ids []string) (map[string][]byte, error) {
	start := time.Now()
	defer e.m.dbQueries.Inc()
	if len(ids) == 1 {
		row, found, err := r.source.Load(ctx, e.Name, ids[0])
		e.m.mysqlLoad.Observe(time.Since(start).Seconds())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrDBUnavailable, err)
		}
		if !found {
			return map[string][]byte{}, nil
		}
		return map[string][]byte{ids[0]: row}, nil
	}
	rows, err := r.source.LoadMany(ctx, e.Name, ids)
	e.m.mysqlLoadMany.Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDBUnavailable, err)
	}
	return rows, nil
}

// fill writes loaded rows and null markers without a lease. A failed fill is logged and
// counted, not returned: the caller already has the right answer from MySQL.
func (r *Reader) fill(ctx context.Context, e *entity, entries []Entry) {
	start := time.Now()
	err := r.cache.SetMany(ctx, entries)
	e.m.redisSet.Observe(time.Since(start).Seconds())
	if err != nil {
		e.m.fillErrors.Add(float64(len(entries)))
		r.log.Warn("cache fill failed", "entity", e.Name, "keys", len(entries), "err", err)
		return
	}
	for _, en := range entries {
		if en.Value[1] == kindNull {
			e.m.nullMarkers.Inc()
		} else {
			e.m.fills.Inc()
		}
	}
}

// refresh reloads a stale hot value in the background, once per key in this process and, with
// leases, once across the cluster. When every refresh slot is busy it does nothing: the next
// stale read asks again.
func (r *Reader) refresh(e *entity, id, key string) {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closed {
		return
	}
	if _, running := r.refreshing.LoadOrStore(key, struct{}{}); running {
		return
	}
	select {
	case r.refreshSlots <- struct{}{}:
	default:
		r.refreshing.Delete(key)
		e.m.refreshes.WithLabelValues("dropped").Inc()
		return
	}
	r.refreshWG.Add(1)
	go func() {
		defer r.refreshWG.Done()
		defer func() { <-r.refreshSlots }()
		defer r.refreshing.Delete(key)
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		defer cancel()
		e.m.refreshes.WithLabelValues(r.refreshOnce(ctx, e, id, key)).Inc()
	}()
}

// refreshOnce runs one refresh and names its outcome for the metric.
func (r *Reader) refreshOnce(ctx context.Context, e *entity, id, key string) string {
	if r.leases == nil {
		rows, err := r.sourceLoad(ctx, e, []string{id})
		if err != nil {
			r.log.Warn("refresh failed", "entity", e.Name, "id", id, "err", err)
			return "error"
		}
		r.fill(ctx, e, []Entry{e.entry(key, rows[id])})
		return "refreshed"
	}
	held, err := r.leases.Acquire(ctx, key)
	if err != nil {
		r.log.Warn("refresh failed", "entity", e.Name, "id", id, "err", err)
		return "error"
	}
	if held == nil {
		return "contended" // another sidecar is refreshing it
	}
	// Re-check under the lease: another sidecar may have refreshed the value between our stale
	// read and taking the lease, and loading again would be a second query for one deadline.
	if b, err := r.cache.Get(ctx, key); err == nil {
		if env, ok := decodeEnvelope(b); ok && env.kind == kindValue && time.Now().Before(env.deadline) {
			r.leases.Release([]*lease.Lease{held})
			return "fresh"
		}
	}
	voided, err := r.loadHeld(ctx, e, []string{id}, []*lease.Lease{held}, map[string]Result{})
	if err != nil {
		r.log.Warn("refresh failed", "entity", e.Name, "id", id, "err", err)
		return "error"
	}
	if len(voided) > 0 {
		return "voided" // invalidated meanwhile; the next read loads the new row
	}
	return "refreshed"
}
