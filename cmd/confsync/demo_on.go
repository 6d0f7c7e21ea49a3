//go:build demo

package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/confsync/confsync/internal/demo"
)

// The demo embeds etcd servers, so only binaries built with -tags demo
// carry it: go run -tags demo ./cmd/confsync demo.

type demoFlags struct {
	out     string
	confDir string
	keys    int
	keep    bool
}

func demoFlagSet(f *demoFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.StringVar(&f.out, "out", "demo-out", "directory for the rendered files (a previous demo's is replaced)")
	fs.StringVar(&f.confDir, "confdir", "", "confdir to render (default: the example built into the binary)")
	fs.IntVar(&f.keys, "keys", 2000, "approximate number of keys in the generated conftool tree")
	fs.BoolVar(&f.keep, "keep", false, "leave everything running after the story, with every endpoint printed, until Ctrl-C")
	return fs
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f demoFlags
	fs := demoFlagSet(&f)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("demo")) }
	if err := fs.Parse(args); err != nil {
		return usageError(stderr, "demo", err)
	}
	if fs.NArg() > 0 {
		return usageError(stderr, "demo", fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	err := demo.Run(ctx, demo.Options{Out: f.out, ConfDir: f.confDir, Keys: f.keys, Keep: f.keep, Stdout: stdout})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "confsync demo: %v\n", err)
		return 1
	}
	return 0
}

func demoCommand() command {
	c := demoDoc()
	c.run = runDemo
	c.flags = func() *flag.FlagSet {
		var f demoFlags
		return demoFlagSet(&f)
	}
	return c
}
