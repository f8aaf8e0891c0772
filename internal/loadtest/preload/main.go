// Command preload measures `sidecache preload` against its anchor in the same run, on the same
// machine: a bare keyset scan of every column of the table (database/sql, the same batch size)
// with a pipelined Redis SET of each row's bytes, none of the preload's guarantees (leases,
// envelopes, the Bloom filter's rebuild). It starts its own MariaDB and Redis, seeds the sample
// items table, and in each run flushes Redis and times both, alternating which goes first.
package main

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/loadtest/result"
	"github.com/sidecache/sidecache/readthrough"
	"github.com/sidecache/sidecache/sidecar"
)

func main() {
	bin := flag.String("bin", "bin/sidecache", "the sidecache binary")
	rows := flag.Int("rows", 100_000, "rows of the sample items table")
	runs := flag.Int("runs", 3, "runs; each times one preload and one anchor scan")
	batch := flag.Int("batch", 0, "--batch given to the preload, and the anchor's batch (0: the preload's default)")
	cpuProfile := flag.String("cpuprofile", "", "after the runs, preload once more inside this process and write its CPU profile here")
	flag.Parse()
	if err := run(*bin, *rows, *runs, *batch, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "preload:", err)
		os.Exit(1)
	}
}

const prefix = "bench:"

func run(bin string, rows, runs, batch int, cpuProfile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stack, dsn, err := devstack.StartSample(ctx, devstack.Options{}, "bench", rows, 1)
	if err != nil {
		return err
	}
	defer stack.Stop()
	cfg := filepath.Join(stack.Dir, "bench.yaml")
	doc := fmt.Sprintf("log:\n  level: warn\nmysql:\n  dsn: %q\nredis:\n  addrs: [%q]\n  key_prefix: %q\n"+
		"entities:\n  - name: items\n    ttl: 1h\n    bloom: {enabled: true, expected_items: %d, fp_rate: 0.01}\n",
		dsn, stack.RedisAddr, prefix, rows)
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		return err
	}
	mysqld, err := readPID(filepath.Join(stack.Dir, "mysqld.pid"))
	if err != nil {
		return err
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	rc := redis.NewClient(&redis.Options{Addr: stack.RedisAddr})
	defer rc.Close()
	anchorBatch := batch
	if anchorBatch == 0 {
		anchorBatch = readthrough.DefaultBatch
	}
	args := []string{"preload", "--config", cfg, "--entity", "items"}
	if batch > 0 {
		args = append(args, "--batch", strconv.Itoa(batch))
	}

	fmt.Printf("preload: `sidecache %s` vs a bare keyset scan (batch %d) + pipelined SET\n", "preload --entity items", anchorBatch)
	fmt.Printf("%d rows of the 16-column sample items table, %d runs, GOMAXPROCS %s, %d CPUs, Redis %s\n\n",
		rows, runs, cmp.Or(os.Getenv("GOMAXPROCS"), "default"), runtime.NumCPU(), stack.RedisAddr)
	fmt.Printf("%-4s %-8s %8s %8s %8s %26s\n", "", "", "", "", "", "CPU seconds used by")
	fmt.Printf("%-4s %-8s %8s %8s %8s %8s %8s %8s\n", "run", "what", "rows", "seconds", "rows/s", "itself", "MariaDB", "Redis")
	var preloads, anchors []float64
	for r := 1; r <= runs; r++ {
		steps := []string{"preload", "anchor"}
		if r%2 == 0 { // alternate, so drift in the machine's state favours neither
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := rc.FlushDB(ctx).Err(); err != nil {
				return err
			}
			var n int64
			var secs, rate float64
			redis0, err := redisCPU(ctx, rc)
			if err != nil {
				return err
			}
			db0, err := procCPU(mysqld)
			if err != nil {
				return err
			}
			self0 := selfCPU()
			var ownCPU float64
			if step == "preload" {
				n, secs, rate, ownCPU, err = preloadProc(ctx, bin, args...)
				preloads = append(preloads, rate)
			} else {
				n, secs, err = anchor(ctx, db, rc, anchorBatch)
				rate = float64(n) / secs
				ownCPU = selfCPU() - self0
				anchors = append(anchors, rate)
			}
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", r, step, err)
			}
			if n != int64(rows) {
				return fmt.Errorf("run %d, %s: %d rows, want %d", r, step, n, rows)
			}
			redis1, err := redisCPU(ctx, rc)
			if err != nil {
				return err
			}
			db1, err := procCPU(mysqld)
			if err != nil {
				return err
			}
			fmt.Printf("%-4d %-8s %8d %8.3f %8.0f %8.2f %8.2f %8.2f\n", r, step, n, secs, rate, ownCPU, db1-db0, redis1-redis0)
		}
	}
	ratios := make([]float64, len(preloads))
	for i := range preloads {
		ratios[i] = preloads[i] / anchors[i]
	}
	fmt.Printf("\nmedian rows/s: preload %.0f, anchor %.0f; ratio per run %s, median %.3f\n\n",
		result.Median(preloads), result.Median(anchors), fmtFloats(ratios, "%.3f"), result.Median(ratios))
	err = result.Figure{Name: "preload rows/s", Unit: "rows/s", Values: preloads,
		Anchor: "bare keyset scan + pipelined SET", AnchorValues: anchors, Ratio: true, Goal: ">= 60000 rows/s"}.Print(os.Stdout)
	if err != nil || cpuProfile == "" {
		return err
	}
	if err := rc.FlushDB(ctx).Err(); err != nil {
		return err
	}
	return profileInProcess(ctx, cfg, batch, cpuProfile)
}

var summary = regexp.MustCompile(`preloaded items: (\d+) rows in (\S+) \(`)

// preloadProc runs the binary, passes its summary on to stderr, and returns the rows and the
// time the summary reports (the preload's own, past process start and the schema checks) and
// the CPU time the process used.
func preloadProc(ctx context.Context, bin string, args ...string) (rows int64, secs, rate, cpu float64, err error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("%s: %w\n%s", bin, err, out)
	}
	os.Stderr.Write(out) // its summary, beside its progress lines
	m := summary.FindSubmatch(out)
	if m == nil {
		return 0, 0, 0, 0, fmt.Errorf("no summary in the preload's output:\n%s", out)
	}
	rows, _ = strconv.ParseInt(string(m[1]), 10, 64)
	d, err := time.ParseDuration(string(m[2]))
	if err != nil || d <= 0 {
		return 0, 0, 0, 0, fmt.Errorf("preload summary %q: no elapsed time", m[0])
	}
	cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return rows, d.Seconds(), float64(rows) / d.Seconds(), cpu, nil
}

// anchor is the bare path: keyset pages of every column, each row's bytes SET in one pipeline
// per page, one page after the other.
func anchor(ctx context.Context, db *sql.DB, rc *redis.Client, batch int) (n int64, secs float64, err error) {
	start := time.Now()
	var after uint64
	for {
		rows, err := db.QueryContext(ctx, "SELECT * FROM items WHERE id > ? ORDER BY id LIMIT ?", after, batch)
		if err != nil {
			return n, 0, err
		}
		cols, err := rows.Columns()
		if err != nil {
			rows.Close()
			return n, 0, err
		}
		raw := make([]sql.RawBytes, len(cols))
		dest := make([]any, len(cols))
		for i := range raw {
			dest[i] = &raw[i]
		}
		pipe := rc.Pipeline()
		got := 0
		for rows.Next() {
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return n, 0, err
			}
			var val []byte
			for _, c := range raw {
				val = append(val, c...)
			}
			id := string(raw[0])
			if after, err = strconv.ParseUint(id, 10, 64); err != nil {
				rows.Close()
				return n, 0, err
			}
			pipe.Set(ctx, "anchor:{items:"+id+"}", val, time.Hour)
			got++
		}
		if err := rows.Close(); err != nil {
			return n, 0, err
		}
		if got == 0 {
			return n, time.Since(start).Seconds(), nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return n, 0, err
		}
		n += int64(got)
	}
}

// profileInProcess runs the same preload as the binary, through the sidecar package, inside this
// process under the CPU profiler.
func profileInProcess(ctx context.Context, cfgPath string, batch int, path string) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	sc, err := sidecar.New(ctx, sidecar.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), Version: "bench"})
	if err != nil {
		return err
	}
	defer sc.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	st, err := sc.Preload(ctx, readthrough.PreloadOptions{Entity: "items", Batch: batch})
	pprof.StopCPUProfile()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if st.Warmed == 0 {
		return errors.New("the profiled preload warmed nothing")
	}
	fmt.Printf("profiled in-process preload: %d rows in %v (%.0f rows/s); CPU profile in %s\n",
		st.Rows, st.Elapsed.Round(time.Millisecond), st.RowsPerSecond(), path)
	return nil
}

var cpuLine = regexp.MustCompile(`(?m)^used_cpu_(?:sys|user):([0-9.]+)`)

// redisCPU is the CPU time Redis has used, in seconds: what a run costs Redis, whatever else
// the machine is doing (the time Redis counts per command is wall time, which a busy machine
// stretches).
func redisCPU(ctx context.Context, rc *redis.Client) (float64, error) {
	info, err := rc.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, m := range cpuLine.FindAllStringSubmatch(info, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v
	}
	return sum, nil
}

// readPID reads a server's pid file.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// procCPU is the CPU time process pid has used, in seconds (Linux, clock ticks of 1/100 s).
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / 100, nil
}

// selfCPU is the CPU time this process has used, in seconds: the anchor's.
func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func fmtFloats(xs []float64, format string) string {
	out := ""
	for i, x := range xs {
		if i > 0 {
			out += " "
		}
		out += fmt.Sprintf(format, x)
	}
	return out
}
