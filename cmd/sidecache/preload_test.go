package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

// preloadSetup makes a table of n rows and a config with a Bloom filter for it.
func preloadSetup(t *testing.T, db string, n int) (cfgPath string, rc *redis.Client) {
	t.Helper()
	dsn := devstack.NewDatabase(t, stack, db, fmt.Sprintf(`CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d`, n)).DSN
	s := stack
	cfgPath = filepath.Join(t.TempDir(), "sidecache.yaml")
	doc := fmt.Sprintf(`log: {level: error}
mysql: {dsn: %q}
redis: {addrs: [%q], key_prefix: %q}
entities:
  - name: items
    ttl: 60s
    bloom: {enabled: true, expected_items: %d, fp_rate: 0.01}
`, dsn, s.RedisAddr, db+":", n)
	if err := os.WriteFile(cfgPath, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	rc = s.Client(t)
	return cfgPath, rc
}

func runBin(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestPreloadCommand(t *testing.T) {
	cfg, rc := preloadSetup(t, "cmd_preload", 5000)
	ctx := context.Background()

	bad := filepath.Join(t.TempDir(), "ids.txt")
	os.WriteFile(bad, []byte("1\n2\n# hot ids\n\nabc\n3\n99999999999\n"), 0o600)
	_, stderr, code := runBin(t, "preload", "--config", cfg, "--entity", "items", "--ids", bad)
	if code != 1 || !strings.Contains(stderr, "line 5") || !strings.Contains(stderr, "line 7") || !strings.Contains(stderr, "nothing was preloaded") {
		t.Errorf("bad ids file: exit %d, stderr %q; want 1 naming lines 5 and 7", code, stderr)
	}
	if keys := rc.Keys(ctx, "cmd_preload:*").Val(); len(keys) != 0 {
		t.Errorf("a rejected ids file still wrote %v", keys)
	}

	if _, stderr, code = runBin(t, "preload", "--config", cfg, "--entity", "nope"); code != 1 || !strings.Contains(stderr, `no entity "nope" (configured: items)`) {
		t.Errorf("unknown entity: exit %d, stderr %q", code, stderr)
	}

	good := filepath.Join(t.TempDir(), "hot.txt")
	os.WriteFile(good, []byte("7\n8\n8\n"), 0o600)
	stdout, stderr, code := runBin(t, "preload", "--config", cfg, "--entity", "items", "--ids", good)
	if code != 0 || !strings.Contains(stdout, "preloaded items: 2 rows") || !strings.Contains(stdout, "2 warmed") {
		t.Errorf("ids preload: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	stdout, stderr, code = runBin(t, "preload", "--config", cfg, "--entity", "items")
	if code != 0 || !strings.Contains(stdout, "preloaded items: 5000 rows") || !strings.Contains(stdout, "4998 warmed, 2 already cached") ||
		!strings.Contains(stdout, "bloom filter items:") {
		t.Errorf("full preload: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if n := rc.Exists(ctx, "cmd_preload:{items:5000}").Val(); n != 1 {
		t.Error("the last row was not warmed")
	}
}

func TestPreloadInterruptLeavesFilter(t *testing.T) {
	cfg, rc := preloadSetup(t, "cmd_preload_int", 20000)
	ctx := context.Background()
	if _, stderr, code := runBin(t, "preload", "--config", cfg, "--entity", "items"); code != 0 {
		t.Fatalf("first preload: %d %s", code, stderr)
	}
	meta := "cmd_preload_int:{bloom:items}:meta"
	before := rc.HGetAll(ctx, meta).Val()

	// A slow rebuild, interrupted once it is under way.
	cmd := exec.Command(bin, "preload", "--config", cfg, "--entity", "items", "--rate", "2000", "--batch", "100")
	stderr, _ := cmd.StderrPipe()
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "preload items:") {
	}
	if rc.HGet(ctx, meta, "build").Val() == "" {
		t.Fatal("no rebuild under way while the preload ran")
	}
	cmd.Process.Signal(syscall.SIGINT)
	var rest strings.Builder
	for sc.Scan() {
		rest.WriteString(sc.Text() + "\n")
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(rest.String(), "interrupted after") {
		t.Fatalf("interrupted preload: %v, stderr %q", err, rest.String())
	}
	after := rc.HGetAll(ctx, meta).Val()
	if after["cur"] != before["cur"] || after["cur_m"] != before["cur_m"] || after["build"] != "" {
		t.Errorf("filter meta before %v, after the interrupt %v: want the same filter and no build", before, after)
	}
	if !strings.Contains(stdout.String(), "preloaded items:") {
		t.Errorf("no summary after the interrupt: %q", stdout.String())
	}
}

// TestPreloadCompositeKey preloads a table keyed by two columns, whole and from an --ids file.
func TestPreloadCompositeKey(t *testing.T) {
	const db = "cmd_preload_pairs"
	dsn := devstack.NewDatabase(t, stack, db, `CREATE TABLE pairs (a SMALLINT UNSIGNED NOT NULL, b VARCHAR(8) NOT NULL, v INT,
		PRIMARY KEY (a, b)) CHARACTER SET utf8mb4;
		INSERT INTO pairs SELECT seq % 37, CONCAT(IF(seq % 2, 'x,', '50%'), seq), seq FROM seq_1_to_3000`).DSN
	cfg := filepath.Join(t.TempDir(), "sidecache.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`log: {level: error}
mysql: {dsn: %q}
redis: {addrs: [%q], key_prefix: %q}
entities:
  - name: pairs
    key: [a, b]
    bloom: {enabled: true, expected_items: 3000, fp_rate: 0.01}
`, dsn, stack.RedisAddr, db+":")), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := stack.Client(t)
	ctx := context.Background()

	ids := filepath.Join(t.TempDir(), "ids.txt")
	os.WriteFile(ids, []byte("1,x%2C1\n002,50%252\n2,50%252\n5,nope\n"), 0o600)
	stdout, stderr, code := runBin(t, "preload", "--config", cfg, "--entity", "pairs", "--ids", ids)
	if code != 0 || !strings.Contains(stdout, "preloaded pairs: 3 rows") || !strings.Contains(stdout, "2 warmed") || !strings.Contains(stdout, "1 null markers") {
		t.Errorf("ids preload: exit %d, stdout %q, stderr %q; want 3 distinct ids, 2 rows and a null marker", code, stdout, stderr)
	}
	if rc.Exists(ctx, db+":{pairs:1,x%2C1}", db+":{pairs:2,50%252}").Val() != 2 {
		t.Error("the listed rows are not cached under their canonical ids")
	}
	bad := filepath.Join(t.TempDir(), "bad.txt")
	os.WriteFile(bad, []byte("1,x%2C1\n1\n"), 0o600)
	if _, stderr, code := runBin(t, "preload", "--config", cfg, "--entity", "pairs", "--ids", bad); code != 1 || !strings.Contains(stderr, "line 2") {
		t.Errorf("an id of one value for a key of two: exit %d, stderr %q", code, stderr)
	}

	stdout, stderr, code = runBin(t, "preload", "--config", cfg, "--entity", "pairs")
	if code != 0 || !strings.Contains(stdout, "preloaded pairs: 3000 rows") || !strings.Contains(stdout, "2998 warmed, 2 already cached") {
		t.Errorf("full preload: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// Rows whose strings hold ',' and '%', near the end of the key order.
	if rc.Exists(ctx, db+":{pairs:35,x%2C997}", db+":{pairs:36,50%25998}").Val() != 2 {
		t.Error("rows were not warmed under their canonical ids")
	}
}
