// Command devstack is what `make run` runs: it starts a throwaway MariaDB and Redis, loads the
// sample data, writes a config for it, prints requests to paste, and runs `sidecache serve` on
// it until interrupted. Then it stops everything and removes the data.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func mysqlPort(addr string) string {
	_, port, _ := strings.Cut(addr, ":")
	return port
}

func run() error {
	bin := flag.String("bin", "bin/sidecache", "the sidecache binary to run")
	listen := flag.String("listen", "127.0.0.1:8080", "address sidecache serves on")
	items := flag.Int("items", 3000, "rows in the items table")
	users := flag.Int("users", 2000, "rows in the users table")
	withReplica := flag.Bool("replica", false, "start a MariaDB replica too, and point mysql.replica_dsn at it")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "devstack: "+format+"\n", args...) }
	logf("starting MariaDB and Redis ...")
	stack, err := devstack.Start(ctx, devstack.Options{Logf: logf, Replica: *withReplica})
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping MariaDB and Redis")
		stack.Stop()
	}()

	dsn, err := stack.CreateDatabase(ctx, "app")
	if err != nil {
		return err
	}
	root, err := stack.Root("app")
	if err != nil {
		return err
	}
	start := time.Now()
	err = devstack.SeedSample(ctx, root, *items, *users)
	root.Close()
	if err != nil {
		return err
	}
	logf("loaded %d items, %d users and the countries in %v", *items, *users, time.Since(start).Round(time.Millisecond))
	replicaCfg, replicaHelp := "", ""
	if *withReplica {
		if err := stack.WaitReplica(ctx, time.Minute); err != nil {
			return err
		}
		// A minute of wait, not the default 5 s: time to type the lines below.
		replicaCfg = fmt.Sprintf("  replica_dsn: %q\n  replica_wait_timeout: 1m\n", stack.ReplicaDSN("app", "app", "app"))
		replicaHelp = fmt.Sprintf(`
Loads read the replica at %[1]s. To make it lag, stop its SQL thread, write, read, start it
(within a minute: replica_wait_timeout):

  mariadb -h 127.0.0.1 -P %[2]s -u root -e "STOP SLAVE SQL_THREAD"
  mariadb -h 127.0.0.1 -P %[3]s -u root app -e "UPDATE items SET price = 2.00 WHERE id = 42"
  curl -i %[4]s/v1/items/42                  # miss: the replica's old price is cached
  curl -s %[4]s/metrics | grep sidecache_replica_
  mariadb -h 127.0.0.1 -P %[2]s -u root -e "START SLAVE SQL_THREAD"
  curl -i %[4]s/v1/items/42                  # the second delete waited for the replica: price "2.00"
`, stack.MySQLReplicaAddr, mysqlPort(stack.MySQLReplicaAddr), mysqlPort(stack.MySQLAddr), "http://"+*listen)
	}

	cfgPath := filepath.Join(stack.Dir, "sidecache.yaml")
	cfg := fmt.Sprintf("listen: %q\nlog:\n  format: text\nmysql:\n  dsn: %q\n%sredis:\n  addrs: [%q]\n  key_prefix: \"sc:\"\n"+
		"cdc:\n  enabled: true\n  flavor: mariadb\n  dsn: %q\n%s",
		*listen, dsn, replicaCfg, stack.RedisAddr, stack.DSN("root", "", "app"), devstack.SampleEntities)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}

	base := "http://" + *listen
	fmt.Printf(`
sidecache is starting on %[1]s with MariaDB at %[2]s and Redis at %[3]s.
Config: %[4]s

Paste these in another terminal:

  curl -i %[1]s/v1/items/42                  # miss: loaded from MariaDB (X-Cache: miss)
  curl -i %[1]s/v1/items/42                  # hit: from Redis (X-Cache: hit)
  curl -i %[1]s/v1/items/999999              # 404, null marker cached (X-Cache: miss, then negative)
  curl -i '%[1]s/v1/items?id=1&id=2&id=999999'   # multi-get
  curl -i %[1]s/v1/users/7                   # a subset of columns (no email)
  curl -i %[1]s/v1/countries/JP              # a CHAR(2) key
  mariadb -h 127.0.0.1 -P %[5]s -u root app -e "UPDATE items SET price = 1.00 WHERE id = 42"
  curl -i %[1]s/v1/items/42                  # the binlog tail deleted the key: miss, price "1.00"
  curl -i -X POST %[1]s/v1/items/42/invalidate   # 204: invalidate by hand, right after a write
  curl -i %[1]s/v1/items/abc                 # 400 invalid_id
  curl -i %[1]s/v1/nope/1                    # 404 unknown_entity
  curl -s %[1]s/readyz
  curl -s %[1]s/metrics | grep '^sidecache_'

%[6]s
Ctrl-C stops sidecache, MariaDB and Redis.

`, base, stack.MySQLAddr, stack.RedisAddr, cfgPath, mysqlPort(stack.MySQLAddr), replicaHelp)

	cmd := exec.Command(*bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", *bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		err = <-done
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) && ctx.Err() == nil {
		return fmt.Errorf("sidecache exited: %s", strings.TrimSpace(exit.String()))
	}
	return nil
}
