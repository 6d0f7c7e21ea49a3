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
