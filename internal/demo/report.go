package demo

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// metric is one row of charts: the same figure for the run without the protection and with it.
type metric struct {
	title, unit string
	values      func(Series) []float64
}

var metrics = []metric{
	{"MySQL SELECTs per second (MySQL's Com_select)", "SELECT/s", func(s Series) []float64 { return s.QueriesPerSec }},
	{"Hit ratio", "% of requests", func(s Series) []float64 { return s.HitPct }},
	{"Latency p50", "ms", func(s Series) []float64 { return s.P50ms }},
	{"Latency p99", "ms", func(s Series) []float64 { return s.P99ms }},
	{"Errors per second", "errors/s", func(s Series) []float64 { return s.ErrorsPerSec }},
	{"Stale reads per second", "stale/s", func(s Series) []float64 { return s.StalePerSec }},
}

// chart draws one series as an SVG line chart, with the y axis from 0 to top so that the two
// charts of a row share their scale, and returns it as a data: URL, so the report needs no
// other file and opens offline.
func chart(title, unit string, xs, ys []float64, top float64, c color.Color) (template.URL, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = unit
	p.Y.Min, p.Y.Max = 0, top
	if n := len(xs); n > 0 {
		p.X.Min, p.X.Max = 0, xs[n-1]+xs[0]/2 // room for the last tick's label
	}
	p.Add(plotter.NewGrid())
	pts := make(plotter.XYs, len(xs))
	for i := range xs {
		pts[i].X, pts[i].Y = xs[i], ys[i]
	}
	line, err := plotter.NewLine(pts)
	if err != nil {
		return "", err
	}
	line.Color = c
	line.Width = vg.Points(1.5)
	p.Add(line)
	w, err := p.WriterTo(5*vg.Inch, 2.4*vg.Inch, "svg")
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if _, err := w.WriteTo(&b); err != nil {
		return "", err
	}
	return template.URL("data:image/svg+xml;base64," + base64.StdEncoding.EncodeToString(b.Bytes())), nil
}

type chartRow struct {
	Title  string
	Charts []template.URL // one per variant
}

type summaryRow struct {
	Name  string
	Cells []string // one per variant
}

type column struct {
	Short, Label string
	Color        string
}

type page struct {
	Title, Explain     string
	Columns            []column
	Rows               []chartRow
	Summary            []summaryRow
	Generated, Version string
}

// palette colours the variants in order: the unprotected run red, the protected green, and
// the write orders of the stale-data demo from worst to best.
var palette = []color.RGBA{
	{R: 0xc0, G: 0x39, B: 0x2b, A: 0xff},
	{R: 0x1e, G: 0x7b, B: 0x4a, A: 0xff},
	{R: 0x29, G: 0x6f, B: 0xb8, A: 0xff},
	{R: 0x8e, G: 0x44, B: 0xad, A: 0xff},
}

// colorOf is variant v's colour of n: the first red, the last green, those between blue and
// purple.
func colorOf(v, n int) color.RGBA {
	switch {
	case v == 0:
		return palette[0]
	case v == n-1:
		return palette[1]
	}
	return palette[2+(v-1)%2]
}

// writeReport writes the demo's self-contained HTML report.
func writeReport(w io.Writer, d *Demo, runs []Series, generated, version string) error {
	pg := page{Title: d.Title, Explain: d.Explain, Generated: generated, Version: version}
	for v, vr := range d.Variants {
		c := colorOf(v, len(d.Variants))
		pg.Columns = append(pg.Columns, column{Short: vr.Short, Label: vr.Label, Color: fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B)})
	}
	for _, m := range metrics {
		top := 1.0
		for _, s := range runs {
			if vs := m.values(s); len(vs) > 0 {
				top = max(top, slices.Max(vs))
			}
		}
		row := chartRow{Title: m.title}
		for v, s := range runs {
			u, err := chart(d.Variants[v].Short, m.unit, s.Seconds, m.values(s), top*1.1, colorOf(v, len(runs)))
			if err != nil {
				return err
			}
			row.Charts = append(row.Charts, u)
		}
		pg.Rows = append(pg.Rows, row)
	}
	pg.Summary = summarize(runs)
	return reportTemplate.Execute(w, pg)
}

// summarize is the table above the charts: each run's totals side by side.
func summarize(runs []Series) []summaryRow {
	row := func(name string, f func(Series) string) summaryRow {
		r := summaryRow{Name: name}
		for _, s := range runs {
			r.Cells = append(r.Cells, f(s))
		}
		return r
	}
	rows := []summaryRow{
		row("requests", func(s Series) string { return fmt.Sprintf("%d", s.Requests) }),
		row("MySQL SELECTs (Com_select)", func(s Series) string { return fmt.Sprintf("%.0f", s.Queries) }),
		row("hit ratio", func(s Series) string { return fmt.Sprintf("%.1f%%", pct(s.Hits, s.Requests)) }),
		row("latency p50 / p99", func(s Series) string { return fmt.Sprintf("%.2f / %.2f ms", ms(s.P50), ms(s.P99)) }),
		row("errors", func(s Series) string { return fmt.Sprintf("%d", s.Errors) }),
		row("stale reads", func(s Series) string { return fmt.Sprintf("%d", s.Stale) }),
	}
	var names []string
	for _, s := range runs {
		for _, e := range s.Extras {
			if !slices.Contains(names, e.Name) {
				names = append(names, e.Name)
			}
		}
	}
	for _, n := range names {
		rows = append(rows, row(n, func(s Series) string { return cmp.Or(s.Extra(n), "—") }))
	}
	return rows
}

var reportTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sidecache demo: {{.Title}}</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
p.explain { font-size: 1.05em; line-height: 1.5; }
table.summary { border-collapse: collapse; margin: 1em 0 2em; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
.row { display: flex; flex-wrap: wrap; gap: 1em; margin-bottom: 1em; }
.row figure { margin: 0; flex: 1 1 45%; }
.row img { width: 100%; border: 1px solid #eee; }
h2 { font-size: 1.1em; margin: 1.5em 0 0.5em; }
footer { color: #777; font-size: 0.85em; margin-top: 2em; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p class="explain">{{.Explain}}</p>
<table class="summary">
<tr><th></th>{{range .Columns}}<th style="color: {{.Color}}">{{.Short}}: {{.Label}}</th>{{end}}</tr>
{{range .Summary}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{range .Rows}}<h2>{{.Title}}</h2>
<div class="row">
{{range .Charts}}<figure><img class="chart" alt="{{$.Title}}" src="{{.}}"></figure>
{{end}}</div>
{{end}}<footer>sidecache {{.Version}}, {{.Generated}}. Each run starts its own MariaDB and Redis; MySQL's
figures are its own Com_select counter, polled every bucket.</footer>
</body>
</html>
`))
