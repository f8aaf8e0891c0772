package readthrough

import "time"

// Cached is a cached value as the read path writes it, for tools that read the cache beside
// the read path (the consistency checker).
type Cached struct {
	// Null marks a cached "no such row".
	Null bool
	// Deadline is a hot value's soft deadline; zero: none.
	Deadline time.Time
	// Row is the row as a JSON object, byte for byte as the Source returned it; nil for a
	// null marker.
	Row []byte
}

// DecodeCached parses a cached value without copying the row. ok is false for a value in a
// format this build does not know, which the read path treats as a miss.
func DecodeCached(b []byte) (c Cached, ok bool) {
	env, ok := decodeEnvelope(b)
	if !ok {
		return Cached{}, false
	}
	if env.kind == kindNull {
		return Cached{Null: true, Deadline: env.deadline}, true
	}
	return Cached{Deadline: env.deadline, Row: env.body}, true
}

// Encode returns c as the read path writes it.
func (c Cached) Encode() []byte {
	if c.Null {
		return encodeEnvelope(kindNull, c.Deadline, nil)
	}
	return encodeEnvelope(kindValue, c.Deadline, c.Row)
}
