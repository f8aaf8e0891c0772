package readthrough

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

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

// Defaults of PreloadOptions.
const (
	DefaultBatch   = 2000
	DefaultWorkers = 4
)

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
	// Workers is how many batches are warmed at once while the scan reads the next pages.
	// Default DefaultWorkers.
	Workers int
	// Rate caps the rows read from MySQL per second. 0: no cap.
	Rate float64
	// FilterOnly rebuilds the Bloom filter from a scan without warming the cache (IDs must be
	// nil). The binlog tail's leader runs it after a filter was reset or lost.
	FilterOnly bool
	// Progress, if set, is called after every batch, never by two batches at once.
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

// add counts a batch's stats into s.
func (s *PreloadStats) add(b PreloadStats) {
	s.Rows += b.Rows
	s.Warmed += b.Warmed
	s.NullMarkers += b.NullMarkers
	s.AlreadyCached += b.AlreadyCached
	s.Bytes += b.Bytes
}

// Preload warms the cache for an entity in bulk with the read path's envelope and jittered
// TTLs, and, for a full scan of an entity with a Bloom filter, rebuilds the filter from the
// scan. The scan reads its pages one after the other while up to Workers batches are warmed.
// Interrupted (ctx ends), it stops after the batches under way, leaves the current filter as
// it was, and returns the stats so far with ctx's error.
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
	batch := cmp.Or(max(opts.Batch, 0), DefaultBatch)
	p := &preload{r: r, e: e, opts: opts, start: time.Now(), st: PreloadStats{Entity: e.Name}}
	if opts.IDs != nil {
		p.st.Total = int64(len(opts.IDs))
		err := p.run(ctx, func(ctx context.Context, dispatch func([]string) error) error {
			for i := 0; i < len(opts.IDs); i += batch {
				if err := dispatch(opts.IDs[i:min(i+batch, len(opts.IDs))]); err != nil {
					return err
				}
			}
			return nil
		})
		return p.stats(), err
	}

	p.st.Total, _ = opts.Scanner.EstimateRows(ctx, e.Name) // only for progress
	if e.Bloom && r.filters != nil {
		// Begin before the scan: ids inserted from now on are added to the new filter by Add,
		// and ids inserted before are seen by the scan.
		var err error
		if p.build, err = r.filters.Begin(ctx, e.Name, e.BloomParams); err != nil {
			return p.stats(), fmt.Errorf("bloom: %w", err)
		}
		defer func() {
			if p.build != nil {
				p.build.Abort(ctx) // not committed: the current filter stays as it was
			}
		}()
	}
	// The scan ends at the greatest id there is once the rebuild has begun: rows inserted after
	// that reach the new filter through Add, and a scan that followed them could run for as
	// long as inserts keep coming.
	lastID, nonEmpty, err := opts.Scanner.LastID(ctx, e.Name)
	if err != nil {
		return p.stats(), fmt.Errorf("%w: %w", ErrDBUnavailable, err)
	}
	err = p.run(ctx, func(ctx context.Context, dispatch func([]string) error) error {
		var after *string
		for nonEmpty {
			ids, err := opts.Scanner.ScanIDs(ctx, e.Name, after, &lastID, batch)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrDBUnavailable, err)
			}
			if len(ids) == 0 {
				return nil
			}
			last := ids[len(ids)-1]
			after = &last
			if err := dispatch(ids); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return p.stats(), err
	}
	if p.build != nil {
		// Every batch has been added: the workers are done.
		if err := p.build.Commit(ctx); err != nil {
			return p.stats(), fmt.Errorf("bloom: %w", err)
		}
		p.build = nil
		fs, err := r.filters.Stats(ctx, e.Name)
		if err != nil {
			return p.stats(), fmt.Errorf("bloom: %w", err)
		}
		p.st.Filter = &fs
	}
	return p.stats(), nil
}

// preload is one Preload under way.
type preload struct {
	r     *Reader
	e     *entity
	opts  PreloadOptions
	build *bloom.Build // the filter's rebuild, for a scan of an entity with a filter
	start time.Time

	mu sync.Mutex // st, and the calls of opts.Progress
	st PreloadStats
}

func (p *preload) stats() PreloadStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Elapsed = time.Since(p.start)
	return p.st
}

// run calls produce with a dispatch that hands a batch of ids to a worker, after waiting out
// the rate cap and for a free worker. It returns once every batch handed over is done: with the
// first error of produce or a batch, or with ctx's error when ctx ended, in which case it
// dispatches nothing more. Every batch under way has finished when run returns.
func (p *preload) run(ctx context.Context, produce func(ctx context.Context, dispatch func([]string) error) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(max(p.opts.Workers, 0), DefaultWorkers))
	var dispatched int64
	dispatch := func(ids []string) error {
		if p.opts.Rate > 0 {
			due := time.Duration(float64(dispatched) / p.opts.Rate * float64(time.Second))
			if err := retry.Sleep(gctx, due-time.Since(p.start)); err != nil {
				return err
			}
		}
		if err := gctx.Err(); err != nil {
			return err
		}
		dispatched += int64(len(ids))
		g.Go(func() error { return p.batch(gctx, ids) })
		return nil
	}
	err := produce(gctx, dispatch)
	werr := g.Wait()
	// ctx's own end comes first: a batch or the scan that failed because of it says less.
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return cmp.Or(werr, err)
}

// batch adds a batch's ids to the filter and warms them.
func (p *preload) batch(ctx context.Context, ids []string) error {
	var st PreloadStats
	switch {
	case p.build != nil:
		if err := p.build.Add(ctx, ids); err != nil {
			return fmt.Errorf("bloom: %w", err)
		}
		if p.opts.FilterOnly {
			st.Rows = int64(len(ids))
		} else if _, err := p.r.warm(ctx, p.e, p.opts.Leases, ids, &st); err != nil {
			return err
		}
	default:
		found, err := p.r.warm(ctx, p.e, p.opts.Leases, ids, &st)
		if err != nil {
			return err
		}
		if p.opts.IDs != nil && p.e.Bloom && p.r.filters != nil && len(found) > 0 {
			if err := p.r.filters.Add(ctx, p.e.Name, found...); err != nil {
				return fmt.Errorf("bloom: %w", err)
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.add(st)
	if p.opts.Progress != nil {
		p.st.Elapsed = time.Since(p.start)
		p.opts.Progress(p.st)
	}
	return nil
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
