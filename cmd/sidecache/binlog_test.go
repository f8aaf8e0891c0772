package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// purgeBinlogs purges every binlog before the current one. MariaDB keeps a file until InnoDB
// has checkpointed its transactions, so the purge is repeated until the file is gone.
func purgeBinlogs(t *testing.T, root *sql.DB) {
	t.Helper()
	if _, err := root.Exec("FLUSH BINARY LOGS"); err != nil {
		t.Fatal(err)
	}
	var file string
	var pos int64
	var doDB, ignoreDB any
	if err := root.QueryRow("SHOW MASTER STATUS").Scan(&file, &pos, &doDB, &ignoreDB); err != nil {
		t.Fatal(err)
	}
	devstack.Eventually(t, 10*time.Second, "binlogs before "+file+" are still there", func() bool {
		if _, err := root.Exec("PURGE BINARY LOGS TO '" + file + "'"); err != nil {
			t.Fatal(err)
		}
		var first string
		var size int64
		if err := root.QueryRow("SHOW BINARY LOGS").Scan(&first, &size); err != nil {
			t.Fatal(err)
		}
		return first == file
	})
}

// httpGet returns a response's status and body.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// metricValue reads one sample of a metric from a sidecar ("" labels: the bare name).
func metricValue(t *testing.T, p *sidecarProc, name string) float64 {
	t.Helper()
	_, body := httpGet(t, "http://"+p.addr+"/metrics")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no metric %s", name)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// purgedRun starts a sidecar, caches a row, kills the sidecar, changes the row and purges the
// binlog that holds the change; then starts a sidecar with extra config and returns it.
func purgedRun(t *testing.T, db, extra string) (*sidecarProc, *sql.DB) {
	root := devstack.NewDatabase(t, stack, db, `CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20) NOT NULL);
		INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')`).Root
	cfg := `listen: %s
log: {format: text}
mysql: {dsn: "` + stack.DSN(db, db, db) + `"}
redis: {addrs: ["` + stack.RedisAddr + `"], key_prefix: "` + db + `:"}
cdc: {enabled: true, flavor: mariadb, server_id: SERVERID, dsn: "` + stack.DSN("root", "", db) + `", leader_ttl: 1s, double_delete_delay: 200ms` + extra + `}
entities:
  - name: items
`
	start := func() *sidecarProc {
		return startServe(t, strings.Replace(cfg, "SERVERID", fmt.Sprint(2000+serverIDs.Add(1)), 1))
	}
	p := start()
	// Cached once the checkpoint covers the entity: the second read is a hit.
	devstack.Eventually(t, 15*time.Second, "the row never got cached", func() bool {
		httpGet(t, "http://"+p.addr+"/v1/items/1")
		res, err := http.Get("http://" + p.addr + "/v1/items/1")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.Header.Get("X-Cache") == "hit"
	})
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	if _, err := root.Exec("UPDATE items SET name = 'uno' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	purgeBinlogs(t, root)
	return start(), root
}

// TestPurgedBinlogResets: the binlog the checkpoint points into is purged while no sidecar
// runs. Retrying forever would leave the row changed meanwhile stale; the default is to drop
// the entities' caches and start again at the server's position, and to say so.
func TestPurgedBinlogResets(t *testing.T) {
	p, _ := purgedRun(t, "cmd_purged", "")
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, body := httpGet(t, "http://"+p.addr+"/v1/items/1")
		if body == `{"id":1,"name":"uno"}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the row changed while the binlog was purged is still served as %s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The row may have been answered before the reset, bypassing the cache until the tail
	// covers the entity again; the reset itself must follow.
	for metricValue(t, p, "sidecache_cdc_resets_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("sidecache_cdc_resets_total is %v, want 1", metricValue(t, p, "sidecache_cdc_resets_total"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Once the reset is done, the row read through the cache is the new one.
	for {
		res, err := http.Get("http://" + p.addr + "/v1/items/1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.Header.Get("X-Cache") == "hit" {
			if string(b) != `{"id":1,"name":"uno"}` {
				t.Fatalf("after the reset the cache holds %s", b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the row was never cached again after the reset")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPurgedBinlogStallsLoudly: with on_binlog_gone: stall the tail does not reset; it says it
// is stalled in /status and the metrics, and the seconds behind grow.
func TestPurgedBinlogStallsLoudly(t *testing.T) {
	p, _ := purgedRun(t, "cmd_stalled", ", on_binlog_gone: stall")
	var st struct {
		CDC struct {
			SecondsBehind float64 `json:"seconds_behind"`
			Self          struct {
				State, Error, Remedy string
			}
		}
	}
	devstack.EventuallyState(t, 15*time.Second, func() (bool, string) {
		_, body := httpGet(t, "http://"+p.addr+"/status")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status: %v: %s", err, body)
		}
		return st.CDC.Self.State == "stalled", "the tail never reported itself stalled: " + body
	})
	if !strings.Contains(st.CDC.Self.Error, "1236") || !strings.Contains(st.CDC.Self.Remedy, "on_binlog_gone") {
		t.Errorf("stalled with error %q, remedy %q: want the purged binlog named and the remedy", st.CDC.Self.Error, st.CDC.Self.Remedy)
	}
	if v := metricValue(t, p, "sidecache_cdc_stalled"); v != 1 {
		t.Errorf("sidecache_cdc_stalled %v, want 1", v)
	}
	first := metricValue(t, p, "sidecache_cdc_seconds_behind")
	time.Sleep(1500 * time.Millisecond)
	if second := metricValue(t, p, "sidecache_cdc_seconds_behind"); !(first > 0 && second > first) {
		t.Errorf("sidecache_cdc_seconds_behind %v then %v while stalled; want above zero and growing", first, second)
	}
}
