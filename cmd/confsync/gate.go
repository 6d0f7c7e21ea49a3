package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/sdnotify"
)

func gateCommand() command {
	return command{
		name:        "gate",
		summary:     "TLS, basic auth, per-prefix write ACLs and a read-only switch in front of etcd",
		synopsis:    gateSynopsis,
		description: gateDescription,
		run:         runGate,
		flags:       func() *flag.FlagSet { return gateFlagSet(&gateFlags{}) },
	}
}

const (
	gateSynopsis    = `confsync gate -listen HOST:PORT -upstream URL -tls-cert F -tls-key F [flags]`
	gateDescription = `The gate is a TLS reverse proxy for etcd's v2 API that enforces per-prefix
write ACLs with HTTP basic auth and can be switched read-only at run time.
Run etcd on loopback without authentication and the gate on the public port.

Reads (GET, HEAD, OPTIONS) are open to anyone. A write to /v2/keys/K needs a
user the ACL allows for the longest prefix covering K (whole segments:
/conftool never covers /conftoolfoo). Writes anywhere else (/v2/auth,
/v2/members, the v3 gateway /v3/...) need a user listed in "admins".
Without credentials a write gets 401 with an etcd-style body (errorCode 110);
in read-only mode every write gets 403 (errorCode 107).

ACL file (TOML):

    admins = ["root"]        # may write /v2/auth/*, /v2/members, /v3/*
    [[acl]]
    prefix = "/"
    users = ["root"]
    [[acl]]
    prefix = "/conftool"
    users = ["root", "conftool"]
    [[acl]]
    prefix = "/eventlogging"
    anonymous = true         # writes need no credentials
    [[rate_limit]]           # instead of -client-rate/-client-burst
    clients = ["10.64.0.0/16"]
    rate = 500               # requests a second; 0: no limit
    burst = 5000
    [[rate_limit]]           # instead of -user-rate/-user-burst
    users = ["conftool"]
    rate = 200
    burst = 2000

Users come from an htpasswd file with bcrypt (htpasswd -B) or apr1
(htpasswd -m) hashes. An unknown user is refused in the time a wrong
password of a known one takes, so user names cannot be probed.

Hostile or runaway clients: each client address (IPv6: each /64) gets
-client-rate requests a second with bursts of -client-burst, each
authenticated user -user-rate writes a second with bursts of -user-burst;
past that a request gets 429 with Retry-After and an etcd-style body. Open
watches (wait=true) are not counted while they wait; one answered at once
counts as a request. A request body must arrive within -body-timeout plus a
second per -body-min-rate bytes, or the client gets 408; etcd never sees
part of a body.

Read-only mode is on while -read-only is given, or while the -read-only-file
exists (touch it to stop writes, remove it to allow them; takes effect
within a second, open watches stay open). The ACL, htpasswd and certificate
files are reloaded when they change, and all of them on SIGHUP; a file that
fails to load keeps its previous version and the error is logged.

With several -upstream (every member of the cluster), the gate uses one
and moves to the next when it cannot be reached, breaks a connection, does
not start answering within -upstream-timeout (reads and watches: half), or
fails etcd's /health (no leader: a member cut off from the others), which
is checked every 2s. A request that may have reached etcd is never sent
again: a write then gets 502 or 504 saying it may have been applied. The
watches on a member given up on end without an event, as etcd ends them,
and their clients watch again through the next member.

Responses to GET /v2/members and /v2/machines list the gate's own URL as
every member's client URL, so etcdctl and other clients that sync the member
list keep talking through the gate (-advertise-url sets that URL).

With -metrics-addr the gate serves its own /metrics (Prometheus), /healthz
(200 while serving) and /readyz (200 while an upstream etcd answers) there;
etcd's /metrics stays reachable through the gate itself. One JSON line per
request goes to -access-log; a file is rotated at -access-log-max-size with
-access-log-keep old files kept, and past -access-log-rate lines a second
lines are dropped, counted and summarised every 10s.

Example:

    confsync gate -listen :4001 -upstream http://127.0.0.1:2379 \
        -tls-cert /etc/ssl/etcd.pem -tls-key /etc/ssl/etcd.key \
        -htpasswd /etc/confsync/gate.htpasswd -acl /etc/confsync/gate-acl.toml \
        -read-only-file /etc/confsync/gate-read-only -metrics-addr 127.0.0.1:9184
`
)

// gateFlags are the command-line flags of confsync gate.
type gateFlags struct {
	listen, metricsAddr                             string
	upstreams                                       listFlag
	upstreamCA, upstreamCert, upstreamKey           string
	tlsCert, tlsKey                                 string
	insecurePlaintext                               bool
	htpasswd, acl                                   string
	readOnlyFile                                    string
	readOnly                                        bool
	advertiseURL                                    string
	maxBody                                         int64
	readHeaderTimeout, idleTimeout, shutdownTimeout time.Duration
	bodyTimeout, upstreamTimeout                    time.Duration
	bodyMinRate                                     int64
	maxHeaderBytes                                  int
	clientRate, userRate                            float64
	clientBurst, userBurst                          int
	logLevel, logFormat                             string
	accessLog                                       string
	accessLogMaxSize                                int64
	accessLogKeep                                   int
	accessLogRate                                   float64
	accessLogBurst                                  int
}

// listFlag collects a flag given several times or as a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func gateFlagSet(o *gateFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("gate", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", gate.DefaultListen, "`HOST:PORT` to serve clients on")
	fs.Var(&o.upstreams, "upstream", "etcd client `URL` (http or https); repeat or comma-separate for failover, tried in order (default http://127.0.0.1:2379)")
	fs.StringVar(&o.upstreamCA, "upstream-ca", "", "CA `file` (PEM) to verify https upstreams (default: system roots)")
	fs.StringVar(&o.upstreamCert, "upstream-cert", "", "client certificate `file` (PEM) for https upstreams")
	fs.StringVar(&o.upstreamKey, "upstream-key", "", "key `file` (PEM) of -upstream-cert")
	fs.DurationVar(&o.upstreamTimeout, "upstream-timeout", gate.DefaultUpstreamTimeout, "how long etcd may take to start answering a write or quorum read (reads and watches: half) before the gate gives up on that member and moves on")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "certificate `file` (PEM, chain included) to serve TLS with")
	fs.StringVar(&o.tlsKey, "tls-key", "", "key `file` (PEM) of -tls-cert")
	fs.BoolVar(&o.insecurePlaintext, "insecure-plaintext", false, "serve plain HTTP without -tls-cert (passwords travel in clear; loopback tests only)")
	fs.StringVar(&o.htpasswd, "htpasswd", "", "htpasswd `file` with the users (bcrypt or apr1 hashes)")
	fs.StringVar(&o.acl, "acl", "", "ACL `file` (TOML, see above); without it every write is refused")
	fs.StringVar(&o.readOnlyFile, "read-only-file", "", "refuse writes while this `file` exists (its directory must exist)")
	fs.BoolVar(&o.readOnly, "read-only", false, "refuse every write, always (a replica's gate)")
	fs.StringVar(&o.advertiseURL, "advertise-url", "", "`URL` given as every member's client URL in /v2/members (default: https://<Host header of the request>)")
	fs.Int64Var(&o.maxBody, "max-body", gate.DefaultMaxBodyBytes, "largest request body in `bytes`; larger gets 413")
	fs.DurationVar(&o.bodyTimeout, "body-timeout", gate.DefaultBodyTimeout, "time a client gets to send a request body, plus a second per -body-min-rate bytes sent; slower gets 408")
	fs.Int64Var(&o.bodyMinRate, "body-min-rate", gate.DefaultBodyMinRate, "`bytes` a second a client sending a body must keep up (see -body-timeout)")
	fs.DurationVar(&o.readHeaderTimeout, "read-header-timeout", gate.DefaultReadHeaderTimeout, "time a client gets to send request headers")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", gate.DefaultIdleTimeout, "how long an idle keep-alive client connection stays open")
	fs.IntVar(&o.maxHeaderBytes, "max-header-bytes", gate.DefaultMaxHeaderBytes, "largest request header block in `bytes`")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", gate.DefaultShutdownTimeout, "on SIGTERM, how long requests in flight get before connections (and watches) are cut")
	fs.Float64Var(&o.clientRate, "client-rate", gate.DefaultClientRate, "`N` requests a second each client address (IPv6: /64) may send on average; 0: no limit")
	fs.IntVar(&o.clientBurst, "client-burst", gate.DefaultClientBurst, "`N` requests a client address may send at once, beyond -client-rate")
	fs.Float64Var(&o.userRate, "user-rate", gate.DefaultUserRate, "`N` writes a second each authenticated user may send on average; 0: no limit")
	fs.IntVar(&o.userBurst, "user-burst", gate.DefaultUserBurst, "`N` writes a user may send at once, beyond -user-rate")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "`HOST:PORT` to serve the gate's own /metrics, /healthz and /readyz on (default: off)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format` on stderr: text or json")
	fs.StringVar(&o.accessLog, "access-log", "-", "where to write one JSON line per request (buffered, written out every second): a `file` (rotated by size, reopened on SIGHUP), - for stdout, or off")
	fs.Int64Var(&o.accessLogMaxSize, "access-log-max-size", gate.DefaultAccessLogMaxBytes, "rotate the -access-log file before it grows past this many `bytes` (FILE becomes FILE.1, ...); 0: never")
	fs.IntVar(&o.accessLogKeep, "access-log-keep", gate.DefaultAccessLogKeep, "`N` rotated access log files to keep")
	fs.Float64Var(&o.accessLogRate, "access-log-rate", gate.DefaultAccessLogRate, "`N` access log lines a second on average; past it (and -access-log-burst) lines are dropped and counted, except writes that reached etcd; 0: no limit")
	fs.IntVar(&o.accessLogBurst, "access-log-burst", gate.DefaultAccessLogBurst, "`N` access log lines written at once, beyond -access-log-rate")
	fs.Usage = func() {}
	return fs
}

// runGate runs `confsync gate`; args exclude the command name.
func runGate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o gateFlags
	fs := gateFlagSet(&o)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("gate")) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		return usageError(stderr, "gate", fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	log, err := gateLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return usageError(stderr, "gate", err)
	}
	cfg, err := o.config(stdout)
	if err != nil {
		return usageError(stderr, "gate", err)
	}
	cfg.Logger = log

	// Take SIGHUP before listening, so a reload signal can never kill us.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	err = gate.Run(ctx, cfg, hup)
	var cfgErr *gate.ConfigError
	switch {
	case errors.As(err, &cfgErr):
		return usageError(stderr, "gate", err)
	case err != nil:
		log.Error("serve", "err", err)
		fmt.Fprintf(stderr, "confsync gate: %v\n", err)
		return 1
	}
	return 0
}

// config checks the flags that go together and builds the gate's Config.
func (o *gateFlags) config(stdout io.Writer) (gate.Config, error) {
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return gate.Config{}, errors.New("-tls-cert and -tls-key must be given together")
	}
	if o.tlsCert == "" && !o.insecurePlaintext {
		return gate.Config{}, errors.New("-tls-cert and -tls-key are required (or -insecure-plaintext for loopback tests)")
	}
	if (o.upstreamCert == "") != (o.upstreamKey == "") {
		return gate.Config{}, errors.New("-upstream-cert and -upstream-key must be given together")
	}
	if o.maxBody <= 0 || o.maxHeaderBytes <= 0 {
		return gate.Config{}, errors.New("-max-body and -max-header-bytes must be positive")
	}
	if o.bodyTimeout <= 0 || o.bodyMinRate <= 0 || o.upstreamTimeout <= 0 {
		return gate.Config{}, errors.New("-body-timeout, -body-min-rate and -upstream-timeout must be positive")
	}
	clientLimit, err := rateFlags("client", o.clientRate, o.clientBurst)
	if err != nil {
		return gate.Config{}, err
	}
	userLimit, err := rateFlags("user", o.userRate, o.userBurst)
	if err != nil {
		return gate.Config{}, err
	}
	accessLimit, err := rateFlags("access-log", o.accessLogRate, o.accessLogBurst)
	if err != nil {
		return gate.Config{}, err
	}
	if o.accessLogMaxSize < 0 || o.accessLogKeep < 0 {
		return gate.Config{}, errors.New("-access-log-max-size and -access-log-keep must not be negative")
	}
	access := gate.AccessLogConfig{MaxBytes: o.accessLogMaxSize, Keep: o.accessLogKeep, Limit: accessLimit}
	switch o.accessLog {
	case "off", "":
		access = gate.AccessLogConfig{}
	case "-":
		access.Writer = stdout
	default:
		access.File = o.accessLog
	}
	upstreams := []string(o.upstreams)
	if len(upstreams) == 0 {
		upstreams = []string{"http://127.0.0.1:2379"}
	}
	return gate.Config{
		Notifier:          sdnotify.New(),
		Listen:            o.listen,
		MetricsAddr:       o.metricsAddr,
		Upstreams:         upstreams,
		UpstreamCAFile:    o.upstreamCA,
		UpstreamCertFile:  o.upstreamCert,
		UpstreamKeyFile:   o.upstreamKey,
		UpstreamTimeout:   o.upstreamTimeout,
		TLSCertFile:       o.tlsCert,
		TLSKeyFile:        o.tlsKey,
		HtpasswdFile:      o.htpasswd,
		ACLFile:           o.acl,
		ReadOnlyFile:      o.readOnlyFile,
		ReadOnly:          o.readOnly,
		AdvertiseURL:      o.advertiseURL,
		MaxBodyBytes:      o.maxBody,
		BodyTimeout:       o.bodyTimeout,
		BodyMinRate:       o.bodyMinRate,
		ReadHeaderTimeout: o.readHeaderTimeout,
		IdleTimeout:       o.idleTimeout,
		MaxHeaderBytes:    o.maxHeaderBytes,
		ShutdownTimeout:   o.shutdownTimeout,
		ClientLimit:       clientLimit,
		UserLimit:         userLimit,
		AccessLog:         access,
	}, nil
}

// rateFlags checks a -X-rate and -X-burst pair.
func rateFlags(name string, rate float64, burst int) (gate.RateLimit, error) {
	switch {
	case rate < 0 || rate != rate:
		return gate.RateLimit{}, fmt.Errorf("-%s-rate must be 0 (no limit) or positive", name)
	case rate > 0 && burst < 1:
		return gate.RateLimit{}, fmt.Errorf("-%s-burst must be at least 1", name)
	}
	return gate.RateLimit{Rate: rate, Burst: burst}, nil
}

// gateLogger is the operational log on stderr, as text or JSON lines.
func gateLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}
