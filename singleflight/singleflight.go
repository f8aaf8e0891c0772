// Package singleflight collapses concurrent loads of one key inside one process: it wraps
// golang.org/x/sync/singleflight with generic results, callers that may give up on their own
// context, and panics returned as errors. Package lease makes the same hold across processes.
package singleflight

import (
	"context"
	"fmt"
	"runtime/debug"

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

	joined func(key string) // tests: called once a caller has joined a flight
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
	if g.joined != nil {
		g.joined(key)
	}
	select {
	case r := <-ch:
		v, _ = r.Val.(T)
		return v, r.Shared, r.Err
	case <-ctx.Done():
		return v, false, ctx.Err()
	}
}
