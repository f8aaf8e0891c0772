// Package result is how the load programs under internal/loadtest hand their figures to
// `make bench`: each prints one RESULT line per figure on standard output, and the bench
// program gathers them into one table.
package result

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Figure is one measured figure: a value per run and, where there is one, its anchor measured
// in the same runs (the bare handler's rate for a rate, the bare binlog stream's lag for a
// lag), so that a rate can be read as a ratio taken within one run.
type Figure struct {
	// Name says what was measured, e.g. "hit path req/s".
	Name string `json:"name"`
	// Unit is the unit of Values, e.g. "req/s", "ms", "MiB".
	Unit string `json:"unit"`
	// Values holds one value per run.
	Values []float64 `json:"values"`
	// Anchor names what AnchorValues measured; empty when the figure has none.
	Anchor string `json:"anchor,omitempty"`
	// AnchorValues holds the anchor's value in each run, in the order of Values.
	AnchorValues []float64 `json:"anchor_values,omitempty"`
	// Ratio says that the figure is read as Values[i]/AnchorValues[i].
	Ratio bool `json:"ratio,omitempty"`
	// Goal is the target, as text ("ratio >= 0.95", "<= 3 ms").
	Goal string `json:"goal,omitempty"`
}

const marker = "RESULT "

// Print writes f as a RESULT line.
func (f Figure) Print(w io.Writer) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s%s\n", marker, b)
	return err
}

// Scan reads the RESULT lines of r, passing every other line to echo when it is not nil.
func Scan(r io.Reader, echo func(line string)) ([]Figure, error) {
	var figs []Figure
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, marker)
		if !ok {
			if echo != nil {
				echo(line)
			}
			continue
		}
		var f Figure
		if err := json.Unmarshal([]byte(rest), &f); err != nil {
			return figs, fmt.Errorf("a RESULT line that is not a figure: %w", err)
		}
		if f.Ratio && len(f.AnchorValues) != len(f.Values) {
			return figs, fmt.Errorf("figure %q: %d values but %d anchor values", f.Name, len(f.Values), len(f.AnchorValues))
		}
		figs = append(figs, f)
	}
	return figs, sc.Err()
}

// Median is the median of xs, the figure a program reports of several runs.
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
