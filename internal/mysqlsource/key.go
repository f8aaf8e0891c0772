package mysqlsource

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sidecache/sidecache/internal/keys"
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

// KeyPart describes one key column well enough to validate its values before any I/O.
type KeyPart struct {
	// Name is the column's name as the schema spells it.
	Name string
	Kind KeyKind
	// Bits is the width of an integer column (8, 16, 24, 32 or 64).
	Bits int
	// MaxChars is the declared length of a string column, in characters.
	MaxChars int
	// Ordinal is the column's position in the table, from 0, as the schema is at start.
	Ordinal int
	// Charset is the character set of a string column ("" for integers).
	Charset string
}

// Key is an entity's primary key (or a unique key a lookup reads by): its columns in the
// index's order. An id is the columns' values joined as keys.JoinID joins them: a one-column
// key's id is its value as it is.
type Key []KeyPart

// Names returns the key's column names.
func (k Key) Names() []string {
	names := make([]string, len(k))
	for i, p := range k {
		names[i] = p.Name
	}
	return names
}

// Parse validates raw against the key's column types and returns the canonical form used in
// cache keys: integers in plain decimal ("007" → "7"), strings exactly as given, and for a key
// of several columns each value percent-encoded as keys.JoinID writes it. maxBytes bounds the
// id and each string value.
func (k Key) Parse(raw string, maxBytes int) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if len(raw) > maxBytes {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, maxBytes)
	}
	if len(k) == 1 {
		// A one-column key's id is its value as it is: no split, no join, no allocation on the
		// read path's every request.
		return k[0].Parse(raw, maxBytes)
	}
	values, ok := keys.SplitID(raw, len(k))
	if !ok {
		return "", fmt.Errorf("%w: want the values of (%s) joined by ',', with ',' and '%%' in a value written %%2C and %%25",
			ErrInvalidID, strings.Join(k.Names(), ", "))
	}
	for i, p := range k {
		// Only a value of a key of several columns can be empty: one column's empty id is no id.
		if values[i] == "" && p.Kind == KeyString && len(k) > 1 {
			continue
		}
		v, err := p.Parse(values[i], maxBytes)
		if err != nil {
			if len(k) > 1 {
				return "", fmt.Errorf("%w (column %s)", err, p.Name)
			}
			return "", err
		}
		values[i] = v
	}
	return keys.JoinID(values), nil
}

// args converts a canonical id into the typed query arguments of the key's columns.
func (k Key) args(id string) ([]any, error) {
	values, ok := keys.SplitID(id, len(k))
	if !ok {
		return nil, fmt.Errorf("%q is not an id of %d columns", id, len(k))
	}
	args := make([]any, len(k))
	for i, p := range k {
		a, err := p.arg(values[i])
		if err != nil {
			return nil, err
		}
		args[i] = a
	}
	return args, nil
}

// Parse validates raw as a value of the column and returns its canonical form.
func (k KeyPart) Parse(raw string, maxBytes int) (string, error) {
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
		return canonical(raw, func() string { return strconv.FormatInt(v, 10) }), nil
	case KeyUint:
		if len(raw) > 21 {
			return "", fmt.Errorf("%w: too long for an integer key", ErrInvalidID)
		}
		v, err := strconv.ParseUint(raw, 10, k.Bits)
		if err != nil || raw[0] == '+' {
			return "", fmt.Errorf("%w: %q is not an unsigned %d-bit integer", ErrInvalidID, raw, k.Bits)
		}
		return canonical(raw, func() string { return strconv.FormatUint(v, 10) }), nil
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

// canonical returns raw, an integer that parsed, when it is already in plain decimal (no
// leading zero, no "-0"), and format() otherwise: ids as clients write them are canonical, and
// are then used as they came, without a new string.
func canonical(raw string, format func() string) string {
	if digits := strings.TrimPrefix(raw, "-"); digits[0] != '0' || raw == "0" {
		return raw
	}
	return format()
}

// arg converts a canonical value into the typed query argument for the column.
func (k KeyPart) arg(v string) (any, error) {
	switch k.Kind {
	case KeyInt:
		return strconv.ParseInt(v, 10, 64)
	case KeyUint:
		return strconv.ParseUint(v, 10, 64)
	}
	return v, nil
}
