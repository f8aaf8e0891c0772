package demo

import (
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecache/sidecache/internal/devstack"
)

// require fails the test under CI and `make test`, and skips it elsewhere, when what it needs
// is missing.
func require(t *testing.T, what string, missing bool) {
	t.Helper()
	if !missing {
		return
	}
	if devstack.Required() {
		t.Fatalf("%s is not installed (make deps installs it)", what)
	}
	t.Skipf("%s is not installed (make deps installs it)", what)
}

// TestDemos runs every demo, checks the figures its protection is there to guarantee, opens
// each report in headless Chromium and checks the screenshot for every variant's chart lines.
func TestDemos(t *testing.T) {
	require(t, "MariaDB or Redis", len(devstack.Missing(false)) > 0)
	chromium, err := exec.LookPath("chromium")
	require(t, "chromium", err != nil)
	dir := t.TempDir()
	bin := filepath.Join(dir, "sidecache")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sidecache/sidecache/cmd/sidecache").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var live strings.Builder
	reports, err := Run(ctx, Options{Demos: All, OutDir: filepath.Join(dir, "out"), Bin: bin, Version: "test", Live: &live})
	t.Log(live.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) != len(All) {
		t.Fatalf("%d reports for %d demos", len(reports), len(All))
	}
	for _, r := range reports {
		t.Run(r.Demo.Name, func(t *testing.T) {
			checkFigures(t, r)
			checkScreenshot(t, chromium, r)
		})
	}
}

// checkFigures asserts what holds in every run of a correct build, whatever the timing, but
// for the bound stated at failed-deletes.
func checkFigures(t *testing.T, r Report) {
	for v, s := range r.Runs {
		if s.Requests == 0 {
			t.Errorf("%s: no request was recorded", r.Demo.Variants[v].Short)
		}
	}
	on := r.Runs[len(r.Runs)-1]
	switch r.Demo.Name {
	case "breakdown":
		// With the lease: one SELECT for the first read and one per expiry.
		n, err := strconv.Atoi(on.Extra("expiries of the hot key"))
		if err != nil {
			t.Fatal(err)
		}
		if on.Queries > float64(n+1) {
			t.Errorf("with the lease MySQL saw %.0f SELECTs for %d expiries", on.Queries, n)
		}
		if on.Stale+on.Errors > 0 {
			t.Errorf("with the lease: %d stale reads, %d errors", on.Stale, on.Errors)
		}
	case "penetration":
		// Every absent id is a SELECT without the filter; with it, about 1% get through. A
		// tenth is far beyond what a filter sized for 1% lets through over thousands of ids.
		off := r.Runs[0]
		if on.Queries > off.Queries/10 {
			t.Errorf("SELECTs with the filter %.0f, without %.0f", on.Queries, off.Queries)
		}
	case "stale":
		for v := updateThenInvalidate; v <= binlog; v++ {
			if got := r.Runs[v].Extra("stale keys left after settling"); !strings.HasPrefix(got, "0 of") {
				t.Errorf("%s: stale keys left after settling: %s", r.Demo.Variants[v].Short, got)
			}
		}
	case "failed-deletes":
		// The retries settle within the demo's 15 s unless one key's DEL fails 14 times in a
		// row (backoff 50 ms doubling to 1 s, at most +50% each): at 20% a try, 0.2¹⁴ times the
		// ~2,000 failed DELs of a run, about one run in three million.
		if got := on.Extra("stale keys left after settling"); !strings.HasPrefix(got, "0 of") {
			t.Errorf("with retries through Kafka: stale keys left after settling: %s", got)
		}
	}
}

// checkScreenshot renders the report in headless Chromium and counts the pixels of each
// variant's line colour: a chart that did not render leaves none.
func checkScreenshot(t *testing.T, chromium string, r Report) {
	png := strings.TrimSuffix(r.Path, ".html") + ".png"
	cmd := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--window-size=1200,2400", "--screenshot="+png, "file://"+r.Path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	img := decodePNG(t, png)
	for v := range r.Runs {
		c := colorOf(v, len(r.Runs))
		if n := countNear(img, c); n < 500 {
			t.Errorf("%s: %d pixels of its line colour in the screenshot: its charts did not render", r.Demo.Variants[v].Short, n)
		}
	}
}

func decodePNG(t *testing.T, path string) image.Image {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// countNear counts the pixels within a small distance of c.
func countNear(img image.Image, c color.RGBA) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r>>8, c.R) && near(g>>8, c.G) && near(bl>>8, c.B) {
				n++
			}
		}
	}
	return n
}

func near(a uint32, b uint8) bool { return a+24 >= uint32(b) && a <= uint32(b)+24 }

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"demo_stale_delete, then update": "demo_stale_delete_then_update",
		"demo_failed-deletes_on":         "demo_failed_deletes_on",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestColorsApart: every variant of a demo has a colour of its own, so that the screenshot
// check finds each one's charts and a reader tells them apart.
func TestColorsApart(t *testing.T) {
	for _, d := range All {
		seen := map[color.RGBA]int{}
		for v := range d.Variants {
			c := colorOf(v, len(d.Variants))
			if w, ok := seen[c]; ok {
				t.Errorf("%s: variants %d and %d share a colour", d.Name, w, v)
			}
			seen[c] = v
		}
	}
}
