package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
)

// cluster is several `sidecache serve` processes on one database and one Redis.
type cluster struct {
	t     *testing.T
	db    string
	root  *sql.DB
	rc    redis.UniversalClient
	addrs []string
	procs []*exec.Cmd
}

// startCluster starts n serve processes with the lease on or off.
func startCluster(t *testing.T, db string, n int, lease bool, leaseTTL time.Duration) *cluster {
	return startClusterOn(t, stack, db, 10, n, lease, leaseTTL)
}

// startClusterOn is startCluster on stack s (its Redis may be a Redis Cluster), with rows items.
func startClusterOn(t *testing.T, s *devstack.Stack, db string, rows, n int, lease bool, leaseTTL time.Duration) *cluster {
	t.Helper()
	c := &cluster{t: t, db: db}
	d := devstack.NewDatabase(t, s, db, fmt.Sprintf(`CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(20));
		INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_%d`, rows))
	dsn := d.DSN
	c.root = d.Root
	c.rc = s.UniversalClient(t)
	for range n {
		p := startServe(t, fmt.Sprintf(`listen: %%s
log: {format: text}
limits: {request_timeout: 20s}
mysql: {dsn: %q, query_timeout: 15s, max_open_conns: 4}
redis: {addrs: %s, key_prefix: %q}
lease: {enabled: %t, ttl: %q, wait: 15s}
entities:
  - name: items
`, dsn, addrsYAML(s), db+":", lease, leaseTTL.String()))
		c.addrs = append(c.addrs, p.addr)
		c.procs = append(c.procs, p.cmd)
	}
	return c
}

// queries counts the SELECTs for id that MariaDB executed, from its general log.
func (c *cluster) queries(id int) int {
	c.t.Helper()
	var n int
	err := c.root.QueryRow("SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Execute' AND argument LIKE ?"+
		" AND argument NOT LIKE '%general_log%'", fmt.Sprintf("%%FROM `%s`.`items` WHERE `id` = %d", c.db, id)).Scan(&n)
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

var inFlightLine = regexp.MustCompile(`(?m)^sidecache_requests_in_flight (\S+)$`)

// inFlight sums the requests being answered across the processes.
func (c *cluster) inFlight() int {
	total := 0
	for _, a := range c.addrs {
		res, err := http.Get("http://" + a + "/metrics")
		if err != nil {
			c.t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if m := inFlightLine.FindSubmatch(b); m != nil {
			n, _ := strconv.ParseFloat(string(m[1]), 64)
			total += int(n)
		}
	}
	return total
}

type reply struct {
	status  int
	body    string
	latency time.Duration
}

// storm sends n concurrent requests for id, spread over the processes, and returns once all
// are sent (replies arrive on the channel).
func (c *cluster) storm(client *http.Client, n, id int) <-chan reply {
	out := make(chan reply, n)
	var ready sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		ready.Add(1)
		go func() {
			url := fmt.Sprintf("http://%s/v1/items/%d", c.addrs[i%len(c.addrs)], id)
			ready.Done()
			<-start
			t0 := time.Now()
			res, err := client.Get(url)
			if err != nil {
				out <- reply{status: -1, body: err.Error()}
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			out <- reply{res.StatusCode, string(b), time.Since(t0)}
		}()
	}
	ready.Wait()
	close(start)
	return out
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// TestBreakdownAcrossProcesses: hundreds of concurrent requests for one key that has just
// expired, spread over three sidecar processes, make exactly one SELECT with the cluster-wide
// lease. The same run without the lease makes one per process.
func TestBreakdownAcrossProcesses(t *testing.T) {
	const requests, procs, id = 300, 3, 7
	want := fmt.Sprintf(`{"id":%d,"name":"item %d"}`, id, id)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: requests, MaxConnsPerHost: requests}}
	for _, tc := range []struct {
		name  string
		lease bool
	}{{"lease on", true}, {"lease off", false}} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, fmt.Sprintf("cmd_breakdown_%t", tc.lease), procs, tc.lease, 3*time.Second)
			key := fmt.Sprintf("%s:{items:%d}", c.db, id)
			ctx := context.Background()

			// Deterministic: the key expires, every request is inside a sidecar while the row is
			// locked, then the lock goes.
			unlock := lockItems(t, c.root)
			c.rc.Del(ctx, key)
			replies := c.storm(client, requests, id)
			devstack.EventuallyState(t, 30*time.Second, func() (bool, string) {
				n := c.inFlight()
				return n >= requests, fmt.Sprintf("only %d of %d requests reached the sidecars", n, requests)
			})
			unlock()
			for range requests {
				if r := <-replies; r.status != 200 || r.body != want {
					t.Fatalf("a request got %d %s, want 200 %s", r.status, r.body, want)
				}
			}
			locked := c.queries(id)

			// Natural timing: the key expires and the storm arrives as fast as it can, on
			// connections opened by a storm of hits first, so latency is the sidecars' own.
			warm := c.storm(client, requests, id)
			for range requests {
				<-warm
			}
			c.rc.Del(ctx, key)
			before := c.queries(id)
			replies = c.storm(client, requests, id)
			var lat []time.Duration
			for range requests {
				r := <-replies
				if r.status != 200 || r.body != want {
					t.Fatalf("a request got %d %s, want 200 %s", r.status, r.body, want)
				}
				lat = append(lat, r.latency)
			}
			natural := c.queries(id) - before
			msg := fmt.Sprintf("breakdown, %d processes, %d concurrent requests for one expired key, lease %t: "+
				"SELECTs %d with every request waiting on the load, %d with natural timing (latency p50 %v, p99 %v)",
				procs, requests, tc.lease, locked, natural, percentile(lat, 0.5).Round(10*time.Microsecond), percentile(lat, 0.99).Round(10*time.Microsecond))
			t.Log(msg)
			fmt.Println(msg)
			if tc.lease && (locked != 1 || natural != 1) {
				t.Errorf("with the lease: %d and %d SELECTs, want exactly 1 each", locked, natural)
			}
			if !tc.lease && locked != procs {
				t.Errorf("without the lease: %d SELECTs while all waited, want one per process (%d)", locked, procs)
			}
		})
	}
}

// TestKilledHolderFreesKeyWithinLeasePeriod: a sidecar killed with SIGKILL while it holds a
// key's lease stops blocking that key within one lease period.
func TestKilledHolderFreesKeyWithinLeasePeriod(t *testing.T) {
	const leaseTTL = time.Second
	c := startCluster(t, "cmd_killed_holder", 2, true, leaseTTL)
	ctx := context.Background()
	key := c.db + ":{items:3}"
	unlock := lockItems(t, c.root)
	go http.Get("http://" + c.addrs[0] + "/v1/items/3") // holds the lease, its load blocked
	devstack.Eventually(t, 10*time.Second, "the first sidecar never took the lease", func() bool {
		return c.rc.Exists(ctx, key+":lease").Val() != 0
	})
	// Let the holder renew at least once, so what lapses is a renewed lease.
	renewedBy := time.Now().Add(leaseTTL)
	for time.Now().Before(renewedBy) && c.rc.PTTL(ctx, key+":lease").Val() < leaseTTL-100*time.Millisecond {
		time.Sleep(5 * time.Millisecond)
	}
	killed := time.Now()
	c.procs[0].Process.Signal(syscall.SIGKILL)
	for c.rc.Exists(ctx, key+":lease").Val() != 0 {
		if time.Since(killed) > 3*leaseTTL {
			t.Fatalf("the dead holder's lease still blocks the key after %v", time.Since(killed))
		}
		time.Sleep(5 * time.Millisecond)
	}
	freed := time.Since(killed)
	t.Logf("lease freed %v after the holder was killed (lease period %v)", freed, leaseTTL)
	if freed > leaseTTL+100*time.Millisecond {
		t.Errorf("freed after %v, want within the lease period %v", freed, leaseTTL)
	}
	unlock()
	res, err := http.Get("http://" + c.addrs[1] + "/v1/items/3")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(b), `"item 3"`) || res.Header.Get("X-Cache") != "miss" {
		t.Fatalf("the surviving sidecar answered %d %s %s", res.StatusCode, res.Header.Get("X-Cache"), b)
	}
}
