package readthrough

import (
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	deadline := time.UnixMilli(1_900_000_000_123)
	for _, tt := range []struct {
		kind     byte
		deadline time.Time
		body     string
	}{
		{kindValue, time.Time{}, `{"id":1}`},
		{kindValue, deadline, `{"id":1}`},
		{kindNull, time.Time{}, ""},
	} {
		env, ok := decodeEnvelope(encodeEnvelope(tt.kind, tt.deadline, []byte(tt.body)))
		if !ok || env.kind != tt.kind || !env.deadline.Equal(tt.deadline) || string(env.body) != tt.body {
			t.Errorf("round trip of %c/%v/%q = %+v, %v", tt.kind, tt.deadline, tt.body, env, ok)
		}
	}
	for _, bad := range [][]byte{nil, []byte("short"), append([]byte{2, 'v'}, make([]byte, 12)...),
		encodeEnvelope('x', time.Time{}, []byte("{}")), encodeEnvelope(kindValue, time.Time{}, nil),
		encodeEnvelope(kindNull, time.Time{}, []byte("{}"))} {
		if env, ok := decodeEnvelope(bad); ok {
			t.Errorf("decodeEnvelope(%q) = %+v, want not ok", bad, env)
		}
	}
}

func BenchmarkDecodeEnvelope(b *testing.B) {
	v := encodeEnvelope(kindValue, time.Time{}, make([]byte, 400))
	for b.Loop() {
		if _, ok := decodeEnvelope(v); !ok {
			b.Fatal("not ok")
		}
	}
}
