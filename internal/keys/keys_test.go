package keys_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sidecache/sidecache/internal/keys"
)

// slot is Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag, or of the whole key when
// it has none, modulo 16384.
func slot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for _, b := range []byte(key) {
		crc ^= uint16(b) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

func TestLeaseSharesTheValueSlot(t *testing.T) {
	if got := slot("123456789"); got != 12739 { // CRC16/XMODEM check value 0x31C3
		t.Fatalf("slot self-check: %d", got)
	}
	for _, k := range []string{"sc:{items:1}", "sc:{items:18446744073709551615}", "sc:{codes:a:b}c}", "p:{users:-7}"} {
		if a, b := slot(k), slot(keys.Lease(k)); a != b {
			t.Errorf("%s is in slot %d, its lease in %d", k, a, b)
		}
	}
	if slot("sc:{items:1}") == slot("sc:{items:2}") && slot("sc:{items:3}") == slot("sc:{items:4}") {
		t.Error("different ids all land in one slot: the tag does not spread keys")
	}
}

func ExampleValue() {
	v := keys.Value("sc:", "items", "42")
	fmt.Println(v)
	fmt.Println(keys.Lease(v))
	// Output:
	// sc:{items:42}
	// sc:{items:42}:lease
}
