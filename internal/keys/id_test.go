package keys_test

import (
	"slices"
	"testing"

	"github.com/sidecache/sidecache/internal/keys"
)

func TestValueID(t *testing.T) {
	tests := []struct {
		entity, key string
		id          string
		ok          bool
	}{
		{"items", keys.Value("sc:", "items", "42"), "42", true},
		{"codes", keys.Value("sc:", "codes", "a:b}c"), "a:b}c", true},
		{"codes", keys.Value("sc:", "codes", "x}:lease"), "x}:lease", true}, // a value key whose id looks like a lease
		{"items", keys.Lease(keys.Value("sc:", "items", "42")), "", false},
		{"items", keys.Value("sc:", "items2", "42"), "", false},
		{"items", keys.Value("other:", "items", "42"), "", false},
		{"items", "sc:{items:}", "", false},
		{"items", keys.BloomMeta("sc:", "items"), "", false},
	}
	for _, tt := range tests {
		id, ok := keys.ValueID("sc:", tt.entity, tt.key)
		if id != tt.id || ok != tt.ok {
			t.Errorf("ValueID(%q) = %q, %v; want %q, %v", tt.key, id, ok, tt.id, tt.ok)
		}
	}
}

func TestJoinSplitID(t *testing.T) {
	tests := []struct {
		parts []string
		id    string
	}{
		{[]string{"42"}, "42"},
		{[]string{"a,b%"}, "a,b%"}, // one column: as it is
		{[]string{"1", "23"}, "1,23"},
		{[]string{"a,b", "50%", ""}, "a%2Cb,50%25,"},
		{[]string{"", ""}, ","},
		{[]string{"%2C", "x"}, "%252C,x"},
	}
	for _, tt := range tests {
		id := keys.JoinID(tt.parts)
		if id != tt.id {
			t.Errorf("JoinID(%q) = %q; want %q", tt.parts, id, tt.id)
		}
		back, ok := keys.SplitID(id, len(tt.parts))
		if !ok || !slices.Equal(back, tt.parts) {
			t.Errorf("SplitID(%q, %d) = %q, %v; want %q", id, len(tt.parts), back, ok, tt.parts)
		}
	}
	for _, bad := range []struct {
		id string
		n  int
	}{{"1", 2}, {"1,2,3", 2}, {"1%2,3", 2}, {"1%,3", 2}, {"1%zz,3", 2}, {"1,3%4", 2}} {
		if parts, ok := keys.SplitID(bad.id, bad.n); ok {
			t.Errorf("SplitID(%q, %d) = %q; want an error", bad.id, bad.n, parts)
		}
	}
	if parts, ok := keys.SplitID("%41%2c,b", 2); !ok || parts[0] != "A," || parts[1] != "b" {
		t.Errorf(`SplitID("%%41%%2c,b") = %q, %v; want ["A," "b"]`, parts, ok)
	}
}
