package mirror

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/confsync/confsync/backends/etcd"
)

// Synopsis and Description are the manual of confsync mirror, shown by
// -h and by confsync help mirror.
const (
	Synopsis = `confsync mirror [flags] SRC DST             replicate, until stopped
confsync mirror verify [flags] SRC DST      compare the trees once
confsync mirror set-index [flags] SRC DST   switchover: verify, then record the source index on DST`
	Description = `Replicates one prefix of the etcd cluster SRC into the etcd cluster DST through
the v2 API, like etcdmirror (same flags, same index key, same metrics).
SRC and DST are client URLs, several per cluster separated by commas:
  https://conf1007.eqiad.wmnet:2379,https://conf1008.eqiad.wmnet:2379
Credentials may be given as https://user:password@host:port (as etcdmirror
takes them) or, kept out of the process list, with --src-user and
--src-password-file.

Where things are kept on DST:
  /__replication/<dst prefix>         last replicated source index (decimal, etcdmirror's key;
                                      /__replication/__ROOT__ when --dst-prefix is /)
  /__replication/<dst prefix>.source  source cluster ID, prefix and replay window (JSON)

A first start needs an index: run once with --reload (copies the source,
writing only keys that differ and never erasing the destination), or use
set-index when the trees already match. Replication then resumes at
index+1 after every restart. If etcd's 1000-event history no longer holds
that index, the mirror resynchronises the same way, automatically.

Exit status: 0 when stopped by SIGTERM/SIGINT (or verify found no
difference), 1 when replication must stop (the destination diverged from
the source, or resuming would copy the wrong data: the message says why and
what to do) or verify found differences, 2 for bad flags or arguments.
Unreachable clusters are retried with backoff, never a reason to exit.

HTTP (--port): /lag (plain integer), /metrics, /healthz, /status.
verify and set-index take the same flags; those about streaming (--reload,
--port, --concurrency, ...) are ignored there.
`
)

// usage is the -h text: the manual, then the flags.
func usage() string {
	return "Usage:\n  " + strings.ReplaceAll(Synopsis, "\n", "\n  ") + "\n\n" + Description + "\nFlags:\n"
}

// options are the command-line flags.
type options struct {
	debug, reload, strip    bool
	srcPrefix, dstPrefix    string
	ignore                  string
	port                    int
	listen                  string
	logFormat               string
	concurrency, readAhead  int
	pollTimeout, stallAfter time.Duration
	maxBackoff, reqTimeout  time.Duration
	oneShotTimeout          time.Duration
	src, dst                sideOptions
}

type sideOptions struct {
	ca, cert, key, user, passwordFile string
	insecure                          bool
}

// FlagSet returns the flags of `confsync mirror` (the verify and set-index
// sub-commands take the same ones).
func FlagSet() *flag.FlagSet {
	return newFlagSet(&options{}, "mirror")
}

func newFlagSet(o *options, name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.BoolVar(&o.debug, "debug", false, "log at debug level")
	fs.BoolVar(&o.debug, "d", false, "short for --debug")
	fs.BoolVar(&o.reload, "reload", false, "resynchronise the destination before replicating: compare every key, write only the differences (nothing is erased first)")
	fs.StringVar(&o.srcPrefix, "src-prefix", "/", "source `prefix` to replicate")
	fs.StringVar(&o.dstPrefix, "dst-prefix", "/replica", "destination `prefix`")
	fs.BoolVar(&o.strip, "strip", false, "drop the source prefix from keys (/src/k goes to <dst-prefix>/k, not <dst-prefix>/src/k)")
	fs.StringVar(&o.ignore, "src-ignore-keys-regex", "", "do not replicate source keys matching this RE2 `regex` in full; the index still advances past them")
	fs.IntVar(&o.port, "port", 8000, "HTTP `port` for /lag, /metrics, /healthz, /status (0 picks a free port, -1 disables)")
	fs.StringVar(&o.listen, "listen-address", "", "`address` the HTTP port binds to (default: all interfaces, as etcdmirror)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format` on stderr: text or json")
	fs.IntVar(&o.concurrency, "concurrency", 16, "destination writes in flight at once (events on related keys always apply in order)")
	fs.IntVar(&o.readAhead, "read-ahead", 32, "source polls in flight while catching up (1: one event after another); widen for a distant source")
	fs.DurationVar(&o.pollTimeout, "poll-timeout", 5*time.Second, "longest wait of one source long poll; a quiet poll records how far the source is proved quiet")
	fs.DurationVar(&o.stallAfter, "stall-timeout", 2*time.Minute, "/healthz fails after this long without progress")
	fs.DurationVar(&o.maxBackoff, "max-backoff", 10*time.Second, "longest wait between retries of a failing request")
	fs.DurationVar(&o.reqTimeout, "request-timeout", 10*time.Second, "wait for one etcd member's answer before trying the next")
	fs.DurationVar(&o.oneShotTimeout, "timeout", time.Minute, "verify and set-index: give up after this long when a cluster does not answer")
	for _, side := range []struct {
		prefix, name string
		s            *sideOptions
	}{{"src", "source", &o.src}, {"dst", "destination", &o.dst}} {
		fs.StringVar(&side.s.ca, side.prefix+"-ca", "", "CA `file` verifying the "+side.name+"'s certificates (default: system roots)")
		fs.StringVar(&side.s.cert, side.prefix+"-cert", "", "client certificate `file` for the "+side.name)
		fs.StringVar(&side.s.key, side.prefix+"-key", "", "client key `file` for the "+side.name)
		fs.BoolVar(&side.s.insecure, side.prefix+"-insecure", false, "do not verify the "+side.name+"'s certificates (not recommended)")
		fs.StringVar(&side.s.user, side.prefix+"-user", "", "basic-auth `user` for the "+side.name)
		fs.StringVar(&side.s.passwordFile, side.prefix+"-password-file", "", "`file` holding the "+side.name+" user's password")
	}
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage())
		fs.PrintDefaults()
	}
	return fs
}

// Main runs `confsync mirror`; args exclude the command name.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	mode := "mirror"
	if len(args) > 0 && (args[0] == "verify" || args[0] == "set-index") {
		mode, args = args[0], args[1:]
	}
	var o options
	fs := newFlagSet(&o, mode)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, usage())
		fs.PrintDefaults()
		return 0
	}
	if err == nil && len(pos) != 2 {
		err = fmt.Errorf("want two arguments, SRC and DST, got %d (%s)", len(pos), strings.Join(pos, " "))
	}
	var cfg Config
	if err == nil {
		cfg, err = o.config(pos[0], pos[1])
	}
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror: %v\nRun 'confsync mirror -h' for usage.\n", err)
		return 2
	}
	cfg.Logger = newLogger(stderr, o)

	m, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror: %v\n", err)
		return 2
	}
	defer m.Close()
	switch mode {
	case "verify":
		return m.verifyMain(ctx, o.oneShotTimeout, stdout, stderr)
	case "set-index":
		return m.setIndexMain(ctx, o.oneShotTimeout, stdout, stderr)
	}
	return m.runMain(ctx, o, stderr)
}

// parseInterleaved accepts flags before, between and after the positional
// arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func newLogger(w io.Writer, o options) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if o.debug {
		opts.Level = slog.LevelDebug
	}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// config checks the flags and arguments and builds the mirror's Config.
func (o options) config(srcArg, dstArg string) (Config, error) {
	cfg := Config{
		SourcePrefix: o.srcPrefix, DestinationPrefix: o.dstPrefix, Strip: o.strip,
		IgnoreKeys: o.ignore, Reload: o.reload, Concurrency: o.concurrency, ReadAhead: o.readAhead,
		PollTimeout: o.pollTimeout, StallTimeout: o.stallAfter, MaxBackoff: o.maxBackoff,
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return cfg, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
	}
	for name, p := range map[string]string{"--src-prefix": o.srcPrefix, "--dst-prefix": o.dstPrefix} {
		if !strings.HasPrefix(p, "/") {
			return cfg, fmt.Errorf("%s %q: must start with /", name, p)
		}
	}
	if _, err := compileIgnore(o.ignore); err != nil {
		return cfg, err
	}
	for name, d := range map[string]time.Duration{"--poll-timeout": o.pollTimeout, "--stall-timeout": o.stallAfter,
		"--max-backoff": o.maxBackoff, "--request-timeout": o.reqTimeout, "--timeout": o.oneShotTimeout} {
		if d <= 0 {
			return cfg, fmt.Errorf("%s %s: must be positive", name, d)
		}
	}
	if o.pollTimeout < 2*time.Second {
		return cfg, fmt.Errorf("--poll-timeout %s: must be at least 2s (a poll proves the source quiet only after a second of silence)", o.pollTimeout)
	}
	if o.concurrency < 1 {
		return cfg, fmt.Errorf("--concurrency %d: must be at least 1", o.concurrency)
	}
	if o.readAhead < 1 || o.readAhead > 1000 {
		return cfg, fmt.Errorf("--read-ahead %d: must be between 1 and 1000", o.readAhead)
	}
	var err error
	if cfg.Source, err = o.src.etcdConfig("src", "SRC", srcArg, o.reqTimeout); err != nil {
		return cfg, err
	}
	if cfg.Destination, err = o.dst.etcdConfig("dst", "DST", dstArg, o.reqTimeout); err != nil {
		return cfg, err
	}
	cfg.MetricsURL = strings.Join(cfg.Destination.Endpoints, ",")
	return cfg, nil
}

func (s sideOptions) etcdConfig(flagPrefix, argName, arg string, timeout time.Duration) (etcd.Config, error) {
	cfg := etcd.Config{CAFile: s.ca, CertFile: s.cert, KeyFile: s.key, Insecure: s.insecure, RequestTimeout: timeout}
	for _, raw := range strings.Split(arg, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return cfg, fmt.Errorf("%s %q: want URLs like https://host:2379, separated by commas", argName, raw)
		}
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
			return cfg, fmt.Errorf("%s %q: a client URL has no path or query; set the prefix with --%s-prefix", argName, raw, flagPrefix)
		}
		if u.User != nil {
			pass, _ := u.User.Password()
			if cfg.Username != "" && (cfg.Username != u.User.Username() || cfg.Password != pass) {
				return cfg, fmt.Errorf("%s: the URLs carry different credentials; give one user for the cluster", argName)
			}
			cfg.Username, cfg.Password = u.User.Username(), pass
		}
		cfg.Endpoints = append(cfg.Endpoints, (&url.URL{Scheme: u.Scheme, Host: u.Host}).String())
	}
	if len(cfg.Endpoints) == 0 {
		return cfg, fmt.Errorf("%s is empty: give at least one client URL", argName)
	}
	if s.user != "" {
		cfg.Username = s.user
	}
	if s.passwordFile != "" {
		if s.user == "" && cfg.Username == "" {
			return cfg, fmt.Errorf("--%s-password-file needs --%s-user", flagPrefix, flagPrefix)
		}
		b, err := os.ReadFile(s.passwordFile)
		if err != nil {
			return cfg, fmt.Errorf("--%s-password-file: %v", flagPrefix, err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
	}
	if (s.cert == "") != (s.key == "") {
		return cfg, fmt.Errorf("--%s-cert and --%s-key must be given together", flagPrefix, flagPrefix)
	}
	for name, file := range map[string]string{"ca": s.ca, "cert": s.cert, "key": s.key} {
		if file == "" {
			continue
		}
		if _, err := os.Stat(file); err != nil {
			return cfg, fmt.Errorf("--%s-%s: %v", flagPrefix, name, err)
		}
	}
	if _, err := cfg.TLSConfig(); err != nil {
		return cfg, fmt.Errorf("--%s-ca/--%s-cert/--%s-key: %v", flagPrefix, flagPrefix, flagPrefix, err)
	}
	return cfg, nil
}

// runMain replicates until ctx ends or replication must stop.
func (m *Mirror) runMain(ctx context.Context, o options, stderr io.Writer) int {
	if o.port >= 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(o.listen, strconv.Itoa(o.port)))
		if err != nil {
			fmt.Fprintf(stderr, "confsync mirror: --port %d: %v\n", o.port, err)
			return 2
		}
		srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
		m.log.Info("serving /lag, /metrics, /healthz and /status", "address", ln.Addr().String())
	}
	if err := m.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "confsync mirror: %v\n", err)
		return 1
	}
	return 0
}

// verifyMain compares the trees once.
func (m *Mirror) verifyMain(ctx context.Context, timeout time.Duration, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmp, err := m.compare(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror verify: %v%s\n", err, m.lastErrorHint())
		return 1
	}
	m.printComparison(stdout, cmp)
	if len(cmp.diffs) > 0 {
		return 1
	}
	return 0
}

func (m *Mirror) printComparison(w io.Writer, cmp *comparison) {
	for _, d := range cmp.diffs {
		fmt.Fprintln(w, d)
	}
	if len(cmp.diffs) == 0 {
		fmt.Fprintf(w, "destination %s matches source %s at source index %d (%d keys)\n",
			m.keys.dstBase, m.keys.srcRoot, cmp.index, cmp.compared)
		return
	}
	fmt.Fprintf(w, "%d differences between destination %s and source %s at source index %d (%d source keys)\n",
		len(cmp.diffs), m.keys.dstBase, m.keys.srcRoot, cmp.index, cmp.compared)
}

// setIndexMain is the switchover step: when the trees match, record the
// source index they match at, so that replication starts there.
func (m *Mirror) setIndexMain(ctx context.Context, timeout time.Duration, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	saved, err := m.loadState(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror set-index: %v%s\n", err, m.lastErrorHint())
		return 1
	}
	cmp, err := m.compare(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror set-index: %v%s\n", err, m.lastErrorHint())
		return 1
	}
	if err := m.checkOverlap(cmp.clusterID); err != nil {
		fmt.Fprintf(stderr, "confsync mirror set-index: %v\n", err)
		return 1
	}
	if len(cmp.diffs) > 0 {
		m.printComparison(stdout, cmp)
		fmt.Fprintf(stderr, "confsync mirror set-index: the trees differ, index not recorded; "+
			"fix the differences or start the mirror once with --reload, which writes only what differs\n")
		return 1
	}
	err = m.retry(ctx, sideDestination, "write the replication index", func(ctx context.Context) error {
		if err := m.state.writeIndex(ctx, cmp.index); err != nil {
			return err
		}
		return m.state.writeState(ctx, func(s *replicationState) {
			m.identify(s, cmp.clusterID)
			s.MayHaveAppliedThrough = cmp.index
			s.Resyncing = false
		})
	})
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror set-index: %v%s\n", err, m.lastErrorHint())
		return 1
	}
	was := "absent"
	if saved.hasIndex {
		was = strconv.FormatUint(saved.index, 10)
	}
	m.printComparison(stdout, cmp)
	fmt.Fprintf(stdout, "recorded source index %d in %s on the destination (was %s); start the mirror with the same flags to replicate from index %d\n",
		cmp.index, m.keys.indexKey(), was, cmp.index+1)
	return 0
}

func (m *Mirror) lastErrorHint() string {
	if s := m.Status(); s.LastError != "" {
		return " (last error: " + s.LastError + ")"
	}
	return ""
}
