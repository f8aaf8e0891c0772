package main

import (
	"strings"
	"testing"

	"github.com/sidecache/sidecache/internal/loadtest/result"
)

func TestMergeJoinsRunsOfOneFigure(t *testing.T) {
	figs := merge([]result.Figure{
		{Name: "lag", Values: []float64{3}, AnchorValues: []float64{1}},
		{Name: "rss", Values: []float64{20}},
		{Name: "lag", Values: []float64{5}, AnchorValues: []float64{2}},
	})
	if len(figs) != 2 || figs[0].Name != "lag" || len(figs[0].Values) != 2 || figs[0].AnchorValues[1] != 2 {
		t.Fatalf("merged into %+v", figs)
	}
}

func TestMetReadsTheGoal(t *testing.T) {
	for _, c := range []struct {
		f      result.Figure
		ratios []float64
		want   string
	}{
		{result.Figure{Values: []float64{2.5, 1, 2}, Goal: "<= 3 ms"}, nil, "yes"},
		{result.Figure{Values: []float64{4, 1, 5}, Goal: "<= 3 ms"}, nil, "NO"},
		{result.Figure{Values: []float64{1}, Goal: "ratio >= 0.95"}, []float64{0.9, 0.96, 0.97}, "yes"},
		{result.Figure{Values: []float64{1}, Goal: "ratio >= 2.0"}, []float64{1.7, 1.8, 2.1}, "NO"},
		{result.Figure{Values: []float64{61000, 59000, 65000}, Goal: ">= 60000 rows/s"}, nil, "yes"},
		{result.Figure{Values: []float64{1}, Goal: "as small as it gets"}, nil, ""},
	} {
		if got := met(c.f, c.ratios); got != c.want {
			t.Errorf("met(%v, %q, ratios %v) = %q, want %q", c.f.Values, c.f.Goal, c.ratios, got, c.want)
		}
	}
}

func TestTableShowsRatios(t *testing.T) {
	var b strings.Builder
	printTable(&b, []result.Figure{{Name: "hit path req/s", Unit: "req/s", Values: []float64{90, 100, 110},
		Anchor: "bare", AnchorValues: []float64{100, 100, 100}, Ratio: true, Goal: "ratio >= 0.95"}})
	if out := b.String(); !strings.Contains(out, "0.900 / 1.000 / 1.100") || !strings.Contains(out, "yes") {
		t.Fatalf("table:\n%s", out)
	}
}
