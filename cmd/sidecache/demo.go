package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sidecache/sidecache/internal/demo"
)

// runDemo is `sidecache demo NAME [--out DIR]`: a fault-injection demo on servers of its own.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "sidecache-demo", "the `directory` the reports go to")
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
			return fmt.Errorf("%w: %v", errUsage, err)
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
		return fmt.Errorf("%w: demo takes one NAME: all, %s", errUsage, strings.Join(demo.Names(), ", "))
	}
	demos := demo.All
	if names[0] != "all" {
		d := demo.Find(names[0])
		if d == nil {
			return fmt.Errorf("%w: no demo %q; there are: all, %s", errUsage, names[0], strings.Join(demo.Names(), ", "))
		}
		demos = []*demo.Demo{d}
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	reports, err := demo.Run(ctx, demo.Options{Demos: demos, OutDir: *out, Bin: bin, Version: version, Live: stderr})
	for _, r := range reports {
		fmt.Fprintln(stdout, r.Path)
	}
	return err
}
