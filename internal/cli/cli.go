// Package cli is what sidecache's programs share as commands: how a command's error becomes
// the process's exit.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// ErrUsage marks a command line that could not be understood; the process exits 2.
var ErrUsage = errors.New("usage")

// Main runs run with the process's arguments, under a context that SIGINT and SIGTERM cancel,
// and exits: 0 when it returns nil, 2 for ErrUsage, 1 for any other error, which is printed
// after name (flag.ErrHelp is not: the flag set has printed the help).
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	code := 1
	if errors.Is(err, ErrUsage) {
		code = 2
	}
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, name+":", err)
	}
	os.Exit(code)
}
