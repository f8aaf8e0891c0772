package readthrough_test

import (
	"testing"
	"time"

	"github.com/sidecache/sidecache/readthrough"
)

func TestCachedRoundTrip(t *testing.T) {
	deadline := time.UnixMilli(1_900_000_000_123)
	for _, c := range []readthrough.Cached{
		{Row: []byte(`{"id":1}`)},
		{Row: []byte(`{"id":1}`), Deadline: deadline},
		{Null: true},
	} {
		got, ok := readthrough.DecodeCached(c.Encode())
		if !ok || got.Null != c.Null || !got.Deadline.Equal(c.Deadline) || string(got.Row) != string(c.Row) || (c.Null && got.Row != nil) {
			t.Errorf("round trip of %+v = %+v, %v", c, got, ok)
		}
	}
	future := append([]byte{2, 'v'}, make([]byte, 12)...)
	if got, ok := readthrough.DecodeCached(future); ok {
		t.Errorf("a version this build does not know decoded as %+v", got)
	}
}
