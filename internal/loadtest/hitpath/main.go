// Command hitpath measures sidecache's hit path against a bare net/http handler that does one
// go-redis GET of the same key and writes the same bytes, in the same run, on the same machine.
// Both servers run as their own processes against one Redis; wrk drives them in alternating
// rounds, and the ratio of their throughputs is printed. `make bench-hit` runs it.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sidecache/sidecache/internal/devstack"
	"github.com/sidecache/sidecache/internal/loadtest/result"
)

func main() {
	bare := flag.Bool("bare", false, "run the bare handler (internal)")
	redisAddr := flag.String("redis", "", "Redis address for -bare")
	listen := flag.String("listen", "", "listen address for -bare")
	bin := flag.String("bin", "bin/sidecache", "the sidecache binary")
	keys := flag.Int("keys", 1000, "distinct ids read (all cached)")
	duration := flag.Duration("duration", 5*time.Second, "length of one wrk run")
	rounds := flag.Int("rounds", 6, "alternating rounds per server; the median ratio is the figure")
	conns := flag.Int("conns", 50, "wrk connections")
	threads := flag.Int("threads", 1, "wrk threads")
	calibrate := flag.Bool("calibrate", false, "measure a second bare handler in sidecache's place: the noise floor of the ratio")
	near := flag.Bool("near", false, "turn sidecache's near cache on (near_cache.enabled)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of sidecache during its first timed round to this file")
	heapProfile := flag.String("heapprofile", "", "write a heap profile of sidecache after the timed rounds to this file")
	flag.Parse()
	var err error
	if *bare {
		err = serveBare(*redisAddr, *listen)
	} else {
		err = run(*bin, *keys, *duration, *rounds, *conns, *threads, *calibrate, *near, *cpuProfile, *heapProfile)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hitpath:", err)
		os.Exit(1)
	}
}

const prefix = "bench:"

// serveBare is the baseline: one go-redis GET per request, the cached row written as it is.
func serveBare(redisAddr, listen string) error {
	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/items/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, err := rc.Get(r.Context(), prefix+"{items:"+r.PathValue("id")+"}").Bytes()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(v[10:]) // past sidecache's envelope header, so both send the same body
	})
	return http.ListenAndServe(listen, mux)
}

func run(bin string, keys int, duration time.Duration, rounds, conns, threads int, calibrate, near bool, cpuProfile, heapProfile string) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return errors.New("wrk is not installed (make deps-bench installs it)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stack, dsn, err := devstack.StartSample(ctx, devstack.Options{}, "bench", keys, 1)
	if err != nil {
		return err
	}
	defer stack.Stop()

	scAddr, bareAddr := freeAddr(), freeAddr()
	cfg := filepath.Join(stack.Dir, "bench.yaml")
	doc := fmt.Sprintf("listen: %q\nlog:\n  level: warn\nmysql:\n  dsn: %q\nredis:\n  addrs: [%q]\n  key_prefix: %q\nentities:\n  - name: items\n    ttl: 1h\n",
		scAddr, dsn, stack.RedisAddr, prefix)
	if near {
		doc += "near_cache:\n  enabled: true\n"
	}
	pprofAddr := ""
	if cpuProfile != "" || heapProfile != "" {
		pprofAddr = freeAddr()
		doc += fmt.Sprintf("pprof_listen: %q\n", pprofAddr)
	}
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		return err
	}
	sc, err := startProc(bin, "serve", "--config", cfg)
	if err != nil {
		return err
	}
	defer sc.stop()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// measured is what stands in the "sidecache" column: sidecache, or under -calibrate a
	// second bare handler, to show how far the ratio moves when nothing differs.
	measured, measuredName := scAddr, "sidecache"
	if calibrate {
		measured, measuredName = freeAddr(), "bare-2"
		bare2, err := startProc(self, "-bare", "-redis", stack.RedisAddr, "-listen", measured)
		if err != nil {
			return err
		}
		defer bare2.stop()
	}
	bare, err := startProc(self, "-bare", "-redis", stack.RedisAddr, "-listen", bareAddr)
	if err != nil {
		return err
	}
	defer bare.stop()
	for _, addr := range []string{scAddr, bareAddr, measured} {
		if err := waitHTTP(addr); err != nil {
			return err
		}
	}
	idleRSS, err := memKiB(sc.cmd.Process.Pid, "VmRSS")
	if err != nil {
		return err
	}

	// Warm: every id is loaded once through sidecache, so every later read is a hit.
	for id := 1; id <= keys; id++ {
		res, err := http.Get(fmt.Sprintf("http://%s/v1/items/%d", scAddr, id))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("warming id %d: %s", id, res.Status)
		}
	}
	script := filepath.Join(stack.Dir, "ids.lua")
	lua := fmt.Sprintf("math.randomseed(42)\nrequest = function()\n  return wrk.format(\"GET\", \"/v1/items/\" .. math.random(1, %d))\nend\n", keys)
	if err := os.WriteFile(script, []byte(lua), 0o600); err != nil {
		return err
	}
	// One untimed round each, so neither server is measured cold (connection pools, GC pacing).
	for _, addr := range []string{measured, bareAddr} {
		if _, err := runWrk(ctx, addr, script, 2*time.Second, conns, threads); err != nil {
			return err
		}
	}
	hitsBefore, err := metric(scAddr, hitLine)
	if err != nil {
		return err
	}
	nearBefore, err := metric(scAddr, nearLine)
	if err != nil {
		return err
	}

	nearNote := ""
	if near {
		nearNote = ", near cache on"
	}
	fmt.Printf("hit path: sidecache%s vs a bare net/http handler doing one go-redis GET\n", nearNote)
	fmt.Printf("wrk -t%d -c%d -d%s --latency, %d cached ids, %d alternating rounds, GOMAXPROCS %s, %d CPUs\n\n",
		threads, conns, duration, keys, rounds, orDefault(os.Getenv("GOMAXPROCS"), "default"), numCPU())
	fmt.Printf("%-6s %-10s %12s %10s %10s %10s\n", "round", "server", "req/s", "p50", "p99", "non-2xx")
	// cpuPerReq is sidecache's CPU time per request answered in each of its rounds, in µs: unlike
	// the rates, it hardly moves when other work on the machine takes the CPUs.
	var scRates, bareRates, ratios, cpuPerReq []float64
	for r := 1; r <= rounds; r++ {
		// Alternate which server goes first, so drift in the machine's state favours neither.
		targets := []struct{ name, addr string }{{measuredName, measured}, {"bare", bareAddr}}
		if r%2 == 0 {
			targets[0], targets[1] = targets[1], targets[0]
		}
		var pair [2]wrkResult
		for _, target := range targets {
			i := 0
			if target.name == "bare" {
				i = 1
			}
			profiled := make(chan error, 1)
			if r == 1 && target.addr == scAddr && cpuProfile != "" {
				url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, int((duration - time.Second).Seconds()))
				go func() { profiled <- profile(url, cpuProfile) }()
			} else {
				profiled <- nil
			}
			cpu0, err := cpuSeconds(sc.cmd.Process.Pid)
			if err != nil {
				return err
			}
			res, err := runWrk(ctx, target.addr, script, duration, conns, threads)
			if err != nil {
				return err
			}
			cpu1, err := cpuSeconds(sc.cmd.Process.Pid)
			if err != nil {
				return err
			}
			if target.addr == scAddr && res.requests > 0 {
				cpuPerReq = append(cpuPerReq, (cpu1-cpu0)/float64(res.requests)*1e6)
			}
			if err := <-profiled; err != nil {
				return err
			}
			pair[i] = res
			fmt.Printf("%-6d %-10s %12.0f %10s %10s %10d\n", r, target.name, res.rate, res.p50, res.p99, res.errors)
		}
		scRates, bareRates = append(scRates, pair[0].rate), append(bareRates, pair[1].rate)
		ratios = append(ratios, pair[0].rate/pair[1].rate)
	}
	hitsAfter, err := metric(scAddr, hitLine)
	if err != nil {
		return err
	}
	nearAfter, err := metric(scAddr, nearLine)
	if err != nil {
		return err
	}
	loadRSS, err := memKiB(sc.cmd.Process.Pid, "VmRSS")
	if err != nil {
		return err
	}
	peakRSS, err := memKiB(sc.cmd.Process.Pid, "VmHWM")
	if err != nil {
		return err
	}
	if heapProfile != "" {
		// Once the RSS is read, since the collection it asks for could lower it; after that
		// collection, what is in use is what the load left live.
		if err := profile(fmt.Sprintf("http://%s/debug/pprof/heap?gc=1", pprofAddr), heapProfile); err != nil {
			return err
		}
	}
	var total float64
	for _, r := range scRates {
		total += r * duration.Seconds()
	}
	fmt.Printf("\nmedian req/s: %s %.0f, bare %.0f\n", measuredName, result.Median(scRates), result.Median(bareRates))
	target := "0.95"
	if near {
		target = "2.0"
	}
	fmt.Printf("ratio %s/bare per round: %s; median %.3f (target >= %s)\n", measuredName, fmtRatios(ratios), result.Median(ratios), target)
	if len(cpuPerReq) > 0 {
		fmt.Printf("sidecache CPU per request (user+system) per round: %s µs; median %.1f µs\n", fmtRatios(cpuPerReq), result.Median(cpuPerReq))
	}
	fmt.Printf("sidecache RSS: %.1f MiB idle (started, nothing cached), %.1f MiB after the load, %.1f MiB at its peak\n",
		float64(idleRSS)/1024, float64(loadRSS)/1024, float64(peakRSS)/1024)
	if !calibrate {
		fmt.Printf("sidecache answered %.0f of about %.0f timed requests as X-Cache hits, %.0f of them from the near cache\n",
			hitsAfter-hitsBefore, total, nearAfter-nearBefore)
	}
	return printFigures(os.Stdout, measuredName, near, scRates, bareRates, cpuPerReq, idleRSS, peakRSS)
}

// printFigures writes the run's figures as RESULT lines (package result), for `make bench`:
// the measured server's rate per round anchored on the bare handler's rate in the same round,
// and sidecache's resident memory.
func printFigures(w io.Writer, measuredName string, near bool, rates, bareRates, cpuPerReq []float64, idleKiB, peakKiB int64) error {
	name, goal, suffix := "hit path req/s", "ratio >= 0.95", ""
	if near {
		name, goal, suffix = name+", near cache", "ratio >= 2.0", " near cache"
	}
	if measuredName != "sidecache" {
		name += " (" + measuredName + ", calibration)"
	}
	figs := []result.Figure{
		{Name: name, Unit: "req/s", Values: rates, Anchor: "bare net/http + go-redis GET", AnchorValues: bareRates, Ratio: true, Goal: goal},
		{Name: "sidecache RSS idle" + suffix, Unit: "MiB", Values: []float64{float64(idleKiB) / 1024}},
		{Name: "sidecache RSS peak under load" + suffix, Unit: "MiB", Values: []float64{float64(peakKiB) / 1024}},
	}
	if len(cpuPerReq) > 0 {
		figs = append(figs, result.Figure{Name: "sidecache CPU per hit" + suffix, Unit: "µs", Values: cpuPerReq})
	}
	for _, f := range figs {
		if err := f.Print(w); err != nil {
			return err
		}
	}
	return nil
}

// profile saves the profile that url (a pprof endpoint of sidecache's) answers to path.
func profile(url, path string) error {
	res, err := http.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, res.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// memKiB reads a memory figure (VmRSS, VmHWM) of process pid, in KiB.
func memKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpuSeconds is the CPU time process pid has used so far, user and system, from /proc.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may hold spaces: utime and
	// stime are the 14th and 15th fields of the line, the 12th and 13th after the name.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return (utime + stime) / userHZ, nil
}

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, 100 on every Linux ABI Go runs on.
const userHZ = 100

type wrkResult struct {
	rate     float64
	requests int64
	p50, p99 string
	errors   int
}

var (
	reqsPerSec = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reqsDone   = regexp.MustCompile(`(\d+) requests in `)
	pct        = regexp.MustCompile(`(?m)^\s+(50|99)%\s+(\S+)`)
	non2xx     = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	socketErrs = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func runWrk(ctx context.Context, addr, script string, d time.Duration, conns, threads int) (wrkResult, error) {
	out, err := exec.CommandContext(ctx, "wrk", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", d.String(), "--latency", "-s", script, "http://"+addr).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	m := reqsPerSec.FindSubmatch(out)
	if m == nil {
		return wrkResult{}, fmt.Errorf("wrk printed no Requests/sec:\n%s", out)
	}
	var r wrkResult
	r.rate, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := reqsDone.FindSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	for _, p := range pct.FindAllSubmatch(out, -1) {
		if string(p[1]) == "50" {
			r.p50 = string(p[2])
		} else {
			r.p99 = string(p[2])
		}
	}
	if m := non2xx.FindSubmatch(out); m != nil {
		r.errors, _ = strconv.Atoi(string(m[1]))
	}
	if m := socketErrs.FindSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(string(s))
			r.errors += n
		}
	}
	return r, nil
}

var (
	hitLine  = regexp.MustCompile(`(?m)^sidecache_requests_total\{entity="items",outcome="hit"\} (\S+)$`)
	nearLine = regexp.MustCompile(`(?m)^sidecache_near_cache_hits_total (\S+)$`)
)

// metric reads one of sidecache's counters (0 when absent), to show what the load measured.
func metric(addr string, line *regexp.Regexp) (float64, error) {
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err
	}
	m := line.FindSubmatch(b)
	if m == nil {
		return 0, nil
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

type proc struct{ cmd *exec.Cmd }

func startProc(name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &proc{cmd}, nil
}

func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
}

func waitHTTP(addr string) error {
	for range 200 {
		if res, err := http.Get("http://" + addr + "/v1/items/1"); err == nil {
			res.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not come up", addr)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func fmtRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, " ")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func numCPU() int { return runtime.NumCPU() }
