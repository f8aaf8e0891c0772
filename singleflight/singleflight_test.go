package singleflight_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sidecache/sidecache/singleflight"
)

func TestDoShares(t *testing.T) {
	var g singleflight.Group[int]
	var joined atomic.Int32
	singleflight.OnJoin(&g, func(string) { joined.Add(1) })
	var calls atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]int, 10)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _, err := g.Do(context.Background(), "k", func(context.Context) (int, error) {
				if calls.Add(1) == 1 {
					close(started)
				}
				<-release
				return 42, nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		}()
	}
	<-started
	// Let the other callers join the flight before it ends; a late joiner would start a second
	// flight, which the count below would catch.
	for int(joined.Load()) < len(results) {
		runtime.Gosched()
	}
	close(release)
	wg.Wait()
	if got := calls.Load(); got != 1 {
		t.Errorf("fn ran %d times, want 1", got)
	}
	for i, v := range results {
		if v != 42 {
			t.Errorf("caller %d got %d, want 42", i, v)
		}
	}
}

func TestDoCancelledWaiterLeavesFlight(t *testing.T) {
	var g singleflight.Group[string]
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan string)
	go func() {
		v, _, _ := g.Do(context.Background(), "k", func(ctx context.Context) (string, error) {
			close(started)
			<-release
			return "v", ctx.Err() // the flight's ctx is not cancelled by a waiter leaving
		})
		done <- v
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := g.Do(ctx, "k", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter got %v, want context.Canceled", err)
	}
	close(release)
	if v := <-done; v != "v" {
		t.Fatalf("first caller got %q, want v", v)
	}
}

func TestDoPanicBecomesError(t *testing.T) {
	var g singleflight.Group[int]
	_, _, err := g.Do(context.Background(), "k", func(context.Context) (int, error) { panic("boom") })
	var pe *singleflight.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" {
		t.Fatalf("got %v, want a PanicError with boom", err)
	}
	// The key is free again afterwards.
	v, _, err := g.Do(context.Background(), "k", func(context.Context) (int, error) { return 1, nil })
	if err != nil || v != 1 {
		t.Fatalf("after a panic: %v, %v", v, err)
	}
}
