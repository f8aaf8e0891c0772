package readthrough

import (
	"encoding/binary"
	"time"
)

// The cached value is a small versioned envelope around the row's JSON:
//
//	byte 0     version (1)
//	byte 1     kind: 'v' a row, 'n' a null marker (no such row)
//	bytes 2-9  soft deadline, Unix milliseconds, big endian; 0 means none
//	bytes 10-  the row as a JSON object (kind 'v' only)
//
// The soft deadline is there for logical expiry of hot entities. A reader that meets a version
// it does not know treats the value as a miss, so a format change never breaks a running fleet.
const (
	envelopeVersion = 1
	headerLen       = 10
	kindValue       = 'v'
	kindNull        = 'n'
)

type envelope struct {
	kind     byte
	deadline time.Time // zero: no soft deadline
	body     []byte
}

func encodeEnvelope(kind byte, deadline time.Time, body []byte) []byte {
	b := make([]byte, headerLen, headerLen+len(body))
	b[0], b[1] = envelopeVersion, kind
	if !deadline.IsZero() {
		binary.BigEndian.PutUint64(b[2:], uint64(deadline.UnixMilli()))
	}
	return append(b, body...)
}

// decodeEnvelope parses b without copying the body. ok is false for anything it does not know.
func decodeEnvelope(b []byte) (env envelope, ok bool) {
	if len(b) < headerLen || b[0] != envelopeVersion {
		return envelope{}, false
	}
	env.kind = b[1]
	if ms := binary.BigEndian.Uint64(b[2:headerLen]); ms != 0 {
		env.deadline = time.UnixMilli(int64(ms))
	}
	env.body = b[headerLen:]
	switch env.kind {
	case kindValue:
		return env, len(env.body) > 0
	case kindNull:
		return env, len(env.body) == 0
	}
	return envelope{}, false
}
