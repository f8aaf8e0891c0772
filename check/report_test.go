package check_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/check"
)

func TestFigure(t *testing.T) {
	tests := []struct {
		c    check.Counts
		want string
	}{
		{check.Counts{Checked: 10000, Stale: 1}, "99.99% (4 nines)"},
		{check.Counts{Checked: 3000, Ghost: 1}, "99.97% (3 nines)"},
		{check.Counts{Checked: 100000, WronglyMissing: 1}, "99.999% (5 nines)"},
		{check.Counts{Checked: 1000000, Stale: 1}, "99.9999% (6 nines)"},
		{check.Counts{Checked: 10, Stale: 1}, "90% (1 nine)"},
		{check.Counts{Checked: 10, Stale: 3, Ghost: 2}, "50% (0 nines)"},
		{check.Counts{Checked: 1000}, "100% (≥3 nines)"},
		{check.Counts{Checked: 5}, "100%"},
		{check.Counts{NotCached: 7}, "nothing checked"},
	}
	for _, tt := range tests {
		if got := tt.c.Figure(); got != tt.want {
			t.Errorf("%+v: got %q, want %q", tt.c, got, tt.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	rep := check.Report{
		Entities: []check.EntityReport{
			{Entity: "items", Counts: check.Counts{Checked: 2000, Stale: 1, InFlight: 2, PastSoftDeadline: 3},
				Lasting: []check.Mismatch{{ID: "42", Kind: check.Stale}}},
			{Entity: "codes", Counts: check.Counts{Checked: 1000, Ghost: 1, Unreadable: 1},
				Lasting: []check.Mismatch{{ID: "a b", Kind: check.Ghost}}},
		},
		Settle:  1500 * time.Millisecond,
		Elapsed: 3 * time.Second,
	}
	for _, er := range rep.Entities {
		rep.Total.Add(er.Counts)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"entity  checked  stale  ghost  wrongly missing  unreadable       consistency",
		" items     2000      1      0                0           0  99.95% (3 nines)",
		"lasting mismatches: items: stale 42; codes: ghost \"a b\"",
		"in flight: 2 mismatches settled when looked at again 1.5s later",
		"past soft deadline: 3 hot values",
		"unreadable: 1 cached value in a format",
		"total in 3s: 3000 checked, 2 lasting mismatches (1 stale, 1 ghost, 0 wrongly missing), 1 unreadable, 2 in flight, 3 past soft deadline: 99.93% (3 nines)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
}
