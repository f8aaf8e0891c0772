package mysqlsource

import (
	"errors"
	"strings"
	"testing"
)

type parseCase struct {
	key     Key
	raw     string
	want    string
	wantErr bool
}

func checkParse(t *testing.T, tests []parseCase) {
	t.Helper()
	for _, tt := range tests {
		got, err := tt.key.Parse(tt.raw, 64)
		if tt.wantErr {
			if !errors.Is(err, ErrInvalidID) {
				t.Errorf("Parse(%q) = %q, %v; want ErrInvalidID", tt.raw, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %q, %v; want %q", tt.raw, got, err, tt.want)
		}
	}
}

func TestKeyParse(t *testing.T) {
	i32 := Key{{Kind: KeyInt, Bits: 32}}
	u64 := Key{{Kind: KeyUint, Bits: 64}}
	s4 := Key{{Kind: KeyString, MaxChars: 4}}
	tests := []parseCase{
		{i32, "42", "42", false},
		{i32, "-7", "-7", false},
		{i32, "007", "7", false},
		{i32, "2147483647", "2147483647", false},
		{i32, "2147483648", "", true},
		{i32, "+1", "", true},
		{i32, "1e3", "", true},
		{i32, " 1", "", true},
		{i32, "", "", true},
		{i32, "abc", "", true},
		{u64, "18446744073709551615", "18446744073709551615", false},
		{u64, "18446744073709551616", "", true},
		{u64, "-1", "", true},
		{u64, strings.Repeat("0", 30) + "1", "", true},
		{s4, "JP", "JP", false},
		{s4, "日本語字", "日本語字", false},
		{s4, "toolong", "", true},
		{s4, "a\x00", "", true},
		{s4, "a\nb", "", true},
		{s4, "\xff", "", true},
		{s4, "", "", true},
	}
	checkParse(t, tests)
	if _, err := (Key{{Kind: KeyString}}).Parse(strings.Repeat("x", 65), 64); !errors.Is(err, ErrInvalidID) {
		t.Errorf("a string id over the byte bound was accepted")
	}
}

func TestCompositeKeyParse(t *testing.T) {
	k := Key{{Name: "actor_id", Kind: KeyUint, Bits: 16}, {Name: "film_id", Kind: KeyInt, Bits: 32}}
	sk := Key{{Name: "tag", Kind: KeyString, MaxChars: 4}, {Name: "n", Kind: KeyUint, Bits: 8}}
	tests := []parseCase{
		{k, "1,23", "1,23", false},
		{k, "001,-023", "1,-23", false},
		{k, "65535,2147483647", "65535,2147483647", false},
		{k, "65536,1", "", true}, // over SMALLINT UNSIGNED
		{k, "1", "", true},       // one value of two
		{k, "1,2,3", "", true},   // three
		{k, "1,", "", true},      // an empty integer
		{k, ",1", "", true},
		{k, "1%2C2", "", true}, // one value, decoded to "1,2"
		{sk, "a%2Cb,7", "a%2Cb,7", false},
		{sk, "a%2cb,7", "a%2Cb,7", false}, // any percent-encoding; canonical upper case
		{sk, "%41,7", "A,7", false},       // more than needed: canonical encodes only ',' and '%'
		{sk, "50%25,1", "50%25,1", false},
		{sk, ",1", ",1", false},     // an empty string value
		{sk, "50%,1", "", true},     // a bare '%'
		{sk, "a%0Ab,1", "", true},   // a control character, however written
		{sk, "toolong,1", "", true}, // over CHAR(4)
		{sk, "ab,256", "", true},    // over TINYINT UNSIGNED
	}
	checkParse(t, tests)
}

func FuzzKeyParse(f *testing.F) {
	for _, s := range []string{"1", "-0", "007", "18446744073709551615", "JP", "\x00", "日本", "1,a", "-0,%2C", "a%25,7,", ",1,"} {
		f.Add(s)
	}
	keys := []Key{{{Kind: KeyInt, Bits: 8}}, {{Kind: KeyInt, Bits: 64}}, {{Kind: KeyUint, Bits: 24}}, {{Kind: KeyUint, Bits: 64}}, {{Kind: KeyString, MaxChars: 8}},
		{{Name: "a", Kind: KeyInt, Bits: 8}, {Name: "b", Kind: KeyString, MaxChars: 8}},
		{{Name: "a", Kind: KeyString, MaxChars: 4}, {Name: "b", Kind: KeyUint, Bits: 16}, {Name: "c", Kind: KeyString, MaxChars: 4}}}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, k := range keys {
			id, err := k.Parse(raw, 32)
			if err != nil {
				if !errors.Is(err, ErrInvalidID) {
					t.Fatalf("%+v Parse(%q): error %v is not ErrInvalidID", k, raw, err)
				}
				continue
			}
			// The canonical form is a fixed point, and never holds a control character.
			again, err := k.Parse(id, 32)
			if err != nil || again != id {
				t.Fatalf("%+v Parse(%q) = %q, but Parse(%q) = %q, %v", k, raw, id, id, again, err)
			}
			if strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("%+v Parse(%q) = %q holds a control character", k, raw, id)
			}
		}
	})
}

// TestKeyParseAllocs: parsing a canonical id of a one-column key, what every read does, takes
// no allocation.
func TestKeyParseAllocs(t *testing.T) {
	for _, tt := range []struct {
		key Key
		raw string
	}{
		{Key{{Kind: KeyUint, Bits: 64}}, "4242"},
		{Key{{Kind: KeyInt, Bits: 32}}, "-4242"},
		{Key{{Kind: KeyString, MaxChars: 8}}, "JP-4242"},
	} {
		if n := testing.AllocsPerRun(100, func() { tt.key.Parse(tt.raw, 64) }); n != 0 {
			t.Errorf("Parse(%q) made %v allocations, want 0", tt.raw, n)
		}
	}
}
