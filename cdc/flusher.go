package cdc

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sidecache/sidecache/invalidation"
)

// batch is work cut from the session for invalidation.
type batch struct {
	keys     []string
	adds     map[string][]string // entity → ids to add to its Bloom filter (before the deletes)
	drops    map[string]string   // entity → why its whole cache goes
	cp       *Checkpoint         // the checkpoint it lets the saver reach; nil inside a transaction
	at       time.Time           // binlog time of its oldest change; zero when unknown
	position string              // for retry messages
	gtid     string              // what a replica must have applied (Change.GTID)
	n        int                 // keys and ids to add, as the session counted them
}

// merge adds o, which the binlog has after b, to b. Deleting b's keys together with o's, and
// o's entities' drops with them, invalidates all of both: a key deleted twice or in another
// order is no less deleted, and ids reach their filters before any delete runs all the same.
// The checkpoint and the GTID set are o's, which include b's.
func (b *batch) merge(o batch) {
	b.keys = append(b.keys, o.keys...)
	b.n += o.n
	for e, ids := range o.adds {
		if b.adds == nil {
			b.adds = map[string][]string{}
		}
		b.adds[e] = append(b.adds[e], ids...)
	}
	for e, why := range o.drops {
		if b.drops == nil {
			b.drops = map[string]string{}
		}
		if _, ok := b.drops[e]; !ok {
			b.drops[e] = why
		}
	}
	if o.cp != nil {
		b.cp = o.cp
	}
	if b.at.IsZero() {
		b.at = o.at
	}
	b.position = o.position
	if o.gtid != "" {
		b.gtid = o.gtid
	}
}

// flusher hands batches to invalidation one at a time, off the event loop: the loop goes on
// reading the binlog while a batch's deletes are under way, and what it hands over meanwhile is
// merged into the next batch. So a change is deleted as soon as the loop sees its commit while
// writes are few, and batches grow, up to about flushAt keys, when they are many.
type flusher struct {
	mu      sync.Mutex
	next    batch
	waiting bool          // next holds a batch
	ready   chan struct{} // a batch waits
	taken   chan struct{} // the waiting batch was taken
}

func newFlusher() *flusher {
	return &flusher{ready: make(chan struct{}, 1), taken: make(chan struct{}, 1)}
}

// hand gives b to the flusher, merged into the batch waiting there. While the waiting batch
// holds flushAt keys it waits for the flusher to take it, so memory stays bounded.
func (f *flusher) hand(ctx context.Context, b batch) error {
	for {
		f.mu.Lock()
		if !f.waiting || f.next.n < flushAt {
			if f.waiting {
				f.next.merge(b)
			} else {
				f.next, f.waiting = b, true
			}
			f.mu.Unlock()
			signal(f.ready)
			return nil
		}
		f.mu.Unlock()
		select {
		case <-f.taken:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// take waits for a batch and returns it.
func (f *flusher) take(ctx context.Context) (batch, bool) {
	for {
		f.mu.Lock()
		if f.waiting {
			b := f.next
			f.next, f.waiting = batch{}, false
			f.mu.Unlock()
			signal(f.taken)
			return b, true
		}
		f.mu.Unlock()
		select {
		case <-f.ready:
		case <-ctx.Done():
			return batch{}, false
		}
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// flush submits the flusher's batches one after another until ctx ends or a submit fails.
func (t *Tail) flush(ctx context.Context, f *flusher, queue chan<- pending) error {
	for {
		b, ok := f.take(ctx)
		if !ok {
			return nil
		}
		if err := t.submit(ctx, b, queue); err != nil {
			return err
		}
	}
}

// submit hands the batch to invalidation, which resets the filters of dropped entities and
// adds the ids inserted (or moved to) before it runs the first pass of every key and drop; the
// batch's checkpoint is queued behind its second pass.
func (t *Tail) submit(ctx context.Context, b batch, queue chan<- pending) error {
	drops := slices.Sorted(maps.Keys(b.drops))
	var resets []string
	for _, e := range drops {
		if t.filtered[e] {
			resets = append(resets, e)
		}
		t.m.drops.WithLabelValues(e, b.drops[e]).Inc()
	}
	_, done, err := t.o.Invalidator.Submit(ctx, invalidation.Change{
		Keys: b.keys, Entities: drops, Adds: b.adds, Resets: resets, Position: b.position, GTID: b.gtid,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // ctx ended; the checkpoint was not advanced past these
		}
		return err
	}
	at := b.at
	if at.IsZero() {
		at = time.Now()
	}
	if len(b.keys) > 0 {
		t.m.lag.Observe(time.Since(at).Seconds())
	}
	if b.cp != nil {
		// Processed, for "caught up", means the first pass is done (or handed to Kafka), not
		// merely parsed.
		t.setProcessed(*b.cp)
	}
	t.mu.Lock()
	t.oldest = append(t.oldest, at)
	t.mu.Unlock()
	select {
	case queue <- pending{cp: b.cp, done: done}:
	case <-ctx.Done():
	}
	return nil
}
