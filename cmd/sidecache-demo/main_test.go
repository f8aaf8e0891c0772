package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sidecache/sidecache/internal/cli"
)

func TestCommandLine(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "one NAME"},
		{[]string{"breakdown", "stale"}, "one NAME"},
		{[]string{"nosuch"}, `no demo "nosuch"`},
		{[]string{"--out"}, "flag needs an argument"},
		{[]string{"breakdown", "--sidecache", "/nonexistent/sidecache"}, "--sidecache names it"},
	} {
		err := run(context.Background(), c.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error saying %q", c.args, err, c.want)
		}
		if c.want != "--sidecache names it" && !errors.Is(err, cli.ErrUsage) {
			t.Errorf("%q: %v is not a usage error (exit 2)", c.args, err)
		}
	}
}
