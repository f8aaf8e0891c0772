package sidecar

import (
	"testing"

	"github.com/sidecache/sidecache/internal/config"
)

// TestDegradedLimiterTakesBursts: reads that arrive together get a tenth of a second's loads,
// and no more.
func TestDegradedLimiterTakesBursts(t *testing.T) {
	for _, c := range []struct {
		rate float64
		want int
	}{{500, 50}, {100, 10}, {5, 1}} {
		l := degradedLimiter(config.Degraded{Mode: "load", MaxDBRate: c.rate})
		got := 0
		for range 1000 { // at once: far faster than a token refills at these rates
			if l.Allow() {
				got++
			}
		}
		// A token may refill while the loop runs: at 500/s one does every 2 ms.
		if got < c.want || got > c.want+1 {
			t.Errorf("max_db_rate %v: %d of 1000 reads at once were let through, want %d", c.rate, got, c.want)
		}
	}
	if degradedLimiter(config.Degraded{Mode: "unavailable", MaxDBRate: 100}) != nil {
		t.Error("mode unavailable has a limiter")
	}
}
