// Command bench runs every load program and benchmark test behind `make bench`, one after
// another so that none shares the machine with another, and prints one table of their
// figures: each with its runs' min, median and max, its anchor measured in the same runs, and
// whether the median meets the goal.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sidecache/sidecache/internal/loadtest/result"
)

// step is one program whose RESULT lines become rows of the table.
type step struct {
	name string
	argv []string
	env  []string
	// times runs it again and again, for a test that cannot run twice in one process.
	times int
}

func main() {
	bin := flag.String("bin", "bin/sidecache", "the sidecache binary")
	runs := flag.Int("runs", 3, "runs of each figure (hit-path rounds are twice this)")
	only := flag.String("only", "", "run only the steps whose names contain this (hit, near, binlog, preload, settle)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, *bin, *runs, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func steps(bin string, runs int) []step {
	integration := []string{"SIDECACHE_INTEGRATION=required"}
	count := "-count=" + strconv.Itoa(runs)
	rounds := strconv.Itoa(2 * runs)
	return []step{
		{name: "hit", argv: []string{"bin/hitpath", "-bin", bin, "-rounds", rounds}},
		{name: "near", argv: []string{"bin/hitpath", "-bin", bin, "-rounds", rounds, "-near"}},
		{name: "binlog", env: integration, argv: []string{"go", "test", count, "-run", "^(TestInvalidationLag|TestCatchUpThroughput)$", "-v", "./cdc"}},
		{name: "preload", argv: []string{"bin/preloadbench", "-bin", bin, "-runs", strconv.Itoa(runs)}},
		{name: "settle", env: integration, times: runs,
			argv: []string{"go", "test", "-count=1", "-run", "^TestConsistencyWithFailingDeletes$", "-v", "./cmd/sidecache"}},
	}
}

func run(ctx context.Context, out io.Writer, bin string, runs int, only string) error {
	if runs < 1 {
		return errors.New("-runs must be at least 1")
	}
	start := time.Now()
	var figs []result.Figure
	var failed []string
	for _, s := range steps(bin, runs) {
		if !strings.Contains(s.name, only) {
			continue
		}
		for range max(s.times, 1) {
			fmt.Fprintf(out, "== %s: %s\n", s.name, strings.Join(s.argv, " "))
			got, err := runStep(ctx, out, s)
			figs = append(figs, got...)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				failed = append(failed, fmt.Sprintf("%s (%v)", s.name, err))
			}
		}
	}
	fmt.Fprintf(out, "\nsidecache bench, %d runs of each figure, %s in all\n\n", runs, time.Since(start).Round(time.Second))
	printTable(out, merge(figs))
	if len(failed) > 0 {
		return fmt.Errorf("steps failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// runStep runs s, echoing its output indented, and returns its figures.
func runStep(ctx context.Context, out io.Writer, s step) ([]result.Figure, error) {
	cmd := exec.CommandContext(ctx, s.argv[0], s.argv[1:]...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	figs, scanErr := result.Scan(stdout, func(line string) { fmt.Fprintln(out, "  "+line) })
	if err := cmd.Wait(); err != nil {
		return figs, err
	}
	if scanErr != nil {
		return figs, scanErr
	}
	if len(figs) == 0 {
		return nil, errors.New("it printed no figure")
	}
	return figs, nil
}

// merge joins the figures of one name, in the order they came: a test run with -count=N
// prints one figure per run.
func merge(figs []result.Figure) []result.Figure {
	var out []result.Figure
	at := map[string]int{}
	for _, f := range figs {
		i, ok := at[f.Name]
		if !ok {
			at[f.Name] = len(out)
			out = append(out, f)
			continue
		}
		out[i].Values = append(out[i].Values, f.Values...)
		out[i].AnchorValues = append(out[i].AnchorValues, f.AnchorValues...)
	}
	return out
}

func printTable(out io.Writer, figs []result.Figure) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tunit\truns\tmin\tmedian\tmax\tanchor (median)\tratio min / median / max\tgoal\tmet\t")
	for _, f := range figs {
		anchor, ratio := "", ""
		if len(f.AnchorValues) > 0 {
			anchor = fmt.Sprintf("%s %s", num(result.Median(f.AnchorValues)), f.Anchor)
		}
		var ratios []float64
		if f.Ratio {
			for i, v := range f.Values {
				if a := f.AnchorValues[i]; a > 0 {
					ratios = append(ratios, v/a)
				}
			}
			if len(ratios) > 0 {
				ratio = fmt.Sprintf("%.3f / %.3f / %.3f", slices.Min(ratios), result.Median(ratios), slices.Max(ratios))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Name, f.Unit, len(f.Values),
			num(slices.Min(f.Values)), num(result.Median(f.Values)), num(slices.Max(f.Values)), anchor, ratio, f.Goal, met(f, ratios))
	}
	tw.Flush()
}

// met reads the goal, "[ratio] >= N [unit]" or "[ratio] <= N [unit]", against the median of
// the values, or of the ratios when it starts with "ratio".
func met(f result.Figure, ratios []float64) string {
	fields := strings.Fields(f.Goal)
	subject := f.Values
	if len(fields) > 0 && fields[0] == "ratio" {
		subject, fields = ratios, fields[1:]
	}
	if len(fields) < 2 || len(subject) == 0 {
		return ""
	}
	want, err := strconv.ParseFloat(fields[1], 64)
	if err != nil {
		return ""
	}
	got := result.Median(subject)
	switch fields[0] {
	case ">=":
		return yesNo(got >= want)
	case "<=":
		return yesNo(got <= want)
	}
	return ""
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

// num prints v with the precision a table needs: whole numbers from 100 up.
func num(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
