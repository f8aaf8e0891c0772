package keys

import "strings"

// ValueID returns the id in k when k is one of entity's value keys as Value builds it, and
// false for any other key: a lease, or a key of another entity or prefix.
func ValueID(prefix, entity, k string) (id string, ok bool) {
	head := prefix + "{" + entity + ":"
	if !strings.HasPrefix(k, head) || !strings.HasSuffix(k, "}") {
		return "", false
	}
	id = k[len(head) : len(k)-1]
	return id, id != ""
}

// JoinID is the id of a row whose key has several columns: the columns' canonical values in
// primary-key order, each with '%' and ',' percent-encoded, joined by ','. A one-column key's
// id is its value as it is.
func JoinID(parts []string) string {
	if len(parts) == 1 {
		return parts[0]
	}
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		for j := 0; j < len(p); j++ {
			switch c := p[j]; c {
			case '%':
				b.WriteString("%25")
			case ',':
				b.WriteString("%2C")
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}

// SplitID splits the id of an n-column key into its n values, percent-decoding each (any
// %XX, upper or lower case, not only the two JoinID writes). ok is false when id has another
// number of values or a '%' not followed by two hex digits. For n = 1 the id is the value.
func SplitID(id string, n int) (parts []string, ok bool) {
	if n == 1 {
		return []string{id}, true
	}
	raw := strings.Split(id, ",")
	if len(raw) != n {
		return nil, false
	}
	for i, r := range raw {
		if !strings.Contains(r, "%") {
			continue
		}
		var b strings.Builder
		for j := 0; j < len(r); j++ {
			if r[j] != '%' {
				b.WriteByte(r[j])
				continue
			}
			if j+2 >= len(r) {
				return nil, false
			}
			hi, ok1 := unhex(r[j+1])
			lo, ok2 := unhex(r[j+2])
			if !ok1 || !ok2 {
				return nil, false
			}
			b.WriteByte(hi<<4 | lo)
			j += 2
		}
		raw[i] = b.String()
	}
	return raw, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
