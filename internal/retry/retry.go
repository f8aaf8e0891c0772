// Package retry is the one backoff and the one context-aware sleep of every retry loop in
// sidecache: deletes, Bloom filter updates, Kafka writes, the binlog tail's restarts and the
// read path's wait for another loader's fill.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with jitter: the n-th delay is Min·2^(n-1), at most Max,
// spread uniformly over ±50% so that retriers across processes do not run in step. The zero
// value is not useful; set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	b.attempt++
	return Delay(b.Min, b.Max, b.attempt)
}

// Reset starts again from Min.
func (b *Backoff) Reset() { b.attempt = 0 }

// Delay is the jittered delay before retry number attempt (from 1): lo·2^(attempt-1), at most
// hi, ±50%.
func Delay(lo, hi time.Duration, attempt int) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d)
}

// Sleep waits for d or until ctx ends, and returns ctx's error if it ended first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Do calls attempt until it returns nil or ctx ends, sleeping b's next delay between calls.
// attempt gets its number, from 1, to log the first failure and every so often. When ctx ends
// first, Do returns ctx's error joined with the last failure.
func Do(ctx context.Context, b Backoff, attempt func(n int) error) error {
	for n := 1; ; n++ {
		err := attempt(n)
		if err == nil {
			return nil
		}
		if serr := Sleep(ctx, b.Next()); serr != nil {
			return errors.Join(serr, err)
		}
	}
}
