package devstack

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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

// Main is an integration test package's whole TestMain: RunTests, then exit with its code.
func Main(m *testing.M, opts Options, dst **Stack) { os.Exit(RunTests(m, opts, dst)) }

// StartFor starts a stack of the test's own with opts and stops it when the test ends (Stop
// may also be called before). When the servers are not installed the test is skipped, unless
// Required, where that is a failure.
func StartFor(tb testing.TB, opts Options) *Stack {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, opts)
	if errors.Is(err, ErrNotInstalled) && !Required() {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Client returns a Redis client on the stack's Redis, closed when the test ends.
func (s *Stack) Client(tb testing.TB) *redis.Client {
	rc := redis.NewClient(&redis.Options{Addr: s.RedisAddr})
	tb.Cleanup(func() { rc.Close() })
	return rc
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

// Database is a test's own database on the stack.
type Database struct {
	Name string
	DSN  string  // the DSN of the database's user, who may read and change rows
	Root *sql.DB // root on the database, closed when the test ends
}

var dbSeq atomic.Int32

// NewDatabase creates database name and its user on s (Require first: without a stack the test
// is skipped), and runs schema on it as root. An empty name is replaced by one unique to the
// process. The schema's statements are separated by ';' and sent in one Exec (the DSN allows
// several statements), so a session setting such as SET time_zone holds for those after it.
func NewDatabase(tb testing.TB, s *Stack, name, schema string) *Database {
	tb.Helper()
	s = Require(tb, s)
	if name == "" {
		name = fmt.Sprintf("db%d_%d", os.Getpid()%10000, dbSeq.Add(1))
	}
	d := &Database{Name: name}
	var err error
	if d.DSN, err = s.CreateDatabase(context.Background(), name); err != nil {
		tb.Fatal(err)
	}
	if d.Root, err = s.Root(name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Root.Close() })
	if schema != "" {
		if _, err := d.Root.Exec(schema); err != nil {
			tb.Fatalf("devstack: schema of %s: %v", name, err)
		}
	}
	return d
}

// pollInterval is how often Eventually calls its condition.
const pollInterval = 10 * time.Millisecond

// Eventually calls cond every pollInterval until it holds, and fails the test with msg when it
// has not after timeout.
func Eventually(tb testing.TB, timeout time.Duration, msg string, cond func() bool) {
	tb.Helper()
	EventuallyState(tb, timeout, func() (bool, string) { return cond(), msg })
}

// EventuallyState calls cond until it holds, and fails the test when it has not after timeout,
// with the state cond reported last (what was still wrong).
func EventuallyState(tb testing.TB, timeout time.Duration, cond func() (ok bool, state string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %s", timeout, state)
			return
		}
		time.Sleep(pollInterval)
	}
}
