package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// TestLowerCaseTableNames: a server with lower_case_table_names=1 stores and logs table and
// database names in lower case, while the config spells them as the application does. The
// binlog's names must still find the configured table.
func TestLowerCaseTableNames(t *testing.T) {
	devstack.Require(t, stack)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := devstack.Start(ctx, devstack.Options{LowerCaseTableNames: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	root, err := s.Root("")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, q := range []string{
		"CREATE DATABASE Shop",
		"CREATE TABLE Shop.Items (ID INT NOT NULL PRIMARY KEY, Name VARCHAR(20) NOT NULL)",
		"INSERT INTO Shop.Items VALUES (1, 'one'), (2, 'two')",
	} {
		if _, err := root.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	cfg := fmt.Sprintf(`listen: %%s
log: {format: text}
mysql: {dsn: %q}
redis: {addrs: [%q], key_prefix: "lctn:"}
cdc: {enabled: true, flavor: mariadb, server_id: 3999, leader_ttl: 1s, double_delete_delay: 200ms}
entities:
  - name: items
    table: Items
    key: ID
`, s.DSN("root", "", "Shop"), stack.RedisAddr)
	p := startServe(t, cfg)
	get := func() string {
		res, err := http.Get("http://" + p.addr + "/v1/items/1")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return string(b)
	}
	if got := get(); got != `{"ID":1,"Name":"one"}` {
		t.Fatalf("first read: %s", got)
	}
	if _, err := root.Exec("UPDATE Shop.Items SET Name = 'uno' WHERE ID = 1"); err != nil {
		t.Fatal(err)
	}
	devstack.EventuallyState(t, 15*time.Second, func() (bool, string) {
		got := get()
		return got == `{"ID":1,"Name":"uno"}`, "after the update the sidecar still answers " + got
	})
}
