package mysqlsource

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/sidecache/sidecache/readthrough"
)

// ErrInvalidID reports an id that cannot be a value of the entity's key column; it is the read
// path's error, so that requests with such ids answer 400.
var ErrInvalidID = readthrough.ErrInvalidID

// KeyKind is the family of a key column's type.
type KeyKind int

const (
	KeyInt    KeyKind = iota + 1 // signed integer types
	KeyUint                      // unsigned integer types
	KeyString                    // CHAR / VARCHAR
)

// Key describes a primary key column well enough to validate ids before any I/O.
type Key struct {
	Kind KeyKind
	// Bits is the width of an integer key (8, 16, 24, 32 or 64).
	Bits int
	// MaxChars is the declared length of a string key, in characters.
	MaxChars int
}

// Parse validates raw against the key's type and returns the canonical form used in cache keys:
// integers in plain decimal ("007" → "7"), strings exactly as given. maxBytes bounds string ids.
func (k Key) Parse(raw string, maxBytes int) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidID)
	}
	switch k.Kind {
	case KeyInt:
		if len(raw) > 21 {
			return "", fmt.Errorf("%w: too long for an integer key", ErrInvalidID)
		}
		v, err := strconv.ParseInt(raw, 10, k.Bits)
		if err != nil || raw[0] == '+' {
			return "", fmt.Errorf("%w: %q is not a %d-bit integer", ErrInvalidID, raw, k.Bits)
		}
		return strconv.FormatInt(v, 10), nil
	case KeyUint:
		if len(raw) > 21 {
			return "", fmt.Errorf("%w: too long for an integer key", ErrInvalidID)
		}
		v, err := strconv.ParseUint(raw, 10, k.Bits)
		if err != nil || raw[0] == '+' {
			return "", fmt.Errorf("%w: %q is not an unsigned %d-bit integer", ErrInvalidID, raw, k.Bits)
		}
		return strconv.FormatUint(v, 10), nil
	case KeyString:
		if len(raw) > maxBytes {
			return "", fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, maxBytes)
		}
		if !utf8.ValidString(raw) {
			return "", fmt.Errorf("%w: not valid UTF-8", ErrInvalidID)
		}
		n := 0
		for _, r := range raw {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				return "", fmt.Errorf("%w: contains a control character", ErrInvalidID)
			}
			n++
		}
		if k.MaxChars > 0 && n > k.MaxChars {
			return "", fmt.Errorf("%w: longer than the key column's %d characters", ErrInvalidID, k.MaxChars)
		}
		return raw, nil
	}
	return "", fmt.Errorf("%w: unsupported key type", ErrInvalidID)
}

// arg converts a canonical id into the typed query argument for the key column.
func (k Key) arg(id string) (any, error) {
	switch k.Kind {
	case KeyInt:
		return strconv.ParseInt(id, 10, 64)
	case KeyUint:
		return strconv.ParseUint(id, 10, 64)
	}
	return id, nil
}
