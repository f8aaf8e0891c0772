package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

var (
	stack *devstack.Stack
	bin   string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sidecache-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "sidecache")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := devstack.RunTests(m, devstack.Options{GeneralLog: true}, &stack)
	os.RemoveAll(dir)
	os.Exit(code)
}

// setup creates a database with an items table and returns a config file for it.
func setup(t *testing.T, name, entities string) (path, listen string) {
	t.Helper()
	dsn := devstack.NewDatabase(t, stack, name, `CREATE TABLE IF NOT EXISTS items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT IGNORE INTO items VALUES (1, 'one'), (2, 'two')`).DSN
	s := stack
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen = ln.Addr().String()
	ln.Close()
	path = filepath.Join(t.TempDir(), "sidecache.yaml")
	doc := fmt.Sprintf("listen: %q\nmysql:\n  dsn: %q\nredis:\n  addrs: [%q]\n  key_prefix: %q\n%s",
		listen, dsn, s.RedisAddr, name+":", entities)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, listen
}

func TestStartFailuresAreOneLine(t *testing.T) {
	path, _ := setup(t, "cmd_bad", "entities:\n  - name: items\n    columns: [id, colour]\n")
	unknownKey := filepath.Join(t.TempDir(), "unknown.yaml")
	os.WriteFile(unknownKey, []byte("mysql:\n  dsn: \"a:b@tcp(h:1)/d\"\nentities:\n  - name: items\n    tll: 1m\n"), 0o600)
	noTail := filepath.Join(t.TempDir(), "notail.yaml")
	os.WriteFile(noTail, []byte("mysql:\n  dsn: \"a:b@tcp(h:1)/d\"\nentities:\n  - name: users\n    lookups: [{name: by-email, columns: [email]}]\n"), 0o600)
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"lookups without the tail", []string{"serve", "--config", noTail}, 1, []string{noTail, `entity "users"`, "cdc.enabled"}},
		{"schema mismatch", []string{"serve", "--config", path}, 1, []string{path, `entity "items"`, "columns[1]", `"colour" does not exist`}},
		{"unknown key", []string{"serve", "--config", unknownKey}, 1, []string{unknownKey, "line 5", `unknown field "tll"`}},
		{"missing file", []string{"serve", "--config", "/nonexistent.yaml"}, 1, []string{"/nonexistent.yaml", "no such file"}},
		{"no config flag", []string{"serve"}, 2, []string{"--config FILE"}},
		{"unknown command", []string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`}},
		{"no command", nil, 2, []string{"no command given"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tt.code {
				t.Fatalf("exit: %v, want code %d; stderr:\n%s", err, tt.code, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "sidecache: ") {
				t.Errorf("last stderr line %q does not start with sidecache:", last)
			}
			for _, w := range tt.want {
				if !strings.Contains(last, w) {
					t.Errorf("last stderr line %q does not mention %q", last, w)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "sidecache ") {
		t.Fatalf("version: %q, %v", out, err)
	}
}

// TestDemoHandsOver: `sidecache demo` runs sidecache-demo from next to the binary, telling it
// which sidecache to run, and says what is missing when it is not there.
func TestDemoHandsOver(t *testing.T) {
	cmd := exec.Command(bin, "demo", "breakdown")
	cmd.Env = append(os.Environ(), "PATH=/nonexistent")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "sidecache-demo, neither next to") {
		t.Errorf("without sidecache-demo: %v, %q", err, out)
	}
	demo := filepath.Join(filepath.Dir(bin), "sidecache-demo")
	if err := os.WriteFile(demo, []byte("#!/bin/sh\necho \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(demo)
	out, err = exec.Command(bin, "demo", "stale", "--out", "x").Output()
	if want := "--sidecache " + bin + " stale --out x\n"; err != nil || string(out) != want {
		t.Errorf("handed over as %q, %v; want %q", out, err, want)
	}
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	path, listen := setup(t, "cmd_drain", "log:\n  format: text\nentities:\n  - name: items\n")
	cmd := exec.Command(bin, "serve", "--config", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logLines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logLines <- sc.Text()
		}
		close(logLines)
	}()
	waitLog(t, logLines, "msg=serving")
	base := "http://" + listen

	// Hold a write lock on the table, so the miss below waits inside MariaDB.
	root, err := stack.Root("cmd_drain")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	unlock := lockItems(t, root)
	type result struct {
		status int
		cache  string
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		res, err := http.Get(base + "/v1/items/2")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		done <- result{res.StatusCode, res.Header.Get("X-Cache"), string(b), nil}
	}()
	// Wait until the load is blocked on the lock in MariaDB.
	devstack.Eventually(t, 10*time.Second, "the request never reached MariaDB", func() bool {
		var n int
		root.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%`cmd_drain`.`items`%' AND STATE LIKE '%lock%'").Scan(&n)
		return n > 0
	})

	cmd.Process.Signal(syscall.SIGTERM)
	waitLog(t, logLines, "shutting down")
	// New connections are refused once shutdown has begun.
	if res, err := http.Get(base + "/healthz"); err == nil {
		res.Body.Close()
		t.Errorf("a new request was accepted during shutdown: %d", res.StatusCode)
	}
	select {
	case r := <-done:
		t.Fatalf("the in-flight request ended before its query could: %+v", r)
	default:
	}
	unlock()
	r := <-done
	if r.err != nil || r.status != 200 || r.cache != "miss" || r.body != `{"id":2,"name":"two"}` {
		t.Errorf("in-flight request: %+v, want 200 miss with the row", r)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("sidecache exited with %v, want 0", err)
	}
}

// lockItems write-locks the items table on a connection of its own, so that loads of it wait
// inside MariaDB, until unlock is called (or the test ends).
func lockItems(t *testing.T, root *sql.DB) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := root.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.ExecContext(ctx, "LOCK TABLES items WRITE"); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := conn.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
			t.Error(err)
		}
	}
}

// waitLog reads log lines until one contains s.
func waitLog(t *testing.T, lines <-chan string, s string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("sidecache exited before logging %q", s)
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			t.Fatalf("no log line with %q", s)
		}
	}
}
