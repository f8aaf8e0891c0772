package devstack_test

import (
	"database/sql"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// fakeTB records the failure of a helper run on it by fail; the rest goes to the real test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatal(args ...any) { f.msg = fmt.Sprint(args...); runtime.Goexit() }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fail runs helper on a fakeTB in a goroutine of its own, as the testing package runs a test,
// and returns what it failed with ("" when it did not fail).
func fail(t *testing.T, helper func(tb testing.TB)) string {
	ft := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		helper(ft)
	}()
	<-done
	return ft.msg
}

func TestNewDatabase(t *testing.T) {
	// The SET holds for the INSERT after it: the schema runs on one connection.
	d := devstack.NewDatabase(t, stack, "", `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, at TIMESTAMP NULL);
		SET time_zone = '+00:00';
		INSERT INTO items VALUES (1, '2024-01-02 03:04:05');`)
	user, err := sql.Open("mysql", d.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	var at int64
	if err := user.QueryRow("SELECT UNIX_TIMESTAMP(at) FROM items WHERE id = 1").Scan(&at); err != nil {
		t.Fatalf("the user reads the database: %v", err)
	}
	if want := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC).Unix(); at != want {
		t.Errorf("the row holds %d, want %d", at, want)
	}
	if other := devstack.NewDatabase(t, stack, "", ""); other.Name == d.Name {
		t.Errorf("two databases named %q", d.Name)
	}
	if named := devstack.NewDatabase(t, stack, "devstack_named", ""); named.Name != "devstack_named" {
		t.Errorf("asked for devstack_named, got %q", named.Name)
	}
}

func TestNewDatabaseFailsOnALaterStatement(t *testing.T) {
	devstack.Require(t, stack)
	msg := fail(t, func(tb testing.TB) {
		devstack.NewDatabase(tb, stack, "", "CREATE TABLE a (id INT); INSERT INTO nosuch VALUES (1)")
	})
	if !strings.Contains(msg, "nosuch") {
		t.Errorf("a failing second statement: %q, want a failure naming the table", msg)
	}
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	n := 0
	devstack.Eventually(t, 5*time.Second, "never three", func() bool {
		n++
		return n == 3
	})
	if n != 3 {
		t.Errorf("the condition was called %d times, want 3", n)
	}
}

func TestEventuallyFailureNamesTimeoutAndMessage(t *testing.T) {
	start := time.Now()
	msg := fail(t, func(tb testing.TB) {
		devstack.Eventually(tb, 30*time.Millisecond, "the thing never happened", func() bool { return false })
	})
	if elapsed := time.Since(start); elapsed < 30*time.Millisecond {
		t.Errorf("failed after %v, before the timeout", elapsed)
	}
	if want := "after 30ms: the thing never happened"; msg != want {
		t.Errorf("failure %q, want %q", msg, want)
	}
}

func TestEventuallyStateReportsTheLastState(t *testing.T) {
	n := 0
	msg := fail(t, func(tb testing.TB) {
		devstack.EventuallyState(tb, 30*time.Millisecond, func() (bool, string) {
			n++
			return false, fmt.Sprintf("n is %d", n)
		})
	})
	if want := fmt.Sprintf("after 30ms: n is %d", n); n < 2 || msg != want {
		t.Errorf("failure %q after %d calls, want %q", msg, n, want)
	}
}
