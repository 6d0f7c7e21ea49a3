package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/agent/tmpl"
	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcdv3"
	"github.com/confsync/confsync/internal/cliconfig"
)

// defaultConfigFile is read when it exists and -config-file is not given,
// as confd does.
const defaultConfigFile = "/etc/confd/confd.toml"

// renderFlags are confd's flags for a one-shot run, shared with the agent.
type renderFlags struct {
	backendFlags
	prefix        string
	confDir       string
	configFile    string
	destRoot      string
	logLevel      string
	noop          bool
	syncOnly      bool
	keepStageFile bool
	onetime       bool
	template      string
	keys          cliconfig.Strings
}

func (r *renderFlags) register(fs *flag.FlagSet) {
	r.backendFlags.register(fs)
	fs.StringVar(&r.prefix, "prefix", "", "key prefix that replaces every resource's own prefix")
	fs.StringVar(&r.confDir, "confdir", "/etc/confd", "directory holding conf.d/ and templates/")
	fs.StringVar(&r.destRoot, "dest-root", "", "prepend this directory to every dest and create missing directories under it (try a confdir out, or compare with live files)")
	fs.StringVar(&r.configFile, "config-file", "", "confd.toml-style settings file (default "+defaultConfigFile+" when it exists)")
	fs.StringVar(&r.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&r.noop, "noop", false, "show what would change as unified diffs on stdout; change nothing, run nothing")
	fs.BoolVar(&r.syncOnly, "sync-only", false, "write files but run no check_cmd or reload_cmd")
	fs.BoolVar(&r.keepStageFile, "keep-stage-file", false, "keep stage files that did not replace their destination")
	fs.BoolVar(&r.onetime, "onetime", true, "accepted for confd compatibility; render always runs once")
	fs.StringVar(&r.template, "template", "", "render this one template file to stdout (no conf.d needed); keys from -key")
	fs.Var(&r.keys, "key", "with -template: a key to read, relative to -prefix (repeatable)")
}

// parse reads the command line, then the environment and config file for
// whatever the command line left unset.
func (r *renderFlags) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))
	}
	path := r.configFile
	if path == "" {
		path = os.Getenv("CONFSYNC_CONFIG_FILE")
	}
	if path == "" {
		if _, err := os.Stat(defaultConfigFile); err == nil {
			path = defaultConfigFile
		}
	}
	if err := layers().Apply(fs, path); err != nil {
		return err
	}
	return r.backendFlags.validate()
}

func renderFlagSet(r *renderFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	r.register(fs)
	return fs
}

// runRender is `confsync render`.
func runRender(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var r renderFlags
	fs := renderFlagSet(&r)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("render")) }
	if err := r.parse(fs, args); err != nil {
		return usageError(stderr, "render", err)
	}
	return renderOnce(ctx, &r, stdout, stderr)
}

// renderOnce renders with parsed flags; `confsync agent -onetime` uses it too.
func renderOnce(ctx context.Context, r *renderFlags, stdout, stderr io.Writer) int {
	logger, err := newLogger(stderr, r.logLevel)
	if err != nil {
		return usageError(stderr, "render", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	src, closeSrc, err := r.source(ctx, logger)
	if err != nil {
		return usageError(stderr, "render", err)
	}
	defer closeSrc()
	if c, ok := src.(*etcdv3.Client); ok {
		src = c.Consistent() // every root at one revision
	}
	if r.template != "" {
		return renderTemplate(ctx, r, src, stdout, stderr)
	}

	confdir, err := agent.LoadConfdir(agent.LoadOptions{ConfDir: r.confDir, Prefix: r.prefix, DestRoot: r.destRoot})
	if err != nil {
		return usageError(stderr, "render", err)
	}
	resources, loadErrs := confdir.List(), confdir.ErrorList()
	for _, err := range loadErrs {
		logger.Error("resource not loaded", "err", err)
	}
	if len(resources) == 0 && len(loadErrs) > 0 {
		return 2
	}
	outcomes := agent.RenderOnce(ctx, src, resources, agent.Options{
		Noop: r.noop, SyncOnly: r.syncOnly, KeepStageFile: r.keepStageFile, Diff: stdout, Logger: logger,
	})
	failed := 0
	for _, o := range outcomes {
		if o.Err != nil {
			failed++
			logger.Error("resource failed", "resource", o.Resource.Name, "step", o.Kind, "err", o.Err)
		}
	}
	logger.Info("render finished", "resources", len(outcomes), "failed", failed, "not_loaded", len(loadErrs))
	switch {
	case len(loadErrs) > 0:
		return 2
	case failed > 0:
		return 1
	}
	return 0
}

// renderTemplate is the single-template mode: one template, keys from the
// command line, output on stdout.
func renderTemplate(ctx context.Context, r *renderFlags, src backends.Source, stdout, stderr io.Writer) int {
	res, err := agent.AdHoc(r.template, r.prefix, r.keys, tmpl.Env{})
	if err != nil {
		return usageError(stderr, "render", err)
	}
	snaps, errs := agent.FetchAll(ctx, src, agent.Roots([]*agent.Resource{res}))
	for root, err := range errs {
		fmt.Fprintf(stderr, "confsync render: read %s: %v\n", root, err)
		return 1
	}
	out, err := res.Render(res.View(snaps))
	if err != nil {
		fmt.Fprintf(stderr, "confsync render: %v\n", err)
		return 1
	}
	stdout.Write(out)
	return 0
}

func usageError(stderr io.Writer, cmd string, err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "confsync %s: %v\nRun 'confsync help %s' for usage.\n", cmd, err, cmd)
	return 2
}
