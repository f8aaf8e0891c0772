package check

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/internal/mysqlsource"
)

// TestRandomStartCoversTheRange draws starts and checks that the first id each would read lies
// in [first, last], and that every id of a small range can come first.
func TestRandomStartCoversTheRange(t *testing.T) {
	intKey := mysqlsource.Key{{Kind: mysqlsource.KeyInt, Bits: 64}}
	uintKey := mysqlsource.Key{{Kind: mysqlsource.KeyUint, Bits: 64}}
	tests := []struct {
		name        string
		key         mysqlsource.Key
		first, last string
		every       bool // a small range: each id must come first at least once
	}{
		{"small signed", intKey, "-5", "5", true},
		{"one id", intKey, "7", "7", true},
		{"whole int64", intKey, strconv.FormatInt(math.MinInt64, 10), strconv.FormatInt(math.MaxInt64, 10), false},
		{"small unsigned", uintKey, "0", "3", true},
		{"whole uint64", uintKey, "0", strconv.FormatUint(math.MaxUint64, 10), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := make(map[string]bool)
			for range 2000 {
				next := tt.first
				if after, ok := randomStart(tt.key, tt.first, tt.last); ok {
					next = plusOne(t, tt.key, after)
				}
				if less(tt.key, next, tt.first) || less(tt.key, tt.last, next) {
					t.Fatalf("start %s is outside [%s, %s]", next, tt.first, tt.last)
				}
				seen[next] = true
			}
			if tt.every {
				lo, _ := strconv.ParseInt(tt.first, 10, 64)
				hi, _ := strconv.ParseInt(tt.last, 10, 64)
				if int64(len(seen)) != hi-lo+1 {
					t.Errorf("starts %v, want every id of [%s, %s]", seen, tt.first, tt.last)
				}
			}
		})
	}
}

func TestRandomStringStartIsBetween(t *testing.T) {
	key := mysqlsource.Key{{Kind: mysqlsource.KeyString, MaxChars: 8}}
	for _, r := range [][2]string{{"aaa", "zzz"}, {"A", "b"}, {"user-0001", "user-9999"}, {"x", "x"}} {
		lo, hi := stringPoint(r[0]), stringPoint(r[1])
		for range 500 {
			s, ok := randomStart(key, r[0], r[1])
			if !ok {
				continue
			}
			if p := stringPoint(s); p < lo || p > hi {
				t.Fatalf("%q is outside [%q, %q]", s, r[0], r[1])
			}
		}
	}
}

func plusOne(t *testing.T, k mysqlsource.Key, id string) string {
	if k[0].Kind == mysqlsource.KeyUint {
		v, err := strconv.ParseUint(id, 10, 64)
		if err != nil || v == math.MaxUint64 {
			t.Fatalf("after %q: nothing can follow", id)
		}
		return strconv.FormatUint(v+1, 10)
	}
	v, err := strconv.ParseInt(id, 10, 64)
	if err != nil || v == math.MaxInt64 {
		t.Fatalf("after %q: nothing can follow", id)
	}
	return strconv.FormatInt(v+1, 10)
}

func less(k mysqlsource.Key, a, b string) bool {
	if k[0].Kind == mysqlsource.KeyUint {
		x, _ := strconv.ParseUint(a, 10, 64)
		y, _ := strconv.ParseUint(b, 10, 64)
		return x < y
	}
	x, _ := strconv.ParseInt(a, 10, 64)
	y, _ := strconv.ParseInt(b, 10, 64)
	return x < y
}

// TestRandomCompositeStart checks a key of two columns: spread by the first, the second at its
// least value, and always an id the key's parser takes.
func TestRandomCompositeStart(t *testing.T) {
	key := mysqlsource.Key{{Name: "a", Kind: mysqlsource.KeyInt, Bits: 16}, {Name: "b", Kind: mysqlsource.KeyString, MaxChars: 8}}
	firsts := map[string]bool{}
	for range 500 {
		s, ok := randomStart(key, "-3,x", "3,a%2Cb")
		if !ok {
			continue
		}
		parts, ok := keys.SplitID(s, 2)
		if !ok || parts[1] != "" {
			t.Fatalf("start %q: want the first column's value and an empty second", s)
		}
		a, err := strconv.Atoi(parts[0])
		if err != nil || a < -3 || a > 3 {
			t.Fatalf("start %q: the first column is outside [-3, 3]", s)
		}
		firsts[parts[0]] = true
	}
	// 500 uniform draws over 7 values (one of which reads from the start instead): each value
	// is missed with probability (6/7)^500 < 1e-33.
	if len(firsts) < 6 {
		t.Errorf("starts by first column %v, want at least 6 of [-3, 3]", firsts)
	}
	intKey := mysqlsource.Key{{Kind: mysqlsource.KeyInt, Bits: 8}, {Kind: mysqlsource.KeyUint, Bits: 8}}
	if s, ok := randomStart(intKey, "1,0", "100,5"); ok && !strings.HasSuffix(s, ",0") {
		t.Errorf("start %q: want the unsigned column at 0", s)
	}
	signed := mysqlsource.Key{{Kind: mysqlsource.KeyInt, Bits: 8}, {Kind: mysqlsource.KeyInt, Bits: 8}}
	for range 50 {
		if s, ok := randomStart(signed, "1,0", "100,5"); ok && !strings.HasSuffix(s, ",-128") {
			t.Fatalf("start %q: want the TINYINT column at -128", s)
		}
	}
}
