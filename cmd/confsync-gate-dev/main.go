package main

import (
	"context"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"

	"github.com/confsync/confsync/gate"
)

func main() {
	go http.ListenAndServe("127.0.0.1:6060", nil)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(gate.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
