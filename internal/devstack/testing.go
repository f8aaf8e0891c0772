package devstack

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// Required reports whether integration tests must run rather than skip: under CI=true, and
// under SIDECACHE_INTEGRATION=required, which `make test` sets.
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("SIDECACHE_INTEGRATION") == "required"
}

// RunTests is the body of an integration test package's TestMain: it starts one stack for the
// package, runs the tests and stops the stack. When the servers are not installed, the tests
// run with a nil stack (Require skips them), unless Required, where that is a failure.
func RunTests(m *testing.M, opts Options, dst **Stack) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	s, err := Start(ctx, opts)
	cancel()
	if err != nil {
		if Required() {
			fmt.Fprintf(os.Stderr, "devstack: integration tests are required and the stack cannot start: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "devstack: integration tests will be skipped: %v\n", err)
		return m.Run()
	}
	*dst = s
	defer s.Stop()
	return m.Run()
}

// Require returns s, or skips the test when the stack could not start outside CI.
func Require(tb testing.TB, s *Stack) *Stack {
	tb.Helper()
	if s == nil {
		if Required() {
			tb.Fatal("devstack: integration tests are required but no stack is running")
		}
		tb.Skip("devstack: MariaDB/Redis not installed; run `make deps`")
	}
	return s
}
