package main

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
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/mirror"
)

func mirrorCommand() command {
	return command{
		name:        "mirror",
		summary:     "replicate a prefix from the master etcd into the replica (etcdmirror-compatible)",
		synopsis:    mirrorSynopsis,
		description: mirrorDescription,
		run:         runMirror,
		flags:       func() *flag.FlagSet { return mirrorFlagSet(&mirrorFlags{}, "mirror") },
	}
}

const (
	mirrorSynopsis = `confsync mirror [flags] SRC DST             replicate, until stopped
confsync mirror verify [flags] SRC DST      compare the trees once
confsync mirror set-index [flags] SRC DST   switchover: verify, then record the source index on DST`
	mirrorDescription = `Replicates one prefix of the etcd cluster SRC into the etcd cluster DST, like
etcdmirror (same flags, same index key, same metrics). Both sides speak the
v2 API unless --src-api/--dst-api say v3: v3 to v3, and v2 to v3 (readers
move to v3 while writers still use v2), are supported; v3 to v2 is not.
SRC and DST are client URLs, several per cluster separated by commas:
  https://conf1007.eqiad.wmnet:2379,https://conf1008.eqiad.wmnet:2379
Credentials may be given as https://user:password@host:port (as etcdmirror
takes them) or, kept out of the process list, with --src-user and
--src-password-file.

Where things are kept on DST:
  /__replication/<dst prefix>         last replicated source index or revision (decimal,
                                      etcdmirror's key; /__replication/__ROOT__ for --dst-prefix /)
  /__replication/<dst prefix>.source  source cluster ID, API, prefix and replay window (JSON)
  /__replication/<dst prefix>.lock    the mirror writing DST: host, pid, start, version (TTL)

One mirror writes a destination at a time: it holds the .lock key and
renews it every --lock-ttl/3. A second mirror exits with status 1 naming
the holder, or with --standby waits and takes over when the lock expires
(the holder stopped, died or hung). A mirror that cannot renew its lock
stops writing before the lock can expire.

A first start needs an index: run once with --reload (copies the source,
writing only keys that differ and never erasing the destination), or use
set-index when the trees already match. Replication then resumes at
index+1 after every restart. If the source's history no longer holds that
index (v2: etcd's 1000 events; v3: compaction), the mirror resynchronises
the same way, automatically.

Exit status: 0 when stopped by SIGTERM/SIGINT (or verify found no
difference), 1 when replication must stop (the destination diverged from
the source, resuming would copy the wrong data, or another mirror holds the
destination: the message says why and what to do) or verify found
differences, 2 for bad flags or arguments. Unreachable clusters are
retried with backoff, never a reason to exit.

HTTP (--port): /lag (plain integer), /metrics, /healthz, /status.
verify and set-index take the same flags; those about streaming (--reload,
--port, --concurrency, ...) are ignored there.
`
)

// mirrorFlags are the command-line flags of confsync mirror.
type mirrorFlags struct {
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
	srcAPI, dstAPI          string
	standby                 bool
	lockTTL                 time.Duration
	src, dst                mirrorSideFlags
}

type mirrorSideFlags struct {
	ca, cert, key, user, passwordFile string
	insecure                          bool
}

func mirrorFlagSet(o *mirrorFlags, name string) *flag.FlagSet {
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
	fs.StringVar(&o.srcAPI, "src-api", "v2", "etcd `API` of the source: v2 or v3")
	fs.StringVar(&o.dstAPI, "dst-api", "v2", "etcd `API` of the destination: v2 or v3 (v3 needs nothing on the source side: v2 to v3 works)")
	fs.BoolVar(&o.standby, "standby", false, "when another mirror holds the destination's lock, wait and take over once it expires instead of exiting 1")
	fs.DurationVar(&o.lockTTL, "lock-ttl", 10*time.Second, "`TTL` of the destination lock; renewed every third of it. A dead mirror is replaced after at most this long")
	for _, side := range []struct {
		prefix, name string
		s            *mirrorSideFlags
	}{{"src", "source", &o.src}, {"dst", "destination", &o.dst}} {
		fs.StringVar(&side.s.ca, side.prefix+"-ca", "", "CA `file` verifying the "+side.name+"'s certificates (default: system roots)")
		fs.StringVar(&side.s.cert, side.prefix+"-cert", "", "client certificate `file` for the "+side.name)
		fs.StringVar(&side.s.key, side.prefix+"-key", "", "client key `file` for the "+side.name)
		fs.BoolVar(&side.s.insecure, side.prefix+"-insecure", false, "do not verify the "+side.name+"'s certificates (not recommended)")
		fs.StringVar(&side.s.user, side.prefix+"-user", "", "basic-auth `user` for the "+side.name)
		fs.StringVar(&side.s.passwordFile, side.prefix+"-password-file", "", "`file` holding the "+side.name+" user's password")
	}
	fs.Usage = func() {}
	return fs
}

// mirrorUsage is the -h text: the manual, then the flags.
func mirrorUsage() string {
	return "Usage:\n  " + strings.ReplaceAll(mirrorSynopsis, "\n", "\n  ") + "\n\n" + mirrorDescription + "\nFlags:\n"
}

// runMirror runs `confsync mirror`; args exclude the command name.
func runMirror(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	mode := "mirror"
	if len(args) > 0 && (args[0] == "verify" || args[0] == "set-index") {
		mode, args = args[0], args[1:]
	}
	var o mirrorFlags
	fs := mirrorFlagSet(&o, mode)
	fs.SetOutput(stderr)
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, mirrorUsage())
		fs.PrintDefaults()
		return 0
	}
	if err == nil && len(pos) != 2 {
		err = fmt.Errorf("want two arguments, SRC and DST, got %d (%s)", len(pos), strings.Join(pos, " "))
	}
	var cfg mirror.Config
	if err == nil {
		cfg, err = o.config(pos[0], pos[1])
	}
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror: %v\nRun 'confsync mirror -h' for usage.\n", err)
		return 2
	}
	cfg.Logger = newMirrorLogger(stderr, o)
	cfg.Version = version

	m, err := mirror.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror: %v\n", err)
		return 2
	}
	defer m.Close()
	switch mode {
	case "verify":
		return mirrorVerify(ctx, m, o.oneShotTimeout, stdout, stderr)
	case "set-index":
		return mirrorSetIndex(ctx, m, o.oneShotTimeout, stdout, stderr)
	}
	return mirrorRun(ctx, m, o, stderr)
}

// parseInterleaved accepts flags before, between and after the positional
// arguments, as etcdmirror's argparse does.
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

func newMirrorLogger(w io.Writer, o mirrorFlags) *slog.Logger {
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
func (o mirrorFlags) config(srcArg, dstArg string) (mirror.Config, error) {
	cfg := mirror.Config{
		Notifier:     sdnotify.New(),
		SourcePrefix: o.srcPrefix, DestinationPrefix: o.dstPrefix, Strip: o.strip,
		IgnoreKeys: o.ignore, Reload: o.reload, Concurrency: o.concurrency, ReadAhead: o.readAhead,
		PollTimeout: o.pollTimeout, StallTimeout: o.stallAfter, MaxBackoff: o.maxBackoff,
		SourceAPI: o.srcAPI, DestinationAPI: o.dstAPI, Standby: o.standby, LockTTL: o.lockTTL,
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return cfg, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
	}
	for name, api := range map[string]string{"--src-api": o.srcAPI, "--dst-api": o.dstAPI} {
		if api != "v2" && api != "v3" {
			return cfg, fmt.Errorf("%s %q: want v2 or v3", name, api)
		}
	}
	if o.srcAPI == "v3" && o.dstAPI == "v2" {
		return cfg, errors.New("--src-api v3 with --dst-api v2: replicating v3 into v2 is not supported (v3 keys have no v2 directories); use --dst-api v3")
	}
	for name, p := range map[string]string{"--src-prefix": o.srcPrefix, "--dst-prefix": o.dstPrefix} {
		if !strings.HasPrefix(p, "/") {
			return cfg, fmt.Errorf("%s %q: must start with /", name, p)
		}
	}
	if err := mirror.CheckIgnoreRegex(o.ignore); err != nil {
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
	if o.lockTTL < 3*time.Second || o.lockTTL%time.Second != 0 {
		return cfg, fmt.Errorf("--lock-ttl %s: must be whole seconds, at least 3s (etcd counts TTLs in seconds and the lock is renewed every third)", o.lockTTL)
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

func (s mirrorSideFlags) etcdConfig(flagPrefix, argName, arg string, timeout time.Duration) (etcd.Config, error) {
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

// mirrorRun serves the HTTP port and replicates until ctx ends or
// replication must stop.
func mirrorRun(ctx context.Context, m *mirror.Mirror, o mirrorFlags, stderr io.Writer) int {
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
		m.Logger().Info("serving /lag, /metrics, /healthz and /status", "address", ln.Addr().String())
	}
	if err := m.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "confsync mirror: %v\n", err)
		return 1
	}
	return 0
}

// mirrorVerify compares the trees once.
func mirrorVerify(ctx context.Context, m *mirror.Mirror, timeout time.Duration, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmp, err := m.Verify(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror verify: %v\n", err)
		return 1
	}
	printComparison(stdout, cmp)
	if !cmp.Equal() {
		return 1
	}
	return 0
}

func printComparison(w io.Writer, cmp *mirror.Comparison) {
	for _, d := range cmp.Differences {
		fmt.Fprintln(w, d)
	}
	fmt.Fprintln(w, cmp.Summary())
}

// mirrorSetIndex is the switchover step: when the trees match, record the
// source index they match at, so that replication starts there.
func mirrorSetIndex(ctx context.Context, m *mirror.Mirror, timeout time.Duration, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rec, err := m.SetIndex(ctx)
	if errors.Is(err, mirror.ErrTreesDiffer) {
		printComparison(stdout, rec.Comparison)
		fmt.Fprintf(stderr, "confsync mirror set-index: the trees differ, index not recorded; "+
			"fix the differences or start the mirror once with --reload, which writes only what differs\n")
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "confsync mirror set-index: %v\n", err)
		return 1
	}
	was := "absent"
	if rec.HadPrevious {
		was = strconv.FormatUint(rec.Previous, 10)
	}
	printComparison(stdout, rec.Comparison)
	fmt.Fprintf(stdout, "recorded source index %d in %s on the destination (was %s); start the mirror with the same flags to replicate from index %d\n",
		rec.Comparison.SourceIndex, rec.IndexKey, was, rec.Comparison.SourceIndex+1)
	return 0
}
