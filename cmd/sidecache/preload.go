package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecache/sidecache/internal/cli"
	"github.com/sidecache/sidecache/internal/config"
	"github.com/sidecache/sidecache/readthrough"
	"github.com/sidecache/sidecache/sidecar"
)

func preload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("preload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	entity := fs.String("entity", "", "entity to preload")
	idsPath := fs.String("ids", "", "file of ids to warm, one per line (default: the whole table, and the Bloom filter is rebuilt)")
	rate := fs.Float64("rate", 0, "most rows read from MySQL per second (0: no cap)")
	batch := fs.Int("batch", readthrough.DefaultBatch, "ids per scan page, query and Redis pipeline")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	if *path == "" || *entity == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: preload takes --config FILE --entity NAME [--ids FILE] [--rate N] [--batch N]", cli.ErrUsage)
	}
	if *batch < 1 || *batch > 10000 || *rate < 0 {
		return fmt.Errorf("%w: --batch must be in [1, 10000] and --rate at least 0", cli.ErrUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if cfg.Entity(*entity) == nil {
		names := make([]string, len(cfg.Entities))
		for i, e := range cfg.Entities {
			names[i] = e.Name
		}
		return fmt.Errorf("%s: no entity %q (configured: %s)", *path, *entity, strings.Join(names, ", "))
	}
	log := newLogger(cfg.Log, stderr)
	sc, err := sidecar.New(ctx, sidecar.Options{Config: cfg, Logger: log, Registry: prometheus.NewRegistry(), Version: version})
	if err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	defer sc.Close()

	opts := readthrough.PreloadOptions{Entity: *entity, Batch: *batch, Rate: *rate}
	if *idsPath != "" {
		// Read and check the whole file first: a file with a bad line changes nothing.
		if opts.IDs, err = readIDs(*idsPath, func(raw string) (string, error) { return sc.ParseID(*entity, raw) }); err != nil {
			return err
		}
	}
	opts.Progress = newProgress(stderr)
	st, err := sc.Preload(ctx, opts)
	if opts.Progress != nil {
		opts.Progress(st) // last update
		if isTerminal(stderr) {
			fmt.Fprintln(stderr)
		}
	}
	printSummary(stdout, st)
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted after %d rows; the Bloom filter was left as it was", st.Rows)
	}
	return err
}

// readIDs reads one id per line (blank lines and lines starting with # are skipped), checks
// every one with parse, and reports the bad ones by line number.
func readIDs(path string, parse func(string) (string, error)) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids, bad []string
	seen := make(map[string]bool)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, err := parse(line)
		if err != nil {
			bad = append(bad, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(bad) > 0 {
		shown := bad[:min(len(bad), 10)]
		more := ""
		if len(bad) > len(shown) {
			more = fmt.Sprintf("; and %d more", len(bad)-len(shown))
		}
		return nil, fmt.Errorf("%s: %d malformed ids, nothing was preloaded: %s%s", path, len(bad), strings.Join(shown, "; "), more)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: no ids", path)
	}
	return ids, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// newProgress draws a bar with rate and ETA on a terminal, and a plain line every few seconds
// otherwise.
func newProgress(w io.Writer) func(readthrough.PreloadStats) {
	tty := isTerminal(w)
	var last time.Time
	return func(st readthrough.PreloadStats) {
		rate := st.RowsPerSecond()
		pct, eta := "", ""
		if st.Total > 0 {
			frac := min(float64(st.Rows)/float64(st.Total), 1)
			pct = fmt.Sprintf(" %5.1f%%", 100*frac)
			if rate > 0 && st.Rows < st.Total {
				eta = " ETA " + (time.Duration(float64(st.Total-st.Rows)/rate) * time.Second).Round(time.Second).String()
			}
		}
		total := fmt.Sprintf("~%d", st.Total)
		if tty {
			width := 30
			filled := 0
			if st.Total > 0 {
				filled = min(int(float64(width)*float64(st.Rows)/float64(st.Total)), width)
			}
			fmt.Fprintf(w, "\r[%s%s]%s %d/%s rows %.0f rows/s%s   ", strings.Repeat("#", filled), strings.Repeat(" ", width-filled),
				pct, st.Rows, total, rate, eta)
			return
		}
		if time.Since(last) < 2*time.Second {
			return
		}
		last = time.Now()
		fmt.Fprintf(w, "preload %s: %d/%s rows%s, %.0f rows/s%s\n", st.Entity, st.Rows, total, pct, rate, eta)
	}
}

func printSummary(w io.Writer, st readthrough.PreloadStats) {
	fmt.Fprintf(w, "preloaded %s: %d rows in %v (%.0f rows/s): %d warmed, %d already cached, %d null markers, %.1f MiB written\n",
		st.Entity, st.Rows, st.Elapsed.Round(time.Millisecond), st.RowsPerSecond(), st.Warmed, st.AlreadyCached, st.NullMarkers,
		float64(st.Bytes)/(1<<20))
	if f := st.Filter; f != nil {
		fmt.Fprintf(w, "bloom filter %s: %d bits (%.1f KiB), %d hashes, ~%.0f items, %.1f bits/item, estimated false-positive rate %.4f\n",
			st.Entity, f.Params.M, float64(f.Params.M)/8/1024, f.Params.K, f.Items, f.BitsPerItem(), f.FPRate)
	}
}
