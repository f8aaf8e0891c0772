package readthrough

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sidecache/sidecache/bloom"
	"github.com/sidecache/sidecache/internal/retry"
	"github.com/sidecache/sidecache/lease"
)

// Scanner walks an entity's ids in key order, for the preload.
type Scanner interface {
	// ScanIDs returns up to limit ids in key order after *after (nil: from the start) and up to
	// *last (nil: to the end).
	ScanIDs(ctx context.Context, entity string, after, last *string, limit int) ([]string, error)
	// LastID returns the table's greatest id; ok is false for an empty table.
	LastID(ctx context.Context, entity string) (id string, ok bool, err error)
	// EstimateRows is the table's approximate row count, for progress.
	EstimateRows(ctx context.Context, entity string) (int64, error)
}

// DefaultBatch is PreloadOptions.Batch's default.
const DefaultBatch = 1000

// PreloadOptions configure Preload. Entity, Scanner and Leases are required.
type PreloadOptions struct {
	Entity  string
	Scanner Scanner
	// Leases guard the fills exactly as on the read path: a warm takes a key's lease before it
	// reads the row, so a write invalidated meanwhile cannot be undone by the warm.
	Leases *lease.Leases
	// IDs, when set, are the only ids warmed (canonical, as ParseID returns them); the filter is
	// not rebuilt, but ids found are added to it. Nil: the whole table, and the filter is rebuilt.
	IDs []string
	// Batch is the ids per scan page, MySQL query and Redis pipeline. Default DefaultBatch.
	Batch int
	// Rate caps the rows read from MySQL per second. 0: no cap.
	Rate float64
	// FilterOnly rebuilds the Bloom filter from a scan without warming the cache (IDs must be
	// nil). The binlog tail's leader runs it after a filter was reset or lost.
	FilterOnly bool
	// Progress, if set, is called after every batch.
	Progress func(PreloadStats)
}

// PreloadStats report a preload, also as it goes.
type PreloadStats struct {
	Entity string
	// Total is the expected number of ids: the server's estimate for a scan, exact for IDs.
	Total int64
	// Rows is the ids seen so far.
	Rows int64
	// Warmed rows and null markers written; AlreadyCached ids had a value (or another loader).
	Warmed, NullMarkers, AlreadyCached int64
	// Bytes of cached values written.
	Bytes   int64
	Elapsed time.Duration
	// Filter is the rebuilt filter's state, after a scan of an entity with a filter.
	Filter *bloom.Stats
}

// RowsPerSecond is the scan rate.
func (s PreloadStats) RowsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Rows) / s.Elapsed.Seconds()
}

// Preload warms the cache for an entity in bulk with the read path's envelope and jittered
// TTLs, and, for a full scan of an entity with a Bloom filter, rebuilds the filter from the
// scan. Interrupted (ctx ends), it stops after the current batch, leaves the current filter
// as it was, and returns the stats so far with ctx's error.
func (r *Reader) Preload(ctx context.Context, opts PreloadOptions) (PreloadStats, error) {
	e := r.entities[opts.Entity]
	if e == nil {
		return PreloadStats{}, fmt.Errorf("%w: %q", ErrUnknownEntity, opts.Entity)
	}
	if opts.Scanner == nil || opts.Leases == nil && !opts.FilterOnly {
		return PreloadStats{}, errors.New("readthrough: Preload needs a Scanner and Leases")
	}
	if opts.FilterOnly && (opts.IDs != nil || !e.Bloom || r.filters == nil) {
		return PreloadStats{}, fmt.Errorf("readthrough: entity %q has no filter to rebuild from a full scan", e.Name)
	}
	batch := opts.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	st := PreloadStats{Entity: e.Name}
	start := time.Now()
	progress := func() {
		st.Elapsed = time.Since(start)
		if opts.Progress != nil {
			opts.Progress(st)
		}
	}
	throttle := func() error {
		if opts.Rate <= 0 {
			return nil
		}
		due := time.Duration(float64(st.Rows) / opts.Rate * float64(time.Second))
		return retry.Sleep(ctx, due-time.Since(start))
	}

	if opts.IDs != nil {
		st.Total = int64(len(opts.IDs))
		for i := 0; i < len(opts.IDs); i += batch {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			ids := opts.IDs[i:min(i+batch, len(opts.IDs))]
			found, err := r.warm(ctx, e, opts.Leases, ids, &st)
			if err != nil {
				return st, err
			}
			if e.Bloom && r.filters != nil && len(found) > 0 {
				if err := r.filters.Add(ctx, e.Name, found...); err != nil {
					return st, fmt.Errorf("bloom: %w", err)
				}
			}
			progress()
			if err := throttle(); err != nil {
				return st, err
			}
		}
		st.Elapsed = time.Since(start)
		return st, nil
	}

	st.Total, _ = opts.Scanner.EstimateRows(ctx, e.Name) // only for progress
	var build *bloom.Build
	if e.Bloom && r.filters != nil {
		// Begin before the scan: ids inserted from now on are added to the new filter by Add,
		// and ids inserted before are seen by the scan.
		var err error
		if build, err = r.filters.Begin(ctx, e.Name, e.BloomParams); err != nil {
			return st, fmt.Errorf("bloom: %w", err)
		}
		defer func() {
			if build != nil {
				build.Abort(ctx) // not committed: the current filter stays as it was
			}
		}()
	}
	// The scan ends at the greatest id there is once the rebuild has begun: rows inserted after
	// that reach the new filter through Add, and a scan that followed them could run for as
	// long as inserts keep coming.
	lastID, nonEmpty, err := opts.Scanner.LastID(ctx, e.Name)
	if err != nil {
		return st, fmt.Errorf("%w: %w", ErrDBUnavailable, err)
	}
	var after *string
	for nonEmpty {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		ids, err := opts.Scanner.ScanIDs(ctx, e.Name, after, &lastID, batch)
		if err != nil {
			return st, fmt.Errorf("%w: %w", ErrDBUnavailable, err)
		}
		if len(ids) == 0 {
			break
		}
		if build != nil {
			if err := build.Add(ctx, ids); err != nil {
				return st, fmt.Errorf("bloom: %w", err)
			}
		}
		if opts.FilterOnly {
			st.Rows += int64(len(ids))
		} else if _, err := r.warm(ctx, e, opts.Leases, ids, &st); err != nil {
			return st, err
		}
		last := ids[len(ids)-1]
		after = &last
		progress()
		if err := throttle(); err != nil {
			return st, err
		}
	}
	if build != nil {
		if err := build.Commit(ctx); err != nil {
			return st, fmt.Errorf("bloom: %w", err)
		}
		build = nil
		fs, err := r.filters.Stats(ctx, e.Name)
		if err != nil {
			return st, fmt.Errorf("bloom: %w", err)
		}
		st.Filter = &fs
	}
	st.Elapsed = time.Since(start)
	return st, nil
}

// warm fills the keys of ids that have no value, under their leases, with one MySQL query and
// one Redis pipeline, and returns the ids whose rows exist.
func (r *Reader) warm(ctx context.Context, e *entity, leases *lease.Leases, ids []string, st *PreloadStats) (found []string, err error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.cacheKey(e, id)
	}
	held, err := leases.AcquireMissing(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	var load []string
	var loadLeases []*lease.Lease
	for i, l := range held {
		if l == nil {
			st.AlreadyCached++
			continue
		}
		load = append(load, ids[i])
		loadLeases = append(loadLeases, l)
	}
	st.Rows += int64(len(ids))
	if len(load) == 0 {
		return nil, nil
	}
	rows, landed, err := r.loadUnderLeases(ctx, e, leases, load, loadLeases)
	if err != nil {
		return nil, err
	}
	for i, id := range load {
		row := rows[id]
		if row != nil {
			found = append(found, id)
		} // else deleted since the scan saw it: a null marker
		switch {
		case !landed[i]: // invalidated meanwhile; the next read loads it
		case row == nil:
			st.NullMarkers++
		default:
			st.Warmed++
			st.Bytes += int64(headerLen + len(row)) // the envelope written
		}
	}
	return found, nil
}
