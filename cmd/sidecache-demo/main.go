// Command sidecache-demo runs the fault-injection demos behind `sidecache demo`. It is a binary
// of its own so that the sidecar does not carry the charting library and the in-process Kafka
// the demos need: together they added about 8 MiB to every sidecar's resident memory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sidecache/sidecache/internal/cli"
	"github.com/sidecache/sidecache/internal/demo"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { cli.Main("sidecache demo", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "sidecache-demo", "the `directory` the reports go to")
	bin := fs.String("sidecache", "", "the sidecache `binary` the demos' sidecars run (default: the one next to this program)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sidecache demo NAME [--out DIR]\nNAME: all, %s\n", strings.Join(demo.Names(), ", "))
		fs.PrintDefaults()
	}
	// NAME may come before or after the flags.
	parse := func(args []string) error {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return fmt.Errorf("%w: %v", cli.ErrUsage, err)
		}
		return nil
	}
	if err := parse(args); err != nil {
		return err
	}
	var names []string
	for fs.NArg() > 0 {
		names = append(names, fs.Arg(0))
		if err := parse(fs.Args()[1:]); err != nil {
			return err
		}
	}
	if len(names) != 1 {
		fs.Usage()
		return fmt.Errorf("%w: demo takes one NAME: all, %s", cli.ErrUsage, strings.Join(demo.Names(), ", "))
	}
	demos := demo.All
	if names[0] != "all" {
		d := demo.Find(names[0])
		if d == nil {
			return fmt.Errorf("%w: no demo %q; there are: all, %s", cli.ErrUsage, names[0], strings.Join(demo.Names(), ", "))
		}
		demos = []*demo.Demo{d}
	}
	if *bin == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		*bin = filepath.Join(filepath.Dir(self), "sidecache")
	}
	if _, err := os.Stat(*bin); err != nil {
		return fmt.Errorf("the sidecache binary the demos run: %w (--sidecache names it)", err)
	}
	reports, err := demo.Run(ctx, demo.Options{Demos: demos, OutDir: *out, Bin: *bin, Version: version, Live: stderr})
	for _, r := range reports {
		fmt.Fprintln(stdout, r.Path)
	}
	return err
}
