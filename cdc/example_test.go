package cdc_test

import (
	"context"
	"database/sql"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/cdc"
	"github.com/sidecache/sidecache/invalidation"
)

// A binlog tail for the items table of database shop: every sidecar runs one, one of them leads
// and invalidates the keys of every changed row, twice.
func Example() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	db, _ := sql.Open("mysql", "cdc:secret@tcp(127.0.0.1:3306)/shop")
	deleter := invalidation.NewRedis(rdb)
	inv := invalidation.New(invalidation.Options{Deleter: deleter, Dropper: deleter, Prefix: "sc:"})
	go inv.Run(ctx)

	tail := cdc.New(cdc.Options{
		Flavor: "mariadb", Host: "127.0.0.1", Port: 3306, User: "cdc", Password: "secret",
		Schema: "shop", Prefix: "sc:", DB: db, Redis: rdb, Invalidator: inv,
		Tables: map[string][]cdc.Target{"items": {{Entity: "items", Key: []cdc.KeyColumn{{Name: "id", Bits: 64}}}}},
	})
	if err := tail.Check(ctx); err != nil { // the server's binlog settings and the account's grants
		panic(err)
	}
	tail.Run(ctx) // until ctx ends
}
