package singleflight_test

import (
	"context"
	"fmt"

	"github.com/sidecache/sidecache/singleflight"
)

// A caller that gives up leaves the flight without cancelling it: the load goes on for the
// callers that still wait, and a second caller of the key never starts a second load.
func ExampleGroup_Do() {
	var g singleflight.Group[string]
	started, release := make(chan struct{}), make(chan struct{})
	loads := 0
	load := func(ctx context.Context) (string, error) {
		loads++
		close(started)
		<-release
		return `{"id":42}`, ctx.Err()
	}
	first := make(chan string)
	go func() {
		row, _, err := g.Do(context.Background(), "items:42", load)
		first <- fmt.Sprint(row, " ", err)
	}()
	<-started

	gaveUp, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := g.Do(gaveUp, "items:42", load)
	fmt.Println("second caller:", err)

	close(release)
	fmt.Println("first caller:", <-first)
	fmt.Println("loads:", loads)
	// Output:
	// second caller: context canceled
	// first caller: {"id":42} <nil>
	// loads: 1
}
