package keys_test

import (
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
