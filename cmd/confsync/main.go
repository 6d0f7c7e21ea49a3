// Command confsync keeps a site's configuration files in step with the
// state it keeps in etcd v2: it renders confd resources (render, agent),
// replicates etcd between datacenters (mirror), and guards etcd's client
// port (gate).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

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
	case "version", "-version", "--version":
		return runVersion(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		return runHelp(args[1:], stdout, stderr)
	case "completion":
		return runCompletion(args[1:], stdout, stderr)
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "confsync: unknown command %q\n\n%s", args[0], overview())
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

// builtin is a command that is about confsync itself rather than a part of
// the system; it has no docs/ page and no flags of its own worth a manual.
type builtin struct{ name, summary string }

func builtins() []builtin {
	return []builtin{
		{"help", "show a command's manual: confsync help [-man] <command>"},
		{"version", "print the release version, VCS revision and Go version"},
		{"completion", "print the bash completion script: confsync completion bash"},
	}
}

// The parts of the overview that confsync(1) shows too.
const (
	overviewIntro = `confsync keeps configuration files in step with the state a site keeps in
etcd v2, replicates that state between datacenters, and guards etcd's port.`
	overviewSummary = "keep configuration files in step with etcd v2, replicate it between datacenters, guard etcd's port"
	overviewUsage   = `confsync <command> [flags] [arguments]`
	overviewFooter  = `Every command takes -h for its flags. Exit codes: 0 success, 1 failure
(details on stderr), 2 usage or configuration error.`
)

func runHelp(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("help", flag.ContinueOnError)
	fs.SetOutput(stderr)
	man := fs.Bool("man", false, "print the manual page in troff (man(7)) instead of text: confsync help -man agent | man -l -")
	manDir := fs.String("man-dir", "", "write every manual page, confsync.1 and confsync-<command>.1, into this directory")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: confsync help [-man] [command]\n       confsync help -man-dir DIR\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *manDir != "" {
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "confsync help: -man-dir writes every page; unexpected argument %q\n", fs.Arg(0))
			return 2
		}
		if err := writeManPages(*manDir); err != nil {
			fmt.Fprintf(stderr, "confsync help: %v\n", err)
			return 1
		}
		return 0
	}
	if fs.NArg() > 1 {
		fmt.Fprintf(stderr, "confsync help: one command at a time; unexpected argument %q\n", fs.Arg(1))
		return 2
	}
	name := fs.Arg(0)
	if name == "" {
		if *man {
			fmt.Fprint(stdout, overviewManPage())
		} else {
			fmt.Fprint(stdout, overview())
		}
		return 0
	}
	c, ok := lookup(name)
	if !ok {
		fmt.Fprintf(stderr, "confsync help: unknown command %q\n\n%s", name, overview())
		return 2
	}
	if *man {
		fmt.Fprint(stdout, manPage(c))
	} else {
		fmt.Fprint(stdout, commandHelp(name))
	}
	return 0
}

func overview() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nUsage:\n  %s\n\nCommands:\n", overviewIntro, overviewUsage)
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-11s %s\n", c.name, c.summary)
	}
	b.WriteString("\n")
	for _, c := range builtins() {
		fmt.Fprintf(&b, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(&b, "\n%s\n", overviewFooter)
	return b.String()
}

// commandHelp is a command's manual: synopsis, description, then every flag
// with its default, straight from the flag set. Its manual page (man.go)
// is made from the same parts.
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
	b.WriteString(flagDefaults(c))
	return b.String()
}

// flagDefaults is the command's flag set as flag.PrintDefaults shows it.
func flagDefaults(c command) string {
	var b strings.Builder
	fs := c.flags()
	fs.SetOutput(&b)
	fs.PrintDefaults()
	return b.String()
}
