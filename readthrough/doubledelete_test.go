package readthrough_test

import (
	"context"
	"testing"
	"time"

	"github.com/sidecache/sidecache/invalidation"
	"github.com/sidecache/sidecache/readthrough"
)

// TestDoubleDeleteRemovesARacingFill reproduces the race the second delete exists for: a
// reader misses, reads the old row, and fills just after the first delete. Without the lease
// (or with a read from a lagging replica) that fill lands; the second delete removes it.
func TestDoubleDeleteRemovesARacingFill(t *testing.T) {
	g := newRig(t, false)
	pause := newPausedLoad()
	r := g.reader(0, func(o *readthrough.Options) { o.AfterLoad = pause.hook }) // no lease
	inv := invalidation.New(invalidation.Options{Deleter: invalidation.NewRedis(g.rc), Delay: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go inv.Run(ctx)

	done := make(chan struct{})
	go func() {
		r.Get(context.Background(), "items", "1")
		close(done)
	}()
	<-pause.loaded // the reader has the old row
	g.exec("UPDATE items SET name = 'new' WHERE id = 1")
	second, err := inv.Delete(ctx, []string{g.key("1")}) // the first delete
	if err != nil {
		t.Fatal(err)
	}
	close(pause.proceed) // the reader fills just after it
	<-done
	if b, _ := g.rc.Get(ctx, g.key("1")).Bytes(); len(b) < 10 || string(b[10:]) != `{"id":1,"name":"old"}` {
		t.Fatalf("the racing fill did not land (%q); the test did not reproduce the race", b)
	}
	<-second // the second delete
	if n := g.rc.Exists(ctx, g.key("1")).Val(); n != 0 {
		t.Fatal("the stale fill survived the second delete")
	}
	res, err := r.Get(ctx, "items", "1")
	if err != nil || string(res.Body) != `{"id":1,"name":"new"}` {
		t.Fatalf("after the second delete: %s %v, want the new row", res.Body, err)
	}
}
