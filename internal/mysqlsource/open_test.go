package mysqlsource

import (
	"strings"
	"testing"
)

func TestOpenRefusesAnotherCharset(t *testing.T) {
	for _, dsn := range []string{"u:p@tcp(h:3306)/app?charset=latin1", "u:p@tcp(h:3306)/app?parseTime=true&charset=utf8"} {
		if _, _, err := Open(dsn, 1); err == nil || !strings.Contains(err.Error(), "utf8mb4") {
			t.Errorf("%s: %v, want refused", dsn, err)
		}
	}
	db, schema, err := Open("u:p@tcp(h:3306)/app?charset=utf8mb4", 1)
	if err != nil || schema != "app" {
		t.Fatalf("utf8mb4: %v, %q", err, schema)
	}
	db.Close()
}
