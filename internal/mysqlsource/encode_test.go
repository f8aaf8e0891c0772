package mysqlsource

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppendValue(t *testing.T) {
	tests := []struct {
		codec codec
		in    string
		want  string
	}{
		{codecInt, "-9223372036854775808", "-9223372036854775808"},
		{codecInt, "18446744073709551615", "18446744073709551615"},
		{codecFloat, "3.14", "3.14"},
		{codecFloat, "1e+308", "1e+308"},
		{codecDecimal, "-0.000000000000000000000000000001", `"-0.000000000000000000000000000001"`},
		{codecString, "tab\there \"q\" \\ \x01", `"tab\there \"q\" \\ \u0001"`},
		{codecString, "", `""`},
		{codecJSON, `{"a":[1,2]}`, `{"a":[1,2]}`},
		{codecJSON, `not json`, `"not json"`},
		{codecBytes, "\x00\xff\x00\x10", `"AP8AEA=="`},
		{codecDate, "2024-02-29", `"2024-02-29"`},
		{codecDateTime, "2038-01-19 03:14:07.999", `"2038-01-19T03:14:07.999Z"`},
		{codecDateTime, "1000-01-01 00:00:00", `"1000-01-01T00:00:00Z"`},
		{codecBit, "\xff\xff\xff\xff\xff\xff\xff\xff", "18446744073709551615"},
		{codecBit, "\x01\x00", "256"},
	}
	for _, tt := range tests {
		got, err := tt.codec.appendValue(nil, []byte(tt.in))
		if err != nil || string(got) != tt.want {
			t.Errorf("codec %d: appendValue(%q) = %s, %v; want %s", tt.codec, tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []struct {
		codec codec
		in    string
	}{{codecInt, "12a"}, {codecInt, ""}, {codecFloat, "x"}, {codecDateTime, "2024-01-01"}} {
		if _, err := bad.codec.appendValue(nil, []byte(bad.in)); err == nil {
			t.Errorf("codec %d accepted %q", bad.codec, bad.in)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\"back\\slash", "\x00\x1f\x7f", "ünï ✓ 😀", "\xff\xfe", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString(nil, []byte(s))
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("appendJSONString(%q) = %s is not JSON: %v", s, out, err)
		}
		want := s
		if !utf8.ValidString(s) {
			want = strings.ToValidUTF8(s, "\uFFFD")
			// ToValidUTF8 folds a run of bad bytes into one replacement; we replace each byte.
			if utf8.RuneCountInString(back) < utf8.RuneCountInString(want) {
				t.Fatalf("appendJSONString(%q) lost characters: %q", s, back)
			}
			return
		}
		if back != want {
			t.Fatalf("appendJSONString(%q) round-trips to %q", s, back)
		}
	})
}
