package mysqlsource

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// codec says how one column's value, as the driver hands it over in text form, is written as JSON.
type codec int

const (
	codecInt      codec = iota + 1 // integers and YEAR: a JSON number, digits as they are
	codecFloat                     // FLOAT, DOUBLE: a JSON number, shortest round-trip form
	codecDecimal                   // DECIMAL: a JSON string, so no precision is lost
	codecString                    // CHAR, VARCHAR, TEXT, ENUM, SET, TIME: a JSON string
	codecJSON                      // JSON: embedded as JSON
	codecBytes                     // BINARY, VARBINARY, BLOB, spatial: base64 in a JSON string
	codecDate                      // DATE: "2006-01-02"
	codecDateTime                  // DATETIME, TIMESTAMP: RFC 3339 in UTC
	codecBit                       // BIT(n): a JSON number
)

// codecFor maps an information_schema DATA_TYPE to a codec.
func codecFor(dataType string) (codec, bool) {
	switch dataType {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year":
		return codecInt, true
	case "float", "double", "real", "double precision":
		return codecFloat, true
	case "decimal", "numeric", "dec", "fixed":
		return codecDecimal, true
	case "char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "time",
		"inet4", "inet6", "uuid":
		return codecString, true
	case "json":
		return codecJSON, true
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob",
		"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
		"multipolygon", "geometrycollection":
		return codecBytes, true
	case "date":
		return codecDate, true
	case "datetime", "timestamp":
		return codecDateTime, true
	case "bit":
		return codecBit, true
	}
	return 0, false
}

// appendValue appends v, the driver's text form of a non-NULL value, as JSON.
func (c codec) appendValue(dst, v []byte) ([]byte, error) {
	switch c {
	case codecInt:
		if !isInteger(v) {
			return nil, fmt.Errorf("integer column holds %q (has the schema changed?)", v)
		}
		return append(dst, v...), nil
	case codecFloat:
		// The driver formats FLOAT in its shortest 32-bit form; re-formatting it as a float64
		// would add digits, so the driver's digits are kept (JSON accepts them as they are).
		if _, err := strconv.ParseFloat(string(v), 64); err != nil {
			return nil, fmt.Errorf("float column holds %q (has the schema changed?)", v)
		}
		return append(dst, v...), nil
	case codecDecimal, codecString:
		return appendJSONString(dst, v), nil
	case codecJSON:
		if json.Valid(v) {
			return append(dst, v...), nil
		}
		return appendJSONString(dst, v), nil
	case codecBytes:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, v)
		return append(dst, '"'), nil
	case codecDate:
		return appendJSONString(dst, v), nil
	case codecDateTime:
		// "2006-01-02 15:04:05[.ffffff]" in the session's UTC → "2006-01-02T15:04:05[.ffffff]Z".
		if len(v) < 19 || v[10] != ' ' {
			return nil, fmt.Errorf("datetime column holds %q (has the schema changed?)", v)
		}
		dst = append(dst, '"')
		dst = append(dst, v[:10]...)
		dst = append(dst, 'T')
		dst = append(dst, v[11:]...)
		return append(dst, 'Z', '"'), nil
	case codecBit:
		if len(v) > 8 {
			return nil, fmt.Errorf("bit column holds %d bytes", len(v))
		}
		var buf [8]byte
		copy(buf[8-len(v):], v)
		return strconv.AppendUint(dst, binary.BigEndian.Uint64(buf[:]), 10), nil
	}
	return nil, fmt.Errorf("unknown codec %d", c)
}

func isInteger(v []byte) bool {
	if len(v) > 0 && v[0] == '-' {
		v = v[1:]
	}
	if len(v) == 0 {
		return false
	}
	for _, b := range v {
		if b < '0' || b > '9' {
			return false
		}
	}
	return true
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
