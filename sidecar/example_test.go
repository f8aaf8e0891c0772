package sidecar_test

import (
	"context"
	"log"
	"os/signal"
	"syscall"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/sidecar"
)

// What `sidecache serve` does: load the configuration, connect and check the schema, then
// serve until SIGTERM and drain.
func Example() {
	cfg, err := config.Load("sidecache.yaml")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	sc, err := sidecar.New(ctx, sidecar.Options{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
