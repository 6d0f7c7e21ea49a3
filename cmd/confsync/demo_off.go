//go:build !demo

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
)

// The production binary has no demo: it would embed etcd servers. It says
// how to get one instead.
func demoCommand() command {
	c := demoDoc()
	c.run = func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		fmt.Fprintln(stderr, "confsync demo: this binary was built without the demo (it embeds etcd servers).\n"+
			"Run it from the source tree with:  go run -tags demo ./cmd/confsync demo")
		return 2
	}
	c.flags = func() *flag.FlagSet {
		var f demoFlags
		return demoFlagSet(&f)
	}
	return c
}
