package main

import "flag"

// The demo's flags exist in every build, so that `confsync help demo` and
// the docs tests see them; only -tags demo builds can run it.

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
