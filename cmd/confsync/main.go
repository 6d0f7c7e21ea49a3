// Command confsync keeps a site's configuration files in step with the
// state it keeps in etcd v2: it renders confd resources (render, agent),
// replicates etcd between datacenters (mirror), and guards etcd's client
// port (gate).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand.
type command struct {
	name    string
	summary string
	// synopsis and description open `confsync help <name>`; the flags
	// section is generated from flags(), so it cannot drift.
	synopsis    string
	description string
	run         func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	flags       func() *flag.FlagSet
}

func commands() []command {
	cmds := []command{renderCommand()}
	cmds = append(cmds, extraCommands()...)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	return cmds
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func main() {
	os.Exit(runMain(os.Args[1:]))
}

// runMain runs a command with SIGTERM and SIGINT cancelling its context, as
// every command expects.
func runMain(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return run(ctx, args, os.Stdout, os.Stderr)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, overview())
		return 2
	}
	switch args[0] {
	case "-version", "--version", "version":
		fmt.Fprintf(stdout, "confsync %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "-help", "--help":
		return runHelp(args[1:], stdout, stderr)
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "confsync: unknown command %q\n\n%s", args[0], overview())
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func runHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stdout, overview())
		return 0
	}
	if _, ok := lookup(args[0]); !ok {
		fmt.Fprintf(stderr, "confsync help: unknown command %q\n\n%s", args[0], overview())
		return 2
	}
	fmt.Fprint(stdout, commandHelp(args[0]))
	return 0
}

func overview() string {
	var b strings.Builder
	b.WriteString(`confsync keeps configuration files in step with the state a site keeps in
etcd v2, replicates that state between datacenters, and guards etcd's port.

Usage:
  confsync <command> [flags] [arguments]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-8s %s\n", c.name, c.summary)
	}
	b.WriteString(`
  help     show a command's manual: confsync help <command>
  version  print the version

Every command takes -h for its flags. Exit codes: 0 success, 1 failure
(details on stderr), 2 usage or configuration error.
`)
	return b.String()
}

// commandHelp is a command's manual: synopsis, description, then every flag
// with its default, straight from the flag set.
func commandHelp(name string) string {
	c, _ := lookup(name)
	var b strings.Builder
	fmt.Fprintf(&b, "NAME\n  confsync %s - %s\n\nSYNOPSIS\n", c.name, c.summary)
	for _, line := range strings.Split(strings.TrimSpace(c.synopsis), "\n") {
		fmt.Fprintf(&b, "  %s\n", line)
	}
	fmt.Fprintf(&b, "\nDESCRIPTION\n")
	for _, line := range strings.Split(strings.TrimSpace(c.description), "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		fmt.Fprintf(&b, "  %s\n", line)
	}
	b.WriteString("\nFLAGS\n")
	fs := c.flags()
	fs.SetOutput(&b)
	fs.PrintDefaults()
	return b.String()
}
