package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDelayDoublesWithinJitter(t *testing.T) {
	const lo, hi = 10 * time.Millisecond, 75 * time.Millisecond
	for attempt, base := range map[int]time.Duration{1: 10, 2: 20, 3: 40, 4: 75, 10: 75, 100: 75} {
		base *= time.Millisecond
		for range 200 {
			if d := Delay(lo, hi, attempt); d < base/2 || d >= base/2+base {
				t.Fatalf("Delay(attempt %d) = %v, want in [%v, %v)", attempt, d, base/2, base/2+base)
			}
		}
	}
}

func TestDoStopsOnSuccessOrContext(t *testing.T) {
	calls := 0
	err := Do(context.Background(), Backoff{Min: time.Microsecond, Max: time.Microsecond}, func(n int) error {
		calls++
		if n != calls {
			t.Fatalf("attempt numbered %d on call %d", n, calls)
		}
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Do = %v after %d calls, want nil after 3", err, calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	failure := errors.New("still down")
	err = Do(ctx, Backoff{Min: time.Millisecond, Max: time.Millisecond}, func(n int) error {
		if n == 2 {
			cancel()
		}
		return failure
	})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, failure) {
		t.Fatalf("Do after cancel = %v, want the context's error and the last failure", err)
	}
}
