// Package singleflight collapses concurrent loads of one key inside one process: it wraps
// golang.org/x/sync/singleflight with generic results, callers that may give up on their own
// context, and panics returned as errors. Package lease makes the same hold across processes.
package singleflight

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"

	xsf "golang.org/x/sync/singleflight"
)

// PanicError is returned to every caller of a flight whose function panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (p *PanicError) Error() string {
	return fmt.Sprintf("singleflight: load panicked: %v\n%s", p.Value, p.Stack)
}

// Group runs one flight per key at a time. The zero value is ready to use.
type Group[T any] struct {
	g xsf.Group

	mu      sync.Mutex
	callers map[string]int
}

// Callers returns how many callers have joined a flight for key and are waiting for it.
func (g *Group[T]) Callers(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.callers[key]
}

func (g *Group[T]) track(key string, delta int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.callers == nil {
		g.callers = make(map[string]int)
	}
	if n := g.callers[key] + delta; n > 0 {
		g.callers[key] = n
	} else {
		delete(g.callers, key)
	}
}

// Do runs fn for key unless a flight for key is already running, in which case it waits for
// that flight's result. shared reports whether the result went to more than one caller.
//
// fn runs with ctx's values but not its cancellation: one caller giving up must not fail the
// flight for the others, so fn must bound its own time. A caller whose ctx ends stops waiting
// and gets ctx.Err(). A panic in fn reaches every caller as a *PanicError instead of crashing
// the process.
func (g *Group[T]) Do(ctx context.Context, key string, fn func(context.Context) (T, error)) (v T, shared bool, err error) {
	detached := context.WithoutCancel(ctx)
	ch := g.g.DoChan(key, func() (res any, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = &PanicError{Value: p, Stack: debug.Stack()}
			}
		}()
		return fn(detached)
	})
	// Counted once DoChan has registered the caller with the flight.
	g.track(key, 1)
	defer g.track(key, -1)
	select {
	case r := <-ch:
		v, _ = r.Val.(T)
		return v, r.Shared, r.Err
	case <-ctx.Done():
		return v, false, ctx.Err()
	}
}
