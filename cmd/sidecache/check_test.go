package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/keys"
	"github.com/sidecache/sidecache/readthrough"
)

// lastLine is the last line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// plantRow writes a cached row under the key prefix setup uses for db.
func plantRow(t *testing.T, db, id, row string) {
	t.Helper()
	v := readthrough.Cached{Row: []byte(row)}.Encode()
	if err := stack.Client(t).Set(context.Background(), keys.Value(db+":", "items", id), v, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
}

// checkConfig is the config setup writes for db, with a short double-delete delay and no
// binlog tail: a mismatch is looked at again after 100ms + 2s.
func checkConfig(t *testing.T, db string) string {
	path, _ := setup(t, db, "log: {level: warn}\ncdc: {double_delete_delay: 100ms}\nentities:\n  - name: items\n")
	return path
}

func TestCheckExitsNonZeroOnLastingMismatch(t *testing.T) {
	path := checkConfig(t, "cmd_check")
	plantRow(t, "cmd_check", "1", `{"id":1,"name":"one"}`)
	out, errOut, code := runBin(t, "check", "--config", path, "--all")
	if code != 0 || !strings.Contains(out, "total in ") || !strings.Contains(out, "1 checked, 0 lasting mismatches") {
		t.Fatalf("consistent cache: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	plantRow(t, "cmd_check", "2", `{"id":2,"name":"old"}`)
	start := time.Now()
	out, errOut, code = runBin(t, "check", "--config", path, "--all")
	if code != 1 || lastLine(errOut) != "sidecache: lasting mismatches between the cache and MySQL: 1" {
		t.Fatalf("stale row: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	row := regexp.MustCompile(`(?m)^\s*items\s+2\s+1\s+0\s+0\s+0\s+50% \(0 nines\)\s*$`)
	if !row.MatchString(out) || !strings.Contains(out, "lasting mismatches: items: stale 2") {
		t.Errorf("the table does not show items' one stale row of two:\n%s", out)
	}
	if d := time.Since(start); d < 2100*time.Millisecond {
		t.Errorf("the check ended after %v, before the settle window (100ms + 2s) had passed", d)
	}
}

func TestCheckErrors(t *testing.T) {
	path := checkConfig(t, "cmd_check_errors")
	dead := func(t *testing.T, field string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		doc, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s := string(doc)
		if field == "redis" {
			s = strings.Replace(s, stack.RedisAddr, addr, 1)
		} else {
			s = strings.Replace(s, stack.MySQLAddr, addr, 1)
		}
		p := filepath.Join(t.TempDir(), "dead.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		code int
		want string // in the last line of stderr
	}{
		{"no config", []string{}, 2, "check takes --config FILE"},
		{"sample and all", []string{"--config", path, "--sample", "5", "--all"}, 2, "--sample and --all exclude each other"},
		{"zero sample", []string{"--config", path, "--sample", "0"}, 2, "must be positive"},
		{"negative rate", []string{"--config", path, "--rate", "-1"}, 2, "must be positive"},
		{"metrics without every", []string{"--config", path, "--metrics-listen", "127.0.0.1:0"}, 2, "--metrics-listen goes with --every"},
		{"unknown flag", []string{"--config", path, "--bogus"}, 2, "-bogus"},
		{"argument", []string{"--config", path, "items"}, 2, "check takes --config FILE"},
		{"unknown entity", []string{"--config", path, "--entity", "nope"}, 1, `unknown entity "nope" (configured: items)`},
		{"redis down", []string{"--config", dead(t, "redis")}, 1, "cache unavailable: connect: connection refused"},
		{"mysql down", []string{"--config", dead(t, "mysql")}, 1, "mysql: cannot connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runBin(t, append([]string{"check"}, tt.args...)...)
			last := lastLine(errOut)
			if code != tt.code || !strings.HasPrefix(last, "sidecache: ") || !strings.Contains(last, tt.want) {
				t.Errorf("exit %d, last stderr line %q; want exit %d and a line with %q\nstdout:\n%s", code, last, tt.code, tt.want, out)
			}
			if tt.code == 2 && !strings.Contains(errOut, "-sample") {
				t.Errorf("no usage on stderr:\n%s", errOut)
			}
		})
	}
}

func TestCheckEveryExportsMetrics(t *testing.T) {
	path := checkConfig(t, "cmd_check_every")
	plantRow(t, "cmd_check_every", "1", `{"id":1,"name":"one"}`)
	plantRow(t, "cmd_check_every", "99", `{"id":99,"name":"gone"}`) // a ghost
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "check", "--config", path, "--every", "100ms", "--sample", "10", "--metrics-listen", addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var mu sync.Mutex
	var lines []string
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
	}()

	want := []string{
		`sidecache_check_mismatches_total{entity="items",kind="ghost"} 2`,
		`sidecache_check_checked_total{entity="items"} 4`, // row 1 and the ghost, twice over
		`sidecache_check_nines{entity="items"} 0.3010`,    // -log10(2/4)
		`sidecache_check_rounds_total{result="mismatch"} 2`,
	}
	devstack.EventuallyState(t, 20*time.Second, func() (bool, string) {
		status, body, err := hoGet("GET", "http://"+addr+"/metrics")
		if err != nil || status != 200 {
			return false, fmt.Sprintf("GET /metrics: %d %v; stderr:\n%s", status, err, stderr.String())
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false, fmt.Sprintf("no %s in /metrics:\n%s", w, body)
			}
		}
		return true, ""
	})
	cmd.Process.Signal(syscall.SIGTERM)
	<-read
	if err := cmd.Wait(); err != nil {
		t.Errorf("check --every exited with %v on SIGTERM, want 0; stderr:\n%s", err, stderr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	round := regexp.MustCompile(`^\S+ round \d+: 2 checked, 1 lasting mismatch \(0 stale, 1 ghost, 0 wrongly missing\).*; lasting mismatches: items: ghost 99$`)
	if len(lines) < 2 || !round.MatchString(lines[0]) {
		t.Errorf("want a line per round like %s, got:\n%s", round, strings.Join(lines, "\n"))
	}
}

// TestCheckUnderTheBinlogTail runs a check beside a sidecar whose binlog tail invalidates rows
// that change while the check reads them: the changes in flight must not count.
func TestCheckUnderTheBinlogTail(t *testing.T) {
	const db = "cmd_check_cdc"
	// Each item has a unique code, read through the lookup by-code; items 41-50 have none.
	root := devstack.NewDatabase(t, stack, db, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20), code VARCHAR(20), UNIQUE KEY (code));
		INSERT INTO items SELECT seq, CONCAT('item ', seq), IF(seq BETWEEN 41 AND 50, NULL, CONCAT('c', seq)) FROM seq_1_to_200;
		`+hoTickTable).Root
	rc := hoRedis(t)
	cfg := hoConfig(db, stack.RedisAddr, hoCDC(db)+"entities:\n  - name: items\n    lookups: [{name: by-code, columns: [code]}]\n")
	p, _ := hoStartLogged(t, cfg)
	hoWaitTail(t, root, rc, db)
	// The leader publishes its status, and its lag, once a second.
	status := db + ":{cdc:" + db + "}:status"
	devstack.Eventually(t, 10*time.Second, "the leader does not report itself tailing in "+status, func() bool {
		return strings.Contains(rc.Get(context.Background(), status).Val(), `"state":"tailing"`)
	})
	// Items 1-40 are written below; the codes of items 101-140, which are not, stay cached.
	codes := make(map[int]string)
	for id := 1; id <= 50; id++ {
		hoCacheRow(t, p, rc, db, "items", fmt.Sprint(id))
		if id <= 40 {
			codes[id] = fmt.Sprintf("c%d", id)
			hoCacheRow(t, p, rc, db, "items/by-code", codes[id])
			hoCacheRow(t, p, rc, db, "items/by-code", fmt.Sprintf("c%d", 100+id))
		}
	}
	path := filepath.Join(t.TempDir(), "check.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(cfg, "127.0.0.1:0")), 0o600); err != nil {
		t.Fatal(err)
	}

	// Writes to the cached rows for as long as the check runs, a fifth of them moving an
	// item's code, and reads that cache them again, by id and by code.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ctx.Err() == nil; n++ {
			id := 1 + rand.IntN(40)
			if n%5 == 0 {
				codes[id] = fmt.Sprintf("c%d-%d", id, n)
				root.Exec("UPDATE items SET code = ? WHERE id = ?", codes[id], id)
			} else {
				root.Exec("UPDATE items SET name = ? WHERE id = ?", fmt.Sprintf("v%d", n), id)
			}
			hoGet("GET", fmt.Sprintf("http://%s/v1/items/%d", p.addr, 1+rand.IntN(50)))
			hoGet("GET", fmt.Sprintf("http://%s/v1/items/by-code/%s", p.addr, codes[1+rand.IntN(40)]))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	out, errOut, code := runBin(t, "check", "--config", path, "--all")
	stop()
	wg.Wait()
	t.Logf("check under writes:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d under writes the tail invalidates, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if strings.Contains(out, "no binlog tail reported its lag") {
		t.Errorf("the check did not read the tail's lag while a tail ran:\n%s", out)
	}
	// The lookup's keys were checked: at least the 40 codes of items no write touched.
	row := regexp.MustCompile(`(?m)^\s*items/by-code\s+(\d+)\s+0\s+0\s+0\s`)
	if m := row.FindStringSubmatch(out); m == nil {
		t.Errorf("no clean items/by-code row in the table:\n%s", out)
	} else if n, _ := strconv.Atoi(m[1]); n < 40 {
		t.Errorf("items/by-code: %d checked, want at least the 40 codes no write touched:\n%s", n, out)
	}

	// A stale row under an untouched item's code: found by checking the lookup alone, and by
	// checking its entity.
	stale := readthrough.Cached{Row: []byte(`{"id":120,"name":"item 120 before","code":"c120"}`)}.Encode()
	if err := rc.Set(context.Background(), keys.Value(db+":", "items/by-code", "c120"), stale, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	for _, entity := range []string{"items/by-code", "items"} {
		out, errOut, code = runBin(t, "check", "--config", path, "--all", "--entity", entity)
		if code != 1 || !strings.Contains(out, "lasting mismatches: items/by-code: stale c120") {
			t.Errorf("--entity %s with a stale row under code c120: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", entity, code, out, errOut)
		}
	}
}
