package cdc

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"
)

// XA transactions reach the binlog in two groups: XA START ... XA END and an XA_PREPARE event,
// then, any time later, XA COMMIT or XA ROLLBACK. The prepared rows are not visible until the
// commit, and a read between the two sees the old rows, so their keys are invalidated at the
// commit and not before. The tail keeps each prepared transaction's changes in memory (bounded:
// past xaMaxKeys it remembers only the entities, to be dropped whole) and records the prepared
// ids with the entities they touched in the checkpoint, so a tail that resumes between the two
// still knows what the commit must drop.

const (
	mariadbPreparedXA  = 64  // MariaDB GTID flag: the group is an XA transaction's prepared part
	mariadbCompletedXA = 128 // MariaDB GTID flag: the group is XA COMMIT or XA ROLLBACK
	xaMaxKeys          = 10_000
)

// xidFromQuery reads the xid of "XA END|COMMIT|ROLLBACK X'67',X'62',1" (also 'g','b',1), as
// the canonical "gtrid-hex,bqual-hex,format".
func xidFromQuery(q string) string {
	fields := strings.Fields(q)
	if len(fields) < 3 {
		return ""
	}
	rest := strings.Join(fields[2:], " ")
	var parts []string
	for len(rest) > 0 && len(parts) < 3 {
		rest = strings.TrimLeft(rest, " ,")
		switch {
		case len(rest) >= 2 && (rest[0] == 'X' || rest[0] == 'x') && rest[1] == '\'':
			end := strings.IndexByte(rest[2:], '\'')
			if end < 0 {
				return ""
			}
			parts = append(parts, strings.ToLower(rest[2:2+end]))
			rest = rest[3+end:]
		case len(rest) >= 1 && rest[0] == '\'':
			end := strings.IndexByte(rest[1:], '\'')
			if end < 0 {
				return ""
			}
			parts = append(parts, hex.EncodeToString([]byte(rest[1:1+end])))
			rest = rest[2+end:]
		default:
			n := 0
			for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
				n++
			}
			if n > 0 && len(parts) > 0 {
				for len(parts) < 2 {
					parts = append(parts, "")
				}
				parts = append(parts, rest[:n])
			}
			rest = ""
		}
	}
	if len(parts) == 0 {
		return ""
	}
	for len(parts) < 2 {
		parts = append(parts, "")
	}
	if len(parts) < 3 {
		parts = append(parts, "1") // the default format id
	}
	return strings.Join(parts, ",")
}

// xidFromPrepare reads the xid of an XA_PREPARE_LOG_EVENT's body: one-phase flag (1 byte),
// format id (4), gtrid length (4), bqual length (4), gtrid, bqual.
func xidFromPrepare(data []byte) string {
	if len(data) < 13 {
		return ""
	}
	format := binary.LittleEndian.Uint32(data[1:])
	gl, bl := int(binary.LittleEndian.Uint32(data[5:])), int(binary.LittleEndian.Uint32(data[9:]))
	if gl < 0 || bl < 0 || 13+gl+bl > len(data) {
		return ""
	}
	return hex.EncodeToString(data[13:13+gl]) + "," + hex.EncodeToString(data[13+gl:13+gl+bl]) + "," + strconv.FormatUint(uint64(format), 10)
}
