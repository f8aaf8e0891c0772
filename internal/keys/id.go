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
