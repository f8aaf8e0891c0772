package cdc

import (
	"context"
	"errors"
	"time"
)

// pending is a batch waiting for its second deletes; cp is nil for a batch that ended inside a
// transaction (the checkpoint waits for the transaction's end).
type pending struct {
	cp   *Checkpoint
	done <-chan struct{}
}

// saver writes the checkpoint of each batch once its second delete (and every earlier batch's)
// is done, in binlog order, at most every 100ms, and once more on the way out. Each save
// replaces only the checkpoint it saved before (stored, at first); finding another, it stops the
// leadership with errCheckpointChanged and saves nothing more.
func (t *Tail) saver(ctx context.Context, queue <-chan pending, stored []byte, stop context.CancelCauseFunc) error {
	var latest *Checkpoint
	var savedAt time.Time
	changed := false
	save := func(sctx context.Context) {
		if latest == nil || changed {
			return
		}
		var err error
		if stored, err = t.saveCheckpoint(sctx, *latest, stored); err != nil {
			if errors.Is(err, errCheckpointChanged) {
				changed = true
				t.log.Warn("the checkpoint in Redis is not the one this leader saved last: Redis lost or rolled back data " +
					"(a restart, a failover, a restore, eviction); resuming from before")
				stop(errCheckpointChanged)
				return
			}
			t.log.Warn("saving the checkpoint failed", "err", err)
			return
		}
		t.m.checkpointTime.Set(float64(latest.EventTime))
		t.remember(*latest)
		latest, savedAt = nil, time.Now()
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		save(sctx)
		cancel()
	}()
	for p := range queue {
		select {
		case <-p.done:
		case <-ctx.Done():
			return nil // not done: the checkpoint stays before it
		}
		t.mu.Lock()
		t.oldest = t.oldest[1:]
		t.mu.Unlock()
		if p.cp != nil {
			latest = p.cp
		}
		if time.Since(savedAt) >= 100*time.Millisecond || len(queue) == 0 {
			save(ctx)
		}
	}
	return nil
}

// remember keeps the checkpoints this process saved over the last two minutes (and the newest
// older one), to resume from should Redis lose them.
func (t *Tail) remember(cp Checkpoint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if n := len(t.history); n >= 2 && now.Sub(t.history[n-2].at) < time.Second {
		t.history[n-1] = saved{at: now, cp: cp} // one a second is plenty
	} else {
		t.history = append(t.history, saved{at: now, cp: cp})
	}
	drop := 0
	for drop+1 < len(t.history) && now.Sub(t.history[drop+1].at) > 2*time.Minute {
		drop++
	}
	t.history = t.history[drop:]
}

// checkpointAge is how far behind the checkpoint is: the age of the oldest change not yet
// checkpointed, 0 when all are.
func (t *Tail) checkpointAge() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.oldest) == 0 {
		return 0
	}
	return time.Since(t.oldest[0]).Seconds()
}
