package invalidation_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sidecache/sidecache/invalidation"
)

// printer is a Deleter that prints what it deletes and whether the delay had passed;
// invalidation.NewRedis is the real one.
type printer struct {
	start time.Time
	delay time.Duration
}

func (p printer) Invalidate(_ context.Context, keys ...string) ([]string, error) {
	fmt.Printf("delete %s, after the delay: %v\n", strings.Join(keys, " "), time.Since(p.start) >= p.delay)
	return nil, nil
}

// Every change is deleted twice: at once, and again after the delay, for a fill that raced the
// first delete. The first channel is closed once the first delete is done, done once both are:
// a binlog checkpoint waits for done.
func ExampleInvalidator_Submit() {
	const delay = 200 * time.Millisecond
	inv := invalidation.New(invalidation.Options{Deleter: printer{time.Now(), delay}, Delay: delay})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go inv.Run(ctx)

	first, done, err := inv.Submit(ctx, invalidation.Change{Keys: []string{"sc:{items:42}"}})
	if err != nil {
		panic(err)
	}
	<-first
	fmt.Println("first delete done")
	<-done
	fmt.Println("both deletes done")
	// Output:
	// delete sc:{items:42}, after the delay: false
	// first delete done
	// delete sc:{items:42}, after the delay: true
	// both deletes done
}
