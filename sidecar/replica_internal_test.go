package sidecar

import (
	"slices"
	"strings"
	"testing"
)

func TestMergeGTIDs(t *testing.T) {
	tests := []struct {
		flavor string
		sets   []string
		want   []string // the merged set's parts, in any order
	}{
		// MariaDB: one GTID per domain, the newest; out of binlog order as after a failover of
		// the tail, the older must not win.
		{"mariadb", []string{"0-1-7", "0-1-5,1-2-3", "1-2-9"}, []string{"0-1-7", "1-2-9"}},
		{"mariadb", []string{"0-1-5"}, []string{"0-1-5"}},
		{"mysql", []string{"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5", "3e11fa47-71ca-11e1-9e33-c80aa9429562:6-9"},
			[]string{"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9"}},
	}
	for _, tt := range tests {
		got, err := mergeGTIDs(tt.flavor, tt.sets)
		if err != nil {
			t.Fatalf("%s %v: %v", tt.flavor, tt.sets, err)
		}
		parts := strings.Split(got, ",")
		slices.Sort(parts)
		if !slices.Equal(parts, tt.want) {
			t.Errorf("%s %v: got %q, want %v", tt.flavor, tt.sets, got, tt.want)
		}
	}
	if _, err := mergeGTIDs("mariadb", []string{"binlog.000001:4"}); err == nil {
		t.Error("a file position merged as a GTID set")
	}
}
