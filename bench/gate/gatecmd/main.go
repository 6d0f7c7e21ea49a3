// Command gatecmd runs `confsync gate` (gate.Main) on its own, for
// compare.sh; it exists so the benchmark does not depend on how the
// confsync binary is assembled.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/confsync/confsync/gate"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(gate.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
